"""supergf_ros: onboard hierarchical visual localization with SuperGF (ROS-free core library)."""

__version__ = "0.1.0"
