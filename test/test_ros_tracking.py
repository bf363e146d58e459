"""The node on a robot (REP-105), real rclpy over DDS: map -> odom from a fix and odometry,
base_pose, initialpose seeds tracking, ~/relocalize resets, camera-only without odometry."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
tf2_msgs = pytest.importorskip("tf2_msgs.msg")
pytestmark = pytest.mark.ros

from geometry_msgs.msg import PoseWithCovarianceStamped  # noqa: E402
from ros_testing import IsolatedRos, wait_until  # noqa: E402
from test_ros_node import NODE_EXE, PARAMS, RELIABLE, Harness, _query  # noqa: E402

from supergf_ros.geometry import Pose  # noqa: E402
from supergf_ros.ros.conversions import numpy_to_image_fields, ros_to_pose  # noqa: E402
from supergf_ros.ros.replay import stop_node  # noqa: E402
from supergf_ros.ros.robot_frames import (  # noqa: E402
    STATIC_QOS,
    pose_to_transform,
    transform_to_pose,
)

# base_link -> camera: 0.5 m up, 0.1 m ahead, optical axes (z forward, x right, y down)
BASE_FROM_CAM = Pose(np.array([0.5, -0.5, 0.5, -0.5]), np.array([0.1, 0.0, 0.5]))
YAW = np.radians(30.0)
ODOM_FROM_BASE = Pose(
    np.array([np.cos(YAW / 2), 0.0, 0.0, np.sin(YAW / 2)]), np.array([5.0, 2.0, 0.0])
)


@pytest.fixture(scope="module")
def robot(scene, tmp_path_factory):
    log = tmp_path_factory.mktemp("robot") / "node.log"
    with IsolatedRos() as ros, open(log, "w") as log_file:
        cmd = [str(NODE_EXE), "--ros-args", "--params-file", str(PARAMS)]
        for name, value in {
            "map_path": scene["map"],
            "image_topic": "/test/image",
            "camera_info_topic": "/test/camera_info",
            "diagnostics_period_s": 0.2,
            "map_to_odom_rate_hz": 10.0,
        }.items():
            cmd += ["-p", f"{name}:={value}"]
        proc = subprocess.Popen(cmd, env=ros.env, stdout=log_file, stderr=subprocess.STDOUT)
        h = Harness(ros, proc, log, scene)
        h.tf_pub = ros.node.create_publisher(tf2_msgs.TFMessage, "/tf", RELIABLE)
        h.static_pub = ros.node.create_publisher(tf2_msgs.TFMessage, "/tf_static", STATIC_QOS)
        h.tf = ros.collect(tf2_msgs.TFMessage, "/tf", RELIABLE)
        h.base = ros.collect(PoseWithCovarianceStamped, "/base_pose", RELIABLE)
        h.seed_pub = ros.node.create_publisher(PoseWithCovarianceStamped, "/initialpose", RELIABLE)
        try:
            assert wait_until(lambda: h.ready() or proc.poll() is not None, 120.0)
            assert proc.poll() is None, f"node died at start-up:\n{h.tail()}"
            yield h
        finally:
            code = stop_node(proc)
        assert code == 0, f"node exit code {code} on SIGINT:\n{h.tail()}"


@pytest.fixture(scope="module")
def scene(cache_dir):
    from ros_testing import synthetic_sift_map

    return synthetic_sift_map(cache_dir)


def _stamp(ns: int):
    from builtin_interfaces.msg import Time

    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def _send_with_odometry(robot, index: int, odom_from_base: Pose):
    """Publish TF (static extrinsic, odometry at the frame's stamp) and one frame."""
    image, camera, gt = _query(robot.scene, index)
    robot.send_camera_info(camera)
    stamp = robot.stamp + 1
    static = pose_to_transform("base_link", "camera", _stamp(0), BASE_FROM_CAM)
    robot.static_pub.publish(tf2_msgs.TFMessage(transforms=[static]))
    ns = stamp * 1_000_000
    for dt in (-50_000_000, 0, 50_000_000):  # samples around the image stamp
        tf = pose_to_transform("odom", "base_link", _stamp(ns + dt), odom_from_base)
        robot.tf_pub.publish(tf2_msgs.TFMessage(transforms=[tf]))
    wait_until(lambda: False, 0.3)  # let the TF reach the node before the image
    return robot.send(numpy_to_image_fields(image, "rgb8")), gt


def test_map_to_odom_is_the_fix_composed_with_odometry(robot):
    st, gt = _send_with_odometry(robot, 0, ODOM_FROM_BASE)
    assert st.success and st.mode == "global", st.failure_reason
    fix = next(p for p in reversed(list(robot.poses)) if p.header.stamp == st.header.stamp)
    map_from_cam = ros_to_pose(fix.pose.position, fix.pose.orientation).inverse()
    map_from_base = map_from_cam * BASE_FROM_CAM.inverse()
    expected = map_from_base * ODOM_FROM_BASE.inverse()
    assert wait_until(lambda: _map_to_odom(robot) is not None, 5.0), robot.tail()
    got = _map_to_odom(robot)
    assert np.allclose(got.tvec, expected.tvec, atol=1e-6)
    assert np.allclose(got.matrix, expected.matrix, atol=1e-6)
    base = next(b for b in reversed(list(robot.base)) if b.header.stamp == st.header.stamp)
    assert np.allclose(
        [base.pose.pose.position.x, base.pose.pose.position.y], map_from_base.tvec[:2], atol=1e-6
    )
    assert np.linalg.norm(map_from_base.tvec - (gt.inverse() * BASE_FROM_CAM.inverse()).tvec) < 0.1


def _map_to_odom(robot) -> Pose | None:
    for msg in reversed(list(robot.tf)):
        for tf in msg.transforms:
            if (tf.header.frame_id, tf.child_frame_id) == ("map", "odom"):
                return transform_to_pose(tf.transform)
    return None


def test_initialpose_seeds_tracking_and_relocalize_resets(robot):
    from std_srvs.srv import Trigger

    _, _, gt = _query(robot.scene, 1)
    seed = PoseWithCovarianceStamped()
    seed.header.frame_id = "map"
    seed.header.stamp = _stamp((robot.stamp + 1) * 1_000_000)
    map_from_base = gt.inverse() * BASE_FROM_CAM.inverse()
    p = seed.pose.pose
    p.position.x, p.position.y, p.position.z = (float(v) for v in map_from_base.tvec)
    qw, qx, qy, qz = map_from_base.qvec
    p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = qx, qy, qz, qw
    seed.pose.covariance = list(np.diag([0.25, 0.25, 0.0, 0.0, 0.0, 0.07]).reshape(-1))
    for _ in range(3):
        robot.seed_pub.publish(seed)
    wait_until(lambda: False, 0.5)
    st, _ = _send_with_odometry(robot, 1, ODOM_FROM_BASE)
    assert st.mode == "tracking" and st.gate_checked and st.gate_passed, st.failure_reason
    assert st.success
    cli = robot.ros.node.create_client(Trigger, "/localizer/relocalize")
    assert cli.wait_for_service(timeout_sec=10.0)
    future = cli.call_async(Trigger.Request())
    assert wait_until(future.done, 10.0) and future.result().success
    st, _ = _send_with_odometry(robot, 2, ODOM_FROM_BASE)
    assert st.mode == "global" and not st.gate_checked


def test_without_odometry_the_node_localizes_camera_only_and_says_so(robot):
    robot.tf.clear()
    image, camera, _ = _query(robot.scene, 3)
    robot.send_camera_info(camera)
    far_future = robot.stamp + 10_000_000  # no odometry near this stamp
    robot.stamp = far_future
    st = robot.send(numpy_to_image_fields(image, "rgb8"))
    assert st.success and st.mode == "global", st.failure_reason
    assert wait_until(
        lambda: any(
            "no odometry" in kv.value
            for d in list(robot.diag)
            for kv in (d.status[0].values if d.status else [])
            if kv.key == "odometry_error"
        ),
        5.0,
    )
    assert robot.proc.poll() is None


def test_unknown_extrinsic_publishes_the_camera_pose_but_no_base_pose(robot):
    image, camera, _ = _query(robot.scene, 4)
    robot.send_camera_info(camera)
    fields = numpy_to_image_fields(image, "rgb8")
    stamp = robot.next_stamp()
    msg = robot.image_msg(fields, stamp)
    msg.header.frame_id = "camera_without_tf"
    robot.image_pub.publish(msg)
    assert wait_until(lambda: robot.status_for(stamp) is not None, 60.0), robot.tail()
    st = robot.status_for(stamp)
    assert st.success, st.failure_reason
    assert any(p.header.stamp == st.header.stamp for p in robot.poses)
    assert not any(b.header.stamp == st.header.stamp for b in robot.base)
    assert wait_until(
        lambda: any(
            "base_pose and map -> odom are not published" in kv.value
            for d in list(robot.diag)
            for kv in (d.status[0].values if d.status else [])
            if kv.key == "extrinsic_error"
        ),
        5.0,
    )
