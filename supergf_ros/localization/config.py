"""The Localizer's options: the one home of their defaults, ranges and meaning.

`Localizer.default_conf`, the node's parameters, `config/localize.yaml` and the `localize`
command all read `OPTIONS`; `check_conf` is the one validation of a configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..features.contrast import CONTRAST_METHODS
from ..inference.backends import AUTO_BACKEND_ORDER, BACKEND_OPTIONS
from .retrieval import INDEX_KINDS

MATCH_BACKENDS = ("auto", "numpy", "torch")
SUPERPOINT_PRECISIONS = ("fp32", "int8")


@dataclass(frozen=True)
class Option:
    """One option. `kind` is bool, int, float or str; `off` is the ROS parameter value that
    stands for None (ROS parameters have no None); `runtime`: may change on a running localizer."""

    default: Any
    kind: type
    description: str
    runtime: bool = False
    bounds: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    off: Any = None

    @property
    def ros_default(self) -> Any:
        return self.off if self.default is None else self.default


OPTIONS: dict[str, Option] = {
    "top_k": Option(5, int, "Keyframes retrieved per query.", True, (1, 100)),
    "rerank": Option(False, bool, "Re-rank retrieved keyframes by homography inliers.", True),
    "rerank_keep": Option(
        None, int, "Keyframes kept after re-ranking; 0: all.", True, (1, 100), off=0
    ),
    "rerank_threshold_px": Option(
        8.0, float, "Homography RANSAC threshold of re-ranking (px).", True, (0.1, 100.0)
    ),
    "ratio_threshold": Option(
        None, float, "Lowe ratio test on top of mutual NN; 0: off.", True, (0.01, 1.0), off=0.0
    ),
    "distance_threshold": Option(
        None,
        float,
        "Largest descriptor distance of a match; 0: no limit.",
        True,
        (1e-3, 4.0),
        off=0.0,
    ),
    "min_inliers": Option(
        12, int, "Fewer PnP inliers is a failed localization.", True, (4, 100000)
    ),
    "ransac_max_error_px": Option(
        12.0, float, "PnP-RANSAC reprojection threshold (px).", True, (0.1, 100.0)
    ),
    # measured on KITTI 01 (map: every 10th left frame, queries: right frames): top-5 with the
    # 2 nearest keyframes weighted by point uncertainty, see README "Sparse maps"
    "refine_keyframes": Option(
        2,
        int,
        "After PnP-RANSAC, refine the pose on the matches of this many retrieved keyframes "
        "nearest it, each weighted by its map point's uncertainty (maps that store it); 0: off.",
        True,
        (0, 100),
    ),
    # KITTI 01 maps: median point angle 3 deg (refining helps); Strecha: 36-42 deg (PnP's pose
    # is 1-2 mm better)
    "refine_max_tri_angle_deg": Option(
        10.0,
        float,
        "Refine only where the median triangulation angle of the nearest keyframes' matched "
        "points is below this (deg): well-triangulated points keep PnP's pose.",
        True,
        (0.0, 180.0),
    ),
    "keypoint_sigma_px": Option(
        1.5,
        float,
        "Query keypoint noise of that refinement (px); map points carry their own uncertainty.",
        True,
        (0.05, 50.0),
    ),
    "max_keypoints": Option(
        None, int, "Query keypoints cap; -1: as the map was built.", bounds=(16, 16384), off=-1
    ),
    "detection_threshold": Option(
        None,
        float,
        "SuperPoint detection threshold of the queries (lower: more keypoints in dark "
        "images); 0: as the map was built.",
        bounds=(1e-6, 1.0),
        off=0.0,
    ),
    # auto: Herz-Jesus-P25 odd queries at dusk (datasets.dusk), top_k 5, median 12.6 -> 8.6 mm;
    # daylight queries are never dark, so they are extracted as before
    "contrast_normalization": Option(
        "auto",
        str,
        "Query contrast normalization before extraction: none | auto (equalize dark "
        "queries, mean gray level < 32) | clahe | equalize | gamma (median to mid-gray).",
        True,
        choices=CONTRAST_METHODS,
    ),
    "resize_max": Option(
        None, int, "Longer query side in px; 0: as the map was built.", bounds=(16, 8192), off=0
    ),
    "max_image_pixels": Option(
        None,
        int,
        "Larger query images are downscaled to this many pixels before extraction (memory and "
        "time stay bounded when a camera switches resolution); 0: the map's largest keyframe.",
        True,
        (4096, 400_000_000),
        off=0,
    ),
    "superpoint_weights": Option(
        None,
        str,
        "SuperPoint weights (superpoint_v1.pth); empty: $SUPERGF_SUPERPOINT_WEIGHTS.",
        off="",
    ),
    "superpoint_precision": Option(
        "fp32",
        str,
        "SuperPoint precision: fp32, or int8 (ONNX Runtime on CPU: the statically quantized "
        "network, built once and cached; 2.2-2.8x faster on a 2-core AVX-512 VNNI CPU at 640x480); "
        "localizes against maps built in fp32.",
        choices=SUPERPOINT_PRECISIONS,
    ),
    "superpoint_int8_calibration": Option(
        None,
        str,
        "Folder of photos added to the synthetic INT8 calibration set; empty: synthetic only.",
        off="",
    ),
    "supergf_weights": Option(
        None, str, "SuperGF checkpoint; empty: the shipped one the map was built with.", off=""
    ),
    "backend": Option(
        "auto",
        str,
        f"Inference backend of the networks; auto: {AUTO_BACKEND_ORDER}, the first "
        "available (the choice and why are logged).",
        choices=BACKEND_OPTIONS,
    ),
    "device": Option("auto", str, "Compute device of the networks: auto | cpu | cuda | cuda:N."),
    "match_3d_only": Option(
        True, bool, "Match only keyframe keypoints that have a 3D point (about 40% less work)."
    ),
    "index": Option(
        "auto",
        str,
        "Retrieval index: auto (the map's saved one; exact below 100,000 keyframes) | flat | "
        "hnsw | ivf (built at start when it differs from the map's).",
        choices=INDEX_KINDS,
    ),
    "keyframe_cache_size": Option(
        128,
        int,
        "Keyframes whose local features stay in memory (LRU) when the map is read lazily "
        "(format 3); about 0.3 MB each.",
        bounds=(1, 1_000_000),
    ),
    "match_backend": Option(
        "auto",
        str,
        "Matching on numpy (host) or torch (the networks' device); auto: torch on "
        "CUDA, numpy on CPU.",
        choices=MATCH_BACKENDS,
    ),
    "tracking_keyframes": Option(
        3,
        int,
        "With a pose prior: keyframes nearest the predicted pose that are matched.",
        True,
        (1, 50),
    ),
    "tracking_global_k": Option(
        2,
        int,
        "With a pose prior: best global-retrieval keyframes matched as well.",
        True,
        (0, 100),
    ),
    "tracking_max_angle_deg": Option(
        60.0,
        float,
        "With a pose prior: largest viewing-direction difference of a candidate keyframe (deg).",
        True,
        (1.0, 180.0),
    ),
    "gate_probability": Option(
        0.999,
        float,
        "With a pose prior: a fix outside this chi-square quantile (6 dof) of the "
        "prior + fix covariance is rejected.",
        True,
        (0.5, 0.999999),
    ),
    # calibrated on KITTI 01 (map: every 5th left frame, queries: right frames): NEES mean 5.6
    # (6 is ideal), all fixes inside the 99% ellipsoid; pycolmap's covariance alone: NEES 305
    "fix_sigma_scale": Option(
        4.0,
        float,
        "Published fix covariance = scale^2 x PnP covariance + floor (calibrated).",
        True,
        (0.01, 1000.0),
    ),
    # calibrated on the same KITTI 01 maps (every 5th and 10th frame): NEES median 5.3-6.1,
    # 99-100% of fixes inside the 99% ellipsoid; the refinement's covariance alone: 0-4%
    "refined_fix_sigma_scale": Option(
        3.5,
        float,
        "Published covariance of a refined fix = scale^2 x the refinement's covariance + floor "
        "(calibrated).",
        True,
        (0.01, 1000.0),
    ),
    "fix_sigma_floor_m": Option(
        0.0, float, "Position sigma added to every fix's covariance (m).", True, (0.0, 100.0)
    ),
    "fix_sigma_floor_deg": Option(
        0.05, float, "Rotation sigma added to every fix's covariance (deg).", True, (0.0, 90.0)
    ),
}


def check_value(name: str, value: Any) -> Any:
    """`value` of option `name` in its canonical type (None stays None), or ValueError."""
    opt = OPTIONS.get(name)
    if opt is None:
        raise ValueError(f"unknown localizer option '{name}'; valid: {sorted(OPTIONS)}")
    if value is None:
        if opt.default is not None:
            raise ValueError(f"{name} cannot be None")
        return None
    value = _coerce(name, opt, value)
    if opt.choices and value not in opt.choices:
        raise ValueError(f"unknown {name} '{value}': {name} must be one of {list(opt.choices)}")
    if opt.bounds and not opt.bounds[0] <= value <= opt.bounds[1]:
        lo, hi = opt.bounds
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def _coerce(name: str, opt: Option, value: Any) -> Any:
    if opt.kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if opt.kind is str:
        return str(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if opt.kind is int and float(value) != int(value):
        raise ValueError(f"{name} must be an integer, got {value}")
    return opt.kind(value)


def check_conf(conf: dict[str, Any]) -> dict[str, Any]:
    """A checked copy of `conf` (a subset of OPTIONS), values in their canonical types."""
    return {name: check_value(name, value) for name, value in conf.items()}


def from_ros(name: str, value: Any) -> Any:
    """A ROS parameter value of option `name` as a Localizer value (`off` -> None)."""
    opt = OPTIONS[name]
    if opt.off is not None and value == opt.off and type(value) is type(opt.off):
        return None
    return value
