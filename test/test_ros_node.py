"""The real localizer node as a separate process (console script, params file, isolated domain):
bad input keeps it alive and is reported, poses + covariance, latched markers, diagnostics,
newest-frame-wins dropping, parameter validation at run time, start-up failures exit non-zero."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytestmark = pytest.mark.ros

from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
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
PARAMS = REPO / "config" / "localize.yaml"
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture(scope="module")
def scene(cache_dir):
    return synthetic_sift_map(cache_dir)


class Harness:
    """The test side: publishers and collectors talking to the node under test."""

    def __init__(self, ros: IsolatedRos, proc: subprocess.Popen, log: Path, scene: dict):
        from diagnostic_msgs.msg import DiagnosticArray

        from supergf_ros_msgs.msg import LocalizationStatus

        self.ros, self.proc, self.log, self.scene = ros, proc, log, scene
        node = ros.node
        self.image_pub = node.create_publisher(Image, "/test/image", RELIABLE)
        self.info_pub = node.create_publisher(CameraInfo, "/test/camera_info", RELIABLE)
        self.status = ros.collect(LocalizationStatus, "/status", RELIABLE)
        self.poses = ros.collect(PoseStamped, "/pose", RELIABLE)
        self.poses_cov = ros.collect(PoseWithCovarianceStamped, "/pose_with_covariance", RELIABLE)
        self.diag = ros.collect(DiagnosticArray, "/diagnostics", RELIABLE)
        self.stamp = 1000

    def ready(self) -> bool:
        return (
            self.image_pub.get_subscription_count() > 0
            and self.ros.node.count_publishers("/status") > 0
        )

    def next_stamp(self) -> int:
        self.stamp += 1
        return self.stamp * 1_000_000

    image_type = Image  # or CompressedImage, with its fields

    def image_msg(self, fields: dict, stamp_ns: int) -> Image:
        msg = self.image_type(**{k: v for k, v in fields.items() if k != "data"})
        msg.data = fields["data"]
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        msg.header.frame_id = "camera"
        return msg

    def send(self, fields: dict, timeout: float = 60.0, resend_s: float = 15.0):
        """Publish one image; return its LocalizationStatus. The node takes images best effort
        (sensor-data QoS): one not answered within `resend_s` is published again."""
        stamp = self.next_stamp()
        msg = self.image_msg(fields, stamp)
        status_sub = self.ros.subscriptions["/status"]
        wait_until(lambda: status_sub.get_publisher_count() > 0, 10.0)  # answers not lost
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.image_pub.publish(msg)
            wait_s = min(resend_s, deadline - time.monotonic())
            if wait_until(lambda: self.status_for(stamp) is not None, wait_s):
                return self.status_for(stamp)
        raise AssertionError(f"no status for the image stamped {stamp} ns:\n{self.tail()}")

    def status_for(self, stamp_ns: int):
        for st in list(self.status):
            if stamp_to_ns(st.header.stamp) == stamp_ns:
                return st
        return None

    def send_camera_info(self, camera) -> None:
        """Publish `camera` once the node subscribes (a message before that is lost)."""
        fields = camera_to_camera_info_fields(camera)
        msg = CameraInfo(**fields)
        wait_until(lambda: self.info_pub.get_subscription_count() > 0, 30.0)
        for _ in range(3):
            self.info_pub.publish(msg)

    def tail(self) -> str:
        return self.log.read_text()[-3000:]


@pytest.fixture(scope="module")
def harness(scene, tmp_path_factory):
    log = tmp_path_factory.mktemp("node") / "node.log"
    with IsolatedRos() as ros, open(log, "w") as log_file:
        cmd = [
            str(NODE_EXE),
            "--ros-args",
            "--params-file",
            str(PARAMS),
            "-p",
            f"map_path:={scene['map']}",
            "-p",
            "image_topic:=/test/image",
            "-p",
            "camera_info_topic:=/test/camera_info",
            "-p",
            "diagnostics_period_s:=0.2",
        ]
        proc = subprocess.Popen(cmd, env=ros.env, stdout=log_file, stderr=subprocess.STDOUT)
        h = Harness(ros, proc, log, scene)
        try:
            assert wait_until(lambda: h.ready() or proc.poll() is not None, 120.0)
            assert proc.poll() is None, f"node died at start-up:\n{h.tail()}"
            yield h
        finally:
            code = stop_node(proc)
        assert code == 0, f"node exit code {code} on SIGINT:\n{h.tail()}"


def _query(scene: dict, i: int = 0):
    from supergf_ros.datasets import Dataset

    ds = Dataset(scene["scene"])
    name = scene["queries"][i]
    return ds.read_image(name), ds.camera(name), ds.cam_from_world(name)


def test_latched_map_markers_reach_a_late_subscriber(harness):
    from visualization_msgs.msg import Marker, MarkerArray

    from supergf_ros.mapping.map_format import read_map

    latched = QoSProfile(
        depth=1,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )
    got = harness.ros.collect(MarkerArray, "/map_markers", latched)  # subscribes after the node
    assert wait_until(lambda: bool(got), 15.0)
    markers = {m.ns: m for m in got[0].markers}
    m = read_map(harness.scene["map"])
    assert markers["keyframes"].type == Marker.LINE_LIST
    assert len(markers["keyframes"].points) == 16 * len(m.keyframe_names)
    assert len(markers["points3D"].points) == len(m.points3D)
    assert markers["keyframes"].header.frame_id == "map"


def test_frame_without_camera_info_fails_cleanly(harness):
    image, _, _ = _query(harness.scene)
    st = harness.send(numpy_to_image_fields(image, "rgb8"))
    assert not st.success
    assert "no CameraInfo received on /test/camera_info" in st.failure_reason


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda f: {**f, "encoding": "yuv422"}, "unsupported image encoding 'yuv422'"),
        (lambda f: {**f, "data": f["data"][: len(f["data"]) // 2]}, "truncated"),
        (lambda f: {**f, "height": 0, "width": 0, "step": 0, "data": b""}, "empty image"),
        (lambda f: {**f, "step": 10}, "step 10 is smaller"),
    ],
    ids=["encoding", "truncated", "empty", "step"],
)
def test_bad_images_are_reported_and_the_node_survives(harness, mutate, reason):
    image, camera, _ = _query(harness.scene)
    harness.send_camera_info(camera)
    st = harness.send(mutate(numpy_to_image_fields(image, "rgb8")))
    assert not st.success and reason in st.failure_reason
    assert harness.proc.poll() is None


@pytest.mark.parametrize("encoding", ["bgr8", "mono8", "mono16", "rgba8"])
def test_valid_frames_localize_with_pose_and_covariance(harness, encoding):
    image, camera, gt = _query(harness.scene, 1)
    harness.send_camera_info(camera)
    fields = numpy_to_image_fields(image, encoding, padding=6, bigendian=encoding == "mono16")
    st = harness.send(fields)
    assert st.success, st.failure_reason
    assert st.num_inliers >= 12 and st.retrieved_keyframes and st.total_ms > 0
    stamp = stamp_to_ns(st.header.stamp)
    assert wait_until(
        lambda: any(stamp_to_ns(p.header.stamp) == stamp for p in harness.poses_cov), 5.0
    )
    pose = next(p for p in harness.poses if stamp_to_ns(p.header.stamp) == stamp)
    assert pose.header.frame_id == "map"
    est = ros_to_pose(pose.pose.position, pose.pose.orientation)
    assert np.linalg.norm(est.center - gt.center) < 0.1  # world_from_cam, in metres
    pc = next(p for p in harness.poses_cov if stamp_to_ns(p.header.stamp) == stamp)
    cov = np.array(pc.pose.covariance).reshape(6, 6)
    assert np.all(np.linalg.eigvalsh(cov) > 0) and np.all(np.diag(cov) < 1.0)
    np.testing.assert_allclose(cov, cov.T)


def test_newest_frame_wins_and_drops_are_counted(harness):
    image, camera, _ = _query(harness.scene, 2)
    harness.send_camera_info(camera)
    fields = numpy_to_image_fields(image, "rgb8")
    stamps = [harness.next_stamp() for _ in range(8)]
    for s in stamps:  # a burst much faster than the pipeline
        harness.image_pub.publish(harness.image_msg(fields, s))
    assert wait_until(lambda: harness.status_for(stamps[-1]) is not None, 60.0), harness.tail()
    last = harness.status_for(stamps[-1])
    processed = [s for s in stamps if harness.status_for(s) is not None]
    assert last.frames_dropped >= 1 and len(processed) < len(stamps)
    assert last.frames_processed + last.frames_dropped == last.frames_received


def test_diagnostics_report_counters_and_last_error(harness):
    from diagnostic_msgs.msg import DiagnosticStatus

    harness.send({**numpy_to_image_fields(np.zeros((32, 32), np.uint8), "mono8"), "encoding": "x"})
    assert wait_until(
        lambda: any(
            "unsupported image encoding 'x'" in _values(d).get("last_error", "")
            for d in list(harness.diag)
        ),
        5.0,
    )
    d = next(
        d
        for d in reversed(list(harness.diag))
        if "unsupported image encoding 'x'" in _values(d).get("last_error", "")
    )
    values = _values(d)
    assert d.status[0].level == DiagnosticStatus.WARN
    assert int(values["frames_received"]) >= 3 and int(values["frames_localized"]) >= 1
    assert {"rate_hz", "latency_ms_mean", "frames_dropped"} <= set(values)
    # the inference backend and why (SIFT + VLAD map: no network runs), also in the node log
    assert values["backend"] == "none" and "need no network" in values["backend_reason"]
    assert "inference backend: none" in harness.log.read_text()


def _values(diag) -> dict:
    return {kv.key: kv.value for kv in diag.status[0].values} if diag.status else {}


def test_runtime_parameter_changes_are_validated(harness):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import GetParameters, SetParameters

    node = harness.ros.node
    set_cli = node.create_client(SetParameters, "/localizer/set_parameters")
    get_cli = node.create_client(GetParameters, "/localizer/get_parameters")
    assert set_cli.wait_for_service(timeout_sec=10.0)

    def set_param(name, value):
        if isinstance(value, str):
            pv = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
        else:
            pv = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
        future = set_cli.call_async(
            SetParameters.Request(parameters=[Parameter(name=name, value=pv)])
        )
        assert wait_until(future.done, 10.0)
        return future.result().results[0]

    bad = set_param("top_k", 0)
    assert not bad.successful and "top_k" in bad.reason
    assert not set_param("min_inliers", 2).successful
    ro = set_param("map_path", "/elsewhere.h5")
    assert not ro.successful and "read-only" in ro.reason
    assert set_param("min_inliers", 15).successful
    future = get_cli.call_async(GetParameters.Request(names=["min_inliers", "top_k"]))
    assert wait_until(future.done, 10.0)
    assert [v.integer_value for v in future.result().values] == [15, 5]
    assert harness.proc.poll() is None, harness.tail()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-p", "map_path:=/nonexistent/map.h5"], "map file not found: /nonexistent/map.h5"),
        ([], "map_path is not set"),
        (["-p", "map_path:=MAP", "-p", "top_k:=0"], "top_k"),
        (["-p", "map_path:=MAP", "-p", "backend:=cuda_magic"], "backend must be one of"),
        (["-p", "map_path:=CORRUPT"], "cannot load map"),
        (["--params-file", "/nonexistent/params.yaml"], "cannot initialize ROS"),
    ],
    ids=["missing-map", "no-map", "bad-range", "bad-choice", "corrupt-map", "no-params-file"],
)
def test_startup_failures_exit_2_with_a_clear_error(scene, tmp_path, args, message):
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"this is not an HDF5 map")
    args = [a.replace("MAP", str(scene["map"])).replace("CORRUPT", str(corrupt)) for a in args]
    with IsolatedRos() as ros:
        proc = subprocess.run(
            [str(NODE_EXE), "--ros-args", *args],
            env=ros.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_unavailable_backend_or_device_is_a_startup_error(scene):
    from supergf_ros.inference.backends import available_backends

    status = available_backends()
    cases = []
    if status["tensorrt:cuda"] != "available":
        cases.append("backend:=tensorrt")
    if all(v != "available" for k, v in status.items() if k.endswith(":cuda")):
        cases.append("device:=cuda")
    if not cases:
        pytest.skip("TensorRT and CUDA are available here")
    with IsolatedRos() as ros:
        for arg in cases:
            proc = subprocess.run(
                [str(NODE_EXE), "--ros-args", "-p", f"map_path:={scene['map']}", "-p", arg],
                env=ros.env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert proc.returncode == 2, proc.stderr
            assert "not available here. Available:" in proc.stderr, proc.stderr


def test_tf_is_broadcast_after_enabling_it_at_run_time(harness):
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    tf2_msgs = pytest.importorskip("tf2_msgs.msg")
    got = harness.ros.collect(tf2_msgs.TFMessage, "/tf", RELIABLE)
    cli = harness.ros.node.create_client(SetParameters, "/localizer/set_parameters")
    assert cli.wait_for_service(timeout_sec=10.0)
    pv = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=True)
    future = cli.call_async(
        SetParameters.Request(parameters=[Parameter(name="publish_tf", value=pv)])
    )
    assert wait_until(future.done, 10.0) and future.result().results[0].successful
    image, camera, gt = _query(harness.scene, 3)
    harness.send_camera_info(camera)
    st = harness.send(numpy_to_image_fields(image, "rgb8"))
    assert st.success, st.failure_reason
    assert wait_until(lambda: bool(got), 5.0)
    tf = got[-1].transforms[0]
    assert (tf.header.frame_id, tf.child_frame_id) == ("map", "camera")
    t = tf.transform.translation
    assert np.linalg.norm(np.array([t.x, t.y, t.z]) - gt.center) < 0.1


def _set_parameter(harness, name: str, value):
    from rcl_interfaces.msg import Parameter
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter as RclpyParameter

    cli = harness.ros.node.create_client(SetParameters, "/localizer/set_parameters")
    assert cli.wait_for_service(timeout_sec=10.0)
    msg = Parameter(name=name, value=RclpyParameter(name, value=value).get_parameter_value())
    future = cli.call_async(SetParameters.Request(parameters=[msg]))
    assert wait_until(future.done, 10.0)
    return future.result().results[0]


def test_runtime_change_reaches_the_localizer(harness):
    image, camera, _ = _query(harness.scene, 1)
    harness.send_camera_info(camera)
    assert _set_parameter(harness, "top_k", 1).successful
    try:
        st = harness.send(numpy_to_image_fields(image, "rgb8"))
        assert len(st.retrieved_keyframes) == 1
    finally:
        assert _set_parameter(harness, "top_k", 5).successful
    st = harness.send(numpy_to_image_fields(image, "rgb8"))
    assert len(st.retrieved_keyframes) > 1


def test_integer_for_a_float_parameter_is_accepted(harness):
    from rcl_interfaces.msg import ParameterType
    from rcl_interfaces.srv import GetParameters

    assert _set_parameter(harness, "max_rate_hz", 2).successful
    try:
        cli = harness.ros.node.create_client(GetParameters, "/localizer/get_parameters")
        future = cli.call_async(GetParameters.Request(names=["max_rate_hz"]))
        assert wait_until(future.done, 10.0)
        value = future.result().values[0]
        assert value.type == ParameterType.PARAMETER_DOUBLE and value.double_value == 2.0
    finally:
        assert _set_parameter(harness, "max_rate_hz", 0.0).successful
    refused = _set_parameter(harness, "max_rate_hz", "fast")
    assert not refused.successful


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_huge_frame_is_downscaled_not_a_memory_spike(harness):
    import cv2

    image, camera, gt = _query(harness.scene, 2)
    harness.send_camera_info(camera)
    st = harness.send(numpy_to_image_fields(image, "rgb8"))
    before = _peak_rss_mb(harness.proc.pid)
    factor = 4096 / image.shape[1]  # a camera switched to 4096 px wide
    big = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_LINEAR)
    harness.send_camera_info(camera.scaled(big.shape[1] / image.shape[1]))
    # mono8 keeps the 12.6 MB message within one shared-memory segment of the test transport
    st = harness.send(numpy_to_image_fields(big, "mono8"), timeout=120.0)
    after = _peak_rss_mb(harness.proc.pid)
    assert after - before <= 300.0, (before, after)
    assert st.success, st.failure_reason
    pose = harness.poses[-1].pose
    assert np.linalg.norm(ros_to_pose(pose.position, pose.orientation).center - gt.center) < 0.1
    harness.send_camera_info(camera)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"width": 1, "height": 1}, "1x1"),
        ({"width": 640, "height": 240}, "aspect ratios differ"),
        ({"d": np.array([1e9, 0.0, 0.0, 0.0, 0.0])}, "distortion"),
        ({"k": np.array([1e6, 0.0, 160.0, 0.0, 1e6, 120.0, 0.0, 0.0, 1.0])}, "focal length"),
    ],
    ids=["1x1-camera-info", "other-aspect", "huge-distortion", "implausible-focal"],
)
def test_implausible_camera_info_publishes_no_pose(harness, change, reason):
    from diagnostic_msgs.msg import DiagnosticStatus

    image, camera, _ = _query(harness.scene, 1)
    fields = {**camera_to_camera_info_fields(camera), **change}
    for _ in range(3):
        harness.info_pub.publish(CameraInfo(**fields))
    wait_until(lambda: False, 0.3)
    poses_before = len(harness.poses)
    st = harness.send(numpy_to_image_fields(image, "rgb8"))
    assert not st.success and reason in st.failure_reason, st.failure_reason
    assert wait_until(
        lambda: any(
            d.status
            and d.status[0].level >= DiagnosticStatus.WARN
            and reason in d.status[0].message
            for d in list(harness.diag)[-3:]
        ),
        5.0,
    )
    assert len(harness.poses) == poses_before
    harness.send_camera_info(camera)  # a valid CameraInfo heals it
    wait_until(lambda: False, 0.3)
    assert harness.send(numpy_to_image_fields(image, "rgb8")).success


def test_echoed_text_is_bounded(harness):
    fields = {
        **numpy_to_image_fields(np.zeros((32, 32), np.uint8), "mono8"),
        "encoding": "x" * 100_000,
    }
    st = harness.send(fields)
    assert not st.success and len(st.failure_reason) <= 400
