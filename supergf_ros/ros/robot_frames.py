"""The robot's frames for the node (REP-105): /tf, /tf_static and odometry into a TransformBuffer;
the camera extrinsic and the odometry pose of a frame; map -> odom out."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from geometry_msgs.msg import TransformStamped
from nav_msgs.msg import Odometry
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from ..geometry import Pose
from ..tracking import TransformBuffer, TransformError
from .conversions import pose_from_ros, stamp_to_ns

try:
    from tf2_msgs.msg import TFMessage
except ImportError:  # tf2_msgs is not on PyPI; scripts/build_msgs.sh builds it
    TFMessage = None

IDENTITY = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]  # base_from_camera's default: x y z qx qy qz qw
STATIC_QOS = QoSProfile(
    depth=100, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL
)


def transform_to_pose(transform: Any) -> Pose:
    """`parent_from_child` of a geometry_msgs/Transform (or a Pose message's fields)."""
    return pose_from_ros(transform.translation, transform.rotation)


def pose_to_transform(parent: str, child: str, stamp: Any, pose: Pose) -> TransformStamped:
    msg = TransformStamped()
    msg.header.stamp, msg.header.frame_id, msg.child_frame_id = stamp, parent, child
    tr = msg.transform
    tr.translation.x, tr.translation.y, tr.translation.z = (float(v) for v in pose.tvec)
    qw, qx, qy, qz = (float(v) for v in pose.qvec)
    tr.rotation.x, tr.rotation.y, tr.rotation.z, tr.rotation.w = qx, qy, qz, qw
    return msg


class RobotFrames:
    """Listens to TF and odometry for `node`; lookups never raise (None + a reason instead)."""

    def __init__(self, node: Any, params: dict[str, Any]) -> None:
        self.params = params
        self.buffer = TransformBuffer(cache_time_s=30.0)
        self.odometry_error = ""
        self.extrinsic_error = ""
        if TFMessage is not None:
            node.create_subscription(TFMessage, "/tf", self._on_tf, 100)
            node.create_subscription(TFMessage, "/tf_static", self._on_tf_static, STATIC_QOS)
        if params["odometry_source"] == "topic":
            node.create_subscription(Odometry, params["odometry_topic"], self._on_odometry, 50)
        fixed = [float(v) for v in params["base_from_camera"]]  # x y z qx qy qz qw
        self.fixed_base_from_camera = Pose(np.array([fixed[6], *fixed[3:6]]), np.array(fixed[:3]))

    def _on_tf(self, msg: Any, static: bool = False) -> None:
        for tf in msg.transforms:
            try:
                self.buffer.set_transform(
                    tf.header.frame_id.lstrip("/"),
                    tf.child_frame_id.lstrip("/"),
                    stamp_to_ns(tf.header.stamp),
                    transform_to_pose(tf.transform),
                    static=static,
                )
            except ValueError:  # a tree we do not own (e.g. re-parented frames): ignore it
                continue

    def _on_tf_static(self, msg: Any) -> None:
        self._on_tf(msg, static=True)

    def _on_odometry(self, msg: Odometry) -> None:
        p = msg.pose.pose
        pose = pose_from_ros(p.position, p.orientation)
        parent = msg.header.frame_id or self.params["odom_frame"]
        child = msg.child_frame_id or self.params["base_frame"]
        try:
            self.buffer.set_transform(parent, child, stamp_to_ns(msg.header.stamp), pose)
        except ValueError:
            return

    def wait_for(self, camera_frame: str, stamp_ns: int) -> None:
        """Wait up to `transform_tolerance` for the extrinsic and the odometry at `stamp_ns`, as
        tf2's message filter does; only for frames TF has shown (camera-only setups never wait)."""
        base, odom = self.params["base_frame"], self.params["odom_frame"]
        deadline = time.monotonic() + float(self.params["transform_tolerance"])
        while time.monotonic() < deadline:
            known = set(self.buffer.frames)
            wanted = [(base, camera_frame)] if camera_frame in known and base in known else []
            if self.params["odometry_source"] != "none" and odom in known and base in known:
                wanted.append((odom, base))
            if all(self.buffer.can_transform(t, s, stamp_ns) for t, s in wanted):
                return
            time.sleep(0.005)

    def base_from_camera(self, camera_frame: str, stamp_ns: int) -> tuple[Pose, bool]:
        """(base_from_camera, known): from TF when it has base -> camera, else the parameter;
        not known when that is the default identity for a camera frame other than the base's
        (then no base pose or map -> odom may be derived from it)."""
        base = self.params["base_frame"]
        if not camera_frame or camera_frame == base:
            return self.fixed_base_from_camera, True
        try:
            pose = self.buffer.lookup(base, camera_frame, stamp_ns)
            self.extrinsic_error = ""
            return pose, True
        except TransformError as err:
            known = [float(v) for v in self.params["base_from_camera"]] != IDENTITY
            what = (
                "using the base_from_camera parameter"
                if known
                else "base_pose and map -> odom are not published (set base_from_camera or "
                "publish TF)"
            )
            self.extrinsic_error = f"no TF {base} -> {camera_frame} ({err}); {what}"
            return self.fixed_base_from_camera, known

    def odom_from_base(self, stamp_ns: int) -> Pose | None:
        """The odometry pose of the base at `stamp_ns` (latest within transform_tolerance)."""
        if self.params["odometry_source"] == "none":
            return None
        odom, base = self.params["odom_frame"], self.params["base_frame"]
        try:
            pose = self.buffer.lookup(odom, base, stamp_ns)
        except TransformError as err:
            pose = self._latest_within_tolerance(odom, base, stamp_ns, err)
        if pose is not None:
            self.odometry_error = ""
        return pose

    def _latest_within_tolerance(
        self, odom: str, base: str, stamp_ns: int, err: Exception
    ) -> Pose | None:
        tolerance_ns = int(float(self.params["transform_tolerance"]) * 1e9)
        try:
            latest = self.buffer.latest_common_time(odom, base)
            if abs(stamp_ns - latest) <= tolerance_ns:
                return self.buffer.lookup(odom, base, latest)
        except TransformError:
            pass
        self.odometry_error = f"no odometry {odom} -> {base} at the image stamp: {err}"
        return None
