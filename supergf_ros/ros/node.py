"""The `localizer_node` ROS 2 node: camera images in, camera poses in the map frame out.

Subscribes (sensor-data QoS):
    ~image (`image_topic`, sensor_msgs/Image: mono8, rgb8, bgr8, rgba8, bgra8, mono16, any step)
    ~camera_info (`camera_info_topic`, sensor_msgs/CameraInfo)
Publishes:
    pose (geometry_msgs/PoseStamped): the camera pose in `map_frame` (world_from_cam), stamped
        with the image's stamp; only for localized frames.
    pose_with_covariance (geometry_msgs/PoseWithCovarianceStamped): the same with the PnP
        refinement's covariance, calibrated (`LocalizationResult.map_covariance`).
    status (supergf_ros_msgs/LocalizationStatus): one per processed frame, success or not.
    /diagnostics (diagnostic_msgs/DiagnosticArray): rate, latency, drops, last error (1 Hz).
    map_markers (visualization_msgs/MarkerArray, transient local = latched): keyframe frusta
        and the map's 3D points.
    /tf (tf2_msgs/TFMessage) map_frame -> camera frame when `publish_tf` is true.

Heavy work runs on worker threads; the subscription callback only stores the newest frame
(newest wins, replaced frames count as dropped). With `pipeline` (two threads) the prior-free
stage of frame t+1 (decode, local features, global descriptor: `Localizer.prepare`) overlaps the
rest of frame t (prior, matching, PnP, tracker, publishing: `Localizer.localize_prepared`); one
prepared frame at most waits between them, so results go out in arrival order. Bad input is
reported, never fatal. A missing or incompatible map or weights file at start-up is a clear error
and exit code 2.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import (
    DurabilityPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from supergf_ros.geometry import Camera
from supergf_ros.inference.onnx import ORT_THREADS_ENV
from supergf_ros.localization.localizer import PosePrior, PreparedQuery
from supergf_ros.ros.conversions import (
    bounded_text,
    camera_for_image,
    camera_info_to_camera,
    check_intrinsics,
    compressed_to_numpy,
    image_to_numpy,
    pose_from_ros,
    pose_to_ros,
    stamp_to_ns,
)
from supergf_ros.ros.markers import map_markers
from supergf_ros.ros.parameters import (
    PARAMETERS,
    NodeParam,
    localizer_conf,
    validate_parameter,
)
from supergf_ros.ros.robot_frames import RobotFrames, pose_to_transform
from supergf_ros.tracking import TransformError
from supergf_ros.tracking.odometry import OdometryNoise
from supergf_ros.tracking.tracker import Decision, Tracker, TrackerConfig

try:
    from supergf_ros_msgs.msg import LocalizationStatus
    from supergf_ros_msgs.srv import LoadMap
except ImportError as _err:  # pragma: no cover - environment problem, reported at start-up
    LocalizationStatus = LoadMap = None
    _STATUS_IMPORT_ERROR = _err

try:
    from geometry_msgs.msg import TransformStamped
    from tf2_msgs.msg import TFMessage
except ImportError:  # TF is optional (tf2_msgs is not on PyPI; scripts/build_msgs.sh builds it)
    TFMessage = None

NODE_NAME = "localizer"


@dataclass
class _Frame:
    """One camera frame on its way through the two stages: the message, when it was received
    and stage 1 took it (perf_counter s), the localizer that prepared it, and the prepared
    query or why stage 1 failed."""

    msg: Any
    received: float
    start: float
    localizer: Any
    query: PreparedQuery | None = None
    error: str = ""


class StartupError(RuntimeError):
    """The node cannot start (bad parameters, missing/incompatible map or weights)."""


def _descriptor(name: str, p: NodeParam) -> ParameterDescriptor:
    d = ParameterDescriptor(name=name, description=p.description, read_only=p.read_only)
    if p.bounds is not None and isinstance(p.default, int) and not isinstance(p.default, bool):
        lo, hi = (int(v) for v in p.bounds)
        d.integer_range = [IntegerRange(from_value=lo, to_value=hi, step=0)]
    elif p.bounds is not None and isinstance(p.default, float):
        lo, hi = (float(v) for v in p.bounds)
        d.floating_point_range = [FloatingPointRange(from_value=lo, to_value=hi, step=0.0)]
    if p.choices:
        d.additional_constraints = "one of: " + ", ".join(p.choices)
    return d


def _ints_as_floats(params: list[Parameter]) -> list[Parameter]:
    """Pre-set callback: an integer given for a float parameter (`max_rate_hz 2`) is a float."""
    out = []
    for param in params:
        spec = PARAMETERS.get(param.name)
        if (
            spec is not None
            and isinstance(spec.default, float)
            and (param.type_ == Parameter.Type.INTEGER)
        ):
            param = Parameter(param.name, Parameter.Type.DOUBLE, float(param.value))
        out.append(param)
    return out


class _LocalizerCore:
    """The node's behaviour, shared by the plain and the managed (lifecycle) node. Steps:
    `_declare` (parameters), `_configure` (map + networks), `_activate` (topics, services, the
    worker), `_deactivate`, `_cleanup`."""

    def _declare(self) -> None:
        if LocalizationStatus is None:
            raise StartupError(
                f"the supergf_ros_msgs messages are not built ({_STATUS_IMPORT_ERROR}); "
                "run `make venv` (scripts/build_msgs.sh) or build supergf_ros_msgs with colcon"
            )
        self._lock = threading.Condition()
        self._pending: tuple[Image, float] | None = None
        self._prepared: _Frame | None = None  # pipeline: the hand-off between the two stages
        self._stop = False
        self._workers: list[threading.Thread] = []
        self._camera: Camera | None = None
        self._camera_error = ""
        self._counts = {"received": 0, "processed": 0, "dropped": 0, "localized": 0}
        self._last_error = ""
        self._recent: deque[tuple[float, float, bool]] = deque(maxlen=200)  # (t, latency, ok)
        self._localizer = None
        self._active: list[tuple[Any, Any]] = []  # (destroy function, entity) of _activate
        self.add_pre_set_parameters_callback(_ints_as_floats)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._on_parameters_set)
        try:
            for name, p in PARAMETERS.items():
                self.declare_parameter(name, p.default, _descriptor(name, p))
        except Exception as err:  # rclpy's InvalidParameterValueException and friends
            raise StartupError(f"invalid parameter: {err}") from err
        self.params = {name: self.get_parameter(name).value for name in PARAMETERS}
        self._load_group = ReentrantCallbackGroup()  # ~/load_map may block while frames flow
        self.create_service(
            LoadMap, "~/load_map", self._on_load_map, callback_group=self._load_group
        )

    def _configure(self) -> None:
        self._localizer = self._build_localizer(str(self.params["map_path"]).strip())
        self._tracker = Tracker(self._tracker_config())

    def _activate(self) -> None:
        before = {id(entity) for _, entity in self._entities()}
        self._create_interfaces()
        self._create_robot_interfaces()
        self._active = [e for e in self._entities() if id(e[1]) not in before]
        self._stop = False
        self._prepared = None
        self._start_workers()
        m = self._localizer.map
        self.get_logger().info(
            f"ready: map {self.params['map_path']} ({len(m.keyframe_names)} keyframes, "
            f"{len(m.points3D)} points), listening on {self._image_sub.topic_name}"
        )

    def _start_workers(self) -> None:
        """One worker running both stages, or (`pipeline`) one thread per stage."""
        if self.params["pipeline"]:
            targets = {"localizer-prepare": self._work_prepare, "localizer-match": self._work_match}
        else:
            targets = {"localizer-worker": self._work}
        self._workers = [
            threading.Thread(target=target, name=name, daemon=True)
            for name, target in targets.items()
        ]
        for worker in self._workers:
            worker.start()

    def _entities(self) -> list[tuple[Any, Any]]:
        return [
            *((self.destroy_subscription, e) for e in self.subscriptions),
            *((self.destroy_publisher, e) for e in self.publishers),
            *((self.destroy_timer, e) for e in self.timers),
            *((self.destroy_service, e) for e in self.services),
        ]

    def _deactivate(self) -> None:
        """Stop processing: the worker ends, the topics, timers and services of `_activate` go."""
        self.shutdown()
        for destroy, entity in self._active:
            destroy(entity)
        self._active = []

    def _cleanup(self) -> None:
        self._localizer = None  # the map and the networks are freed with it

    # -- parameters ---------------------------------------------------------------------------
    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        """Validation only (rclpy's on-set callback); `_on_parameters_set` applies."""
        for param in params:
            reason = validate_parameter(param.name, param.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        return SetParametersResult(successful=True)

    def _on_parameters_set(self, params: list[Parameter]) -> None:
        if not hasattr(self, "params"):  # declarations at start-up: read once in _declare
            return
        changes = {p.name: p.value for p in params}
        with self._lock:
            self.params.update(changes)
        localizer_changes = localizer_conf(changes)
        if (
            localizer_changes and self._localizer is not None
        ):  # checked in _on_set_parameters: update() cannot refuse them
            self._localizer.update(**localizer_changes)
        self.get_logger().info(
            "parameters changed: " + ", ".join(f"{p.name}={p.value}" for p in params)
        )

    def _build_localizer(self, map_path: str) -> Any:
        """A Localizer for `map_path` with the current parameters, warmed up; StartupError."""
        if not map_path:
            raise StartupError(
                "parameter map_path is not set; pass -p map_path:=/path/to/map.h5 "
                "(build one with `supergf-ros build-map`)"
            )
        if not Path(map_path).is_file():
            raise StartupError(f"map file not found: {map_path}")
        from supergf_ros.localization import Localizer
        from supergf_ros.localization.localizer import load_map

        try:
            cache_size = localizer_conf(self.params).get("keyframe_cache_size")
            map_data = load_map(Path(map_path), cache_size)
        except (FileNotFoundError, ValueError, KeyError, OSError) as err:
            raise StartupError(f"cannot load map {map_path}: {err}") from err
        self._apply_thread_settings()
        try:
            localizer = Localizer(map_data, localizer_conf(self.params))
        except (FileNotFoundError, ValueError, KeyError, OSError) as err:
            raise StartupError(f"cannot set up localization with map {map_path}: {err}") from err
        info = localizer.backend_info
        self.get_logger().info(
            f"inference backend: {info['backend']} on {info['device']} "
            f"(requested backend={self.params['backend']}, device={self.params['device']}): "
            f"{info['reason']}"
        )
        if self.params["warmup"]:
            self._warmup(localizer)
        return localizer

    def _apply_thread_settings(self) -> None:
        """`inference_threads` for the ONNX Runtime sessions about to be created, and
        `blas_threads` for numpy's BLAS (matching): idle OpenBLAS threads spin, so more of them
        than free cores slow the networks running beside them in the pipeline."""
        threads = int(self.params["inference_threads"])
        if threads > 0:  # read by every ONNX Runtime session the Localizer creates
            os.environ[ORT_THREADS_ENV] = str(threads)
        if int(self.params["blas_threads"]) > 0:
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=int(self.params["blas_threads"]), user_api="blas")

    def _on_load_map(self, request: Any, response: Any) -> Any:
        """~/load_map: build the new localizer aside, then swap; a failure keeps the old map."""
        path = str(request.map_path).strip()
        try:
            localizer = self._build_localizer(path)
        except StartupError as err:
            response.success, response.message = False, f"kept the current map: {err}"
            self.get_logger().error(response.message)
            return response
        with self._lock:
            self._localizer = localizer
            self.params["map_path"] = path
        self._tracker.reset()  # a pose in the old map means nothing in the new one
        if self.params["publish_map_markers"] and getattr(self, "_marker_pub", None):
            self._publish_markers()
        m = localizer.map
        response.success = True
        response.message = f"loaded {path}: {len(m.keyframe_names)} keyframes"
        self.get_logger().info(response.message)
        return response

    def _warmup(self, localizer: Any) -> None:
        cam = localizer.map.cameras[0]
        rng = np.random.default_rng(0)
        image = rng.integers(0, 255, (cam.height, cam.width), dtype=np.uint8)
        t0 = time.perf_counter()
        try:
            localizer.localize(image, cam)
        except Exception as err:  # a warm-up failure must not hide behind a later frame
            raise StartupError(f"the localizer fails on a test frame: {err}") from err
        self.get_logger().info(f"warm-up frame took {(time.perf_counter() - t0) * 1e3:.0f} ms")

    def _tracker_config(self) -> TrackerConfig:
        p = self.params
        noise = OdometryNoise(
            translation_noise_per_m=float(p["odometry_noise_per_m"]),
            rotation_noise_per_m=float(np.radians(p["odometry_rotation_noise_deg_per_m"])),
        )
        return TrackerConfig(
            confirm_fixes=int(p["confirm_fixes"]),
            strong_inliers=int(p["strong_inliers"]),
            max_failures=int(p["max_failures"]),
            max_speed_mps=float(p["max_speed_mps"]),
            noise=noise,
        )

    # -- ROS interfaces -----------------------------------------------------------------------
    def _create_robot_interfaces(self) -> None:
        """REP-105 side: TF and odometry in; base pose, map -> odom; seeding and resetting."""
        self._frames = RobotFrames(self, self.params)
        self._base_pose_pub = self.create_publisher(PoseWithCovarianceStamped, "base_pose", 10)
        self.create_subscription(
            PoseWithCovarianceStamped, "initialpose", self._on_initial_pose, 10
        )
        self.create_service(Trigger, "~/relocalize", self._on_relocalize)
        self._robot_timer = self.create_timer(
            1.0 / float(self.params["map_to_odom_rate_hz"]), self._publish_robot_state
        )

    def _create_interfaces(self) -> None:
        self._pose_pub = self.create_publisher(PoseStamped, "pose", 10)
        self._pose_cov_pub = self.create_publisher(
            PoseWithCovarianceStamped, "pose_with_covariance", 10
        )
        self._status_pub = self.create_publisher(LocalizationStatus, "status", 10)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._tf_pub = None
        if self.params["publish_tf"] or TFMessage is not None:
            if TFMessage is None:
                self.get_logger().warning(
                    "publish_tf is set but tf2_msgs is not installed; TF is disabled "
                    "(build it with scripts/build_msgs.sh or use a ROS 2 installation)"
                )
            else:
                self._tf_pub = self.create_publisher(TFMessage, "/tf", 100)
        latched = QoSProfile(
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self._marker_pub = self.create_publisher(MarkerArray, "map_markers", latched)
        if self.params["publish_map_markers"]:
            self._publish_markers()

        self._compressed = self.params["image_transport"] == "compressed"
        image_type, topic = Image, self.params["image_topic"]
        if self._compressed:  # image_transport's naming: <base topic>/compressed
            image_type, topic = CompressedImage, topic.rstrip("/") + "/compressed"
        self._image_sub = self.create_subscription(
            image_type, topic, self._on_image, qos_profile_sensor_data
        )
        self._info_sub = self.create_subscription(
            CameraInfo,
            self.params["camera_info_topic"],
            self._on_camera_info,
            qos_profile_sensor_data,
        )
        self._diag_timer = self.create_timer(
            float(self.params["diagnostics_period_s"]), self._publish_diagnostics
        )

    def _publish_markers(self) -> None:
        markers = map_markers(
            self._localizer.map,
            self.params["map_frame"],
            float(self.params["frustum_scale"]),
            int(self.params["marker_max_points"]),
        )
        self._marker_pub.publish(markers)

    def _on_image(self, msg: Image) -> None:
        with self._lock:
            self._counts["received"] += 1
            if self._pending is not None:
                self._counts["dropped"] += 1
            self._pending = (msg, time.perf_counter())
            self._lock.notify_all()  # the worker, or the pipeline's first stage

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            camera = camera_info_to_camera(msg)
        except ValueError as err:  # the last camera may be as wrong: frames fail until a good one
            with self._lock:
                self._camera, self._camera_error = None, f"invalid CameraInfo: {err}"
            self.get_logger().warning(self._camera_error, throttle_duration_sec=5.0)
            return
        with self._lock:
            self._camera, self._camera_error = camera, ""

    # -- processing ---------------------------------------------------------------------------
    def _next_frame(self, next_time: float, pipelined: bool) -> tuple[Image, float] | None:
        """The newest received frame once `max_rate_hz` allows it (and, `pipelined`, once the
        second stage took the previous one); None when stopping."""
        with self._lock:
            while not self._stop and (
                self._pending is None
                or (pipelined and self._prepared is not None)
                or time.perf_counter() < next_time
            ):
                waiting_for_rate = self._pending is not None and not (
                    pipelined and self._prepared is not None
                )
                self._lock.wait(next_time - time.perf_counter() if waiting_for_rate else None)
            if self._stop:
                return None
            frame, self._pending = self._pending, None
        return frame

    def _frames_to_prepare(self, pipelined: bool) -> Iterator[tuple[Image, float]]:
        """Received frames, newest first-come, paced by `max_rate_hz`, until stopped."""
        next_time = 0.0
        while (frame := self._next_frame(next_time, pipelined)) is not None:
            rate = float(self.params["max_rate_hz"])
            next_time = time.perf_counter() + (1.0 / rate if rate > 0 else 0.0)
            yield frame

    def _work(self) -> None:
        """Not pipelined: both stages of each frame on this thread."""
        for msg, received in self._frames_to_prepare(pipelined=False):
            self._finish_safely(self._prepare(msg, received))

    def _work_prepare(self) -> None:
        """Pipeline stage 1: prepare the newest frame while stage 2 finishes the previous one."""
        for msg, received in self._frames_to_prepare(pipelined=True):
            frame = self._prepare(msg, received)
            with self._lock:
                self._prepared = frame  # empty: _next_frame waited for stage 2 to take the last
                self._lock.notify_all()

    def _work_match(self) -> None:
        """Pipeline stage 2: the prepared frames, one at a time, in the order they came."""
        while True:
            with self._lock:
                while not self._stop and self._prepared is None:
                    self._lock.wait()
                if self._stop:
                    return
                frame, self._prepared = self._prepared, None
                self._lock.notify_all()  # stage 1 may take the next frame
            self._finish_safely(frame)

    def _prepare(self, msg: Image, received: float) -> _Frame:
        """Stage 1: decode, intrinsics, local features and global descriptor; a failure is
        kept in the frame, reported by stage 2 in its turn."""
        frame = _Frame(msg, received, time.perf_counter(), self._localizer)
        try:
            image = compressed_to_numpy(msg) if self._compressed else image_to_numpy(msg)
            frame.query = frame.localizer.prepare(image, self._camera_for(image))
        except ValueError as err:
            frame.error = f"bad input: {err}"
        except Exception as err:  # never let one frame kill the worker
            frame.error = f"internal error: {type(err).__name__}: {err}"
        return frame

    def _finish_safely(self, frame: _Frame) -> None:
        try:
            self._finish(frame)
        except Exception as err:  # never let one frame kill the worker
            self._report_failure(frame.msg, f"internal error: {type(err).__name__}: {err}", {}, 0.0)

    def _camera_for(self, image: np.ndarray) -> Camera:
        h, w = image.shape[:2]
        with self._lock:
            camera, camera_error = self._camera, self._camera_error
        if camera_error:  # an invalid CameraInfo is not replaced by a fallback silently
            raise ValueError(camera_error)
        if camera is None:
            mode = self.params["fallback_intrinsics"]
            if mode == "parameters":
                fx, fy, cx, cy = (float(v) for v in self.params["intrinsics"])
                check_intrinsics(fx, fy, cx, cy, w, h, what="the intrinsics parameter")
                return Camera.pinhole(fx, fy, cx, cy, w, h)
            if mode == "map":
                return self._map_camera(w, h)
            raise ValueError(
                f"no CameraInfo received on {self._info_sub.topic_name} (set "
                "fallback_intrinsics to 'map' or 'parameters' to run without it)"
            )
        return camera_for_image(camera, w, h)

    def _map_camera(self, w: int, h: int) -> Camera:
        for cam in self._localizer.map.cameras:
            if (cam.width, cam.height) == (w, h):
                return cam
        for cam in self._localizer.map.cameras:
            try:
                return camera_for_image(cam, w, h)
            except ValueError:
                continue
        raise ValueError(f"no CameraInfo received and no map camera matches the {w}x{h} image")

    def _finish(self, frame: _Frame) -> None:
        """Stage 2: the prior from TF/odometry, matching and PnP, the tracker, publishing."""
        msg, received = frame.msg, frame.received
        queue_ms = (frame.start - received) * 1e3
        if frame.error:
            self._report_failure(msg, frame.error, {}, queue_ms)
            return
        stamp_ns = stamp_to_ns(msg.header.stamp)
        self._frames.wait_for(msg.header.frame_id, stamp_ns)
        base_from_cam, extrinsic_known = self._frames.base_from_camera(
            msg.header.frame_id, stamp_ns
        )
        odom_from_base = self._frames.odom_from_base(stamp_ns) if extrinsic_known else None
        prior = self._tracker.prior(stamp_ns, odom_from_base, base_from_cam)
        prior_age = self._tracker.prior_age_s(stamp_ns) if prior else float("nan")
        # the localizer that prepared the frame: a map loaded meanwhile cannot mix into it
        result = frame.localizer.localize_prepared(frame.query, prior=prior and PosePrior(*prior))
        decision = self._tracker.update(stamp_ns, result, odom_from_base, base_from_cam)
        extra = {"decision": decision, "prior_age_s": prior_age}
        if not decision.publish:
            self._report_failure(msg, decision.reason, result, queue_ms, extra)
            return
        self._publish_pose(msg, result)
        if extrinsic_known:
            self._publish_base_pose(msg.header.stamp, decision)
        with self._lock:  # count before the status goes out, so its counters include this frame
            self._counts["processed"] += 1
            self._counts["localized"] += 1
            self._recent.append((time.perf_counter(), (time.perf_counter() - received) * 1e3, True))
        self._publish_status(msg, result, "", queue_ms, extra)

    def _report_failure(
        self, msg: Image, reason: str, result: Any, queue_ms: float, extra: dict | None = None
    ) -> None:
        reason = bounded_text(reason, 300)  # a frame's text fields are the sender's
        self.get_logger().warning(f"frame failed: {reason}", throttle_duration_sec=5.0)
        with self._lock:
            self._counts["processed"] += 1
            self._last_error = reason
            self._recent.append((time.perf_counter(), float("nan"), False))
        self._publish_status(msg, result or None, reason, queue_ms, extra)

    def _publish_pose(self, msg: Image, result: Any) -> None:
        position, quat = pose_to_ros(result.cam_from_world)
        ps = PoseStamped()
        ps.header.stamp = msg.header.stamp
        ps.header.frame_id = self.params["map_frame"]
        ps.pose.position.x, ps.pose.position.y, ps.pose.position.z = (float(v) for v in position)
        o = ps.pose.orientation
        o.x, o.y, o.z, o.w = (float(v) for v in quat)
        pc = PoseWithCovarianceStamped()
        pc.header = ps.header
        pc.pose.pose = ps.pose
        pc.pose.covariance = [float(v) for v in result.map_covariance.reshape(-1)]
        self._pose_pub.publish(ps)
        self._pose_cov_pub.publish(pc)
        if self._tf_pub is not None and self.params["publish_tf"]:
            tf = TransformStamped()
            tf.header = ps.header
            tf.child_frame_id = self.params["camera_frame"] or msg.header.frame_id or "camera"
            tf.transform.translation.x = ps.pose.position.x
            tf.transform.translation.y = ps.pose.position.y
            tf.transform.translation.z = ps.pose.position.z
            tf.transform.rotation = ps.pose.orientation
            self._tf_pub.publish(TFMessage(transforms=[tf]))

    def _publish_status(
        self, msg: Image, result: Any, reason: str, queue_ms: float, extra: dict | None = None
    ) -> None:
        st = LocalizationStatus()
        _fill_tracking_status(st, result, extra or {}, self._tracker.mode())
        st.header.stamp = msg.header.stamp
        st.header.frame_id = self.params["map_frame"]
        st.success = not reason
        st.failure_reason = reason
        if result is not None:
            st.num_inliers = int(result.num_inliers)
            st.num_matches = int(result.num_matches)
            st.retrieved_keyframes = [str(n) for n in result.retrieved]
            t = result.timings_ms
            st.extract_ms = float(t.get("extract", 0.0))
            st.global_ms = float(t.get("global", 0.0))
            st.retrieval_ms = float(t.get("retrieval", 0.0))
            st.matching_ms = float(t.get("matching", 0.0))
            st.pose_ms = float(t.get("pose", 0.0))
            st.total_ms = float(t.get("total", 0.0))
        st.queue_ms = float(queue_ms)
        with self._lock:
            st.frames_received = self._counts["received"]
            st.frames_processed = self._counts["processed"]
            st.frames_dropped = self._counts["dropped"]
            st.frames_localized = self._counts["localized"]
        self._status_pub.publish(st)

    def _publish_base_pose(self, stamp: Any, decision: Decision | Any) -> None:
        """`base_pose`: a fix or a prediction of the base in the map, with its covariance."""
        pc = PoseWithCovarianceStamped()
        pc.header.stamp = stamp
        pc.header.frame_id = self.params["map_frame"]
        pose = decision.map_from_base
        p = pc.pose.pose
        p.position.x, p.position.y, p.position.z = (float(v) for v in pose.tvec)
        qw, qx, qy, qz = (float(v) for v in pose.qvec)
        p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w = qx, qy, qz, qw
        pc.pose.covariance = [float(v) for v in np.asarray(decision.covariance).reshape(-1)]
        self._base_pose_pub.publish(pc)

    def _publish_robot_state(self) -> None:
        """Timer: map -> odom (stamped ahead by transform_tolerance) and the propagated base."""
        tracker, frames = self._tracker, self._frames
        if not tracker.propagator.has_fix or self.params["odometry_source"] == "none":
            return
        odom, base = self.params["odom_frame"], self.params["base_frame"]
        try:
            latest = frames.buffer.latest_common_time(odom, base)
            prediction = tracker.predict(latest, frames.buffer.lookup(odom, base, latest))
        except (TransformError, RuntimeError):  # lost the fix or the odometry meanwhile
            return
        if prediction is not None:
            self._publish_base_pose(_ns_to_stamp(latest), prediction)
        if self._tf_pub is not None and self.params["publish_map_to_odom"]:
            tolerance_ns = int(float(self.params["transform_tolerance"]) * 1e9)
            stamp = _ns_to_stamp(self.get_clock().now().nanoseconds + tolerance_ns)
            map_from_odom = tracker.propagator.map_from_odom
            tf = pose_to_transform(self.params["map_frame"], odom, stamp, map_from_odom)
            self._tf_pub.publish(TFMessage(transforms=[tf]))

    def _on_initial_pose(self, msg: PoseWithCovarianceStamped) -> None:
        """RViz's "2D Pose Estimate" (the base in the map frame) seeds tracking."""
        if msg.header.frame_id.lstrip("/") not in ("", self.params["map_frame"]):
            self.get_logger().warning(
                f"initialpose ignored: it is in '{msg.header.frame_id}', not the map frame "
                f"'{self.params['map_frame']}'"
            )
            return
        stamp_ns = stamp_to_ns(msg.header.stamp) or self.get_clock().now().nanoseconds
        odom_from_base = self._frames.odom_from_base(stamp_ns)
        if odom_from_base is None:
            why = self._frames.odometry_error or "odometry_source is none"
            self.get_logger().warning(f"initialpose ignored: a seed needs odometry ({why})")
            return
        p = msg.pose.pose
        pose = pose_from_ros(p.position, p.orientation)
        self._tracker.seed(stamp_ns, pose, _seed_covariance(msg.pose.covariance), odom_from_base)
        self.get_logger().info(f"seeded at {np.round(pose.tvec, 2).tolist()} from initialpose")

    def _on_relocalize(self, request: Any, response: Any) -> Any:
        self._tracker.reset()
        response.success = True
        response.message = "prior dropped: the next fix comes from a global search"
        self.get_logger().info(response.message)
        return response

    # -- diagnostics and markers --------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        now = time.perf_counter()
        with self._lock:
            counts = dict(self._counts)
            last_error = self._last_error
            recent = [r for r in self._recent if now - r[0] <= 10.0]
            camera_error = self._camera_error
        window = [r for r in recent if now - r[0] <= 5.0]
        rate = len(window) / 5.0
        lat = np.array([r[1] for r in recent if r[2]], dtype=np.float64)
        ok = [r[2] for r in recent]
        st = DiagnosticStatus()
        st.name = f"{self.get_name()}: localization"
        st.hardware_id = "supergf_ros"
        if recent and not any(ok):
            st.level, st.message = DiagnosticStatus.ERROR, f"no frame localized: {last_error}"
        elif recent and not ok[-1]:
            st.level, st.message = DiagnosticStatus.WARN, f"last frame failed: {last_error}"
        elif counts["received"] == 0:
            st.level, st.message = DiagnosticStatus.WARN, "no images received"
        else:
            st.level, st.message = DiagnosticStatus.OK, "localizing"
        values = {
            "rate_hz": f"{rate:.2f}",
            "latency_ms_mean": f"{lat.mean():.1f}" if lat.size else "nan",
            "latency_ms_max": f"{lat.max():.1f}" if lat.size else "nan",
            "frames_received": str(counts["received"]),
            "frames_processed": str(counts["processed"]),
            "frames_localized": str(counts["localized"]),
            "frames_dropped": str(counts["dropped"]),
            "last_error": last_error,
            "camera_info_error": camera_error,
            "map": str(self.params["map_path"]),
            "backend": self._localizer.backend_info["backend"],
            "device": self._localizer.backend_info["device"],
            "backend_reason": self._localizer.backend_info["reason"],
            "mode": self._tracker.mode(),
            "odometry_source": str(self.params["odometry_source"]),
            "odometry_error": self._frames.odometry_error,
            "extrinsic_error": self._frames.extrinsic_error,
        }
        if st.level != DiagnosticStatus.ERROR and camera_error:
            st.level, st.message = DiagnosticStatus.ERROR, camera_error
        elif st.level == DiagnosticStatus.OK and self._frames.odometry_error:
            st.level = DiagnosticStatus.WARN
            st.message = "localizing camera-only: " + self._frames.odometry_error
        st.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        arr = DiagnosticArray()
        arr.header.stamp = self.get_clock().now().to_msg()
        arr.status = [st]
        self._diag_pub.publish(arr)

    def shutdown(self) -> None:
        """Stop the worker thread (call before destroy_node)."""
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        for worker in self._workers:
            if worker.is_alive():
                worker.join(timeout=30.0)


class LocalizerNode(_LocalizerCore, Node):
    """The localizer node, active from construction. Raises `StartupError` when it cannot start."""

    def __init__(self, **kwargs: Any) -> None:
        Node.__init__(self, NODE_NAME, **kwargs)
        self._declare()
        self._configure()
        self._activate()


class ManagedLocalizerNode(_LocalizerCore, LifecycleNode):
    """The localizer as a lifecycle node (nav2's lifecycle manager drives it): configure loads the
    map and the networks, activate starts topics and the worker, deactivate stops processing,
    cleanup frees the map."""

    def __init__(self, **kwargs: Any) -> None:
        LifecycleNode.__init__(self, NODE_NAME, **kwargs)
        self._declare()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure()
        except StartupError as err:
            self.get_logger().error(f"configure failed: {err}")
            return TransitionCallbackReturn.FAILURE
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._activate()
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._cleanup()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._active:
            self._deactivate()
        self._cleanup()
        return TransitionCallbackReturn.SUCCESS


def _ns_to_stamp(ns: int) -> Any:
    from builtin_interfaces.msg import Time

    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


def _seed_covariance(values: Any) -> np.ndarray:
    """A seed's covariance with its unset (zero) variances made loose: RViz's 2D estimate leaves
    z, roll and pitch at 0, which would otherwise read as certain."""
    cov = np.asarray(values, dtype=np.float64).reshape(6, 6).copy()
    loose = [0.5**2] * 3 + [np.radians(10.0) ** 2] * 3
    for i in range(6):
        if not cov[i, i] > 0:
            cov[i, :], cov[:, i] = 0.0, 0.0
            cov[i, i] = loose[i]
    return cov


def _fill_tracking_status(st: Any, result: Any, extra: dict, mode: str) -> None:
    decision = extra.get("decision")
    st.mode = decision.mode if decision is not None else mode
    gate = getattr(result, "gate", None)
    st.gate_checked = gate is not None
    if gate is not None:
        st.gate_passed, st.gate_d2 = bool(gate.accepted), float(gate.d2)
        st.gate_threshold = float(gate.threshold)
    st.prior_age_s = float(extra.get("prior_age_s", float("nan")))


def main(args: list[str] | None = None, managed: bool = False) -> int:
    """Console script `localizer_node` (`managed_localizer_node`: the lifecycle node): run until
    shut down; exit 2 when start-up fails."""
    name = "managed_localizer_node" if managed else "localizer_node"
    try:
        rclpy.init(args=args)
    except Exception as err:  # e.g. a missing --params-file
        print(f"{name}: error: cannot initialize ROS: {err}", file=sys.stderr)
        return 2
    try:
        node = ManagedLocalizerNode() if managed else LocalizerNode()
    except StartupError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    except KeyboardInterrupt:  # Ctrl-C while the map and the networks load
        rclpy.try_shutdown()
        return 0
    executor = MultiThreadedExecutor(num_threads=2)  # ~/load_map runs beside the rest
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.shutdown()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def main_managed(args: list[str] | None = None) -> int:
    """Console script `managed_localizer_node`."""
    return main(args, managed=True)


if __name__ == "__main__":
    sys.exit(main())
