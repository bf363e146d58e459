"""ROS 2 layer: the localizer node, message conversions, rosbag tools (rclpy only here)."""
