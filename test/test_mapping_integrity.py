"""Map file integrity on a real (small SIFT) map: per-dataset checksums, clear structural
errors, maps without checksums (format version 1) still load, and a seeded fuzz of the reader
over corrupted copies that either raises MapFormatError or loads the identical map."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import supergf_ros
from supergf_ros.mapping import MapData, read_map, write_map
from supergf_ros.mapping.map_format import MapFormatError
from supergf_ros.mapping.map_store import open_map

NAMES = ["0000.jpg", "0001.jpg", "0002.jpg"]
_SOURCES = [
    "mapping/build_map.py",
    "mapping/triangulation.py",
    "mapping/pairs.py",
    "mapping/map_format.py",
    "mapping/map_base.py",
    "mapping/map_store.py",
    "features/sift.py",
    "models/aggregators.py",
    "matching.py",
]


@pytest.fixture(scope="session")
def sift_map(data_dir: Path, cache_dir: Path) -> Path:
    """A real 3-keyframe SIFT + VLAD map of fountain-P11 (built once, cached by code version)."""
    from supergf_ros.mapping.build_map import build_map

    root = Path(supergf_ros.__file__).parent
    digest = hashlib.sha256(json.dumps(NAMES).encode())
    for rel in _SOURCES:
        path = root / rel
        digest.update(path.read_bytes() if path.exists() else b"")
    path = cache_dir / f"map_fountain_sift3_{digest.hexdigest()[:16]}.h5"
    try:
        read_map(path)
        return path
    except (FileNotFoundError, ValueError):
        pass
    build_map(
        data_dir / "strecha" / "fountain-P11",
        path,
        image_names=NAMES,
        features="sift",
        extractor_conf={"max_keypoints": 400, "resize_max": 480},
        global_name="vlad",
        global_conf={"num_clusters": 8},
        progress=False,
    )
    return path


def _same_map(a: MapData, b: MapData) -> bool:
    arrays = (
        "keypoint_offsets", "keypoints", "scores", "descriptors", "point3D_ids", "points3D",
        "track_lengths", "point_errors", "global_descriptors",
    )  # fmt: skip
    return (
        a.keyframe_names == b.keyframe_names
        and a.cameras == b.cameras
        and all(
            np.array_equal(p.qvec, q.qvec) and np.array_equal(p.tvec, q.tvec)
            for p, q in zip(a.cam_from_world, b.cam_from_world, strict=True)
        )
        and all(
            getattr(a, k).dtype == getattr(b, k).dtype
            and np.array_equal(getattr(a, k), getattr(b, k))
            for k in arrays
        )
        and a.aggregator_state.keys() == b.aggregator_state.keys()
        and all(
            a.aggregator_state[k].dtype == b.aggregator_state[k].dtype
            and np.array_equal(a.aggregator_state[k], b.aggregator_state[k])
            for k in a.aggregator_state
        )
        and (a.extractor, a.aggregator, a.build_conf, a.summary, a.format_version)
        == (b.extractor, b.aggregator, b.build_conf, b.summary, b.format_version)
    )


def _data_ranges(path: Path) -> dict[str, tuple[int, int]]:
    """File byte range of each dataset's raw data (contiguous storage)."""
    out = {}
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None:
                out[name] = (obj.id.get_offset(), obj.id.get_storage_size())

        f.visititems(visit)
    return out


def _flip(raw: bytes, offset: int, mask: int = 0x10) -> bytes:
    b = bytearray(raw)
    b[offset] ^= mask
    return bytes(b)


@pytest.mark.parametrize(
    "dataset",
    [
        "points3D/xyz",
        "features/records",
        "points3D/descriptor_blocks",
        "keyframes/global_descriptors",
        "keyframes/record_crc32",
        "keyframes/cam_from_world",
        "retrieval/index",
        "aggregator_state/vlad_centroids",
    ],
)
def test_a_flipped_byte_names_the_corrupt_dataset(sift_map: Path, tmp_path: Path, dataset: str):
    raw = sift_map.read_bytes()
    start, size = _data_ranges(sift_map)[dataset]
    corrupt = tmp_path / "corrupt.h5"
    # a low mantissa/low-order bit: the value stays finite and in range, so only a checksum sees it
    corrupt.write_bytes(_flip(raw, start + size // 2 - (size // 2) % 8, 0x01))
    with pytest.raises(MapFormatError, match=rf"'{dataset}'.*checksum") as err:
        read_map(corrupt)
    assert str(corrupt) in str(err.value)


def test_a_flipped_byte_in_an_identity_attribute_is_detected(sift_map: Path, tmp_path: Path):
    raw = sift_map.read_bytes()
    with h5py.File(sift_map, "r") as f:
        needle = f.attrs["extractor"]
    at = raw.find(needle.encode())
    assert at > 0 and '"max_keypoints": 400' in needle
    corrupt = tmp_path / "corrupt.h5"
    # change one digit inside the extractor's JSON: still valid JSON, a different identity
    i = at + needle.index('"max_keypoints": 400') + len('"max_keypoints": ')
    corrupt.write_bytes(raw[:i] + b"9" + raw[i + 1 :])
    with pytest.raises(MapFormatError, match=r"'extractor'.*checksum"):
        read_map(corrupt)


def test_maps_without_checksums_still_load(sift_map: Path, tmp_path: Path):
    v2 = tmp_path / "v2.h5"
    write_map(v2, read_map(sift_map), format_version=2)
    legacy = tmp_path / "v1.h5"
    # what format version 1 wrote: the same HDF5 content without a user block or checksums
    with h5py.File(v2, "r") as src, h5py.File(legacy, "w") as dst:
        for key in src:
            src.copy(key, dst)
        for key, value in src.attrs.items():
            if key != "checksums":
                dst.attrs[key] = value
        dst.attrs["format_version"] = 1
    data, back = read_map(v2), read_map(legacy)
    assert back.format_version == 1 and data.format_version == 2
    back.format_version = 2
    assert _same_map(data, back)
    # version 2 requires them
    with h5py.File(legacy, "a") as f:
        f.attrs["format_version"] = 2
    with pytest.raises(MapFormatError, match="checksums"):
        read_map(legacy)


def test_structural_errors_say_what_was_expected_and_found(sift_map: Path):
    data = read_map(sift_map)
    m = data.keypoints.shape[0]
    off = data.keypoint_offsets.copy()
    data.keypoint_offsets = off.copy()
    data.keypoint_offsets[1] = off[2] + 7
    with pytest.raises(
        MapFormatError,
        match=rf"keypoint_offsets must be non-decreasing from 0 to {m}; found {off[2] + 7} "
        rf"then {off[2]} at index 1",
    ):
        data.validate()
    data.keypoint_offsets = off[:-1]
    with pytest.raises(MapFormatError, match=r"keypoint_offsets must have 4 entries \(3 keyframes"):
        data.validate()
    data.keypoint_offsets = off.copy()
    data.keypoint_offsets[-1] = m + 1
    with pytest.raises(
        MapFormatError, match=rf"end at the number of keypoints \({m}\); found {m + 1}"
    ):
        data.validate()
    data.keypoint_offsets = off
    ids = data.point3D_ids.copy()
    data.point3D_ids[5] = data.points3D.shape[0]
    with pytest.raises(
        MapFormatError,
        match=rf"point3D_ids out of range: must be -1 or 0..{data.points3D.shape[0] - 1}",
    ):
        data.validate()
    data.point3D_ids = ids
    data.validate()


def test_fuzz_corrupted_copies_raise_map_format_error_or_load_identical(
    sift_map: Path, tmp_path: Path
):
    raw = sift_map.read_bytes()
    original = read_map(sift_map)
    ranges = sorted(_data_ranges(sift_map).values())
    in_data = np.zeros(len(raw), bool)
    for start, size in ranges:
        in_data[start : start + size] = True
    metadata = np.flatnonzero(~in_data)  # object headers, heaps, B-trees, superblock
    rng = np.random.default_rng(1234)
    path = tmp_path / "fuzz.h5"
    outcomes = {"error": 0, "identical": 0}
    start_time = time.perf_counter()
    for case in range(400):
        kind = rng.random()
        if kind < 0.12:
            cut = int(rng.integers(0, len(raw)))
            data, what = raw[:cut], f"truncated to {cut} B"
        else:
            b = bytearray(raw)
            flips = int(rng.integers(1, 4))
            for _ in range(flips):
                pool = metadata if rng.random() < 0.6 else None
                at = int(rng.choice(pool)) if pool is not None else int(rng.integers(len(raw)))
                if rng.random() < 0.8:
                    b[at] ^= 1 << int(rng.integers(8))
                else:
                    b[at] = int(rng.integers(256))
            data, what = bytes(b), f"{flips} byte(s) changed"
        path.write_bytes(data)
        _lazy_read_is_refused_or_identical(path, original, case, what)
        try:
            back = read_map(path)
        except MapFormatError as err:
            msg = str(err)
            assert msg and str(path) in msg and "\n" not in msg.strip(), (case, what, msg)
            outcomes["error"] += 1
            continue
        assert _same_map(back, original), f"case {case} ({what}) loaded a different map silently"
        outcomes["identical"] += 1
    assert outcomes["error"] > 100 and outcomes["identical"] > 10, outcomes
    assert time.perf_counter() - start_time < 60


def _lazy_read_is_refused_or_identical(path: Path, original: MapData, case: int, what: str):
    """Opening lazily and reading every keyframe: MapFormatError or the identical arrays."""
    try:
        lazy = open_map(path)
        feats = [lazy.keyframe(i) for i in range(lazy.num_keyframes)]
        points = lazy.points3D[np.arange(len(lazy.points3D))]
    except MapFormatError as err:
        assert str(path) in str(err), (case, what, str(err))
        return
    off = original.keypoint_offsets
    for i, kf in enumerate(feats):
        sl = slice(int(off[i]), int(off[i + 1]))
        assert np.array_equal(kf.keypoints, original.keypoints[sl]), (case, what)
        assert np.array_equal(kf.descriptors, original.descriptors[sl]), (case, what)
        assert np.array_equal(kf.point3D_ids, original.point3D_ids[sl]), (case, what)
    assert np.array_equal(points, original.points3D), (case, what)
    lazy.close()


def test_damaged_structure_is_refused_before_hdf5_parses_it(
    sift_map: Path, tmp_path: Path, monkeypatch
):
    """libhdf5 can loop forever on some damaged structures (seen in this fuzz before the seal):
    a sealed map's bytes are checked first, so HDF5 never opens a damaged file."""
    raw = sift_map.read_bytes()
    ranges = _data_ranges(sift_map)
    data_start = min(o for o, _ in ranges.values())
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(_flip(raw, 8192 + 200))  # inside the superblock / root object header
    assert data_start > 8192 + 200

    def no_hdf5(*args, **kwargs):
        raise AssertionError("HDF5 opened a damaged file")

    monkeypatch.setattr(h5py, "File", no_hdf5)
    with pytest.raises(MapFormatError, match=r"HDF5 structure .* fails its checksum"):
        read_map(corrupt)
    corrupt.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(
        MapFormatError, match=rf"truncated: {len(raw) - 1000} B, written as {len(raw)} B"
    ):
        read_map(corrupt)
