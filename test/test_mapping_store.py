"""Map format 3 (mapping/map_store.py): what it stores, lazy reading equal to eager, the LRU
bound, the saved retrieval index loaded (not rebuilt), its recall, damage refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_mapping_format import _toy_map

from supergf_ros.localization import Localizer
from supergf_ros.localization import retrieval as retrieval_module
from supergf_ros.localization.retrieval import GlobalIndex
from supergf_ros.mapping import MapFormatError, read_map, write_map
from supergf_ros.mapping.map_store import open_map


def test_v3_keeps_keypoints_with_a_point_and_one_descriptor_per_point(tmp_path: Path):
    data = _toy_map(num_keyframes=4, n=30)
    path = tmp_path / "m.h5"
    write_map(path, data)
    back = read_map(path)
    assert back.format_version == 3
    has_point = data.point3D_ids >= 0
    assert len(back.keypoints) == int(has_point.sum())
    # the same 3D points (renumbered by first keyframe) seen at the same keypoints
    np.testing.assert_array_equal(
        back.points3D[back.point3D_ids], data.points3D[data.point3D_ids[has_point]]
    )
    np.testing.assert_array_equal(back.keypoints, data.keypoints[has_point])
    # every observation of a point carries the point's (mean, normalized) descriptor
    for p in range(len(back.points3D)):
        rows = back.descriptors[back.point3D_ids == p]
        assert np.allclose(rows, rows[:1])
    np.testing.assert_allclose(np.linalg.norm(back.descriptors, axis=1), 1, atol=2e-3)
    # global descriptors: small maps are projected losslessly (same similarities)
    q = np.random.default_rng(3).standard_normal(data.global_descriptors.shape[1])
    a, b = data.global_descriptors @ q, back.global_descriptors @ q
    np.testing.assert_allclose(a / np.linalg.norm(a), b / np.linalg.norm(b), atol=1e-4)


def test_lazy_reading_returns_the_arrays_of_eager_reading(tmp_path: Path):
    path = tmp_path / "m.h5"
    write_map(path, _toy_map(num_keyframes=5, n=40, seed=4))
    eager, lazy = read_map(path), open_map(path)
    off = eager.keypoint_offsets
    for i in range(eager.num_keyframes):
        kf, sl = lazy.keyframe(i), slice(int(off[i]), int(off[i + 1]))
        for name in ("keypoints", "descriptors", "point3D_ids"):
            got, want = getattr(kf, name), getattr(eager, name)[sl]
            assert got.dtype == want.dtype and np.array_equal(got, want), name
        np.testing.assert_array_equal(lazy.points3D[kf.point3D_ids], eager.points3D[kf.point3D_ids])
    assert lazy.keyframe_names == eager.keyframe_names and lazy.cameras == eager.cameras
    assert lazy.descriptors.shape == eager.descriptors.shape


def test_the_keyframe_cache_is_bounded(tmp_path: Path):
    path = tmp_path / "m.h5"
    write_map(path, _toy_map(num_keyframes=6, n=20))
    lazy = open_map(path, cache_size=2)
    for i in [0, 1, 2, 1, 3, 4]:
        lazy.keyframe(i)
        assert len(lazy.cached) <= 2
    assert lazy.cached == [3, 4] and lazy.cache_hits == 1 and lazy.cache_misses == 5


def test_localizer_uses_the_saved_index_and_the_cache_option(tmp_path: Path, monkeypatch):
    path = tmp_path / "m.h5"
    write_map(path, _toy_map())
    data = read_map(path)

    def no_build(self, x):
        raise AssertionError("the retrieval index was rebuilt")

    monkeypatch.setattr(GlobalIndex, "_build", no_build)
    monkeypatch.setattr(Localizer, "_build_extractor", lambda self, dense: None)
    monkeypatch.setattr(Localizer, "_build_aggregator", lambda self: _NoDense())
    loc = Localizer.from_map(path, {"keyframe_cache_size": 3})
    assert loc.map.cache_size == 3 and loc.index is loc.map.global_index
    ids, _ = loc.retrieve(data.global_descriptors[1], 2)
    assert ids[0] == 1
    per_kf = loc.match(_features(data, 1), ids)
    assert per_kf[0][0] == 1 and len(per_kf[0][1]) > 0
    q, p = loc.correspondences(per_kf)
    assert len(q) and np.all(p < len(loc.map.points3D))
    assert len(loc.map.cached) <= 3


class _NoDense:
    needs_dense = False


def _features(data, i: int):
    from supergf_ros.features.base import LocalFeatures

    sl = slice(int(data.keypoint_offsets[i]), int(data.keypoint_offsets[i + 1]))
    return LocalFeatures(data.keypoints[sl], data.scores[sl], data.descriptors[sl])


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n // 50, dim))
    x = centres[rng.integers(0, len(centres), n)] + 0.7 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", ["auto", "ivf"])
def test_approximate_index_recall_at_5_against_exact(kind: str, monkeypatch):
    """A large synthetic map: the approximate index (tuned at build, saved, loaded) finds the
    exact top 5 of held-out queries; `auto` goes approximate only above its exact limit."""
    monkeypatch.setattr(retrieval_module, "AUTO_MAX_EXACT", 10_000)
    x = _clustered(20_000, 48, seed=0)
    queries = x[:300] + 0.05 * _clustered(300, 48, seed=9)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    built = GlobalIndex(x, kind=kind, auto_max_exact=retrieval_module.AUTO_MAX_EXACT)
    assert built.kind == ("hnsw" if kind == "auto" else kind)
    loaded = GlobalIndex.from_bytes(built.to_bytes(), built.describe())
    exact = GlobalIndex(x, kind="flat")
    hits = [len(set(loaded.search(q, 5)[0]) & set(exact.search(q, 5)[0])) / 5 for q in queries]
    assert np.mean(hits) >= 0.99, (kind, built.params, np.mean(hits))


def test_damaged_or_truncated_v3_maps_are_refused(tmp_path: Path):
    path = tmp_path / "m.h5"
    write_map(path, _toy_map(num_keyframes=4, n=30))
    raw = path.read_bytes()
    bad = tmp_path / "bad.h5"
    bad.write_bytes(raw[:-100])
    for reader in (read_map, open_map):
        with pytest.raises(MapFormatError, match="truncated"):
            reader(bad)
    import h5py

    with h5py.File(path, "r") as f:
        start = f["features/records"].id.get_offset()
    flipped = bytearray(raw)
    flipped[start + 5] ^= 0x01
    bad.write_bytes(bytes(flipped))
    with pytest.raises(MapFormatError, match=r"'features/records' fails its checksum"):
        read_map(bad)
    lazy = open_map(bad)  # the records are checked as they are read
    with pytest.raises(MapFormatError, match="keyframe record 0 fails its checksum"):
        lazy.keyframe(0)


def test_map_without_points_opens(tmp_path: Path):
    """A map whose keyframes triangulated no point (build-map warns) still opens, lazily and
    whole: its empty datasets have no storage in the file, which is not corruption."""
    data = _toy_map()
    data.point3D_ids[:] = -1
    data.points3D = np.zeros((0, 3))
    data.track_lengths, data.point_errors = np.zeros(0, np.int32), np.zeros(0, np.float32)
    write_map(tmp_path / "empty.h5", data, format_version=3)
    lazy = open_map(tmp_path / "empty.h5")
    try:
        assert len(lazy.points3D) == 0 and lazy.num_keyframes == data.num_keyframes
    finally:
        lazy.close()
    assert read_map(tmp_path / "empty.h5").points3D.shape == (0, 3)
