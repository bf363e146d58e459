"""The map file (HDF5): versioned, self-describing, written atomically.

Layout (format ``supergf_ros.map`` version 1). Per-keypoint arrays of all keyframes are
concatenated; keyframe ``i`` owns rows ``keypoint_offsets[i]:keypoint_offsets[i+1]``.

```
/  attrs: format="supergf_ros.map", format_version=1, created (ISO time), description,
          extractor (JSON {"name","config","weights_sha256"}),
          aggregator (JSON {"name","config","weights_sha256"}), build_conf (JSON), summary (JSON)
/keyframes/names            (K,) str
/keyframes/cameras          (K,) str, JSON Camera dicts {"model","width","height","params"}
/keyframes/cam_from_world   (K, 7) float64  qw qx qy qz tx ty tz
/keyframes/global_descriptors (K, G) float32, L2-normalized rows
/keyframes/keypoint_offsets (K+1,) int64
/features/keypoints         (M, 2) float32, pixel-centre convention
/features/scores            (M,) float32
/features/descriptors       (M, D) float16 or float32, L2-normalized rows
/features/point3D_ids       (M,) int64, index into /points3D/xyz or -1
/points3D/xyz               (P, 3) float64
/points3D/track_length      (P,) int32
/points3D/error             (P,) float32 mean reprojection error (px)
/aggregator_state/<key>     arrays of the aggregator's state() (e.g. the VLAD codebook)
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import Camera, Pose
from ..io_utils import atomic_output

FORMAT_NAME = "supergf_ros.map"
FORMAT_VERSION = 1

# Extractor/aggregator options that choose *how* a network runs, not *what* it computes: they
# are left out of a map's identity, so a map built with one backend localizes with any other.
RUNTIME_OPTIONS = ("backend", "device", "onnx_cache_dir")


def strip_runtime_options(identity: dict[str, Any]) -> dict[str, Any]:
    """A copy of an extractor/aggregator identity without `RUNTIME_OPTIONS` in its config."""
    config = {k: v for k, v in dict(identity.get("config", {})).items() if k not in RUNTIME_OPTIONS}
    return {**identity, "config": config}


_REQUIRED = (
    "keyframes/names",
    "keyframes/cameras",
    "keyframes/cam_from_world",
    "keyframes/global_descriptors",
    "keyframes/keypoint_offsets",
    "features/keypoints",
    "features/scores",
    "features/descriptors",
    "features/point3D_ids",
    "points3D/xyz",
    "points3D/track_length",
    "points3D/error",
)


@dataclass
class MapData:
    """A map in memory. Per-keypoint arrays are concatenated over keyframes (see module doc).

    Loading caches descriptors as one contiguous float32 array so that matching needs no
    per-query conversion; `descriptors_of(i)` is a zero-copy view.
    """

    keyframe_names: list[str]
    cameras: list[Camera]
    cam_from_world: list[Pose]
    keypoint_offsets: np.ndarray  # (K+1,) int64
    keypoints: np.ndarray  # (M, 2) float32
    scores: np.ndarray  # (M,) float32
    descriptors: np.ndarray  # (M, D) float32 in memory
    point3D_ids: np.ndarray  # (M,) int64, -1 = no 3D point
    points3D: np.ndarray  # (P, 3) float64
    track_lengths: np.ndarray  # (P,) int32
    point_errors: np.ndarray  # (P,) float32
    global_descriptors: np.ndarray  # (K, G) float32
    extractor: dict[str, Any]
    aggregator: dict[str, Any]
    aggregator_state: dict[str, np.ndarray] = field(default_factory=dict)
    build_conf: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def num_keyframes(self) -> int:
        return len(self.keyframe_names)

    def _slice(self, i: int) -> slice:
        return slice(int(self.keypoint_offsets[i]), int(self.keypoint_offsets[i + 1]))

    def keypoints_of(self, i: int) -> np.ndarray:
        return self.keypoints[self._slice(i)]

    def descriptors_of(self, i: int) -> np.ndarray:
        return self.descriptors[self._slice(i)]

    def point3D_ids_of(self, i: int) -> np.ndarray:
        return self.point3D_ids[self._slice(i)]

    def scores_of(self, i: int) -> np.ndarray:
        return self.scores[self._slice(i)]

    def validate(self) -> MapData:
        """Check internal consistency; raise ValueError naming the first problem."""
        k = len(self.keyframe_names)
        if k == 0:
            raise ValueError("map has no keyframes")
        if len(set(self.keyframe_names)) != k:
            raise ValueError("map has duplicate keyframe names")
        if len(self.cameras) != k or len(self.cam_from_world) != k:
            raise ValueError("map: number of cameras/poses differs from number of keyframes")
        off = self.keypoint_offsets
        if off.shape != (k + 1,) or off[0] != 0 or np.any(np.diff(off) < 0):
            raise ValueError(f"map: bad keypoint_offsets (shape {off.shape}, need ({k + 1},))")
        m = int(off[-1])
        if self.keypoints.shape != (m, 2):
            raise ValueError(f"map: keypoints shape {self.keypoints.shape}, expected ({m}, 2)")
        if self.scores.shape != (m,) or self.point3D_ids.shape != (m,):
            raise ValueError("map: scores/point3D_ids do not match the number of keypoints")
        if self.descriptors.ndim != 2 or self.descriptors.shape[0] != m:
            raise ValueError(f"map: descriptors shape {self.descriptors.shape}, expected ({m}, D)")
        p = self.points3D.shape[0]
        if self.points3D.shape != (p, 3) or self.track_lengths.shape != (p,):
            raise ValueError("map: points3D/track_length shapes disagree")
        if self.point_errors.shape != (p,):
            raise ValueError("map: points3D/error shape disagrees with points3D/xyz")
        if m and (self.point3D_ids.max(initial=-1) >= p or self.point3D_ids.min(initial=-1) < -1):
            raise ValueError("map: point3D_ids out of range (corrupt map)")
        g = self.global_descriptors
        if g.ndim != 2 or g.shape[0] != k:
            raise ValueError(f"map: global_descriptors shape {g.shape}, expected ({k}, G)")
        for name in ("keypoints", "descriptors", "points3D", "global_descriptors"):
            if not np.isfinite(getattr(self, name)).all():
                raise ValueError(f"map: {name} contain NaN or infinite values (corrupt map)")
        for key in ("name", "config", "weights_sha256"):
            if key not in self.extractor:
                raise ValueError(f"map: extractor identity lacks '{key}'")
            if key not in self.aggregator:
                raise ValueError(f"map: aggregator identity lacks '{key}'")
        return self


def write_map(path: str | Path, data: MapData, descriptor_dtype: str = "float16") -> int:
    """Write `data` to `path` atomically; return the file size in bytes."""
    import h5py

    data.validate()
    if descriptor_dtype not in ("float16", "float32"):
        raise ValueError(f"descriptor_dtype must be 'float16' or 'float32', got {descriptor_dtype}")
    path = Path(path)
    str_dt = h5py.string_dtype("utf-8")
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        f.attrs["description"] = (
            "supergf_ros localization map: keyframes with poses (cam_from_world, COLMAP "
            "convention, quaternion w-first), local features, 3D points, global descriptors"
        )
        f.attrs["extractor"] = json.dumps(data.extractor, sort_keys=True)
        f.attrs["aggregator"] = json.dumps(data.aggregator, sort_keys=True)
        f.attrs["build_conf"] = json.dumps(data.build_conf, sort_keys=True, default=str)
        f.attrs["summary"] = json.dumps(data.summary, sort_keys=True, default=str)
        kf = f.create_group("keyframes")
        kf.create_dataset("names", data=np.array(data.keyframe_names, dtype=object), dtype=str_dt)
        kf.create_dataset(
            "cameras",
            data=np.array([json.dumps(c.to_dict()) for c in data.cameras], dtype=object),
            dtype=str_dt,
        )
        poses = np.array([np.concatenate([p.qvec, p.tvec]) for p in data.cam_from_world])
        kf.create_dataset("cam_from_world", data=poses.astype(np.float64))
        kf.create_dataset("global_descriptors", data=data.global_descriptors.astype(np.float32))
        kf.create_dataset("keypoint_offsets", data=data.keypoint_offsets.astype(np.int64))
        ft = f.create_group("features")
        ft.create_dataset("keypoints", data=data.keypoints.astype(np.float32))
        ft.create_dataset("scores", data=data.scores.astype(np.float32))
        ft.create_dataset("descriptors", data=data.descriptors.astype(descriptor_dtype))
        ft.create_dataset("point3D_ids", data=data.point3D_ids.astype(np.int64))
        pt = f.create_group("points3D")
        pt.create_dataset("xyz", data=data.points3D.astype(np.float64).reshape(-1, 3))
        pt.create_dataset("track_length", data=data.track_lengths.astype(np.int32))
        pt.create_dataset("error", data=data.point_errors.astype(np.float32))
        st = f.create_group("aggregator_state")
        for key, value in data.aggregator_state.items():
            st.create_dataset(key, data=np.asarray(value))
    return path.stat().st_size


def _attr_json(f, key: str, path: Path) -> Any:
    if key not in f.attrs:
        raise ValueError(f"map {path} lacks the '{key}' attribute (corrupt or incomplete map)")
    try:
        return json.loads(f.attrs[key])
    except (TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"map {path}: attribute '{key}' is not valid JSON: {err}") from err


def read_map(path: str | Path) -> MapData:
    """Load a map file; raise FileNotFoundError if missing, ValueError if corrupt/incompatible."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"map file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(
            f"{path} is not a readable map file (corrupt, truncated or not HDF5): {err}"
        ) from err
    try:
        with f:
            fmt = f.attrs.get("format")
            if fmt != FORMAT_NAME:
                raise ValueError(f"{path} is not a supergf_ros map (format attribute: {fmt!r})")
            version = int(f.attrs.get("format_version", -1))
            if version != FORMAT_VERSION:
                raise ValueError(
                    f"map {path} has format version {version}; this supergf_ros reads version "
                    f"{FORMAT_VERSION}. Rebuild the map with `supergf-ros build-map`."
                )
            missing = [k for k in _REQUIRED if k not in f]
            if missing:
                raise ValueError(f"map {path} is incomplete; missing datasets: {missing}")
            names = [
                n.decode() if isinstance(n, bytes) else str(n) for n in f["keyframes/names"][()]
            ]
            cams = [
                Camera.from_dict(json.loads(c.decode() if isinstance(c, bytes) else c))
                for c in f["keyframes/cameras"][()]
            ]
            poses_arr = f["keyframes/cam_from_world"][()]
            if poses_arr.shape != (len(names), 7):
                raise ValueError(f"map {path}: cam_from_world has shape {poses_arr.shape}")
            poses = [Pose(p[:4], p[4:]) for p in poses_arr]
            state = (
                {k: v[()] for k, v in f["aggregator_state"].items()}
                if "aggregator_state" in f
                else {}
            )
            data = MapData(
                keyframe_names=names,
                cameras=cams,
                cam_from_world=poses,
                keypoint_offsets=f["keyframes/keypoint_offsets"][()].astype(np.int64),
                keypoints=np.ascontiguousarray(f["features/keypoints"][()], dtype=np.float32),
                scores=np.ascontiguousarray(f["features/scores"][()], dtype=np.float32),
                descriptors=np.ascontiguousarray(f["features/descriptors"][()], dtype=np.float32),
                point3D_ids=f["features/point3D_ids"][()].astype(np.int64),
                points3D=np.ascontiguousarray(f["points3D/xyz"][()], dtype=np.float64),
                track_lengths=f["points3D/track_length"][()].astype(np.int32),
                point_errors=f["points3D/error"][()].astype(np.float32),
                global_descriptors=np.ascontiguousarray(
                    f["keyframes/global_descriptors"][()], dtype=np.float32
                ),
                extractor=_attr_json(f, "extractor", path),
                aggregator=_attr_json(f, "aggregator", path),
                aggregator_state=state,
                build_conf=_attr_json(f, "build_conf", path),
                summary=_attr_json(f, "summary", path),
                format_version=version,
            )
    except (OSError, KeyError, RuntimeError, TypeError) as err:
        raise ValueError(f"map {path} is corrupt or truncated: {err}") from err
    return data.validate()
