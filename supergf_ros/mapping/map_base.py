"""What every map format version shares: names, errors, checksums and attribute parsing.

The formats themselves: `map_format` (versions 1 and 2, and `MapData`), `map_store` (version 3,
read lazily). Nothing here imports either, so both build on it without an import cycle.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import Camera, Pose

FORMAT_NAME = "supergf_ros.map"
FORMAT_VERSION = 3  # what `write_map` writes by default (`mapping.map_store`)
# Versions this code reads: 1 (no checksums), 2 (checksums, verified at load) and 3 (compact,
# sealed, read lazily by `map_store.open_map`).
READABLE_VERSIONS = (1, 2, 3)
WRITABLE_VERSIONS = (2, 3)
CHECKSUM_ATTRIBUTES = ("extractor", "aggregator", "build_conf", "summary")
MAX_ATTRIBUTE_CHARS = 16 << 20  # a JSON attribute larger than this is not a map's


class MapFormatError(ValueError):
    """A map file (or MapData) whose content is wrong: corrupt, truncated, inconsistent."""


# The first USERBLOCK_SIZE bytes of a version-2 file (an HDF5 user block, which HDF5 skips) hold
# SEAL_MAGIC and a JSON record of the file's size and CRC-32s: one per dataset's raw bytes (and
# per identity attribute's text where it is stored contiguously) and one of everything else
# (HDF5's own structure). They are checked on the raw bytes *before* HDF5 parses the file:
# libhdf5 can loop forever or crash on some corrupted structures, so damage never reaches it.
USERBLOCK_SIZE = 8192
SEAL_MAGIC = b"supergf_ros.map sealed crc32\n"
V3_MAGIC = b"supergf_ros.map v3 sealed crc32\n"  # version 3: `map_store`
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


# Extractor/aggregator options that choose *how* a network runs, not *what* it computes: they
# are left out of a map's identity, so a map built with one backend localizes with any other.
RUNTIME_OPTIONS = ("backend", "device", "onnx_cache_dir")


def strip_runtime_options(identity: dict[str, Any]) -> dict[str, Any]:
    """A copy of an extractor/aggregator identity without `RUNTIME_OPTIONS` in its config."""
    config = {k: v for k, v in dict(identity.get("config", {})).items() if k not in RUNTIME_OPTIONS}
    return {**identity, "config": config}


def _text_crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def _dataset_crc(value: np.ndarray) -> int:
    """CRC-32 of an array as read back from HDF5: dtype, shape and little-endian bytes
    (variable-length strings: each one's UTF-8 length-prefixed), so that a changed type or
    shape is caught as well as changed values."""
    arr = np.asarray(value)
    if arr.dtype.kind == "O" or arr.dtype.kind in "SU":
        crc = zlib.crc32(f"str{arr.shape}".encode())
        for item in arr.reshape(-1):
            b = item if isinstance(item, bytes) else str(item).encode("utf-8")
            crc = zlib.crc32(len(b).to_bytes(8, "little"), crc)
            crc = zlib.crc32(b, crc)
        return crc
    le = arr.dtype.newbyteorder("<")
    crc = zlib.crc32(f"{le.str}{arr.shape}".encode())
    flat = np.ascontiguousarray(arr, dtype=le).reshape(-1)
    return zlib.crc32(memoryview(flat).cast("B") if flat.size else b"", crc)


def _utf8(value: Any, error: str) -> Any:
    """`value` decoded if it is bytes (else as is); MapFormatError "`error`: ..." if not UTF-8."""
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as err:
        raise MapFormatError(f"{error}: {err}") from None


def _attr_text(f, key: str, path: Path) -> str:
    if key not in f.attrs:
        raise MapFormatError(f"map {path} lacks the '{key}' attribute (corrupt or incomplete map)")
    value = _utf8(f.attrs[key], f"map {path}: attribute '{key}' is not UTF-8 text")
    if not isinstance(value, str):
        raise MapFormatError(
            f"map {path}: attribute '{key}' must be a text string; found {type(value).__name__}"
        )
    if len(value) > MAX_ATTRIBUTE_CHARS:
        raise MapFormatError(
            f"map {path}: attribute '{key}' has {len(value)} characters "
            f"(at most {MAX_ATTRIBUTE_CHARS} expected)"
        )
    return value


def _attr_json(f, key: str, path: Path, kind: type = dict) -> Any:
    text = _attr_text(f, key, path)
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise MapFormatError(f"map {path}: attribute '{key}' is not valid JSON: {err}") from None
    if not isinstance(value, kind):
        raise MapFormatError(
            f"map {path}: attribute '{key}' must be a JSON {kind.__name__}; "
            f"found {type(value).__name__}"
        )
    return value


def _strings(value: np.ndarray, name: str, path: Path) -> list[str]:
    if value.ndim != 1:
        raise MapFormatError(
            f"map {path}: {name} must be a 1-D list of strings; found {value.shape}"
        )
    out = []
    for item in value.tolist():
        item = _utf8(item, f"map {path}: {name} holds text that is not UTF-8")
        if not isinstance(item, str):
            raise MapFormatError(
                f"map {path}: {name} must hold strings; found {type(item).__name__}"
            )
        out.append(item)
    return out


def _numeric(value: np.ndarray, name: str, path: Path, kinds: str, dtype) -> np.ndarray:
    if value.dtype.kind not in kinds:
        raise MapFormatError(
            f"map {path}: {name} must be numeric ({np.dtype(dtype).name}); found dtype {value.dtype}"
        )
    return np.ascontiguousarray(value, dtype=dtype)


def _plain(value: Any, limit: int = 40) -> str:
    """A file value for an error message: numpy scalars as Python values, printable, bounded."""
    if isinstance(value, np.generic):
        value = value.item()
    return ascii(value)[:limit]


def _read_version(f, path: Path) -> int:
    """Check the file's format attribute; return its format version if this code reads it."""
    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode("utf-8", "replace")
    if fmt != FORMAT_NAME:
        raise MapFormatError(
            f"{path} is not a supergf_ros map (format attribute: {_plain(fmt, 80)})"
        )
    raw_version = f.attrs.get("format_version", -1)
    try:
        version = int(raw_version)
    except (TypeError, ValueError):
        version = -1
    if version not in READABLE_VERSIONS:
        raise MapFormatError(
            f"map {path} has format version {_plain(raw_version)}; this supergf_ros reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}. Rebuild the map with `supergf-ros build-map`."
        )
    return version


def _read_cameras(read, path: Path) -> list[Camera]:
    """One Camera per keyframe; each distinct JSON text parsed once (keyframes share cameras)."""
    cams, parsed = [], {}
    for i, text in enumerate(_strings(read("keyframes/cameras"), "keyframes/cameras", path)):
        if text not in parsed:
            try:
                parsed[text] = Camera.from_dict(json.loads(text))
            except (ValueError, KeyError, TypeError, RecursionError) as err:
                raise MapFormatError(
                    f"map {path}: keyframes/cameras[{i}] is not a valid camera: {err}"
                ) from None
        cams.append(parsed[text])
    return cams


def _read_poses(read, path: Path, count: int) -> list[Pose]:
    poses_arr = _numeric(read("keyframes/cam_from_world"), "cam_from_world", path, "f", np.float64)
    if poses_arr.shape != (count, 7):
        raise MapFormatError(
            f"map {path}: keyframes/cam_from_world must have shape ({count}, 7); "
            f"found {poses_arr.shape}"
        )
    poses = []
    for i, p in enumerate(poses_arr):
        try:
            poses.append(Pose(p[:4], p[4:]))
        except ValueError as err:
            raise MapFormatError(f"map {path}: keyframes/cam_from_world[{i}]: {err}") from None
    return poses


def check_seal_layout(path: Path, regions: list, size: int, actual_size: int) -> None:
    """The file's length and the integrity header's regions (offset, length) are plausible:
    in order, inside the file, after the header; MapFormatError otherwise."""
    if actual_size != size:
        raise MapFormatError(
            f"map {path} is {'truncated' if actual_size < size else 'longer than written'}: "
            f"{actual_size} B, written as {size} B"
        )
    pos = USERBLOCK_SIZE
    for _, offset, n, _ in regions:
        if offset < pos or n <= 0 or offset + n > size:
            raise MapFormatError(f"map {path}: its integrity header is corrupt (bad region)")
        pos = offset + n


def dataset_ranges(f) -> list[tuple[str, int, int]]:
    """(name, file offset, stored size) of every contiguous dataset of an open h5py file."""
    import h5py

    ranges: list[tuple[str, int, int]] = []

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            offset, size = obj.id.get_offset(), obj.id.get_storage_size()
            if offset is not None and size:
                ranges.append((name, int(offset), int(size)))

    f.visititems(visit)
    return ranges
