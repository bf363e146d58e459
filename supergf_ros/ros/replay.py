"""`supergf-ros replay BAG --map MAP.h5`: play a bag through the real localizer node and measure.

Starts `localizer_node` as a separate process in an isolated ROS domain with loopback-only
discovery (Fast DDS over shared memory + UDP on `lo`), publishes the bag's CameraInfo + Image
messages over ROS 2, collects the node's poses and status messages, and reports:

- end-to-end latency (image publish -> pose received) p50/p95, throughput, frames in/localized/
  dropped, mean per-stage timings, the node's peak memory (RSS);
- with reference poses (from the bag's source file, see `make_bag`), the pose recall and median
  errors exactly as `supergf-ros evaluate --json` computes them;
- a PNG of the estimated vs reference trajectory, the poses as a results file and the JSON;
- for a bag that carries a robot (`make_bag`: /tf_static, /tf and /odom, all played to the node
  at their log times), the node's `base_pose` stream and `map -> odom` are collected and scored
  against the bag's dense ground truth (`robot_eval`: time to first fix, base-pose recall,
  jumps, wrong fixes, NEES), with a PNG of the base trajectory (`--plot`) and `base_poses.txt`.
  `--sim-time` also publishes /clock (bag time) and starts the node with use_sim_time.

Playback: `--rate R` plays at R times the bag's timing (as `ros2 bag play --rate`), so the node
drops frames when it is slower than the camera; `--as-fast-as-possible` publishes each frame as
soon as the previous one's status arrived (lock-step: no drops, pure pipeline latency).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from supergf_ros.io_utils import atomic_output, atomic_write_text
from supergf_ros.ros.conversions import pose_from_ros, ros_to_pose, stamp_to_ns

FASTDDS_LOOPBACK_PROFILE = """<?xml version="1.0" encoding="UTF-8"?>
<profiles xmlns="http://www.eprosima.com">
  <transport_descriptors>
    <transport_descriptor>
      <transport_id>supergf_shm</transport_id>
      <type>SHM</type>
      <segment_size>16777216</segment_size>
    </transport_descriptor>
    <transport_descriptor>
      <transport_id>supergf_udp_lo</transport_id>
      <type>UDPv4</type>
      <interfaces>
        <allowlist>
          <interface name="lo" netmask_filter="AUTO"/>
        </allowlist>
      </interfaces>
    </transport_descriptor>
  </transport_descriptors>
  <participant profile_name="supergf_loopback" is_default_profile="true">
    <rtps>
      <userTransports>
        <transport_id>supergf_shm</transport_id>
        <transport_id>supergf_udp_lo</transport_id>
      </userTransports>
      <useBuiltinTransports>false</useBuiltinTransports>
    </rtps>
  </participant>
</profiles>
"""


def isolated_ros_env(domain_id: int, profile_path: Path) -> dict[str, str]:
    """Environment variables for an isolated, loopback-only ROS 2 domain."""
    if not 0 <= domain_id <= 101:
        raise ValueError(f"ROS domain id must be in [0, 101], got {domain_id}")
    return {
        "ROS_DOMAIN_ID": str(domain_id),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_STATIC_PEERS": "",
        "FASTDDS_DEFAULT_PROFILES_FILE": str(profile_path),
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
    }


@contextlib.contextmanager
def _patched_environ(values: dict[str, str]):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def read_bag_frames(bag_path: Path, image_topic: str | None, info_topic: str | None) -> dict:
    """Raw CDR messages of the bag: {"images": [(stamp_ns, raw)], "infos": [...], topics}.
    ValueError for a corrupt or truncated bag (as bag-frames)."""
    from rosbags.rosbag2 import ReaderError

    try:
        return _read_bag_frames(bag_path, image_topic, info_topic)
    except ReaderError as err:
        raise ValueError(f"cannot read bag {bag_path}: {err}") from err


def _read_bag_frames(bag_path: Path, image_topic: str | None, info_topic: str | None) -> dict:
    from rosbags.rosbag2 import Reader

    from supergf_ros.ros.bag_frames import image_connection

    if not (bag_path / "metadata.yaml").is_file():
        raise FileNotFoundError(f"not a rosbag2 folder (no metadata.yaml): {bag_path}")
    with Reader(bag_path) as reader:
        image_conn = image_connection(reader.connections, image_topic, bag_path)
        image_topic = image_conn.topic
        info_topics = [
            c.topic for c in reader.connections if c.msgtype == "sensor_msgs/msg/CameraInfo"
        ]
        info_topic = info_topic or (info_topics or [None])[0]
        robot_conns = [c for c in reader.connections if c.msgtype in ROBOT_MSGTYPES]
        conns = [c for c in reader.connections if c.topic in (image_topic, info_topic)]
        images, infos, robot = [], [], []
        for conn, stamp, raw in reader.messages(connections=conns + robot_conns):
            if conn in robot_conns:
                robot.append((int(stamp), conn.topic, conn.msgtype, bytes(raw)))
            else:
                (images if conn.topic == image_topic else infos).append((int(stamp), bytes(raw)))
    if not images:
        raise ValueError(f"bag {bag_path} has no messages on image topic {image_topic}")
    return {
        "images": images,
        "infos": infos,
        "robot": robot,
        "image_topic": image_topic,
        "image_msgtype": image_conn.msgtype,
        "info_topic": info_topic,
    }


ROBOT_MSGTYPES = ("tf2_msgs/msg/TFMessage", "nav_msgs/msg/Odometry")


def _message_class(msgtype: str) -> Any:
    """The rclpy message class of "pkg/msg/Name"."""
    import importlib

    pkg, _, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.msg"), name)


def _header_stamp_ns(raw: bytes, msgtype: Any) -> int:
    from rclpy.serialization import deserialize_message

    return stamp_to_ns(deserialize_message(raw, msgtype).header.stamp)


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _torch_loaded(pid: int) -> bool | None:
    """Whether PyTorch's library is mapped into process `pid` (None: not readable)."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None


def replay_bag(
    bag_path: str | Path,
    map_path: str | Path,
    *,
    rate: float = 1.0,
    as_fast_as_possible: bool = False,
    params_file: str | Path | None = None,
    node_params: dict[str, Any] | None = None,
    domain_id: int | None = None,
    output_dir: str | Path | None = None,
    startup_timeout_s: float = 180.0,
    frame_timeout_s: float = 60.0,
    progress: bool = True,
    sim_time: bool = False,
    plot_path: str | Path | None = None,
) -> dict[str, Any]:
    """Replay `bag_path` through a freshly started localizer node; return the metrics dict.

    Keys: latency_ms_p50, latency_ms_p95, latency_ms_mean, throughput_hz, frames_in,
    frames_processed, frames_localized, frames_dropped, stage_ms_mean, node_peak_rss_mb,
    node_torch_loaded (PyTorch's library mapped into the node),
    node_exit_code, domain_id, and with reference poses recall, median_translation_m,
    median_rotation_deg (as `supergf-ros evaluate --json`); the robot's (`robot_eval`):
    time_to_first_fix_s, first_fix_stamp_s, fixes, fix_rate_hz, fixes_rejected, base_poses,
    map_to_odom_count and, with the bag's ground-truth base trajectory, base_pose_recall, jumps,
    wrong_fixes_1m, nees_mean, fix_error_m_median; plus output file paths (base_trajectory_png).

    `sim_time`: publish /clock from the bag's log times and run the node with use_sim_time.
    """
    bag_path, map_path = Path(bag_path), Path(map_path)
    if not map_path.is_file():
        raise FileNotFoundError(f"map file not found: {map_path}")
    if not as_fast_as_possible and not rate > 0:
        raise ValueError(f"rate must be positive, got {rate}")
    if params_file is not None and not Path(params_file).is_file():
        raise FileNotFoundError(f"params file not found: {params_file}")
    from supergf_ros.ros.make_bag import read_source

    source = read_source(bag_path) or {}
    frames = read_bag_frames(bag_path, source.get("image_topic"), source.get("camera_info_topic"))
    out_dir = Path(output_dir) if output_dir else Path("outputs") / "replay" / bag_path.name
    out_dir.mkdir(parents=True, exist_ok=True)
    if domain_id is None:
        domain_id = random.SystemRandom().randint(1, 101)

    with tempfile.TemporaryDirectory(prefix="supergf_replay_") as tmp:
        profile = Path(tmp) / "fastdds_loopback.xml"
        profile.write_text(FASTDDS_LOOPBACK_PROFILE)
        env = isolated_ros_env(domain_id, profile)
        with _patched_environ(env):
            result = _run_replay(
                frames,
                map_path,
                rate=rate,
                as_fast_as_possible=as_fast_as_possible,
                params_file=params_file,
                node_params=node_params or {},
                out_dir=out_dir,
                startup_timeout_s=startup_timeout_s,
                frame_timeout_s=frame_timeout_s,
                progress=progress,
                sim_time=sim_time,
            )
    result["domain_id"] = domain_id
    result.update(_evaluate(result.pop("_poses"), source, out_dir))
    plot_path = Path(plot_path) if plot_path else out_dir / "base_trajectory.png"
    result.update(_evaluate_robot(result.pop("_robot"), source, plot_path))
    result["bag"] = str(bag_path)
    result["map"] = str(map_path)
    atomic_write_text(out_dir / "replay.json", json.dumps(result, indent=2) + "\n")
    result["json"] = str(out_dir / "replay.json")
    return result


def _image_params(frames: dict) -> dict[str, str]:
    """The node's image_topic (and image_transport) for the bag's image topic."""
    topic = frames["image_topic"]
    if frames["image_msgtype"] != "sensor_msgs/msg/CompressedImage":
        return {"image_topic": topic}
    if not topic.endswith("/compressed"):  # the node subscribes image_transport's way
        raise ValueError(
            f"CompressedImage topic {topic} does not end in /compressed, as image_transport "
            "names it; the node cannot subscribe to it"
        )
    return {"image_topic": topic.removesuffix("/compressed"), "image_transport": "compressed"}


def _node_command(map_path: Path, params_file, node_params: dict, frames: dict) -> list[str]:
    cmd = [sys.executable, "-m", "supergf_ros.ros.node", "--ros-args"]
    if params_file is not None:
        cmd += ["--params-file", str(params_file)]
    params = {
        "map_path": str(map_path.resolve()),
        **_image_params(frames),
        **({"camera_info_topic": frames["info_topic"]} if frames["info_topic"] else {}),
        **node_params,
    }
    for key, value in params.items():
        if isinstance(value, bool):
            value = str(value).lower()
        cmd += ["-p", f"{key}:={value}"]
    return cmd


def _image_type(frames: dict) -> Any:
    from sensor_msgs.msg import CompressedImage, Image

    compressed = frames["image_msgtype"] == "sensor_msgs/msg/CompressedImage"
    return CompressedImage if compressed else Image


def _run_replay(
    frames: dict,
    map_path: Path,
    *,
    rate: float,
    as_fast_as_possible: bool,
    params_file,
    node_params: dict,
    out_dir: Path,
    startup_timeout_s: float,
    frame_timeout_s: float,
    progress: bool,
    sim_time: bool = False,
) -> dict[str, Any]:
    """Start the node, play `frames` to it, stop it; the metrics and the poses (`_poses`)."""
    from sensor_msgs.msg import CameraInfo

    status_type = _localization_status_type()
    image_type = _image_type(frames)
    images = [(_header_stamp_ns(raw, image_type), t, raw) for t, raw in frames["images"]]
    infos = [(_header_stamp_ns(raw, CameraInfo), t, raw) for t, raw in frames["infos"]]
    log_path = out_dir / "node.log"
    if sim_time:
        node_params = {"use_sim_time": True, **node_params}
    cmd = _node_command(map_path, params_file, node_params, frames)
    log_file = open(log_path, "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=os.environ.copy())
    client = _ReplayClient(frames, status_type, sim_time)
    peak_rss = torch_loaded = None
    try:
        _wait_for_node(proc, client.image_pub, client.status_sub, startup_timeout_s, log_path)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(images), desc="replay", unit="frame")
        events = _events(images, infos, frames["robot"])
        events = _publish_static(client, events)
        t_start = time.perf_counter()
        lock_step_timeout_s = frame_timeout_s if as_fast_as_possible else None
        published = _play(client, proc, log_path, events, t_start, bar, rate, lock_step_timeout_s)
        client.wait_for_answers(published, frame_timeout_s)
        t_end = time.perf_counter()
        if bar is not None:
            bar.close()
        peak_rss, torch_loaded = _peak_rss_mb(proc.pid), _torch_loaded(proc.pid)
    finally:
        exit_code = stop_node(proc)
        log_file.close()
        client.close()
    with client.lock:
        poses, statuses = dict(client.poses), dict(client.statuses)
        base_poses, map_to_odom = list(client.base_poses), list(client.map_to_odom)
    metrics, duration = _replay_metrics(poses, statuses, published, t_start, t_end)
    return {
        **metrics,
        "node_peak_rss_mb": None if peak_rss is None else round(peak_rss, 1),
        "node_torch_loaded": torch_loaded,
        "node_exit_code": exit_code,
        "mode": "as_fast_as_possible" if as_fast_as_possible else f"rate x{rate:g}",
        "duration_s": round(duration, 3),
        "node_log": str(log_path),
        "map_to_odom_count": len(map_to_odom),
        "_poses": {s: poses[s][1] for s in published if s in poses},
        "_robot": {
            "base_poses": base_poses,
            "frames": dict(published),
            "fix_stamps": {s for s in published if s in statuses and statuses[s][1].success},
            "reasons": [statuses[s][1].failure_reason for s in published if s in statuses],
            "t_start": t_start,
        },
    }


def _localization_status_type() -> Any:
    try:
        from supergf_ros_msgs.msg import LocalizationStatus
    except ImportError as err:
        raise ValueError(
            f"supergf_ros_msgs is not built ({err}); run `make venv` or scripts/build_msgs.sh"
        ) from err
    return LocalizationStatus


class _ReplayClient:
    """A node in its own rclpy context: publishes the bag's messages (camera, /tf, /tf_static,
    odometry; /clock with `sim_time`), records poses and statuses ({header stamp ns: (receive
    time, message)}), every `base_pose` (`robot_eval.BasePose`, in arrival order) and every
    map -> odom (receive time, Pose), under `lock`."""

    def __init__(self, frames: dict, status_type: Any, sim_time: bool = False) -> None:
        import rclpy
        from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo

        from supergf_ros.ros.robot_frames import STATIC_QOS

        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context, domain_id=int(os.environ["ROS_DOMAIN_ID"]))
        self.node = rclpy.create_node("supergf_replay", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self.executor.spin, daemon=True)
        self.lock = threading.Condition()
        self.poses: dict[int, tuple[float, Any]] = {}
        self.statuses: dict[int, tuple[float, Any]] = {}
        self.base_poses: list = []
        self.map_to_odom: list[tuple[float, Any]] = []
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.image_pub = self.node.create_publisher(
            _image_type(frames), frames["image_topic"], reliable
        )
        self.info_pub = self.node.create_publisher(
            CameraInfo, frames["info_topic"] or "camera_info", reliable
        )
        self.robot_pubs = {}
        for _, topic, msgtype, _ in frames["robot"]:
            if topic not in self.robot_pubs:
                qos = STATIC_QOS if topic == "/tf_static" else QoSProfile(depth=100)
                cls = _message_class(msgtype)
                self.robot_pubs[topic] = self.node.create_publisher(cls, topic, qos)
        self.clock_pub = None
        if sim_time:
            from rosgraph_msgs.msg import Clock

            self.clock_pub = self.node.create_publisher(Clock, "/clock", 10)
        self.node.create_subscription(PoseStamped, "/pose", self._on_pose, reliable)
        self.node.create_subscription(
            PoseWithCovarianceStamped, "/base_pose", self._on_base_pose, reliable
        )
        self._subscribe_tf()
        self.status_sub = self.node.create_subscription(
            status_type, "/status", self._on_status, reliable
        )
        self._spin.start()

    def _subscribe_tf(self) -> None:
        try:
            from tf2_msgs.msg import TFMessage
        except ImportError:  # no TF in this environment: no map -> odom to collect
            return
        self.node.create_subscription(TFMessage, "/tf", self._on_tf, 100)

    def _on_pose(self, msg: Any) -> None:
        with self.lock:
            self.poses[stamp_to_ns(msg.header.stamp)] = (
                time.perf_counter(),
                ros_to_pose(msg.pose.position, msg.pose.orientation),
            )
            self.lock.notify_all()

    def _on_base_pose(self, msg: Any) -> None:
        from supergf_ros.ros.robot_eval import BasePose

        p = msg.pose.pose
        pose = pose_from_ros(p.position, p.orientation)
        cov = np.asarray(msg.pose.covariance, dtype=np.float64).reshape(6, 6)
        record = BasePose(time.perf_counter(), stamp_to_ns(msg.header.stamp), pose, cov)
        with self.lock:
            self.base_poses.append(record)

    def _on_tf(self, msg: Any) -> None:
        from supergf_ros.ros.robot_frames import transform_to_pose

        for tf in msg.transforms:
            if tf.child_frame_id == "odom" and tf.header.frame_id == "map":
                with self.lock:
                    self.map_to_odom.append((time.perf_counter(), transform_to_pose(tf.transform)))

    def _on_status(self, msg: Any) -> None:
        with self.lock:
            self.statuses[stamp_to_ns(msg.header.stamp)] = (time.perf_counter(), msg)
            self.lock.notify_all()

    def publish_clock(self, stamp_ns: int) -> None:
        if self.clock_pub is None:
            return
        from builtin_interfaces.msg import Time
        from rosgraph_msgs.msg import Clock

        sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
        self.clock_pub.publish(Clock(clock=Time(sec=sec, nanosec=nanosec)))

    def wait_for_answers(self, published: dict[int, float], timeout_s: float) -> None:
        """Until every published frame is answered, or nothing new came for a while."""
        deadline = time.perf_counter() + timeout_s
        with self.lock:
            while time.perf_counter() < deadline and not set(published) <= set(self.statuses):
                n = len(self.statuses)
                self.lock.wait(timeout=2.0)
                if len(self.statuses) == n and _node_idle(self.statuses, published):
                    break

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._spin.join(timeout=5)


def _events(images, infos, robot) -> list[tuple[int, int, str, Any]]:
    """Every message in log-time order: (log time, order, kind, payload); at equal log times the
    robot's messages go first, then CameraInfo, then the image."""
    events = [(t, 0, "robot", (topic, raw)) for t, topic, _, raw in robot]
    events += [(t, 1, "info", raw) for _, t, raw in infos]
    events += [(t, 2, "image", (stamp, raw)) for stamp, t, raw in images]
    events.sort(key=lambda e: (e[0], e[1]))
    return events


def _publish_static(client, events: list, settle_s: float = 0.5) -> list:
    """Publish /tf_static before playback (on a robot the static transforms are latched long
    before the camera starts; played in order, the first image could beat them to the node's
    worker); the remaining events."""
    static = [e for e in events if e[2] == "robot" and e[3][0] == "/tf_static"]
    for _, _, _, (topic, raw) in static:
        client.robot_pubs[topic].publish(raw)
    if static:
        time.sleep(settle_s)
    return [e for e in events if not (e[2] == "robot" and e[3][0] == "/tf_static")]


def _play(client, proc, log_path, events, t_start, bar, rate, lock_step_timeout_s):
    """Publish the bag's messages at its timing / `rate` or, with a `lock_step_timeout_s`, each
    image once the previous one is answered; {image stamp: publish time}."""
    published: dict[int, float] = {}
    t0 = events[0][0]
    for bag_t, _, kind, payload in events:
        if lock_step_timeout_s is None:
            delay = t_start + (bag_t - t0) / 1e9 / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        client.publish_clock(bag_t)
        if kind == "robot":
            client.robot_pubs[payload[0]].publish(payload[1])
            continue
        if kind == "info":
            client.info_pub.publish(payload)
            continue
        stamp_ns, raw = payload
        if proc.poll() is not None:
            raise RuntimeError(f"the node exited during replay:\n{_tail(log_path)}")
        published[stamp_ns] = time.perf_counter()
        client.image_pub.publish(raw)
        if lock_step_timeout_s is not None:
            with client.lock:
                client.lock.wait_for(
                    lambda s=stamp_ns: s in client.statuses, timeout=lock_step_timeout_s
                )
        if bar is not None:
            bar.update()
    return published


def _replay_metrics(poses, statuses, published, t_start: float, t_end: float):
    """(latency, throughput, frame counts, stage times and failure reasons; duration in s)."""
    latencies = (
        np.array([poses[s][0] - published[s] for s in published if s in poses], dtype=np.float64)
        * 1e3
    )
    processed = [s for s in published if s in statuses]
    answer_times = [statuses[s][0] for s in processed]
    duration = (max(answer_times) - t_start) if answer_times else t_end - t_start
    stage_keys = ("extract_ms", "global_ms", "retrieval_ms", "matching_ms", "pose_ms", "total_ms")
    stage_ms = (
        {
            k: round(float(np.mean([getattr(statuses[s][1], k) for s in processed])), 2)
            for k in stage_keys
        }
        if processed
        else {}
    )
    failures: dict[str, int] = {}
    for s in processed:
        reason = statuses[s][1].failure_reason
        if reason:
            failures[reason] = failures.get(reason, 0) + 1
    return {
        "latency_ms_p50": float(np.percentile(latencies, 50)) if latencies.size else None,
        "latency_ms_p95": float(np.percentile(latencies, 95)) if latencies.size else None,
        "latency_ms_mean": float(latencies.mean()) if latencies.size else None,
        "throughput_hz": len(processed) / duration if duration > 0 and processed else 0.0,
        "frames_in": len(published),
        "frames_processed": len(processed),
        "frames_localized": sum(1 for s in published if s in poses),
        "frames_dropped": len(published) - len(processed),
        "stage_ms_mean": stage_ms,
        "failure_reasons": failures,
    }, duration


def stop_node(proc: subprocess.Popen, timeout_s: float = 20.0) -> int:
    """Stop a node process as `ros2 launch` does: SIGINT, then SIGKILL after `timeout_s`.

    Returns its exit code (the code it already had if it had exited).
    """
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _node_idle(statuses: dict, published: dict) -> bool:
    """True when the node's own counters say every received frame was processed or dropped."""
    if not statuses:
        return False
    last = max(statuses.values(), key=lambda v: v[0])[1]
    return last.frames_processed + last.frames_dropped >= last.frames_received and (
        last.frames_received >= len(published)
    )


def _wait_for_node(proc, image_pub, status_sub, timeout_s: float, log_path: Path) -> None:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the localizer node exited with code {proc.returncode} during start-up:\n"
                f"{_tail(log_path)}"
            )
        if image_pub.get_subscription_count() > 0 and status_sub.get_publisher_count() > 0:
            time.sleep(0.5)  # let the reverse direction of discovery settle
            return
        time.sleep(0.1)
    raise RuntimeError(
        f"the localizer node did not come up within {timeout_s:.0f} s:\n{_tail(log_path)}"
    )


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _evaluate(poses_by_stamp: dict[int, Any], source: dict, out_dir: Path) -> dict[str, Any]:
    """Recall/median errors (as `evaluate --json`), results file and trajectory PNG."""
    from supergf_ros.datasets import write_results
    from supergf_ros.geometry import Pose

    frames = source.get("frames", [])
    name_of = {int(f["stamp_ns"]): f["name"] for f in frames}
    estimates = {name_of.get(s, str(s)): p for s, p in sorted(poses_by_stamp.items())}
    out: dict[str, Any] = {}
    write_results(out_dir / "poses.txt", estimates)
    out["results"] = str(out_dir / "poses.txt")
    gt = {
        f["name"]: Pose(np.array(f["cam_from_world"][:4]), np.array(f["cam_from_world"][4:]))
        for f in frames
        if "cam_from_world" in f
    }
    if gt and len(gt) == len(frames):
        from supergf_ros.evaluation.metrics import pose_errors, pose_metrics

        errors = pose_errors(estimates, gt, [f["name"] for f in frames])
        metrics = pose_metrics(errors)
        out["recall"] = metrics["recall"]
        out["median_translation_m"] = metrics["median_translation_m"]
        out["median_rotation_deg"] = metrics["median_rotation_deg"]
        out["errors"] = {n: (None if e is None else [e[0], e[1]]) for n, e in errors.items()}
    out["trajectory_png"] = str(
        plot_trajectory(estimates, gt, out_dir / "trajectory.png", [f["name"] for f in frames])
    )
    return out


def _evaluate_robot(robot: dict, source: dict, plot_path: Path) -> dict[str, Any]:
    """The robot metrics (`robot_eval.robot_metrics`) and the base trajectory PNG."""
    from supergf_ros.ros.robot_eval import plot_base_trajectory, robot_metrics, write_base_poses
    from supergf_ros.ros.robot_sim import Trajectory

    dense = source.get("robot", {}).get("base_trajectory")
    truth = Trajectory.from_json(dense) if dense else None
    out = robot_metrics(
        robot["base_poses"],
        robot["frames"],
        robot["fix_stamps"],
        robot["reasons"],
        truth,
        robot["t_start"],
    )
    out["base_poses_file"] = str(
        write_base_poses(
            plot_path.with_name("base_poses.txt"), robot["base_poses"], robot["fix_stamps"]
        )
    )
    out["base_trajectory_png"] = str(
        plot_base_trajectory(robot["base_poses"], robot["fix_stamps"], truth, plot_path)
    )
    return out


def plot_trajectory(estimates: dict, reference: dict, path: Path, order: list[str]) -> Path:
    """Top view (the reference's two main axes) of estimated vs reference camera centres."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in order if n in reference] or list(estimates)
    ref = np.array([reference[n].center for n in names if n in reference]).reshape(-1, 3)
    est_names = [n for n in (order or list(estimates)) if n in estimates]
    est = np.array([estimates[n].center for n in est_names]).reshape(-1, 3)
    pts = ref if len(ref) >= 2 else est
    mean = pts.mean(axis=0) if len(pts) else np.zeros(3)
    if len(pts) >= 2:
        _, _, vt = np.linalg.svd(pts - mean)
        axes = vt[:2]
    else:
        axes = np.eye(3)[:2]

    def proj(x: np.ndarray) -> np.ndarray:
        return (x - mean) @ axes.T if len(x) else np.zeros((0, 2))

    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    if len(ref):
        r = proj(ref)
        ax.plot(r[:, 0], r[:, 1], "-o", color="0.5", ms=4, label=f"reference ({len(ref)})")
    if len(est):
        e = proj(est)
        ax.plot(
            e[:, 0], e[:, 1], "x", color="tab:red", ms=7, mew=2, label=f"estimated ({len(est)})"
        )
        for n, p in zip(est_names, e):
            if n in reference:
                q = proj(reference[n].center[None])[0]
                ax.plot([p[0], q[0]], [p[1], q[1]], "-", color="tab:red", lw=0.8)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("principal axis 1 [m]")
    ax.set_ylabel("principal axis 2 [m]")
    ax.set_title(f"replay: {len(est)} of {len(order) or len(est)} frames localized")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    try:
        with atomic_output(path, suffix=".tmp.png") as tmp:  # PNG whatever `path` ends with
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return path


def format_report(r: dict[str, Any]) -> str:
    """Human-readable summary of `replay_bag`'s result."""

    def fmt(v, spec=".1f"):
        return "n/a" if v is None else format(v, spec)

    lines = [
        f"frames: {r['frames_in']} in, {r['frames_processed']} processed, "
        f"{r['frames_localized']} localized, {r['frames_dropped']} dropped ({r['mode']})",
        f"latency (publish -> pose): p50 {fmt(r['latency_ms_p50'])} ms, "
        f"p95 {fmt(r['latency_ms_p95'])} ms; throughput {r['throughput_hz']:.2f} Hz",
        f"node peak memory (RSS): {fmt(r['node_peak_rss_mb'])} MB"
        + {True: ", PyTorch loaded", False: ", without PyTorch"}.get(
            r.get("node_torch_loaded"), ""
        ),
    ]
    if r.get("stage_ms_mean"):
        lines.append(
            "mean stage times: "
            + ", ".join(f"{k[:-3]} {v:.1f} ms" for k, v in r["stage_ms_mean"].items())
        )
    if "recall" in r:
        lines.append("recall: " + ", ".join(f"{k} {v:.3f}" for k, v in r["recall"].items()))
        if r["median_translation_m"] is not None:
            lines.append(
                f"median errors: {r['median_translation_m']:.4f} m, "
                f"{r['median_rotation_deg']:.4f} deg"
            )
    if r.get("time_to_first_fix_s") is not None:
        lines.append(
            f"robot: first fix after {r['time_to_first_fix_s']:.2f} s, {r['fixes']} fixes "
            f"({fmt(r['fix_rate_hz'], '.2f')} Hz), {r['fixes_rejected']} rejected, "
            f"{r['base_poses']} base poses"
        )
    if "base_pose_recall" in r:
        lines.append(
            "base_pose recall: "
            + ", ".join(f"{k} {v:.3f}" for k, v in r["base_pose_recall"].items())
            + f"; jumps {r['jumps']}, wrong fixes (> 1 m) {r['wrong_fixes_1m']}, "
            f"NEES mean {fmt(r['nees_mean'], '.2f')}"
        )
    if r.get("failure_reasons"):
        top = sorted(r["failure_reasons"].items(), key=lambda kv: -kv[1])[:3]
        lines.append("failures: " + "; ".join(f"{n}x {k}" for k, n in top))
    lines.append(
        f"trajectory plots: {r['trajectory_png']}, {r['base_trajectory_png']}; results: {r['json']}"
    )
    return "\n".join(lines)


def _parse_param(text: str) -> tuple[str, Any]:
    if ":=" not in text:
        raise ValueError(f"node parameter must look like NAME:=VALUE, got '{text}'")
    key, value = text.split(":=", 1)
    return key.strip(), value


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "replay",
        help="replay a bag through the real localizer node; latency, throughput, recall",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("bag", type=Path, help="rosbag2 folder (e.g. from `supergf-ros make-bag`)")
    p.add_argument("--map", type=Path, required=True, help="map file (.h5)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--rate", type=float, default=1.0, help="speed factor vs the bag timing")
    mode.add_argument(
        "--as-fast-as-possible",
        action="store_true",
        help="publish each frame once the previous one is answered (lock-step)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--output", type=Path, help="output folder (default outputs/replay/<bag>)")
    p.add_argument("--params-file", type=Path, help="node parameters YAML (ros__parameters)")
    p.add_argument(
        "-p",
        "--param",
        "--node-param",
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="node parameter override (repeatable)",
    )
    p.add_argument("--superpoint-weights", type=Path, help="SuperPoint weights for the node")
    p.add_argument(
        "--sim-time",
        action="store_true",
        help="publish /clock from the bag and run the node with use_sim_time",
    )
    p.add_argument("--plot", type=Path, help="base trajectory PNG (default: beside the JSON)")
    p.add_argument("--domain-id", type=int, help="ROS domain id (default: random in 1..101)")
    p.add_argument("--startup-timeout", type=float, default=180.0, help="seconds (default 180)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    node_params = dict(_parse_param(t) for t in args.param)
    if args.superpoint_weights:
        if not args.superpoint_weights.is_file():
            raise FileNotFoundError(f"SuperPoint weights not found: {args.superpoint_weights}")
        node_params["superpoint_weights"] = str(args.superpoint_weights.resolve())
    try:
        result = replay_bag(
            args.bag,
            args.map,
            rate=args.rate,
            as_fast_as_possible=args.as_fast_as_possible,
            params_file=args.params_file,
            node_params=node_params,
            domain_id=args.domain_id,
            output_dir=args.output,
            startup_timeout_s=args.startup_timeout,
            progress=not args.json,
            sim_time=args.sim_time,
            plot_path=args.plot,
        )
    except RuntimeError as err:
        print(f"supergf-ros replay: error: {err}", file=sys.stderr)
        return 1
    if args.json:
        result.pop("errors", None)
        print(json.dumps(result, indent=2))
    else:
        print(format_report(result))
    return 0
