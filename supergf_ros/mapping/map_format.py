"""The map file (HDF5): versioned, self-describing, written atomically.

Layout (format ``supergf_ros.map`` version 2). Per-keypoint arrays of all keyframes are
concatenated; keyframe ``i`` owns rows ``keypoint_offsets[i]:keypoint_offsets[i+1]``.

```
/  attrs: format="supergf_ros.map", format_version=2, created (ISO time), description,
          extractor (JSON {"name","config","weights_sha256"}),
          aggregator (JSON {"name","config","weights_sha256"}), build_conf (JSON), summary (JSON),
          checksums (JSON {"algorithm": "crc32", "datasets": {path: crc}, "attributes": {key: crc}})
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
/points3D/tri_angle         (P,) float32, optional: largest angle between two viewing rays (deg)
/points3D/covariance        (P, 6) float32, optional: position covariance at 1 px keypoint noise
                            (m^2, upper triangle xx xy xz yy yz zz; `point_quality`)
/aggregator_state/<key>     arrays of the aggregator's state() (e.g. the VLAD codebook)
```

Versions: 2 adds ``checksums``: a CRC-32 of every dataset (over its dtype, shape and raw
little-endian bytes; strings length-prefixed UTF-8) and of the identity attributes (extractor,
aggregator, build_conf, summary), verified on every load, so a flipped byte anywhere in the data
is reported naming the dataset. CRC-32 catches storage and transfer corruption (all bursts up to
32 bits), not deliberate tampering: whoever can write a map can also write its checksums.
Version 1 maps (no checksums) still load, with the structural checks only. Maps written before
the optional point datasets existed load with them None (the localizer then skips what uses them).

`read_map` raises `MapFormatError` (a ValueError) for anything wrong with a file's content,
and FileNotFoundError when it is missing; never another exception type.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import Camera, Pose
from ..io_utils import atomic_output
from .map_base import (  # noqa: F401 (re-exported)
    CHECKSUM_ATTRIBUTES,
    FORMAT_NAME,
    FORMAT_VERSION,
    HDF5_SIGNATURE,
    MAX_ATTRIBUTE_CHARS,
    READABLE_VERSIONS,
    RUNTIME_OPTIONS,
    SEAL_MAGIC,
    USERBLOCK_SIZE,
    V3_MAGIC,
    WRITABLE_VERSIONS,
    MapFormatError,
    _attr_json,
    _attr_text,
    _dataset_crc,
    _numeric,
    _plain,
    _read_cameras,
    _read_poses,
    _read_version,
    _strings,
    _text_crc,
    check_seal_layout,
    dataset_ranges,
    strip_runtime_options,
)

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
# per-point datasets a map may lack (older maps): MapData field -> (dataset, per-point width)
OPTIONAL_POINT_FIELDS = {
    "point_tri_angles": ("points3D/tri_angle", 1),
    "point_covariances": ("points3D/covariance", 6),
}


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
    point_tri_angles: np.ndarray | None = None  # (P,) float32 degrees, None: not stored
    point_covariances: np.ndarray | None = None  # (P, 6) float32 m^2 at 1 px, None: not stored
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
        """Check internal consistency; raise MapFormatError saying what was expected and found."""
        k = len(self.keyframe_names)
        self._check_keyframes(k)
        m = int(self.keypoints.shape[0]) if self.keypoints.ndim >= 1 else -1
        self._check_offsets(k, m)
        p = self._check_shapes(m)
        self._check_contents(k, m, p)
        self._check_identities()
        return self

    def _check_keyframes(self, k: int) -> None:
        err = MapFormatError
        if k == 0:
            raise err("map has no keyframes")
        if len(set(self.keyframe_names)) != k:
            dup = next(n for n in self.keyframe_names if self.keyframe_names.count(n) > 1)
            raise err(f"map has duplicate keyframe names (e.g. {ascii(dup)[:80]})")
        if len(self.cameras) != k or len(self.cam_from_world) != k:
            raise err(
                f"map: {k} keyframes need {k} cameras and {k} poses; found "
                f"{len(self.cameras)} cameras and {len(self.cam_from_world)} poses"
            )

    def _check_offsets(self, k: int, m: int) -> None:
        err = MapFormatError
        off = np.asarray(self.keypoint_offsets)
        if off.ndim != 1 or off.shape[0] != k + 1:
            raise err(
                f"map: keypoint_offsets must have {k + 1} entries ({k} keyframes + 1); "
                f"found shape {off.shape}"
            )
        if off.dtype.kind not in "iu":
            raise err(f"map: keypoint_offsets must be integers; found dtype {off.dtype}")
        if off[0] != 0:
            raise err(f"map: keypoint_offsets must start at 0; found {int(off[0])}")
        drops = np.flatnonzero(np.diff(off) < 0)
        if drops.size:
            i = int(drops[0])
            raise err(
                f"map: keypoint_offsets must be non-decreasing from 0 to {m}; found "
                f"{int(off[i])} then {int(off[i + 1])} at index {i}"
            )
        if int(off[-1]) != m:
            raise err(
                f"map: keypoint_offsets must end at the number of keypoints ({m}); "
                f"found {int(off[-1])}"
            )

    def _check_shapes(self, m: int) -> int:
        """Check the per-keypoint and per-point array shapes; return the number of 3D points."""
        err = MapFormatError
        if self.keypoints.shape != (m, 2):
            raise err(f"map: keypoints must have shape ({m}, 2); found {self.keypoints.shape}")
        for name in ("scores", "point3D_ids"):
            shape = getattr(self, name).shape
            if shape != (m,):
                raise err(f"map: {name} must have shape ({m},) like the keypoints; found {shape}")
        if self.descriptors.ndim != 2 or self.descriptors.shape[0] != m:
            raise err(f"map: descriptors must have shape ({m}, D); found {self.descriptors.shape}")
        p = self.points3D.shape[0] if self.points3D.ndim >= 1 else -1
        if self.points3D.shape != (p, 3):
            raise err(f"map: points3D must have shape (P, 3); found {self.points3D.shape}")
        for name, label in (("track_lengths", "track_length"), ("point_errors", "error")):
            shape = getattr(self, name).shape
            if shape != (p,):
                raise err(
                    f"map: points3D/{label} must have shape ({p},) like points3D/xyz; found {shape}"
                )
        for name, (label, width) in OPTIONAL_POINT_FIELDS.items():
            value = getattr(self, name)
            want = (p,) if width == 1 else (p, width)
            if value is not None and (value.shape != want or not np.isfinite(value).all()):
                raise err(
                    f"map: {label} must be finite with shape {want} like points3D/xyz; found "
                    f"{value.shape}"
                )
        return p

    def _check_contents(self, k: int, m: int, p: int) -> None:
        err = MapFormatError
        if m:
            lo, hi = int(self.point3D_ids.min()), int(self.point3D_ids.max())
            if lo < -1 or hi >= p:
                bad = lo if lo < -1 else hi
                raise err(
                    f"map: point3D_ids out of range: must be -1 or 0..{p - 1} (a 3D point index); "
                    f"found {bad}"
                )
        g = self.global_descriptors
        if g.ndim != 2 or g.shape[0] != k:
            raise err(f"map: global_descriptors must have shape ({k}, G); found {g.shape}")
        for name in ("keypoints", "descriptors", "points3D", "global_descriptors"):
            values = getattr(self, name)
            if not np.isfinite(values).all():
                bad = int(np.count_nonzero(~np.isfinite(values)))
                raise err(
                    f"map: {name} must be finite; found {bad} NaN or infinite values (corrupt map)"
                )

    def _check_identities(self) -> None:
        err = MapFormatError
        for role, ident in (("extractor", self.extractor), ("aggregator", self.aggregator)):
            if not isinstance(ident, dict):
                raise err(
                    f"map: the {role} identity must be a JSON object; found {ascii(ident)[:80]}"
                )
            for key in ("name", "config", "weights_sha256"):
                if key not in ident:
                    raise err(f"map: {role} identity lacks '{key}'; found keys {sorted(ident)}")


def write_map(
    path: str | Path,
    data: MapData,
    descriptor_dtype: str = "float16",
    format_version: int = FORMAT_VERSION,
    store: dict | None = None,
) -> int:
    """Write `data` to `path` atomically; return the file size in bytes.

    Version 3 (the default, `map_store`): compact, `store` its options
    (`map_store.DEFAULT_STORE_CONF`); version 2: every keypoint and descriptor as in memory
    (`descriptor_dtype`).
    """
    import h5py

    data.validate()
    if format_version not in WRITABLE_VERSIONS:
        raise ValueError(f"format_version must be one of {WRITABLE_VERSIONS}, got {format_version}")
    if format_version == 3:
        from .map_store import write_v3

        return write_v3(path, data, store)
    if descriptor_dtype not in ("float16", "float32"):
        raise ValueError(f"descriptor_dtype must be 'float16' or 'float32', got {descriptor_dtype}")
    path = Path(path)
    str_dt = h5py.string_dtype("utf-8")
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w", userblock_size=USERBLOCK_SIZE) as f:
            f.attrs["format"] = FORMAT_NAME
            f.attrs["format_version"] = 2
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
            kf.create_dataset(
                "names", data=np.array(data.keyframe_names, dtype=object), dtype=str_dt
            )
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
            for name, (label, _) in OPTIONAL_POINT_FIELDS.items():
                if getattr(data, name) is not None:
                    f.create_dataset(label, data=getattr(data, name).astype(np.float32))
            st = f.create_group("aggregator_state")
            for key, value in data.aggregator_state.items():
                st.create_dataset(key, data=np.asarray(value))
            _write_checksums(f)
        _seal(tmp)
    return path.stat().st_size


def _write_checksums(f) -> None:
    import h5py

    datasets: dict[str, int] = {}

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            datasets[name] = _dataset_crc(obj[()])

    f.visititems(visit)
    f.attrs["checksums"] = json.dumps(
        {
            "algorithm": "crc32",
            "datasets": datasets,
            "attributes": {k: _text_crc(f.attrs[k]) for k in CHECKSUM_ATTRIBUTES},
        },
        sort_keys=True,
    )


def _seal(path: Path) -> None:
    """Write the user-block record (see USERBLOCK_SIZE) of a just-written map file."""
    import h5py

    with h5py.File(path, "r") as f:
        if f.userblock_size != USERBLOCK_SIZE:
            raise MapFormatError(f"{path} has no {USERBLOCK_SIZE} B user block to seal")
        attrs = {k: f.attrs[k] for k in CHECKSUM_ATTRIBUTES}
        ranges = dataset_ranges(f)
    raw = path.read_bytes()
    taken = sorted((o, o + n) for _, o, n in ranges)
    for key, text in attrs.items():  # vlen strings sit whole in the global heap
        b = text.encode("utf-8")
        at = raw.find(b, USERBLOCK_SIZE)
        unique = b and at >= 0 and raw.find(b, at + 1) < 0
        if unique and not any(lo < at + len(b) and at < hi for lo, hi in taken):
            ranges.append((f"@{key}", at, len(b)))
    regions, rest = _region_crcs(raw, ranges)
    record = json.dumps(
        {"size": len(raw), "regions": regions, "rest_crc32": rest}, separators=(",", ":")
    ).encode()
    header = SEAL_MAGIC + record + b"\n"
    if len(header) > USERBLOCK_SIZE:  # too many datasets to list: the whole file, unnamed
        regions, rest = _region_crcs(raw, [])
        record = json.dumps({"size": len(raw), "regions": [], "rest_crc32": rest}).encode()
        header = SEAL_MAGIC + record + b"\n"
    with open(path, "r+b") as fh:
        fh.write(header.ljust(USERBLOCK_SIZE, b"\0"))


def _region_crcs(raw: bytes, ranges: list[tuple[str, int, int]]) -> tuple[list, int]:
    """([name, offset, size, crc] per range, crc of all bytes after the user block that lie in
    no range). Ranges must not overlap."""
    view = memoryview(raw)
    regions, rest, pos = [], 0, USERBLOCK_SIZE
    for name, offset, size in sorted(ranges, key=lambda r: r[1]):
        rest = zlib.crc32(view[pos:offset], rest)
        regions.append([name, offset, size, zlib.crc32(view[offset : offset + size])])
        pos = offset + size
    return regions, zlib.crc32(view[pos:], rest)


def _check_seal(raw: bytes, path: Path) -> None:
    """Verify a sealed file's bytes (see USERBLOCK_SIZE); MapFormatError naming what is corrupt."""
    end = raw.find(b"\n", len(SEAL_MAGIC), USERBLOCK_SIZE)
    try:
        record = json.loads(raw[len(SEAL_MAGIC) : end]) if end > 0 else None
        size, rest = record["size"], record["rest_crc32"]
        regions = [(str(n), int(o), int(z), int(c)) for n, o, z, c in record["regions"]]
        if not isinstance(size, int) or not isinstance(rest, int):
            raise TypeError("size and rest_crc32 must be integers")
    except (ValueError, TypeError, KeyError, RecursionError) as err:
        raise MapFormatError(
            f"map {path}: its integrity header (the first {USERBLOCK_SIZE} B) is corrupt: {err}"
        ) from None
    check_seal_layout(path, regions, size, len(raw))
    got, got_rest = _region_crcs(raw, [(n, o, z) for n, o, z, _ in regions])
    for (name, *_, crc), (_, _, _, actual) in zip(regions, got, strict=True):
        if crc != actual:
            what = f"attribute '{name[1:]}'" if name.startswith("@") else f"dataset '{name}'"
            raise MapFormatError(
                f"map {path}: {what} fails its checksum (stored crc32 {crc:#010x}, computed "
                f"{actual:#010x}): the file is corrupt"
            )
    if got_rest != rest:
        raise MapFormatError(
            f"map {path}: the HDF5 structure (the bytes outside the datasets) fails its checksum: "
            "the file is corrupt"
        )


def update_checksums(path: str | Path) -> None:
    """Recompute the checksums (attributes and user-block seal) of a map edited in place.

    For tools and tests that change a map on purpose; a map damaged by accident should be
    rebuilt instead, which this does not check.
    """
    import h5py

    path = Path(path)
    with open(path, "rb") as fh:
        if fh.read(len(V3_MAGIC)) == V3_MAGIC:  # version 3: the seal is all its checksums
            from .map_store import reseal_v3

            return reseal_v3(path)
    with h5py.File(path, "a") as f:
        if f.userblock_size != USERBLOCK_SIZE:
            raise MapFormatError(f"{path} has no {USERBLOCK_SIZE} B user block (not a v2 map)")
        _write_checksums(f)
    _seal(path)


def _read_checksums(f, path: Path) -> dict[str, dict[str, int]]:
    sums = _attr_json(f, "checksums", path)
    if sums.get("algorithm") != "crc32":
        raise MapFormatError(
            f"map {path}: unknown checksum algorithm {_plain(sums.get('algorithm'))} (expected crc32)"
        )
    out = {}
    for part in ("datasets", "attributes"):
        table = sums.get(part)
        if not isinstance(table, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in table.values()
        ):
            raise MapFormatError(f"map {path}: the checksums attribute has no valid '{part}' table")
        out[part] = table
    return out


def _read_dataset(f, name: str, path: Path, file_size: int, sums: dict | None) -> np.ndarray:
    """A dataset's value after checking its storage against the file and its checksum."""
    import h5py

    obj = f.get(name)
    if not isinstance(obj, h5py.Dataset):
        raise MapFormatError(f"map {path}: '{name}' is not a dataset (corrupt map)")
    shape, dtype = obj.shape, obj.dtype
    if shape is None:
        raise MapFormatError(f"map {path}: dataset '{name}' has no shape (corrupt map)")
    count = int(np.prod(shape, dtype=object))
    if dtype.kind == "O" or h5py.check_string_dtype(dtype) is not None:
        item = 16  # a variable-length string reference in the file
    else:
        item = dtype.itemsize
    nbytes = count * item
    if obj.compression is None and obj.chunks is None and dtype.kind != "O":
        stored = obj.id.get_storage_size()
        if nbytes and stored != nbytes:
            raise MapFormatError(
                f"map {path}: dataset '{name}' needs {nbytes} B for shape {shape} {dtype} but "
                f"the file stores {stored} B (corrupt or truncated)"
            )
    if nbytes > 64 * max(file_size, 1):
        raise MapFormatError(
            f"map {path}: dataset '{name}' claims shape {shape} ({nbytes} B), far more than the "
            f"{file_size} B file holds (corrupt map)"
        )
    value = obj[()]
    if sums is not None:
        if name not in sums["datasets"]:
            raise MapFormatError(f"map {path}: dataset '{name}' has no checksum (corrupt map)")
        crc = _dataset_crc(value)
        if crc != sums["datasets"][name]:
            raise MapFormatError(
                f"map {path}: dataset '{name}' fails its checksum (stored crc32 "
                f"{sums['datasets'][name]:#010x}, computed {crc:#010x}): the file is corrupt"
            )
    return np.asarray(value)


def read_map(path: str | Path) -> MapData:
    """Load a map file, verifying its checksums (version 2) and structure.

    Raises:
        FileNotFoundError: no such file.
        MapFormatError (a ValueError): not a map, an unreadable version, or corrupt, truncated
            or inconsistent content; the message names the file and what is wrong (for a
            checksum failure, the corrupt dataset or attribute).
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"map file not found: {path}")
    file_size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(max(len(SEAL_MAGIC), len(V3_MAGIC)))
    if head.startswith(V3_MAGIC):
        return _read_v3(path)
    head = head[: len(SEAL_MAGIC)]
    sealed = head == SEAL_MAGIC
    if sealed:
        _check_seal(path.read_bytes(), path)
    elif not head.startswith(HDF5_SIGNATURE):
        raise MapFormatError(
            f"{path} is not a readable map file (corrupt, truncated or not HDF5): it starts with "
            "neither the supergf_ros map header nor the HDF5 signature"
        )
    try:
        f = h5py.File(path, "r")
    except Exception as err:  # OSError for most damage; h5py raises others for some
        raise MapFormatError(
            f"{path} is not a readable map file (corrupt, truncated or not HDF5): {err}"
        ) from err

    def read() -> MapData:
        with f:
            return _read_open_map(f, path, file_size, sealed)

    return _read_validated(path, read)


def _read_open_map(f, path: Path, file_size: int, sealed: bool = False) -> MapData:
    version = _read_version(f, path)
    missing = [k for k in _REQUIRED if k not in f]
    if missing:
        raise MapFormatError(f"map {path} is incomplete; missing datasets: {missing}")
    sums = None
    if version >= 2 and not sealed:  # a sealed file's bytes are already verified
        if "checksums" not in f.attrs:
            raise MapFormatError(
                f"map {path} (format version {version}) lacks its checksums attribute (corrupt map)"
            )
        sums = _read_checksums(f, path)
    attrs = _read_attributes(f, path, sums)

    seen: set[str] = set()

    def read(name: str) -> np.ndarray:
        seen.add(name)
        return _read_dataset(f, name, path, file_size, sums)

    names = _strings(read("keyframes/names"), "keyframes/names", path)
    cams = _read_cameras(read, path)
    poses = _read_poses(read, path, len(names))
    state = _read_aggregator_state(f, path, sums, read)
    data = MapData(
        keyframe_names=names,
        cameras=cams,
        cam_from_world=poses,
        **_read_arrays(read, path, f),
        extractor=attrs["extractor"],
        aggregator=attrs["aggregator"],
        aggregator_state=state,
        build_conf=attrs["build_conf"],
        summary=attrs["summary"],
        format_version=version,
    )
    if sums is not None and seen != set(sums["datasets"]):
        lost = sorted(set(sums["datasets"]) - seen)
        raise MapFormatError(
            f"map {path} lacks datasets its checksums list: {ascii(lost[:5])[:200]} (corrupt map)"
        )
    return data


def _read_attributes(f, path: Path, sums: dict | None) -> dict[str, Any]:
    """The JSON attributes in CHECKSUM_ATTRIBUTES, each checked against `sums` if given."""
    attrs = {}
    for key in CHECKSUM_ATTRIBUTES:
        text = _attr_text(f, key, path)
        if sums is not None:
            crc = _text_crc(text)
            if crc != sums["attributes"].get(key):
                raise MapFormatError(
                    f"map {path}: attribute '{key}' fails its checksum: the file is corrupt"
                )
        attrs[key] = _attr_json(f, key, path)
    return attrs


def _read_aggregator_state(f, path: Path, sums: dict | None, read) -> dict[str, np.ndarray]:
    import h5py

    if "aggregator_state" not in f:
        return {}
    group = f["aggregator_state"]
    if not isinstance(group, h5py.Group):
        raise MapFormatError(f"map {path}: aggregator_state is not a group (corrupt map)")
    keys = list(group.keys())
    if sums is not None:
        expected = sorted(
            k.removeprefix("aggregator_state/")
            for k in sums["datasets"]
            if k.startswith("aggregator_state/")
        )
        if sorted(keys) != expected:
            raise MapFormatError(
                f"map {path}: aggregator_state holds {ascii(sorted(keys))[:200]}; its "
                f"checksums list {ascii(expected)[:200]} (corrupt map)"
            )
    return {k: read(f"aggregator_state/{k}") for k in keys}


def _read_arrays(read, path: Path, f) -> dict[str, np.ndarray | None]:
    """MapData's numeric arrays, keyed by field name, read in the file's order."""
    fl, it = "f", "iu"
    return {
        "keypoint_offsets": _numeric(
            read("keyframes/keypoint_offsets"), "keypoint_offsets", path, it, np.int64
        ),
        "keypoints": _numeric(read("features/keypoints"), "keypoints", path, fl, np.float32),
        "scores": _numeric(read("features/scores"), "scores", path, fl, np.float32),
        "descriptors": _numeric(read("features/descriptors"), "descriptors", path, fl, np.float32),
        "point3D_ids": _numeric(read("features/point3D_ids"), "point3D_ids", path, it, np.int64),
        "points3D": _numeric(read("points3D/xyz"), "points3D/xyz", path, fl, np.float64),
        "track_lengths": _numeric(
            read("points3D/track_length"), "track_length", path, it, np.int32
        ),
        "point_errors": _numeric(read("points3D/error"), "points3D/error", path, fl, np.float32),
        "global_descriptors": _numeric(
            read("keyframes/global_descriptors"), "global_descriptors", path, fl, np.float32
        ),
        **{
            name: _numeric(read(label), label, path, fl, np.float32) if label in f else None
            for name, (label, _) in OPTIONAL_POINT_FIELDS.items()
        },
    }


def _read_v3(path: Path) -> MapData:
    from .map_store import read_v3

    return _read_validated(path, lambda: MapData(**read_v3(path)))


def _read_validated(path: Path, read) -> MapData:
    """`read()`'s map, validated; any failure of a damaged file as a MapFormatError."""
    try:
        data = read()
    except (MapFormatError, NameError, ImportError):
        raise  # (the latter two: bugs or a broken install, not a damaged file)
    except (Exception, RecursionError) as err:  # h5py/HDF5 errors on damaged files
        raise MapFormatError(
            f"map {path} is corrupt or truncated: {type(err).__name__}: {err}"
        ) from err
    try:
        return data.validate()
    except MapFormatError as err:
        raise MapFormatError(f"map {path}: {str(err).removeprefix('map: ')}") from None
