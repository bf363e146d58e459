"""The managed (lifecycle) node through the lifecycle_msgs services, and map switching with
~/load_map, over real DDS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")
pytestmark = pytest.mark.ros

from ros_testing import IsolatedRos, synthetic_sift_map, wait_until  # noqa: E402
from test_ros_node import NODE_EXE, PARAMS, Harness, _query  # noqa: E402

from supergf_ros.ros.conversions import numpy_to_image_fields  # noqa: E402
from supergf_ros.ros.replay import stop_node  # noqa: E402

MANAGED_EXE = Path(sys.executable).parent / "managed_localizer_node"


def _start(ros, exe: Path, map_path: Path, log: Path):
    cmd = [str(exe), "--ros-args", "--params-file", str(PARAMS)]
    for arg in (
        f"map_path:={map_path}",
        "image_topic:=/test/image",
        "camera_info_topic:=/test/camera_info",
        "confirm_fixes:=1",
    ):
        cmd += ["-p", arg]
    return subprocess.Popen(cmd, env=ros.env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _call(node, srv_type, name: str, request, timeout: float = 60.0):
    cli = node.create_client(srv_type, name)
    assert cli.wait_for_service(timeout_sec=30.0), name
    future = cli.call_async(request)
    assert wait_until(future.done, timeout), name
    return future.result()


def _transition(node, transition_id: int) -> bool:
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    request = ChangeState.Request(transition=Transition(id=transition_id))
    return _call(node, ChangeState, "/localizer/change_state", request).success


def _state(node) -> str:
    from lifecycle_msgs.srv import GetState

    return _call(node, GetState, "/localizer/get_state", GetState.Request()).current_state.label


def test_lifecycle_transitions(cache_dir, tmp_path):
    from lifecycle_msgs.msg import Transition

    scene = synthetic_sift_map(cache_dir)
    with IsolatedRos() as ros:
        proc = _start(ros, MANAGED_EXE, scene["map"], tmp_path / "node.log")
        h = Harness(ros, proc, tmp_path / "node.log", scene)
        try:
            node = ros.node
            assert _state(node) == "unconfigured"
            assert h.image_pub.get_subscription_count() == 0  # nothing subscribed yet
            assert _transition(node, Transition.TRANSITION_CONFIGURE)
            assert _state(node) == "inactive"
            assert _transition(node, Transition.TRANSITION_ACTIVATE)
            assert wait_until(h.ready, 30.0), h.tail()
            image, camera, _ = _query(scene, 0)
            h.send_camera_info(camera)
            wait_until(lambda: False, 0.3)
            assert h.send(numpy_to_image_fields(image, "rgb8")).success
            assert _transition(node, Transition.TRANSITION_DEACTIVATE)
            assert wait_until(lambda: h.image_pub.get_subscription_count() == 0, 10.0)
            assert _transition(node, Transition.TRANSITION_CLEANUP)
            assert _state(node) == "unconfigured"
            assert _transition(node, Transition.TRANSITION_CONFIGURE)  # configures again
            assert _transition(node, Transition.TRANSITION_ACTIVATE)
            assert wait_until(h.ready, 30.0), h.tail()
            assert h.send(numpy_to_image_fields(image, "rgb8")).success
        finally:
            code = stop_node(proc)
        assert code == 0, h.tail()


def test_configure_with_a_bad_map_fails_the_transition_not_the_process(cache_dir, tmp_path):
    from lifecycle_msgs.msg import Transition

    with IsolatedRos() as ros:
        proc = _start(ros, MANAGED_EXE, tmp_path / "missing.h5", tmp_path / "node.log")
        try:
            assert not _transition(ros.node, Transition.TRANSITION_CONFIGURE)
            assert _state(ros.node) == "unconfigured" and proc.poll() is None
        finally:
            stop_node(proc)
    assert "map file not found" in (tmp_path / "node.log").read_text()


def test_load_map_swaps_maps_and_a_failed_load_keeps_the_old_one(cache_dir, tmp_path):
    from supergf_ros_msgs.srv import LoadMap

    scene = synthetic_sift_map(cache_dir)
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"not a map")
    copy = tmp_path / "copy.h5"
    copy.write_bytes(Path(scene["map"]).read_bytes())
    with IsolatedRos() as ros:
        proc = _start(ros, NODE_EXE, scene["map"], tmp_path / "node.log")
        h = Harness(ros, proc, tmp_path / "node.log", scene)
        try:
            assert wait_until(lambda: h.ready() or proc.poll() is not None, 120.0), h.tail()
            image, camera, _ = _query(scene, 1)
            h.send_camera_info(camera)
            wait_until(lambda: False, 0.3)
            bad = _call(
                ros.node, LoadMap, "/localizer/load_map", LoadMap.Request(map_path=str(corrupt))
            )
            assert not bad.success and "kept the current map" in bad.message
            assert h.send(numpy_to_image_fields(image, "rgb8")).success  # the old map works
            good = _call(
                ros.node, LoadMap, "/localizer/load_map", LoadMap.Request(map_path=str(copy))
            )
            assert good.success, good.message
            assert h.send(numpy_to_image_fields(image, "rgb8")).success
            assert str(copy) in h.tail()
        finally:
            code = stop_node(proc)
        assert code == 0, h.tail()
