"""The pipelined node (`pipeline: true`) beside the one-thread node, both real processes on one
ROS domain fed the same frames: equal results on the same frames, statuses in stamp order,
newest-wins drops counted, counters that add up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytestmark = pytest.mark.ros

from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_testing import IsolatedRos, synthetic_sift_map, wait_until  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from supergf_ros.ros.conversions import (  # noqa: E402
    camera_to_camera_info_fields,
    numpy_to_image_fields,
    ros_to_pose,
    stamp_to_ns,
)
from supergf_ros.ros.replay import stop_node  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NODE_EXE = Path(sys.executable).parent / "localizer_node"
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
MODES = {"serial": False, "pipelined": True}


@pytest.fixture(scope="module")
def nodes(cache_dir, tmp_path_factory):
    """Both nodes (namespaces /serial, /pipelined) on the same image topic; the test side."""
    from supergf_ros_msgs.msg import LocalizationStatus

    scene = synthetic_sift_map(cache_dir)
    logs = tmp_path_factory.mktemp("nodes")
    with IsolatedRos() as ros:
        procs, files = {}, []
        for name, pipelined in MODES.items():
            files.append(open(logs / f"{name}.log", "w"))  # noqa: SIM115 - closed below
            cmd = [str(NODE_EXE), "--ros-args", "--params-file", str(REPO / "config/localize.yaml")]
            for param in (f"map_path:={scene['map']}", "image_topic:=/test/image",
                          "camera_info_topic:=/test/camera_info",
                          f"pipeline:={str(pipelined).lower()}"):  # fmt: skip
                cmd += ["-p", param]
            cmd += ["-r", f"__ns:=/{name}"]
            procs[name] = subprocess.Popen(
                cmd, env=ros.env, stdout=files[-1], stderr=subprocess.STDOUT
            )
        side = {
            "ros": ros,
            "scene": scene,
            "image_pub": ros.node.create_publisher(Image, "/test/image", RELIABLE),
            "info_pub": ros.node.create_publisher(CameraInfo, "/test/camera_info", RELIABLE),
            "status": {n: ros.collect(LocalizationStatus, f"/{n}/status", RELIABLE) for n in MODES},
            "poses": {n: ros.collect(PoseStamped, f"/{n}/pose", RELIABLE) for n in MODES},
            "logs": logs,
        }

        def ready() -> bool:
            return side["image_pub"].get_subscription_count() >= 2 and all(
                ros.node.count_publishers(f"/{n}/status") > 0 for n in MODES
            )

        try:
            assert wait_until(lambda: ready() or any(p.poll() is not None for p in procs.values()),
                              120.0)  # fmt: skip
            assert ready(), _tails(logs)
            yield side
        finally:
            codes = {name: stop_node(proc) for name, proc in procs.items()}
            for f in files:
                f.close()
        assert codes == {"serial": 0, "pipelined": 0}, _tails(logs)


def _tails(logs: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(logs.glob("*.log")))


_stamp = [5_000_000_000]
_published = [0]  # frames published by this module (both nodes receive each)


def _publish(side: dict, query: int) -> int:
    """Publish query frame `query` with a new stamp (and its CameraInfo); the stamp."""
    from supergf_ros.datasets import Dataset

    ds = Dataset(side["scene"]["scene"])
    name = side["scene"]["queries"][query % len(side["scene"]["queries"])]
    side["info_pub"].publish(CameraInfo(**camera_to_camera_info_fields(ds.camera(name))))
    fields = numpy_to_image_fields(ds.read_image(name), "rgb8")
    msg = Image(**{k: v for k, v in fields.items() if k != "data"})
    msg.data = fields["data"]
    _stamp[0] += 100_000_000
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(_stamp[0], 1_000_000_000)
    msg.header.frame_id = "camera"
    side["image_pub"].publish(msg)
    _published[0] += 1
    return _stamp[0]


def _by_stamp(messages: list) -> dict:
    return {stamp_to_ns(m.header.stamp): m for m in list(messages)}


def _lock_step(nodes: dict, query: int, tries: int = 3) -> int:
    """Publish query `query` until both nodes report on the same frame (images travel with
    sensor-data QoS, best effort: a loaded machine may lose one); that frame's stamp."""
    for _ in range(tries):
        stamp = _publish(nodes, query)
        if wait_until(lambda s=stamp: all(s in _by_stamp(nodes["status"][n]) for n in MODES), 20.0):
            return stamp
    raise AssertionError(f"no status of both nodes for query {query}\n{_tails(nodes['logs'])}")


def test_pipelined_results_equal_the_one_thread_node_on_the_same_frames(nodes):
    stamps = [_lock_step(nodes, query) for query in range(len(nodes["scene"]["queries"]))]
    serial, pipelined = (_by_stamp(nodes["status"][n]) for n in MODES)
    for s in stamps:
        a, b = serial[s], pipelined[s]
        assert list(a.retrieved_keyframes) == list(b.retrieved_keyframes)
        assert a.num_matches == b.num_matches > 0  # the same features and candidates
        assert a.success == b.success and abs(a.num_inliers - b.num_inliers) <= 0.05 * a.num_inliers
    poses = [_by_stamp(nodes["poses"][n]) for n in MODES]
    common = [s for s in stamps if s in poses[0] and s in poses[1]]
    assert len(common) >= len(stamps) - 2  # the tracker's confirmation holds the first back
    for s in common:  # PnP-RANSAC is randomized: equal up to its noise
        a, b = (ros_to_pose(p[s].pose.position, p[s].pose.orientation) for p in poses)
        assert np.linalg.norm(a.center - b.center) < 0.02


def test_pipeline_keeps_stamp_order_and_counts_newest_wins_drops(nodes):
    status = nodes["status"]["pipelined"]
    before = list(status)
    stamps = [_publish(nodes, i) for i in range(12)]  # a burst far faster than the node
    assert wait_until(lambda: stamps[-1] in _by_stamp(status), 60.0), _tails(nodes["logs"])
    burst = [stamp_to_ns(m.header.stamp) for m in list(status)[len(before) :]]
    assert burst == sorted(burst) and set(burst) <= set(stamps)  # in order, never twice
    assert 2 <= len(burst) < len(stamps)  # newest wins: most of the burst is dropped
    last = _by_stamp(status)[stamps[-1]]
    # best-effort images: all of this module's frames but the few a loaded machine loses
    assert _published[0] - 2 <= last.frames_received <= _published[0]
    processed_before = before[-1].frames_processed if before else 0
    assert last.frames_processed - processed_before == len(burst)
    assert last.frames_processed + last.frames_dropped == last.frames_received
