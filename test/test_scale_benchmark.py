"""The scale benchmark's synthetic maps (evaluation/scale_benchmark.py): copies are other places,
not doubles of the true keyframes; the keyframe-count argument is checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_mapping_format import _toy_map

from supergf_ros.evaluation.scale_benchmark import GRID_SPACING_M, parse_scales, synthesize
from supergf_ros.mapping import read_map, write_map
from supergf_ros.mapping.map_store import open_map


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_copies_are_other_places_with_the_same_structure(tmp_path: Path):
    write_map(tmp_path / "base.h5", _toy_map(num_keyframes=3, n=20))
    base = read_map(tmp_path / "base.h5")  # format 3: keypoints with a 3D point only
    pool = _unit(np.random.default_rng(5).standard_normal((50, 8)))
    synthesize(base, 8, tmp_path / "big.h5", pool)
    big = open_map(tmp_path / "big.h5")
    assert big.num_keyframes == 8 and big.keyframe_names[3] == "c00001/img0.jpg"
    p0 = len(base.points3D)
    assert len(big.points3D) == 3 * p0  # 3 copies (the last one cut to 2 keyframes)
    for j in range(3):
        true, copy = big.keyframe(j), big.keyframe(3 + j)
        np.testing.assert_array_equal(copy.keypoints, true.keypoints)
        np.testing.assert_array_equal(copy.point3D_ids, true.point3D_ids + p0)
        # the original's descriptors (float16) in copy 0, another scene's in the copies
        near_pool = np.max(copy.descriptors @ pool.T, axis=1)
        assert np.all(near_pool > 0.999) and not np.allclose(copy.descriptors, true.descriptors)
        assert np.max(true.descriptors @ pool.T) < 0.999
        offset = big.cam_from_world[3 + j].center - big.cam_from_world[j].center
        assert np.linalg.norm(offset) == pytest.approx(GRID_SPACING_M)
        np.testing.assert_allclose(big.points3D[copy.point3D_ids] - offset,
                                   big.points3D[true.point3D_ids], atol=1e-9)  # fmt: skip
    globals_ = big.global_descriptors[np.arange(8)]
    cos = np.sum(_unit(globals_[:3]) * _unit(globals_[3:6]), axis=1)
    assert np.all(cos < 0.99)  # perturbed: alike, not equal


def test_map_scale_argument_is_checked():
    assert parse_scales("100, 1000,50000") == [100, 1000, 50000]
    with pytest.raises(ValueError, match="comma-separated"):
        parse_scales("100;1000")
    with pytest.raises(ValueError, match=">= 1"):
        parse_scales("0,10")


def test_queries_round_trip_without_pickles(tmp_path):
    """The measuring subprocesses read the queries from an NPZ file loaded with
    allow_pickle=False: features, camera and ground truth come back as written."""
    from supergf_ros.evaluation.scale_benchmark import load_queries, save_queries
    from supergf_ros.features.base import LocalFeatures
    from supergf_ros.geometry import Camera, Pose

    rng = np.random.default_rng(0)
    feats = LocalFeatures(rng.random((5, 2), np.float32), rng.random(5, np.float32),
                          rng.random((5, 8), np.float32), rng.random((8, 3, 4), np.float32),
                          (64, 48), {"processed_size": (64, 48), "scale": 1.0})  # fmt: skip
    cam = Camera.pinhole(50.0, 51.0, 32.0, 24.0, 64, 48)
    gt = Pose(np.array([0.9, 0.1, 0.3, 0.3]), np.array([1.0, -2.0, 3.0]))
    save_queries(tmp_path / "q.npz", [(feats, cam, gt), (LocalFeatures(feats.keypoints,
                 feats.scores, feats.descriptors, None, (64, 48)), cam, gt)])  # fmt: skip
    (f0, c0, g0), (f1, _, _) = load_queries(tmp_path / "q.npz")
    np.testing.assert_array_equal(f0.descriptors, feats.descriptors)
    np.testing.assert_array_equal(f0.dense, feats.dense)
    assert f1.dense is None and f0.image_size == (64, 48) and c0 == cam
    np.testing.assert_allclose(g0.tvec, gt.tvec)
    np.testing.assert_allclose(g0.qvec, gt.qvec)
