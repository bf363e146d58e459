"""Launch the supergf_ros localizer node with config/localize.yaml.

    ros2 launch supergf_ros localize.launch.py map:=/path/to/map.h5 \
        image_topic:=/camera/image_raw namespace:=robot1 [params_file:=my.yaml] [rviz:=true]

`ros2 launch supergf_ros localize.launch.py --show-args` lists the arguments. The launch ends with
the node; a start-up failure of the node (exit code 2: no map, bad parameter) makes `ros2 launch`
exit non-zero. RViz starts first, so a missing rviz2 stops the launch before the node starts.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, Shutdown
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "supergf_ros"
EXECUTABLE = "localizer_node"


def _end_launch(event, context):
    """When the localizer exits, the launch ends; non-zero if the node failed.

    (`Shutdown()` alone ends `ros2 launch` with exit code 0 whatever the node's; an exception in
    an event handler is how launch reports an error: exit code 1.)
    """
    if event.returncode != 0:
        raise RuntimeError(f"{event.process_name} exited with code {event.returncode}")
    return [Shutdown(reason=f"{event.process_name} exited")]


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    default_params = os.path.join(share, "config", "localize.yaml")
    rviz_config = os.path.join(share, "config", "supergf.rviz")

    args = [
        DeclareLaunchArgument("map", description="map file (.h5) from `supergf-ros build-map`"),
        DeclareLaunchArgument(
            "params_file",
            default_value=default_params,
            description="node parameters YAML (the node's defaults fill what it leaves out)",
        ),
        DeclareLaunchArgument(
            "image_topic",
            default_value="/camera/image_raw",
            description="sensor_msgs/Image topic (a relative name goes under the namespace)",
        ),
        DeclareLaunchArgument(
            "camera_info_topic",
            default_value="/camera/camera_info",
            description="sensor_msgs/CameraInfo topic (a relative name goes under the namespace)",
        ),
        DeclareLaunchArgument(
            "namespace",
            default_value="",
            description="node namespace: /NS/localizer, /NS/pose, /NS/status, ...",
        ),
        DeclareLaunchArgument("rviz", default_value="false", description="also start RViz 2"),
    ]
    localizer = Node(
        package=PACKAGE,
        executable=EXECUTABLE,
        name="localizer",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        on_exit=_end_launch,
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "map_path": LaunchConfiguration("map"),
                "image_topic": LaunchConfiguration("image_topic"),
                "camera_info_topic": LaunchConfiguration("camera_info_topic"),
            },
        ],
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        arguments=["-d", rviz_config],
        condition=IfCondition(LaunchConfiguration("rviz")),
    )
    return LaunchDescription([*args, rviz, localizer])
