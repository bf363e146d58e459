"""The robot's messages of a bag (`make_bag`): /tf_static (base -> camera), and odometry as
nav_msgs/Odometry on /odom plus odom -> base on /tf; serialized with `rosbags` (no ROS needed).

Also the robot part of the bag's source file (`robot_source`): frames, the extrinsic, the dense
ground-truth base trajectory and the odometry that was written, for `replay` to evaluate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..geometry import Pose
from ..tracking.lie import so3_log
from .robot_sim import (
    DEFAULT_BASE_FROM_CAMERA,
    DEFAULT_DRIFT,
    DEFAULT_HEADING_DRIFT_DEG_PER_M,
    DEFAULT_ODOMETRY_RATE_HZ,
    NS_PER_S,
    Trajectory,
    encode_pose,
    odometry_drift,
    simulate_odometry,
)

TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"
DEFAULT_ODOMETRY_TOPIC = "/odom"


@dataclass(frozen=True)
class RobotOptions:
    """What `make_bag` writes besides the camera."""

    odometry: bool = True  # when every frame has a pose
    odometry_rate_hz: float = DEFAULT_ODOMETRY_RATE_HZ
    drift: float = DEFAULT_DRIFT
    heading_drift_deg_per_m: float = DEFAULT_HEADING_DRIFT_DEG_PER_M
    seed: int = 0
    base_from_camera: Pose = DEFAULT_BASE_FROM_CAMERA
    base_frame: str = "base_link"
    odom_frame: str = "odom"
    odometry_topic: str = DEFAULT_ODOMETRY_TOPIC
    camera_latency_s: float = 0.03  # image log time after its stamp (odometry arrives first)

    def check(self) -> None:
        if not self.odometry_rate_hz > 0:
            raise ValueError(f"odometry rate must be positive, got {self.odometry_rate_hz}")
        if not (self.drift >= 0 and self.heading_drift_deg_per_m >= 0):
            raise ValueError("odometry drift must be >= 0")
        if not self.camera_latency_s >= 0:
            raise ValueError(f"camera latency must be >= 0, got {self.camera_latency_s}")
        if not self.odometry_topic.startswith("/"):
            raise ValueError(f"odometry topic must be absolute, got '{self.odometry_topic}'")
        for name in (self.base_frame, self.odom_frame):
            if not name or name.startswith("/"):
                raise ValueError(f"frame names must be non-empty, without '/': '{name}'")


def robot_source(
    options: RobotOptions, camera_frame: str, stamps: list[int], map_from_cam: list[Pose] | None
) -> tuple[dict[str, Any], Trajectory | None, np.ndarray | None]:
    """(the source file's "robot" entry, odom_from_base or None, its translation variances)."""
    robot: dict[str, Any] = {
        "base_frame": options.base_frame,
        "odom_frame": options.odom_frame,
        "camera_frame": camera_frame,
        "base_from_camera": encode_pose(options.base_from_camera),
        "tf_static_topic": TF_STATIC_TOPIC,
        "odometry": None,
    }
    if map_from_cam is None:
        return robot, None, None
    cam_to_base = options.base_from_camera.inverse()
    frames = Trajectory(stamps, [m * cam_to_base for m in map_from_cam])
    truth = frames.resampled(options.odometry_rate_hz) if len(stamps) > 1 else frames
    robot["base_trajectory"] = {"rate_hz": options.odometry_rate_hz, **truth.to_json()}
    if not options.odometry:
        return robot, None, None
    odom, variance = simulate_odometry(
        truth, options.drift, options.heading_drift_deg_per_m, options.seed
    )
    robot["odometry"] = {
        "topic": options.odometry_topic,
        "tf_topic": TF_TOPIC,
        "rate_hz": options.odometry_rate_hz,
        "drift": options.drift,
        "heading_drift_deg_per_m": options.heading_drift_deg_per_m,
        "seed": options.seed,
        "result": odometry_drift(truth, odom),
        "odom_from_base": odom.to_json(),
    }
    return robot, odom, variance


class RobotMessages:
    """Serialized robot messages for a `rosbags` writer."""

    def __init__(self, typestore: Any, writer: Any, options: RobotOptions) -> None:
        self.ts, self.options = typestore, options
        self.tf_type = typestore.types["tf2_msgs/msg/TFMessage"].__msgtype__
        self.odom_type = typestore.types["nav_msgs/msg/Odometry"].__msgtype__
        self.conn_static = writer.add_connection(
            TF_STATIC_TOPIC,
            self.tf_type,
            typestore=typestore,
            serialization_format="cdr",
            offered_qos_profiles=[_static_qos()],
        )
        self.conn_tf = self.conn_odom = None
        if options.odometry:
            self.conn_tf = writer.add_connection(TF_TOPIC, self.tf_type, typestore=typestore)
            self.conn_odom = writer.add_connection(
                options.odometry_topic, self.odom_type, typestore=typestore
            )

    def static(self, stamp_ns: int, camera_frame: str) -> tuple[Any, int, bytes]:
        tf = self._transform(
            self.options.base_frame, camera_frame, stamp_ns, self.options.base_from_camera
        )
        msg = self.ts.types["tf2_msgs/msg/TFMessage"](transforms=[tf])
        return self.conn_static, stamp_ns, self.ts.serialize_cdr(msg, self.tf_type)

    def odometry(self, odom: Trajectory, variance: np.ndarray) -> list[tuple[Any, int, bytes]]:
        """(connection, log time, raw) of every odometry sample: Odometry and TF."""
        out = []
        o = self.options
        for i, (stamp, pose) in enumerate(zip(odom.stamps_ns, odom.poses)):
            tf = self._transform(o.odom_frame, o.base_frame, stamp, pose)
            tf_msg = self.ts.types["tf2_msgs/msg/TFMessage"](transforms=[tf])
            out.append((self.conn_tf, stamp, self.ts.serialize_cdr(tf_msg, self.tf_type)))
            prev = max(i - 1, 0)
            msg = self._odometry_msg(odom, i, prev, float(variance[i]))
            out.append((self.conn_odom, stamp, self.ts.serialize_cdr(msg, self.odom_type)))
        return out

    def _odometry_msg(self, odom: Trajectory, i: int, prev: int, var_t: float) -> Any:
        T = self.ts.types
        o = self.options
        pose = odom.poses[i]
        step = odom.poses[prev].inverse() * pose
        dt = (odom.stamps_ns[i] - odom.stamps_ns[prev]) / NS_PER_S
        lin = step.tvec / dt if dt > 0 else np.zeros(3)
        ang = so3_log(step.R) / dt if dt > 0 else np.zeros(3)
        var_r = (np.radians(o.heading_drift_deg_per_m) / max(o.drift, 1e-9)) ** 2 * var_t
        cov = np.diag([var_t] * 3 + [1e-6, 1e-6, var_r] if var_t > 0 else [1e-9] * 6)
        qw, qx, qy, qz = (float(v) for v in pose.qvec)
        return T["nav_msgs/msg/Odometry"](
            header=self._header(stamp_ns=odom.stamps_ns[i], frame_id=o.odom_frame),
            child_frame_id=o.base_frame,
            pose=T["geometry_msgs/msg/PoseWithCovariance"](
                pose=T["geometry_msgs/msg/Pose"](
                    position=T["geometry_msgs/msg/Point"](*(float(v) for v in pose.tvec)),
                    orientation=T["geometry_msgs/msg/Quaternion"](qx, qy, qz, qw),
                ),
                covariance=cov.reshape(-1).astype(np.float64),
            ),
            twist=T["geometry_msgs/msg/TwistWithCovariance"](
                twist=T["geometry_msgs/msg/Twist"](
                    linear=T["geometry_msgs/msg/Vector3"](*(float(v) for v in lin)),
                    angular=T["geometry_msgs/msg/Vector3"](*(float(v) for v in ang)),
                ),
                covariance=np.zeros(36, dtype=np.float64),
            ),
        )

    def _header(self, stamp_ns: int, frame_id: str) -> Any:
        T = self.ts.types
        sec, nanosec = divmod(int(stamp_ns), NS_PER_S)
        return T["std_msgs/msg/Header"](
            stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec), frame_id=frame_id
        )

    def _transform(self, parent: str, child: str, stamp_ns: int, pose: Pose) -> Any:
        T = self.ts.types
        qw, qx, qy, qz = (float(v) for v in pose.qvec)
        return T["geometry_msgs/msg/TransformStamped"](
            header=self._header(stamp_ns, parent),
            child_frame_id=child,
            transform=T["geometry_msgs/msg/Transform"](
                translation=T["geometry_msgs/msg/Vector3"](*(float(v) for v in pose.tvec)),
                rotation=T["geometry_msgs/msg/Quaternion"](qx, qy, qz, qw),
            ),
        )


def _static_qos() -> Any:
    """Transient local, reliable, keep last: what a /tf_static publisher offers."""
    from rosbags.interfaces import (
        Qos,
        QosDurability,
        QosHistory,
        QosLiveliness,
        QosReliability,
        QosTime,
    )

    zero = QosTime(sec=0, nsec=0)
    return Qos(
        history=QosHistory.KEEP_LAST,
        depth=1,
        reliability=QosReliability.RELIABLE,
        durability=QosDurability.TRANSIENT_LOCAL,
        deadline=zero,
        lifespan=zero,
        liveliness=QosLiveliness.AUTOMATIC,
        liveliness_lease_duration=zero,
        avoid_ros_namespace_conventions=False,
    )
