"""Launch the supergf_ros localizer node with config/localize.yaml.

    ros2 launch supergf_ros localize.launch.py map:=/path/to/map.h5 \
        image_topic:=/camera/image_raw namespace:=robot1 [params_file:=my.yaml] [rviz:=true] \
        [lifecycle:=true [autostart:=false]]

`lifecycle:=true` runs the managed (lifecycle) node, configured and activated here unless
`autostart:=false` (then nav2's lifecycle manager or `ros2 lifecycle set` drives it).

`ros2 launch supergf_ros localize.launch.py --show-args` lists the arguments. The launch ends with
the node; a start-up failure of the node (exit code 2: no map, bad parameter) makes `ros2 launch`
exit non-zero. RViz starts first, so a missing rviz2 stops the launch before the node starts.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler, Shutdown
from launch.conditions import IfCondition, UnlessCondition
from launch.events import matches_action
from launch.substitutions import AndSubstitution, LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

PACKAGE = "supergf_ros"
EXECUTABLE = "localizer_node"
MANAGED_EXECUTABLE = "managed_localizer_node"


def _end_launch(event, context):
    """When the localizer exits, the launch ends; non-zero if the node failed.

    (`Shutdown()` alone ends `ros2 launch` with exit code 0 whatever the node's; an exception in
    an event handler is how launch reports an error: exit code 1.)
    """
    if event.returncode != 0:
        raise RuntimeError(f"{event.process_name} exited with code {event.returncode}")
    if context.is_shutdown:  # Ctrl-C: already ending (a second Shutdown trips launch_ros)
        return None
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
        DeclareLaunchArgument(
            "lifecycle", default_value="false", description="run the managed (lifecycle) node"
        ),
        DeclareLaunchArgument(
            "autostart",
            default_value="true",
            description="with lifecycle:=true, configure and activate it at launch",
        ),
    ]
    node_args = dict(
        package=PACKAGE,
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
    localizer = Node(
        executable=EXECUTABLE,
        condition=UnlessCondition(LaunchConfiguration("lifecycle")),
        **node_args,
    )
    managed = LifecycleNode(
        executable=MANAGED_EXECUTABLE,
        condition=IfCondition(LaunchConfiguration("lifecycle")),
        **node_args,
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        arguments=["-d", rviz_config],
        condition=IfCondition(LaunchConfiguration("rviz")),
    )
    return LaunchDescription([*args, rviz, localizer, managed, *_autostart(managed)])


def _autostart(node: LifecycleNode) -> list:
    """configure at launch, activate once inactive (with lifecycle:=true autostart:=true)."""
    when = IfCondition(
        AndSubstitution(LaunchConfiguration("lifecycle"), LaunchConfiguration("autostart"))
    )

    def change(transition: int, condition=None) -> EmitEvent:
        event = ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition)
        return EmitEvent(event=event, condition=condition)

    activate = RegisterEventHandler(
        OnStateTransition(
            target_lifecycle_node=node,
            goal_state="inactive",
            entities=[change(Transition.TRANSITION_ACTIVATE)],
        ),
        condition=when,
    )
    return [activate, change(Transition.TRANSITION_CONFIGURE, when)]
