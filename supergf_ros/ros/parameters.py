"""The node's parameters: the Localizer's options (`localization.config.OPTIONS`) plus the
node's own. ROS-free, so `config/localize.yaml` can be checked against it without rclpy."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..localization.config import OPTIONS, check_value, from_ros


@dataclass(frozen=True)
class NodeParam:
    default: Any
    description: str
    read_only: bool = True
    bounds: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    localizer: bool = False  # an option of the Localizer (checked and applied by it)


FALLBACK_INTRINSICS = ("none", "map", "parameters")
ODOMETRY_SOURCES = ("tf", "topic", "none")

_NODE_ONLY: dict[str, NodeParam] = {
    "map_path": NodeParam("", "Map file (.h5) written by `supergf-ros build-map`. Required."),
    "image_topic": NodeParam("image", "Camera image topic (sensor_msgs/Image)."),
    "image_transport": NodeParam(
        "raw",
        "raw: sensor_msgs/Image on image_topic | compressed: sensor_msgs/CompressedImage (JPEG, "
        "PNG) on image_topic/compressed, as image_transport names it.",
        choices=("raw", "compressed"),
    ),
    "camera_info_topic": NodeParam(
        "camera_info", "Camera intrinsics topic (sensor_msgs/CameraInfo)."
    ),
    "map_frame": NodeParam("map", "Frame of the map; poses and markers are expressed in it."),
    "camera_frame": NodeParam("", "Camera frame for TF; empty: the image's header.frame_id."),
    "publish_tf": NodeParam(False, "Broadcast map_frame -> camera frame on /tf.", False),
    "max_rate_hz": NodeParam(
        0.0, "Process at most this many frames per second; 0: no cap.", False, (0.0, 1000.0)
    ),
    "fallback_intrinsics": NodeParam(
        "none",
        "Intrinsics without CameraInfo: none (frame fails) | map (the map's camera of the same "
        "image size/aspect) | parameters (`intrinsics`).",
        choices=FALLBACK_INTRINSICS,
    ),
    "intrinsics": NodeParam(
        [0.0, 0.0, 0.0, 0.0], "Fallback PINHOLE intrinsics [fx, fy, cx, cy] (pixel-centre)."
    ),
    "publish_map_markers": NodeParam(True, "Publish the latched map MarkerArray."),
    "marker_max_points": NodeParam(
        50000, "At most this many 3D points in the map markers.", bounds=(0, 10000000)
    ),
    "frustum_scale": NodeParam(
        0.0, "Keyframe frustum depth in map units; 0: automatic.", bounds=(0.0, 1000.0)
    ),
    "warmup": NodeParam(True, "Run one dummy frame at start-up so the first real one is fast."),
    "pipeline": NodeParam(
        False,
        "Two worker threads: local features and global descriptor of frame t+1 overlap "
        "matching and PnP of frame t (results stay in arrival order); false: one thread. Pays "
        "where a core is free beside the networks' threads (`benchmark --realtime` measures it).",
    ),
    "inference_threads": NodeParam(
        0,
        "ONNX Runtime intra-op threads of the networks; 0: $SUPERGF_ORT_THREADS, else ONNX "
        "Runtime's default (one per physical core).",
        bounds=(0, 256),
    ),
    "blas_threads": NodeParam(
        1,
        "numpy's BLAS threads (matching); 0: its default (one per core). 1: its spinning threads "
        "do not slow the networks running beside matching in the pipeline.",
        bounds=(0, 256),
    ),
    "diagnostics_period_s": NodeParam(1.0, "Period of /diagnostics.", bounds=(0.05, 60.0)),
    # -- the robot (REP-105: map -> odom -> base_link -> camera) --
    "base_frame": NodeParam("base_link", "The robot's base frame."),
    "odom_frame": NodeParam("odom", "The odometry frame (odom -> base_frame from odometry)."),
    "odometry_source": NodeParam(
        "tf",
        "Where odom -> base_frame comes from: tf (/tf) | topic (nav_msgs/Odometry on "
        "odometry_topic) | none (camera only: global mode, no map -> odom).",
        choices=ODOMETRY_SOURCES,
    ),
    "odometry_topic": NodeParam("odom", "nav_msgs/Odometry topic (odometry_source: topic)."),
    "base_from_camera": NodeParam(
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
        "Camera pose in base_frame [x, y, z, qx, qy, qz, qw] when TF has no base -> camera.",
    ),
    "publish_map_to_odom": NodeParam(
        True, "Broadcast map -> odom on /tf (when odometry is available).", False
    ),
    "map_to_odom_rate_hz": NodeParam(
        20.0, "Rate of the map -> odom broadcast and of propagated base_pose.", bounds=(0.1, 1000.0)
    ),
    "transform_tolerance": NodeParam(
        0.5,
        "map -> odom is stamped this far in the future (as AMCL); odometry this much older "
        "than an image is still used (s).",
        False,
        (0.0, 10.0),
    ),
    "confirm_fixes": NodeParam(
        2, "Consistent global fixes in a row before the first one is published.", False, (1, 20)
    ),
    "strong_inliers": NodeParam(
        100,
        "A global fix with this many PnP inliers needs no confirmation; 0: off.",
        False,
        (0, 100000),
    ),
    "max_failures": NodeParam(
        3, "Failed tracking frames in a row before falling back to global mode.", False, (1, 1000)
    ),
    "max_speed_mps": NodeParam(
        30.0,
        "Fastest plausible motion between two global fixes (no-jump check, m/s).",
        False,
        (0.1, 1000.0),
    ),
    "odometry_noise_per_m": NodeParam(
        0.02, "Odometry translation drift, 1-sigma per metre travelled.", bounds=(0.0, 10.0)
    ),
    "odometry_rotation_noise_deg_per_m": NodeParam(
        0.5, "Odometry heading drift, 1-sigma degrees per metre travelled.", bounds=(0.0, 90.0)
    ),
}


def _from_option(name: str) -> NodeParam:
    opt = OPTIONS[name]
    bounds = opt.bounds
    if bounds is not None and opt.off is not None:  # the "off" value is in range for ROS
        bounds = (min(bounds[0], opt.off), max(bounds[1], opt.off))
    return NodeParam(
        opt.ros_default, opt.description, not opt.runtime, bounds, opt.choices, localizer=True
    )


PARAMETERS: dict[str, NodeParam] = {
    "map_path": _NODE_ONLY["map_path"],
    **{name: _from_option(name) for name in OPTIONS},
    **{k: v for k, v in _NODE_ONLY.items() if k != "map_path"},
}


def validate_parameter(name: str, value: Any) -> str:
    """'' if `value` is valid for parameter `name`, else the reason."""
    p = PARAMETERS.get(name)
    if p is None:
        return ""
    if p.localizer:
        try:
            check_value(name, from_ros(name, value))
        except ValueError as err:
            return str(err)
        return ""
    if p.choices and value not in p.choices:
        return f"unknown {name} '{value}': {name} must be one of {list(p.choices)}"
    if p.bounds and not (p.bounds[0] <= value <= p.bounds[1]):
        return f"{name} must be in [{p.bounds[0]}, {p.bounds[1]}], got {value}"
    if name in ("image_topic", "camera_info_topic", "map_frame") and not str(value).strip():
        return f"{name} must not be empty"
    if name == "base_from_camera":
        vals = list(value)
        if len(vals) != 7 or not all(math.isfinite(v) for v in vals):
            return (
                f"base_from_camera must be 7 finite numbers [x, y, z, qx, qy, qz, qw], got {vals}"
            )
        if abs(math.sqrt(sum(v * v for v in vals[3:])) - 1.0) > 1e-3:
            return f"base_from_camera's quaternion must have norm 1, got {vals[3:]}"
    if name == "intrinsics":
        vals = list(value)
        if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
            return f"intrinsics must be 4 finite numbers [fx, fy, cx, cy], got {vals}"
    return ""


def localizer_conf(params: dict[str, Any]) -> dict[str, Any]:
    """The Localizer options among node parameter values (`off` values -> None)."""
    return {
        name: from_ros(name, value)
        for name, value in params.items()
        if name in PARAMETERS and PARAMETERS[name].localizer
    }
