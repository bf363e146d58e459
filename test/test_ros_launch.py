"""`ros2 launch supergf_ros localize.launch.py` run for real (the `ros2` command of the venv, its
ament prefix), and the `ros2 param` / `topic` / `node` / `service` verbs against the launched node.

One launched node (namespace robot1, a params file, remapped topics) serves most tests; the
failure cases, Ctrl-C and RViz launch their own. Every launch runs in its own ROS domain, on
loopback only, with its ROS logs in a temporary folder. Skipped without the ROS 2 command-line
tools (`make venv` installs them from ../shared/vendor/ros2 when that folder is present).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
pytestmark = pytest.mark.ros

ROS2 = Path(sys.executable).parent / "ros2"
if not ROS2.is_file():
    pytest.skip(
        f"the ROS 2 command-line tools are not installed ({ROS2} missing): `make venv` installs "
        "them when ../shared/vendor/ros2 is present",
        allow_module_level=True,
    )
pytest.importorskip("launch_ros", reason="launch_ros is not installed (see make venv)")

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

RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
NS = "robot1"
NODE = f"/{NS}/localizer"
LAUNCH = ["launch", "supergf_ros", "localize.launch.py"]
STATUS_TYPE = "supergf_ros_msgs/msg/LocalizationStatus"
STOP_S = 10.0  # Ctrl-C to the end of `ros2 launch`, node included


@pytest.fixture(scope="module")
def scene(cache_dir):
    return synthetic_sift_map(cache_dir)


def launch_env(ros: IsolatedRos, tmp: Path) -> dict:
    """The isolated domain's environment, with ROS logs kept out of ~/.ros."""
    return {**ros.env, "ROS_HOME": str(tmp), "ROS_LOG_DIR": str(tmp / "log")}


def start_launch(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            [str(ROS2), *LAUNCH, *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def stop_launch(proc: subprocess.Popen, timeout_s: float = STOP_S) -> tuple[int, float]:
    """Ctrl-C as a terminal sends it (SIGINT to `ros2 launch`): (exit code, seconds to exit)."""
    if proc.poll() is not None:
        return proc.returncode, 0.0
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    return code, time.monotonic() - t0


def node_executable(launch_log: str) -> Path:
    """The localizer_node file the running node process of a launch log executes."""
    pid = re.search(r"\[localizer_node-1\]: process started with pid \[(\d+)\]", launch_log)
    assert pid, launch_log
    cmdline = Path(f"/proc/{pid.group(1)}/cmdline").read_bytes().split(b"\0")
    return Path(next(a.decode() for a in cmdline if a.endswith(b"/localizer_node")))


class Launched:
    """A `ros2 launch` of the localizer and the test side talking to it."""

    def __init__(self, ros: IsolatedRos, proc: subprocess.Popen, log: Path, env: dict, scene):
        from supergf_ros_msgs.msg import LocalizationStatus

        self.ros, self.proc, self.log, self.env, self.scene = ros, proc, log, env, scene
        self.image_pub = ros.node.create_publisher(Image, "/test/image", RELIABLE)
        self.info_pub = ros.node.create_publisher(CameraInfo, "/test/camera_info", RELIABLE)
        self.status = ros.collect(LocalizationStatus, f"/{NS}/status", RELIABLE)
        self.poses = ros.collect(PoseStamped, f"/{NS}/pose", RELIABLE)
        self.stamp = 1000

    def ready(self) -> bool:
        return (
            self.image_pub.get_subscription_count() > 0
            and self.ros.node.count_publishers(f"/{NS}/status") > 0
        )

    def send(self, query: int = 0, timeout: float = 60.0):
        """Publish CameraInfo and one query image; return (status, ground truth pose).

        The node subscribes with sensor QoS (best effort): messages sent while its side of the
        discovery is still settling can be lost, so a frame whose status did not come, or says
        the CameraInfo did not arrive, is sent again with a new stamp."""
        from supergf_ros.datasets import Dataset

        ds = Dataset(self.scene["scene"])
        name = self.scene["queries"][query]
        info = CameraInfo(**camera_to_camera_info_fields(ds.camera(name)))
        fields = numpy_to_image_fields(ds.read_image(name), "rgb8")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _ in range(3):
                self.info_pub.publish(info)
            msg = Image(**{k: v for k, v in fields.items() if k != "data"})
            msg.data = fields["data"]
            self.stamp += 1
            stamp = self.stamp * 1_000_000
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            msg.header.frame_id = "camera"
            self.image_pub.publish(msg)
            if wait_until(lambda s=stamp: self._for(self.status, s) is not None, 5.0):
                st = self._for(self.status, stamp)
                if "no CameraInfo received" not in st.failure_reason:
                    return st, ds.cam_from_world(name)
        raise AssertionError(f"no status for the frame in {timeout:.0f} s:\n{self.tail()}")

    def pose_for(self, stamp_ns: int, timeout: float = 5.0):
        wait_until(lambda: self._for(self.poses, stamp_ns) is not None, timeout)
        return self._for(self.poses, stamp_ns)

    @staticmethod
    def _for(msgs: list, stamp_ns: int):
        return next((m for m in list(msgs) if stamp_to_ns(m.header.stamp) == stamp_ns), None)

    def ros2(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run `ros2 ARGS` in the launch's domain."""
        return subprocess.run(
            [str(ROS2), *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def tail(self) -> str:
        return self.log.read_text()[-3000:]


@pytest.fixture(scope="module")
def launched(scene, tmp_path_factory):
    """`ros2 launch` with a namespace, remapped topics and a params file; the first pose timed."""
    tmp = tmp_path_factory.mktemp("launch")
    params = tmp / "params.yaml"
    params.write_text(
        "/**:\n  ros__parameters:\n    min_inliers: 14\n    diagnostics_period_s: 0.5\n"
    )
    args = [
        f"map:={scene['map']}",
        "image_topic:=/test/image",
        "camera_info_topic:=/test/camera_info",
        f"namespace:={NS}",
        f"params_file:={params}",
    ]
    with IsolatedRos() as ros:
        env = launch_env(ros, tmp)
        t0 = time.monotonic()
        proc = start_launch(args, env, tmp / "launch.log")
        h = Launched(ros, proc, tmp / "launch.log", env, scene)
        try:
            assert wait_until(lambda: h.ready() or proc.poll() is not None, 120.0), h.tail()
            assert proc.poll() is None, f"ros2 launch ended at start-up:\n{h.tail()}"
            h.ready_s = time.monotonic() - t0
            h.first_status, h.first_gt = h.send(0)
            h.first_pose_s = time.monotonic() - t0
            print(
                f"\nros2 launch: node ready after {h.ready_s:.1f} s, "
                f"first pose after {h.first_pose_s:.1f} s"
            )
            yield h
        finally:
            code, took = stop_launch(proc)
        assert code == 0 and took < STOP_S, f"exit code {code} after {took:.1f} s:\n{h.tail()}"


def test_frames_on_the_remapped_topics_come_back_as_poses(launched):
    st, gt = launched.first_status, launched.first_gt
    assert st.success, st.failure_reason
    pose = launched.pose_for(stamp_to_ns(st.header.stamp))
    assert pose is not None and pose.header.frame_id == "map"
    est = ros_to_pose(pose.pose.position, pose.pose.orientation)
    assert np.linalg.norm(est.center - gt.center) < 0.1
    st, gt = launched.send(1)
    assert st.success and launched.pose_for(stamp_to_ns(st.header.stamp)) is not None
    # the process is the executable of the venv's ament prefix, started by the launch file
    assert node_executable(launched.tail()) == Path(sys.prefix) / "lib/supergf_ros/localizer_node"


def test_namespace_puts_topics_parameters_and_services_under_it(launched):
    info = ""

    def listed() -> bool:  # a fresh `ros2` process needs a moment to discover the node
        nonlocal info
        info = launched.ros2("node", "info", "--no-daemon", "--spin-time", "1", NODE).stdout
        return f"{NODE}/set_parameters" in info and f"/{NS}/status" in info

    assert wait_until(listed, 30.0, period_s=0.5), info
    lines = {line.strip().split(":")[0] for line in info.splitlines()}
    assert {
        f"/{NS}/{t}" for t in ("pose", "pose_with_covariance", "status", "map_markers")
    } <= lines
    assert not {"/pose", "/status", "/localizer/status"} & lines
    assert "/diagnostics" in lines  # absolute by convention: one aggregated diagnostics topic
    assert {"/test/image", "/test/camera_info"} <= lines  # absolute launch arguments stay so
    assert {f"{NODE}/{s}" for s in ("get_parameters", "set_parameters", "describe_parameters")} <= (
        lines
    )


def test_params_file_overrides_and_launch_arguments_are_applied(launched):
    import yaml

    out = launched.ros2("param", "dump", "--no-daemon", "--timeout", "10", NODE)
    assert out.returncode == 0, out.stderr
    params = yaml.safe_load(out.stdout)[NODE]["ros__parameters"]
    assert params["min_inliers"] == 14 and params["diagnostics_period_s"] == 0.5  # params_file:=
    assert params["top_k"] == 5  # not in that file: the node's default
    assert params["image_topic"] == "/test/image"  # launch arguments win over the file
    assert params["camera_info_topic"] == "/test/camera_info"
    assert params["map_path"] == str(launched.scene["map"])


def test_ros2_param_set_takes_effect_and_is_validated(launched):
    def ros2_param(*args: str) -> subprocess.CompletedProcess:
        return launched.ros2("param", *args[:1], "--no-daemon", "--timeout", "10", NODE, *args[1:])

    out = ros2_param("set", "top_k", "10")
    assert out.returncode == 0 and "Set parameter successful" in out.stdout, out.stdout + out.stderr
    try:
        assert ros2_param("get", "top_k").stdout.strip() == "Integer value is: 10"
        st, _ = launched.send(2)
        assert len(st.retrieved_keyframes) == 10  # the localizer uses it from the next frame
        refused = ros2_param("set", "top_k", "0")
        # rclpy's range check of the declared descriptor; upstream `ros2 param set` reports it
        # on stderr and still exits 0
        assert "Setting parameter failed: Parameter top_k out of range. Min: 1, Max: 100" in (
            refused.stderr
        ), refused.stdout + refused.stderr
        assert ros2_param("get", "top_k").stdout.strip() == "Integer value is: 10"
    finally:
        assert "successful" in ros2_param("set", "top_k", "5").stdout


def test_ros2_topic_echo_once_prints_a_status(launched):
    topic = f"/{NS}/status"  # `status` is relative: it follows the node's namespace
    before = launched.ros.node.count_subscribers(topic)
    with open(launched.log.parent / "echo.log", "w") as out:
        echo = subprocess.Popen(
            # without a daemon, name the type: the verb looks the topic up after a 0.5 s spin,
            # often before discovery completes ("Could not determine the type")
            [str(ROS2), "topic", "echo", "--once", "--no-daemon", topic, STATUS_TYPE],
            env=launched.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        assert wait_until(
            lambda: launched.ros.node.count_subscribers(topic) > before or echo.poll() is not None,
            30.0,
        )
        # seen here does not mean matched by the node yet: send frames until echo prints one
        deadline = time.monotonic() + 30.0
        while echo.poll() is None and time.monotonic() < deadline:
            launched.send(3)
            wait_until(lambda: echo.poll() is not None, 1.0)
        code = echo.poll()
    finally:
        if echo.poll() is None:
            echo.kill()
    text = (launched.log.parent / "echo.log").read_text()
    assert code == 0, text
    assert "success: true" in text and "num_inliers:" in text and "frames_localized:" in text


def _run_launch(args: list[str], tmp: Path, timeout: float = 120.0):
    """A whole `ros2 launch` in its own domain: (exit code, output, seconds)."""
    with IsolatedRos() as ros:
        t0 = time.monotonic()
        out = subprocess.run(
            [str(ROS2), *LAUNCH, *args],
            env=launch_env(ros, tmp),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    return out.returncode, out.stdout + out.stderr, time.monotonic() - t0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "missing required argument 'map'"),
        (["map:=/nonexistent/map.h5"], "localizer_node: error: map file not found"),
        (["map:=MAP", "params_file:=BAD_PARAMS"], "Parameter top_k out of range. Min: 1, Max: 100"),
    ],
    ids=["no-map-argument", "missing-map", "bad-parameter"],
)
def test_bad_launch_arguments_end_the_launch_with_the_error(scene, tmp_path, args, message):
    bad_params = tmp_path / "bad.yaml"
    bad_params.write_text("/**:\n  ros__parameters:\n    top_k: 0\n")
    args = [
        a.replace("MAP", str(scene["map"])).replace("BAD_PARAMS", str(bad_params)) for a in args
    ]
    code, text, _ = _run_launch(args, tmp_path)
    assert code != 0, text
    assert message in text, text
    if args:  # the node ran and failed: exit code 2, and the launch says so
        assert "exited with code 2" in text, text


def test_ctrl_c_stops_the_launch_and_the_node_cleanly(scene, tmp_path):
    with IsolatedRos() as ros:
        log = tmp_path / "launch.log"
        proc = start_launch([f"map:={scene['map']}"], launch_env(ros, tmp_path), log)
        try:  # Ctrl-C once the node is up (its start-up log line, as a user would see it)
            assert wait_until(
                lambda: "]: ready: map" in log.read_text() or proc.poll() is not None, 120.0
            )
            assert proc.poll() is None, log.read_text()
        finally:
            code, took = stop_launch(proc)
    text = log.read_text()
    print(f"\nCtrl-C to the end of ros2 launch: {took:.1f} s")
    assert code == 0 and took < STOP_S, f"exit code {code} after {took:.1f} s:\n{text}"
    assert "process has finished cleanly" in text and "Traceback" not in text, text


def test_rviz_without_rviz2_is_a_clear_error_not_a_hang(scene, tmp_path):
    found = subprocess.run([str(ROS2), "pkg", "prefix", "rviz2"], capture_output=True, text=True)
    if found.returncode == 0:
        pytest.skip(f"rviz2 is installed here ({found.stdout.strip()})")
    code, text, took = _run_launch([f"map:={scene['map']}", "rviz:=true"], tmp_path, 60.0)
    assert code != 0 and "package 'rviz2' not found" in text, text
    assert took < 30.0 and "localizer_node-" not in text, text  # stopped before the node started


def test_workspace_build_and_launch_as_a_user_does(scene, tmp_path):
    """`colcon build` of the repository's two packages into a workspace, `source
    install/setup.bash`, `ros2 launch` from there: poses come back, Ctrl-C stops it."""
    repo, venv = Path(__file__).resolve().parents[1], Path(sys.prefix)
    ws = tmp_path / "ws"
    # a shell with the venv activated (this project's underlay, where a ROS installation's
    # setup.bash would be) and nothing of this test process's ROS bootstrap
    user_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LD_LIBRARY_PATH", "_ROS_WHEELS_BOOTSTRAP_COMPLETE", "PYTHONPATH")
        and not k.startswith(("AMENT_", "COLCON_", "CMAKE_"))
    }
    user_env |= {
        "VIRTUAL_ENV": str(venv),
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "AMENT_PREFIX_PATH": str(venv),
    }
    build = subprocess.run(
        [
            "colcon",
            "--log-base",
            str(ws / "log"),
            "build",
            "--base-paths",
            str(repo),
            str(repo / "supergf_ros_msgs"),
            "--build-base",
            str(ws / "build"),
            "--install-base",
            str(ws / "install"),
        ],
        env=user_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    assert "2 packages finished" in build.stdout, build.stdout
    exe = ws / "install" / "supergf_ros" / "lib" / "supergf_ros" / "localizer_node"
    launch_file = ws / "install" / "supergf_ros" / "share" / "supergf_ros" / "launch"
    assert os.access(exe, os.X_OK) and (launch_file / "localize.launch.py").is_file()

    args = [
        f"map:={scene['map']}",
        "image_topic:=/test/image",
        "camera_info_topic:=/test/camera_info",
        f"namespace:={NS}",
    ]
    # colcon's setup.bash fails under `set -u`: plain bash
    script = (
        f"source {ws / 'install' / 'setup.bash'} && ros2 pkg prefix supergf_ros && "
        f"exec ros2 launch supergf_ros localize.launch.py {' '.join(args)}"
    )
    with IsolatedRos() as ros:
        env = {**launch_env(ros, tmp_path), **user_env}
        for k in ("LD_LIBRARY_PATH", "_ROS_WHEELS_BOOTSTRAP_COMPLETE", "AMENT_PREFIX_PATH"):
            env.pop(k, None)  # setup.bash sets AMENT_PREFIX_PATH: workspace, then the venv
        log = tmp_path / "launch.log"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                ["bash", "-c", script], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        h = Launched(ros, proc, log, env, scene)
        try:
            assert wait_until(lambda: h.ready() or proc.poll() is not None, 120.0), h.tail()
            assert proc.poll() is None, f"ros2 launch ended at start-up:\n{h.tail()}"
            st, gt = h.send(0)
            assert st.success, st.failure_reason
            pose = h.pose_for(stamp_to_ns(st.header.stamp))
            est = ros_to_pose(pose.pose.position, pose.pose.orientation)
            assert np.linalg.norm(est.center - gt.center) < 0.1
            # the workspace overlays the venv: its package prefix and executable
            assert wait_until(lambda: "process started with pid" in log.read_text(), 10.0)
            assert log.read_text().splitlines()[0] == str(ws / "install" / "supergf_ros"), h.tail()
            assert node_executable(log.read_text()) == exe
        finally:
            code, took = stop_launch(proc)
    text = log.read_text()
    assert code == 0 and took < STOP_S, f"exit code {code} after {took:.1f} s:\n{text}"
    assert "process has finished cleanly" in text, text


def test_lifecycle_launch_autostarts_the_managed_node(scene, tmp_path):
    with IsolatedRos() as ros:
        env = launch_env(ros, tmp_path)
        log = tmp_path / "launch.log"
        args = [
            f"map:={scene['map']}",
            "image_topic:=/test/image",
            "camera_info_topic:=/test/camera_info",
            f"namespace:={NS}",
            "lifecycle:=true",
        ]
        proc = start_launch(args, env, log)
        h = Launched(ros, proc, log, env, scene)
        try:
            assert wait_until(lambda: h.ready() or proc.poll() is not None, 120.0), h.tail()
            assert proc.poll() is None, h.tail()
            assert "managed_localizer_node" in log.read_text()
            st, gt = h.send(0)
            assert st.success, st.failure_reason
            pose = h.pose_for(stamp_to_ns(st.header.stamp))
            est = ros_to_pose(pose.pose.position, pose.pose.orientation)
            assert np.linalg.norm(est.center - gt.center) < 0.1
        finally:
            code, took = stop_launch(proc)
    assert code == 0 and took < STOP_S, log.read_text()
