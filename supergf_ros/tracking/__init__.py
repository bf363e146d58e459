"""Tracking on a moving robot: a ROS-free tf2-like buffer, odometry propagation and gating.

Plain numpy/scipy (no rclpy): the ROS node converts messages and calls these.
"""

from .gate import GateResult, chi2_threshold, gate, pose_error_vector, pose_mahalanobis
from .odometry import (
    OdometryNoise,
    OdometryPropagator,
    Prediction,
    compose_map_from_odom,
    covariance_of_attached_frame,
    propagate_covariance,
)
from .tf_buffer import (
    ConnectivityError,
    ExtrapolationError,
    StaleTransformError,
    TransformBuffer,
    TransformError,
    TransformTreeError,
    UnknownFrameError,
)

__all__ = [
    "ConnectivityError",
    "ExtrapolationError",
    "GateResult",
    "OdometryNoise",
    "OdometryPropagator",
    "Prediction",
    "StaleTransformError",
    "TransformBuffer",
    "TransformError",
    "TransformTreeError",
    "UnknownFrameError",
    "chi2_threshold",
    "compose_map_from_odom",
    "covariance_of_attached_frame",
    "gate",
    "pose_error_vector",
    "pose_mahalanobis",
    "propagate_covariance",
]
