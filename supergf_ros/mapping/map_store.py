"""Map format version 3: compact, sealed, read lazily (`open_map`) or whole (`read_v3`).

What localization uses, nothing else. Per keyframe a *record* (zlib) of the keypoints that have
a 3D point: keypoints (n, 2) float32, point ids (n,) int32, scores (n,) float16. Per 3D point one
descriptor, the normalized mean of its observations' (float16; measured on Strecha: the same
recall as per-observation descriptors at a third of the bytes), stored in blocks of
`BLOCK_ROWS` points (byte-shuffled, zlib); points are numbered by their first keyframe, so a
keyframe's points sit in a few blocks. Global descriptors are projected onto the top singular
directions of the map's (`retrieval.fit_projection_rows`, lossless for maps of at most `global_dim`
keyframes) and the FAISS index over them is stored, loaded at open, not rebuilt.

```
/  attrs: format, format_version=3, created, description, extractor, aggregator, build_conf,
          summary (JSON, as version 2), layout (JSON {"descriptor_dim", "block_rows",
          "global_dim", "full_global_dim"}), retrieval (JSON GlobalIndex.describe())
/keyframes/names, cameras, cam_from_world (K, 7) float64      as version 2
/keyframes/global_descriptors        (K, d) float32 projected, L2-normalized
/keyframes/full_global_descriptors   (K, G) float16, optional (build option keep_full_global)
/keyframes/record_offsets (K+1,) int64, record_crc32 (K,) uint32, num_keypoints (K,) int64
/features/records                    (R,) uint8, keyframe i at record_offsets[i:i+2]
/points3D/xyz (P, 3) float64, track_length (P,) int32, error (P,) float32
/points3D/tri_angle (P,) float32, covariance (P, 6) float32     optional, as version 2
/points3D/descriptor_blocks (B,) uint8, block_offsets (nb+1,) int64, block_crc32 (nb,) uint32
/retrieval/projection (G, d) float32 (absent when d = G), /retrieval/index (S,) uint8 (FAISS)
/aggregator_state/<key>
```

Integrity: the first USERBLOCK_SIZE bytes hold V3_MAGIC and a JSON seal: the file size, a CRC-32
of each dataset's bytes and one of the rest (HDF5's structure). `open_map` checks every region
but the large per-keyframe ones (records, descriptor blocks, full global descriptors) before
HDF5 parses anything; those are checked record by record, block by block, as they are read
(their CRC tables are in the checked part). `read_v3` checks everything.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..geometry import Camera, Pose
from ..io_utils import atomic_output
from .map_base import (
    FORMAT_NAME,
    USERBLOCK_SIZE,
    V3_MAGIC,
    MapFormatError,
    _attr_json,
    _read_cameras,
    _read_poses,
    _strings,
    check_seal_layout,
    dataset_ranges,
)

if TYPE_CHECKING:
    from ..localization.retrieval import GlobalIndex

logger = logging.getLogger(__name__)

FORMAT_VERSION_V3 = 3
BLOCK_ROWS = 256
LAZY_REGIONS = (
    "features/records",
    "points3D/descriptor_blocks",
    "keyframes/full_global_descriptors",
)
DEFAULT_STORE_CONF: dict[str, Any] = {
    "global_dim": 256,  # projected global descriptor dimension
    "keep_full_global": False,  # also store the aggregator's full descriptors (float16)
    "index": "auto",  # retrieval.INDEX_KINDS
    "index_params": {},  # retrieval.DEFAULT_INDEX_PARAMS overrides
    "compression_level": 1,  # zlib level of records and descriptor blocks
}
_READ_CHUNK = 8 << 20


# -- encoding -------------------------------------------------------------------------------
def _encode_block(desc: np.ndarray, level: int) -> bytes:
    """(b, D) descriptors as float16, byte-shuffled (high bytes together), zlib."""
    raw = np.ascontiguousarray(desc, dtype="<f2").view(np.uint8).reshape(-1, 2).T
    return zlib.compress(np.ascontiguousarray(raw).tobytes(), level)


def _decode_block(blob: bytes, dim: int) -> np.ndarray:
    raw = np.frombuffer(zlib.decompress(blob), np.uint8)
    return np.ascontiguousarray(raw.reshape(2, -1).T).view("<f2").reshape(-1, dim)


def _encode_record(kp: np.ndarray, pids: np.ndarray, scores: np.ndarray, level: int) -> bytes:
    n = len(pids)
    parts = [
        np.int64(n).tobytes(),
        np.ascontiguousarray(kp, "<f4").reshape(n, 2).tobytes(),
        np.ascontiguousarray(pids, "<i4").tobytes(),
        np.ascontiguousarray(scores, "<f2").tobytes(),
    ]
    return zlib.compress(b"".join(parts), level)


def _decode_record(blob: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    raw = zlib.decompress(blob)
    n = int(np.frombuffer(raw, "<i8", 1)[0])
    if len(raw) != 8 + n * 14 or n < 0:
        raise ValueError(f"record of {len(raw)} B cannot hold {n} keypoints")
    kp = np.frombuffer(raw, "<f4", 2 * n, 8).reshape(n, 2)
    pids = np.frombuffer(raw, "<i4", n, 8 + 8 * n)
    scores = np.frombuffer(raw, "<f2", n, 8 + 12 * n)
    return kp, pids, scores


# -- the seal -------------------------------------------------------------------------------
def _crc_range(fh, offset: int, size: int) -> int:
    crc, pos, end = 0, offset, offset + size
    while pos < end:
        chunk = os.pread(fh, min(_READ_CHUNK, end - pos), pos)
        if not chunk:
            break
        crc = zlib.crc32(chunk, crc)
        pos += len(chunk)
    return crc


def _seal_v3(path: Path) -> None:
    import h5py

    with h5py.File(path, "r") as f:
        ranges = dataset_ranges(f)
        attrs = {k: f.attrs[k] for k in _SEALED_ATTRIBUTES}
    ranges.sort(key=lambda r: r[1])
    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        ranges = sorted(ranges + _attribute_ranges(fd, ranges, size, attrs), key=lambda r: r[1])
        regions, rest = _regions(fd, ranges, size)
        record = {"size": size, "regions": regions, "rest_crc32": rest, "lazy": list(LAZY_REGIONS)}
        header = V3_MAGIC + json.dumps(record, separators=(",", ":")).encode() + b"\n"
        if len(header) > USERBLOCK_SIZE:
            raise MapFormatError(f"{path}: too many datasets to seal")
        os.pwrite(fd, header.ljust(USERBLOCK_SIZE, b"\0"), 0)
    finally:
        os.close(fd)


_SEALED_ATTRIBUTES = ("extractor", "aggregator", "build_conf", "summary", "layout", "retrieval")


def _attribute_ranges(fd: int, ranges, size: int, attrs: dict) -> list[tuple[str, int, int]]:
    """Ranges ("@key", offset, size) of the JSON attributes' text where it is stored once,
    outside the datasets (HDF5 keeps such strings whole), so a change names the attribute."""
    gaps, pos = [], USERBLOCK_SIZE
    for _, offset, n in [*ranges, ("", size, 0)]:
        if offset > pos:
            gaps.append((pos, _pread_all(fd, offset - pos, pos)))
        pos = offset + n
    out = []
    for key, text in attrs.items():
        b = str(text).encode("utf-8")
        hits = [(start, raw) for start, raw in gaps if b and b in raw]
        if len(hits) == 1 and hits[0][1].count(b) == 1:
            out.append((f"@{key}", hits[0][0] + hits[0][1].find(b), len(b)))
    return out


def _regions(fd: int, ranges, size: int, skip=()) -> tuple[list, int]:
    """([name, offset, size, crc] per range (crc None where skipped), crc of the rest)."""
    regions, rest, pos = [], 0, USERBLOCK_SIZE
    for name, offset, n in ranges:
        rest = zlib.crc32(_pread_all(fd, offset - pos, pos), rest) if offset > pos else rest
        regions.append([name, offset, n, None if name in skip else _crc_range(fd, offset, n)])
        pos = offset + n
    while pos < size:
        chunk = os.pread(fd, min(_READ_CHUNK, size - pos), pos)
        if not chunk:
            break
        rest, pos = zlib.crc32(chunk, rest), pos + len(chunk)
    return regions, rest


def _pread_all(fd: int, n: int, offset: int) -> bytes:
    out = os.pread(fd, n, offset)
    if len(out) != n:
        raise MapFormatError(f"short read: {len(out)} of {n} B at {offset}")
    return out


def reseal_v3(path: str | Path) -> None:
    """Seal a version-3 map edited in place again (its record and block CRC tables too)."""
    import h5py

    path = Path(path)
    with h5py.File(path, "a") as f:
        for table, blob, offsets in (
            ("keyframes/record_crc32", "features/records", "keyframes/record_offsets"),
            ("points3D/block_crc32", "points3D/descriptor_blocks", "points3D/block_offsets"),
        ):
            raw, off = f[blob][()].tobytes(), f[offsets][()]
            f[table][...] = [zlib.crc32(raw[a:b]) for a, b in pairwise(off)]
    _seal_v3(path)


def check_seal_v3(path: Path, lazy: bool) -> dict[str, tuple[int, int]]:
    """Verify a version-3 file's seal (all regions, or with `lazy` all but LAZY_REGIONS);
    return {dataset: (offset, size)}. MapFormatError naming what is corrupt."""
    fd = os.open(path, os.O_RDONLY)
    try:
        head = os.pread(fd, USERBLOCK_SIZE, 0)
        end = head.find(b"\n", len(V3_MAGIC))
        try:
            record = json.loads(head[len(V3_MAGIC) : end])
            size, rest = int(record["size"]), int(record["rest_crc32"])
            regions = [(str(n), int(o), int(z), int(c)) for n, o, z, c in record["regions"]]
        except (ValueError, TypeError, KeyError, RecursionError) as err:
            raise MapFormatError(
                f"map {path}: its integrity header (the first {USERBLOCK_SIZE} B) is corrupt: {err}"
            ) from None
        check_seal_layout(path, regions, size, os.fstat(fd).st_size)
        skip = set(LAZY_REGIONS) if lazy else set()
        got, got_rest = _regions(fd, [(n, o, z) for n, o, z, _ in regions], size, skip)
    finally:
        os.close(fd)
    for (name, *_, crc), (_, _, _, value) in zip(regions, got, strict=True):
        if value is not None and crc != value:
            what = f"attribute '{name[1:]}'" if name.startswith("@") else f"dataset '{name}'"
            raise MapFormatError(
                f"map {path}: {what} fails its checksum (stored crc32 {crc:#010x}, "
                f"computed {value:#010x}): the file is corrupt"
            )
    if got_rest != rest:
        raise MapFormatError(
            f"map {path}: the HDF5 structure (the bytes outside the datasets) fails its checksum: "
            "the file is corrupt"
        )
    return {n: (o, z) for n, o, z, _ in regions if not n.startswith("@")}


# -- writing --------------------------------------------------------------------------------
class MapWriter:
    """Write a version-3 map keyframe by keyframe and point block by point block (a map larger
    than memory streams through temporary files beside `path`); `close()` writes the file.

    Keyframes: `add_keyframe` with the keypoints that have a 3D point and the aggregator's
    global descriptor. Points: `add_points` in id order (xyz, one descriptor each, track length,
    error). Identities and build options as `MapData`'s.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        extractor: dict,
        aggregator: dict,
        descriptor_dim: int,
        aggregator_state: dict | None = None,
        build_conf: dict | None = None,
        summary: dict | None = None,
        store: dict | None = None,
    ) -> None:
        self.path = Path(path)
        self.meta = {"extractor": extractor, "aggregator": aggregator}
        self.meta.update(build_conf=dict(build_conf or {}), summary=dict(summary or {}))
        self.state = {k: np.asarray(v) for k, v in (aggregator_state or {}).items()}
        self.store = {**DEFAULT_STORE_CONF, **(store or {})}
        unknown = set(self.store) - set(DEFAULT_STORE_CONF)
        if unknown:
            raise ValueError(f"unknown map store option(s) {sorted(unknown)}")
        self.dim = int(descriptor_dim)
        self._tmp = Path(tempfile.mkdtemp(prefix=".map-", dir=self.path.parent))
        self._records = open(self._tmp / "records", "wb")  # noqa: SIM115
        self._blocks = open(self._tmp / "blocks", "wb")  # noqa: SIM115
        self._globals = open(self._tmp / "globals", "wb")  # noqa: SIM115
        self.names: list[str] = []
        self.cameras: list[str] = []
        self.poses: list[np.ndarray] = []
        self.rec_offsets, self.rec_crcs, self.num_kp = [0], [], []
        self.blk_offsets, self.blk_crcs = [0], []
        self._pending: list[np.ndarray] = []
        self._xyz: list[np.ndarray] = []
        self._track: list[np.ndarray] = []
        self._err: list[np.ndarray] = []
        self._quality: dict[str, list[np.ndarray]] = {"tri_angle": [], "covariance": []}
        self.global_dim: int | None = None

    def add_keyframe(self, name, camera: Camera, cam_from_world: Pose, keypoints, point3D_ids,
                     scores, global_descriptor, record: bytes | None = None) -> None:  # fmt: skip
        """One keyframe (its keypoints with a 3D point); `record`: already encoded (copies)."""
        g = np.asarray(global_descriptor, np.float32).reshape(-1)
        if self.global_dim is None:
            self.global_dim = len(g)
        elif len(g) != self.global_dim:
            raise ValueError(f"global descriptor of {name} is {len(g)}-D, not {self.global_dim}")
        if record is None:
            record = self.encode_record(keypoints, point3D_ids, scores)
        self._records.write(record)
        self.rec_offsets.append(self.rec_offsets[-1] + len(record))
        self.rec_crcs.append(zlib.crc32(record))
        self.num_kp.append(len(point3D_ids))
        self._globals.write(g.astype("<f4").tobytes())
        self.names.append(str(name))
        self.cameras.append(json.dumps(camera.to_dict()))
        self.poses.append(np.concatenate([cam_from_world.qvec, cam_from_world.tvec]))

    def encode_record(self, keypoints, point3D_ids, scores) -> bytes:
        return _encode_record(keypoints, point3D_ids, scores, self.store["compression_level"])

    def add_points(self, xyz, descriptors, track_lengths, errors, tri_angles=None,
                   covariances=None) -> None:  # fmt: skip
        """Points in id order (any number per call); `descriptors` (n, D) L2-normalized;
        `tri_angles` (n,) and `covariances` (n, 6) (`point_quality`): in every call or none."""
        desc = np.asarray(descriptors, np.float16).reshape(-1, self.dim)
        for key, value, width in (("tri_angle", tri_angles, 1), ("covariance", covariances, 6)):
            if (value is None) != (not self._quality[key]) and self._xyz:
                raise ValueError(f"add_points: {key} given in some calls only")
            if value is not None:
                self._quality[key].append(np.asarray(value, np.float32).reshape(-1, width))
        self._xyz.append(np.asarray(xyz, np.float64).reshape(-1, 3))
        self._track.append(np.asarray(track_lengths, np.int32).reshape(-1))
        self._err.append(np.asarray(errors, np.float32).reshape(-1))
        self._pending.append(desc)
        pending = np.concatenate(self._pending) if len(self._pending) > 1 else desc
        full = len(pending) // BLOCK_ROWS * BLOCK_ROWS
        for a in range(0, full, BLOCK_ROWS):
            self._write_block(pending[a : a + BLOCK_ROWS])
        self._pending = [pending[full:]] if full < len(pending) else []

    def _write_block(self, desc: np.ndarray) -> None:
        blob = _encode_block(desc, self.store["compression_level"])
        self._blocks.write(blob)
        self.blk_offsets.append(self.blk_offsets[-1] + len(blob))
        self.blk_crcs.append(zlib.crc32(blob))

    def close(self) -> int:
        """Write the map file (atomically) and remove the temporary files; its size in bytes."""
        try:
            if self._pending:
                self._write_block(np.concatenate(self._pending))
            for fh in (self._records, self._blocks, self._globals):
                fh.close()
            if not self.names:
                raise MapFormatError("map has no keyframes")
            reduced, projection, index = self._retrieval()
            with atomic_output(self.path) as tmp:
                self._write_hdf5(Path(tmp), reduced, projection, index)
                _seal_v3(Path(tmp))
            return self.path.stat().st_size
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _global_rows(self, rows) -> np.ndarray:
        """(len(rows), G) float32 rows of the full global descriptors, read from the temporary
        file (explicit reads, not a memory map: its pages would count as this process's)."""
        g = int(self.global_dim)
        rows = np.asarray(rows, np.int64)
        out = np.empty((len(rows), g), np.float32)
        runs = np.split(np.arange(len(rows)), np.flatnonzero(np.diff(rows) != 1) + 1)
        with open(self._tmp / "globals", "rb") as fh:
            for run in (r for r in runs if len(r)):
                fh.seek(int(rows[run[0]]) * g * 4)
                out[run] = np.fromfile(fh, "<f4", len(run) * g).reshape(len(run), g)
        return out

    def _retrieval(self) -> tuple[np.ndarray, np.ndarray | None, GlobalIndex]:
        from ..localization.retrieval import GlobalIndex, fit_projection_rows, project

        k, chunk = len(self.names), 128  # rows of 64 kB (16,384-D): 8 MB read at a time
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(k, min(k, 4096), replace=False))
        projection = fit_projection_rows(  # the sample read in chunks, never held whole
            lambda rows: self._global_rows(sample[rows]),
            len(sample),
            int(self.global_dim),
            self.store["global_dim"],
        )
        reduced = np.concatenate(
            [project(self._global_rows(np.arange(a, min(k, a + chunk))), projection)
             for a in range(0, k, chunk)]
        )  # fmt: skip
        index = GlobalIndex(
            reduced, self.store["index"], params=self.store["index_params"], projection=projection
        )
        logger.info("retrieval index of %d keyframes: %s", len(reduced), index.describe())
        return reduced, projection, index

    def _write_hdf5(self, tmp: Path, reduced, projection, index: GlobalIndex) -> None:
        import h5py

        str_dt = h5py.string_dtype("utf-8")
        with h5py.File(tmp, "w", userblock_size=USERBLOCK_SIZE) as f:
            self._write_attrs(f, reduced, index)
            kf = f.create_group("keyframes")
            kf.create_dataset("names", data=np.array(self.names, dtype=object), dtype=str_dt)
            kf.create_dataset("cameras", data=np.array(self.cameras, dtype=object), dtype=str_dt)
            kf.create_dataset("cam_from_world", data=np.array(self.poses, np.float64))
            kf.create_dataset("global_descriptors", data=reduced.astype(np.float32))
            if self.store["keep_full_global"]:
                k = len(self.names)
                ds = kf.create_dataset("full_global_descriptors", (k, self.global_dim), np.float16)
                for a in range(0, k, 512):
                    rows = self._global_rows(np.arange(a, min(k, a + 512)))
                    ds[a : a + 512] = rows.astype(np.float16)
            kf.create_dataset("record_offsets", data=np.array(self.rec_offsets, np.int64))
            kf.create_dataset("record_crc32", data=np.array(self.rec_crcs, np.uint32))
            kf.create_dataset("num_keypoints", data=np.array(self.num_kp, np.int64))
            _copy_blob(f, "features/records", self._tmp / "records")
            pt = f.create_group("points3D")
            pt.create_dataset("xyz", data=_cat(self._xyz, (0, 3), np.float64))
            pt.create_dataset("track_length", data=_cat(self._track, (0,), np.int32))
            pt.create_dataset("error", data=_cat(self._err, (0,), np.float32))
            for key, parts in self._quality.items():
                if parts:
                    value = _cat(parts, (0, 1), np.float32)
                    pt.create_dataset(key, data=value.reshape(-1) if key == "tri_angle" else value)
            pt.create_dataset("block_offsets", data=np.array(self.blk_offsets, np.int64))
            pt.create_dataset("block_crc32", data=np.array(self.blk_crcs, np.uint32))
            _copy_blob(f, "points3D/descriptor_blocks", self._tmp / "blocks")
            rt = f.create_group("retrieval")
            if projection is not None:
                rt.create_dataset("projection", data=projection)
            rt.create_dataset("index", data=index.to_bytes())
            st = f.create_group("aggregator_state")
            for key, value in self.state.items():
                st.create_dataset(key, data=value)

    def _write_attrs(self, f, reduced: np.ndarray, index: GlobalIndex) -> None:
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION_V3
        f.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        f.attrs["description"] = (
            "supergf_ros localization map (format 3): keyframes with poses (cam_from_world, "
            "COLMAP convention, quaternion w-first), keypoints with 3D points, one descriptor "
            "per 3D point, projected global descriptors and their FAISS index"
        )
        for key, value in self.meta.items():
            f.attrs[key] = json.dumps(value, sort_keys=True, default=str)
        layout = {
            "descriptor_dim": self.dim,
            "block_rows": BLOCK_ROWS,
            "global_dim": int(reduced.shape[1]),
            "full_global_dim": int(self.global_dim),
        }
        f.attrs["layout"] = json.dumps(layout, sort_keys=True)
        f.attrs["retrieval"] = json.dumps(index.describe(), sort_keys=True)


def _cat(parts: list[np.ndarray], empty: tuple, dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(empty, dtype)


def _copy_blob(f, name: str, source: Path) -> None:
    """A contiguous uint8 dataset holding the bytes of `source`, copied in chunks."""
    size = source.stat().st_size
    ds = f.create_dataset(name, shape=(max(size, 1),), dtype=np.uint8)
    with open(source, "rb") as fh:
        pos = 0
        while pos < size:
            chunk = np.frombuffer(fh.read(64 << 20), np.uint8)
            ds[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
    if size == 0:
        ds[0] = 0


def write_v3(path: str | Path, data, store: dict | None = None) -> int:
    """Write a `MapData` as format version 3 (see the module doc); the file size in bytes."""
    pids = np.asarray(data.point3D_ids, np.int64)
    k, p = data.num_keyframes, len(data.points3D)
    owner = np.repeat(np.arange(k), np.diff(data.keypoint_offsets))
    first = np.full(p, k, np.int64)
    obs = np.flatnonzero(pids >= 0)
    np.minimum.at(first, pids[obs], owner[obs])
    order = np.argsort(first, kind="stable")  # points numbered by their first keyframe
    new_id = np.empty(p, np.int64)
    new_id[order] = np.arange(p)
    writer = MapWriter(
        path,
        extractor=data.extractor,
        aggregator=data.aggregator,
        descriptor_dim=data.descriptors.shape[1],
        aggregator_state=data.aggregator_state,
        build_conf=data.build_conf,
        summary=data.summary,
        store=store,
    )
    for i in range(k):
        a, b = int(data.keypoint_offsets[i]), int(data.keypoint_offsets[i + 1])
        sel = np.flatnonzero(pids[a:b] >= 0) + a
        writer.add_keyframe(
            data.keyframe_names[i], data.cameras[i], data.cam_from_world[i], data.keypoints[sel],
            new_id[pids[sel]], data.scores[sel], data.global_descriptors[i],
        )  # fmt: skip
    rep = _mean_descriptors(data.descriptors[obs], pids[obs], p)[order]
    angles, covs = data.point_tri_angles, data.point_covariances
    writer.add_points(
        data.points3D[order], rep, data.track_lengths[order], data.point_errors[order],
        None if angles is None else angles[order], None if covs is None else covs[order],
    )  # fmt: skip
    return writer.close()


def write_v3_streamed(writer: MapWriter, source, xyz, track_lengths, errors, quality=None) -> int:
    """Write a version-3 map whose keyframes stay on disk: the same file as `write_v3` of the
    same `MapData`, holding O(observations) indices and a few keyframes at a time.

    `source`: `num_keyframes`; `point3D_ids(i)` (N_i,) int64 (-1 = none);
    `keyframe(i)` -> (name, camera, cam_from_world, keypoints (N_i, 2), scores (N_i,), global);
    `descriptors(i, rows)` -> (len(rows), D) float32 of keyframe i's keypoints `rows`.
    `quality`: (tri_angles (P,), covariances (P, 6)) of `point_quality`, or None.
    """
    k, p = source.num_keyframes, len(xyz)
    first = np.full(p, k, np.int64)
    obs_rows, obs_pids = [], []
    for i in range(k):
        pids = np.asarray(source.point3D_ids(i), np.int64)
        rows = np.flatnonzero(pids >= 0)
        np.minimum.at(first, pids[rows], i)
        obs_rows.append(rows)
        obs_pids.append(pids[rows])
    order = np.argsort(first, kind="stable")  # points numbered by their first keyframe
    new_id = np.empty(p, np.int64)
    new_id[order] = np.arange(p)
    for i in range(k):
        name, camera, pose, kp, scores, g = source.keyframe(i)
        sel = obs_rows[i]
        writer.add_keyframe(name, camera, pose, kp[sel], new_id[obs_pids[i]], scores[sel], g)
    observations = _Observations(source, obs_rows, obs_pids, p, writer.dim)
    # points in chunks of at most 65,536 observations (their descriptors are gathered at once)
    cum = np.cumsum(observations.counts[order])
    a = 0
    while a < p:
        done = int(cum[a - 1]) if a else 0
        b = min(
            p, a + 16 * BLOCK_ROWS, max(a + 1, int(np.searchsorted(cum, done + (1 << 16), "right")))
        )
        ids = order[a:b]
        extra = (None, None) if quality is None else (quality[0][ids], quality[1][ids])
        writer.add_points(xyz[ids], observations.mean_descriptors(ids), track_lengths[ids],
                          errors[ids], *extra)  # fmt: skip
        a = b
    return writer.close()


class _Observations:
    """Each point's observations (keyframe, keypoint row) in keyframe order, and their mean
    descriptors computed as `_mean_descriptors` does (the same sums, in the same order)."""

    def __init__(self, source, obs_rows: list, obs_pids: list, p: int, dim: int) -> None:
        self.source, self.rows, self.dim = source, obs_rows, dim
        pids = np.concatenate(obs_pids) if obs_pids else np.zeros(0, np.int64)
        self.kf = np.repeat(np.arange(len(obs_rows)), [len(r) for r in obs_rows])
        self.row = np.concatenate(obs_rows) if obs_rows else np.zeros(0, np.int64)
        self.by_pid = np.argsort(pids, kind="stable")
        self.counts = np.bincount(pids, minlength=p)
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def _keyframe_descriptors(self, i: int) -> np.ndarray:
        if i not in self._cache:
            self._cache[i] = np.asarray(self.source.descriptors(i, self.rows[i]), np.float32)
            while len(self._cache) > 64:
                self._cache.popitem(last=False)
        return self._cache[i]

    def mean_descriptors(self, ids: np.ndarray) -> np.ndarray:
        cnt, st = self.counts[ids], self.starts[ids]
        seg = np.concatenate([[0], np.cumsum(cnt)[:-1]]).astype(np.int64)
        idx = self.by_pid[np.repeat(st - seg, cnt) + np.arange(int(cnt.sum()))]
        kfs, rows = self.kf[idx], self.row[idx]
        desc = np.empty((len(idx), self.dim), np.float32)
        for i in np.unique(kfs):
            sel = np.flatnonzero(kfs == i)
            pos = np.searchsorted(self.rows[i], rows[sel])
            desc[sel] = self._keyframe_descriptors(int(i))[pos]
        out = np.zeros((len(ids), self.dim), np.float32)
        nz = np.flatnonzero(cnt > 0)
        if len(nz):
            sums = np.add.reduceat(desc, seg[nz], axis=0)
            out[nz] = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
        return out


def _mean_descriptors(desc: np.ndarray, pids: np.ndarray, p: int) -> np.ndarray:
    """(p, D) normalized mean descriptor of each point's observations (zeros if none)."""
    order = np.argsort(pids, kind="stable")
    ids, starts = np.unique(pids[order], return_index=True)
    out = np.zeros((p, desc.shape[1]), np.float32)
    if len(ids):
        sums = np.add.reduceat(np.asarray(desc, np.float32)[order], starts, axis=0)
        out[ids] = sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return out


# -- reading --------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyframeFeatures:
    """A keyframe's keypoints with a 3D point, their point ids and (point) descriptors."""

    keypoints: np.ndarray  # (n, 2) float32
    descriptors: np.ndarray  # (n, D) float32
    point3D_ids: np.ndarray  # (n,) int64
    scores: np.ndarray  # (n,) float16

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.keypoints, self.descriptors, self.point3D_ids))


@dataclass(frozen=True)
class ArraySpec:
    """Shape and dtype of an array that stays in the file."""

    shape: tuple[int, ...]
    dtype: np.dtype


class _Blobs:
    """Reads CRC-checked byte ranges of one dataset (offsets/crcs from the checked part)."""

    def __init__(self, path: Path, fd: int, what: str, base: int, offsets, crcs) -> None:
        self.path, self.fd, self.what, self.base = path, fd, what, base
        self.offsets, self.crcs = offsets, crcs

    def __len__(self) -> int:
        return len(self.crcs)

    def read(self, i: int) -> bytes:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        blob = os.pread(self.fd, b - a, self.base + a)
        if len(blob) != b - a or zlib.crc32(blob) != int(self.crcs[i]):
            raise MapFormatError(
                f"map {self.path}: {self.what} {i} fails its checksum: the file is corrupt"
            )
        return blob


class _Points:
    """`points3D[ids]` (n, 3) float64 read from the file (checked at open), not held; any
    other per-point dataset of `width` values of `dtype` the same way."""

    def __init__(self, fd: int, offset: int, count: int, width: int = 3, dtype="<f8") -> None:
        self.fd, self.offset, self.count = fd, offset, count
        self.width, self.dtype = width, np.dtype(dtype)
        self.shape = (count, width)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, ids) -> np.ndarray:
        ids = np.asarray(ids, np.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.count):
            raise IndexError("3D point id out of range")
        uniq, inverse = np.unique(ids, return_inverse=True)
        out = np.empty((len(uniq), self.width), self.dtype.newbyteorder("="))
        row = self.width * self.dtype.itemsize
        runs = np.split(np.arange(len(uniq)), np.flatnonzero(np.diff(uniq) > 64) + 1)
        for run in runs:
            if not len(run):
                continue
            lo, hi = int(uniq[run[0]]), int(uniq[run[-1]]) + 1
            raw = _pread_all(self.fd, (hi - lo) * row, self.offset + lo * row)
            out[run] = np.frombuffer(raw, self.dtype).reshape(-1, self.width)[uniq[run] - lo]
        return out[inverse]


class _GlobalRows:
    """`global_descriptors` of a lazy map: shape (K, G) as the aggregator's; rows (for a
    few ids) reconstructed in the aggregator's space, so `rows @ query` scores as `search`."""

    def __init__(self, index: GlobalIndex, full_dim: int) -> None:
        self.index = index
        self.shape = (len(index), full_dim)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, ids) -> np.ndarray:
        ids = np.asarray(ids, np.int64).reshape(-1)
        rows = (
            self.index.index.reconstruct_batch(ids) if len(ids) else np.zeros((0, self.index.dim))
        )
        return rows if self.index.projection is None else rows @ self.index.projection.T


class LazyMap:
    """A version-3 map opened for localization: poses, cameras, names and the retrieval index in
    memory; each keyframe's features read from the file when asked (`keyframe(i)`), checked,
    and kept in an LRU cache of `cache_size` keyframes. Attributes as `MapData` where they are
    held (`points3D`, `global_descriptors`, `descriptors` are views or shapes)."""

    format_version = FORMAT_VERSION_V3

    def __init__(self, path: str | Path, cache_size: int = 128) -> None:
        self.path = Path(path)
        self.cache_size = max(1, int(cache_size))
        self._cache: OrderedDict[int, KeyframeFeatures] = OrderedDict()
        self._lock = threading.Lock()
        self.cache_hits = self.cache_misses = 0
        regions = check_seal_v3(self.path, lazy=True)
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            self._read_small(regions)
        except MapFormatError:
            self.close()
            raise
        except Exception as err:  # h5py errors on a damaged (but sealed-valid?) file
            self.close()
            raise MapFormatError(
                f"map {self.path} is corrupt: {type(err).__name__}: {err}"
            ) from err

    def _read_small(self, regions: dict[str, tuple[int, int]]) -> None:
        import h5py

        def offset(f, name: str) -> int:  # an empty dataset has no storage (a map of 0 points)
            if name not in regions and f[name].size == 0:
                return 0
            return regions[name][0]

        from ..localization.retrieval import GlobalIndex

        with h5py.File(self.path, "r") as f:
            for key in ("extractor", "aggregator", "build_conf", "summary", "layout", "retrieval"):
                setattr(self, key, _attr_json(f, key, self.path))
            self.keyframe_names = _strings(f["keyframes/names"][()], "keyframes/names", self.path)
            read = lambda name: f[name][()]  # noqa: E731
            self.cameras = _read_cameras(read, self.path)
            self.cam_from_world = _read_poses(read, self.path, len(self.keyframe_names))
            self.aggregator_state = {k: v[()] for k, v in f.get("aggregator_state", {}).items()}
            projection = f["retrieval/projection"][()] if "retrieval/projection" in f else None
            self.global_index = GlobalIndex.from_bytes(
                f["retrieval/index"][()], self.retrieval, projection
            )
            kf = f["keyframes"]
            self._records = _Blobs(self.path, self._fd, "keyframe record",
                                   offset(f, "features/records"), kf["record_offsets"][()],
                                   kf["record_crc32"][()])  # fmt: skip
            self._blocks = _Blobs(self.path, self._fd, "descriptor block",
                                  offset(f, "points3D/descriptor_blocks"),
                                  f["points3D/block_offsets"][()],
                                  f["points3D/block_crc32"][()])  # fmt: skip
            num_points = int(f["points3D/xyz"].shape[0])
            xyz_offset = offset(f, "points3D/xyz")
            num_kp = int(kf["num_keypoints"][()].sum())
        k, dim = len(self.keyframe_names), int(self.layout["descriptor_dim"])
        if len(self._records) != k or len(self.global_index) != k:
            raise MapFormatError(f"map {self.path}: {k} keyframes but other keyframe counts")
        self.points3D = _Points(self._fd, xyz_offset, num_points)
        # the optional point quality (older maps: None), rows read like points3D
        cov, angle = regions.get("points3D/covariance"), regions.get("points3D/tri_angle")
        self.point_covariances = (
            None if cov is None else _Points(self._fd, cov[0], num_points, 6, "<f4")
        )
        self.point_tri_angles = (
            None if angle is None else _Points(self._fd, angle[0], num_points, 1, "<f4")
        )
        self.descriptors = ArraySpec((num_kp, dim), np.dtype(np.float16))
        self.global_descriptors = _GlobalRows(self.global_index, self.layout["full_global_dim"])
        self.block_rows = int(self.layout["block_rows"])

    @property
    def num_keyframes(self) -> int:
        return len(self.keyframe_names)

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()

    def keyframe(self, i: int) -> KeyframeFeatures:
        """Keyframe `i`'s features (from the LRU cache, or read, checked and cached)."""
        i = int(i)
        with self._lock:
            hit = self._cache.get(i)
            if hit is not None:
                self._cache.move_to_end(i)
                self.cache_hits += 1
                return hit
        feats = self._load(i)
        with self._lock:
            self.cache_misses += 1
            self._cache[i] = feats
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return feats

    @property
    def cached(self) -> list[int]:
        with self._lock:
            return list(self._cache)

    def _load(self, i: int) -> KeyframeFeatures:
        if not 0 <= i < self.num_keyframes:
            raise IndexError(f"keyframe {i} out of range (map has {self.num_keyframes})")
        try:
            kp, pids, scores = _decode_record(self._records.read(i))
            pids = pids.astype(np.int64)
            if len(pids) and (pids.min() < 0 or pids.max() >= len(self.points3D)):
                raise ValueError("point id out of range")
            desc = self._point_descriptors(pids)
        except MapFormatError:
            raise
        except (ValueError, zlib.error) as err:
            raise MapFormatError(f"map {self.path}: keyframe {i} is unreadable: {err}") from None
        return KeyframeFeatures(kp, desc, pids, scores)

    def _point_descriptors(self, pids: np.ndarray) -> np.ndarray:
        dim, rows = self.descriptors.shape[1], self.block_rows
        out = np.empty((len(pids), dim), np.float32)
        blocks = pids // rows
        for b in np.unique(blocks):
            desc = _decode_block(self._blocks.read(int(b)), dim)
            sel = np.flatnonzero(blocks == b)
            out[sel] = desc[pids[sel] - b * rows]
        return out


def is_v3(path: str | Path) -> bool:
    """Whether `path` is a version-3 map file (by its first bytes)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(V3_MAGIC)) == V3_MAGIC
    except OSError:
        return False


def open_map(path: str | Path, cache_size: int = 128) -> LazyMap:
    """Open a version-3 map lazily (see `LazyMap`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"map file not found: {path}")
    with open(path, "rb") as fh:
        if fh.read(len(V3_MAGIC)) != V3_MAGIC:
            raise MapFormatError(f"{path} is not a version-3 map (use read_map)")
    return LazyMap(path, cache_size)


def read_v3(path: Path) -> dict[str, Any]:
    """Everything of a version-3 map, checked, as `MapData` keyword arguments."""
    check_seal_v3(path, lazy=False)
    lazy = LazyMap(path, cache_size=1)
    try:
        feats = [lazy._load(i) for i in range(lazy.num_keyframes)]
        full = _eager_globals(lazy)
        import h5py

        with h5py.File(path, "r") as f:
            pts = {k: f[f"points3D/{k}"][()] for k in ("xyz", "track_length", "error")}
            for key in ("tri_angle", "covariance"):
                pts[key] = f[f"points3D/{key}"][()] if f"points3D/{key}" in f else None
    finally:
        lazy.close()
    counts = [len(x.point3D_ids) for x in feats]
    dim = lazy.descriptors.shape[1]
    return {
        "keyframe_names": lazy.keyframe_names,
        "cameras": lazy.cameras,
        "cam_from_world": lazy.cam_from_world,
        "keypoint_offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "keypoints": _cat([x.keypoints for x in feats], (0, 2), np.float32),
        "scores": _cat([x.scores for x in feats], (0,), np.float32),
        "descriptors": _cat([x.descriptors for x in feats], (0, dim), np.float32),
        "point3D_ids": _cat([x.point3D_ids for x in feats], (0,), np.int64),
        "points3D": np.ascontiguousarray(pts["xyz"], np.float64),
        "track_lengths": np.asarray(pts["track_length"], np.int32),
        "point_errors": np.asarray(pts["error"], np.float32),
        "point_tri_angles": _optional(pts["tri_angle"]),
        "point_covariances": _optional(pts["covariance"]),
        "global_descriptors": full,
        "extractor": lazy.extractor,
        "aggregator": lazy.aggregator,
        "aggregator_state": lazy.aggregator_state,
        "build_conf": lazy.build_conf,
        "summary": lazy.summary,
        "format_version": FORMAT_VERSION_V3,
    }


def _optional(value: np.ndarray | None) -> np.ndarray | None:
    return None if value is None else np.ascontiguousarray(value, np.float32)


def _eager_globals(lazy: LazyMap) -> np.ndarray:
    """(K, G) global descriptors in the aggregator's space: stored, or reconstructed from the
    projected ones (the same inner products with any query, up to scale)."""
    import h5py

    with h5py.File(lazy.path, "r") as f:
        if "keyframes/full_global_descriptors" in f:
            return f["keyframes/full_global_descriptors"][()].astype(np.float32)
    rows = lazy.global_descriptors[np.arange(lazy.num_keyframes)]
    rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(rows, np.float32)
