"""Per-point uncertainty in the map and its use: triangulation angle and covariance, the map
fields' round trip (old maps without them), keyframe selection + weighted refinement on a
constructed sparse-map case (real pycolmap PnP), and the NEES that `evaluate` reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from test_mapping_format import _toy_map

from supergf_ros.datasets import Dataset, write_results
from supergf_ros.evaluation.evaluate import evaluate_results
from supergf_ros.geometry import Camera, Pose, pose_error
from supergf_ros.localization.refinement import nearest_keyframes, refine_pose
from supergf_ros.mapping import read_map, write_map
from supergf_ros.mapping.map_store import open_map
from supergf_ros.mapping.point_quality import (
    MAX_VARIANCE,
    covariance_matrices,
    depth_sigma,
    point_quality,
)

CAMERA = Camera.pinhole(500.0, 500.0, 319.5, 239.5, 640, 480)
IDENTITY = np.array([1.0, 0.0, 0.0, 0.0])


def _at(center) -> Pose:
    """A camera looking down +z (world) with its centre at `center`."""
    return Pose(IDENTITY, -np.asarray(center, np.float64))


def test_wide_baseline_point_is_better_known_than_a_narrow_one():
    # point 0: seen from 0 and 10 m to the side (wide); point 1: from 0 and 0.2 m (narrow);
    # point 2: one keyframe only; all 20 m ahead
    points = np.array([[5.0, 0.0, 20.0], [0.1, 0.0, 20.0], [0.0, 1.0, 20.0]])
    poses = [_at([0, 0, 0]), _at([10, 0, 0]), _at([0.2, 0, 0])]
    observations = [np.array([0, 1, 2]), np.array([0]), np.array([1])]
    angles, upper = point_quality(points, observations, [CAMERA] * 3, poses)
    assert angles.dtype == np.float32 and upper.shape == (3, 6)
    # the largest ray angles, from the geometry
    np.testing.assert_allclose(angles[0], np.degrees(2 * np.arctan(5 / 20)), rtol=1e-5)
    np.testing.assert_allclose(angles[1], np.degrees(np.arctan(0.1 / 20) * 2), rtol=1e-4)
    sigma = depth_sigma(upper)
    assert sigma[0] < 0.2 < 1.0 < sigma[1]  # narrow baseline: weak in depth
    assert angles[2] < 1e-3 and sigma[2] == pytest.approx(np.sqrt(MAX_VARIANCE))
    # two-view depth sigma: sqrt(2) d^2 / (f b) for 1 px noise in both images
    assert sigma[1] == pytest.approx(np.sqrt(2) * 20.0**2 / (500 * 0.2), rel=0.05)
    cov = covariance_matrices(upper)
    np.testing.assert_allclose(cov, cov.transpose(0, 2, 1))
    assert np.all(np.linalg.eigvalsh(cov) > 0)


def test_point_fields_round_trip_and_old_maps_load(tmp_path: Path):
    data = _toy_map()
    old = {}
    for version in (2, 3):  # maps without the fields (written before they existed)
        write_map(tmp_path / f"old{version}.h5", data, format_version=version)
        old[version] = read_map(tmp_path / f"old{version}.h5")
        assert old[version].point_tri_angles is None and old[version].point_covariances is None
    lazy_old = open_map(tmp_path / "old3.h5")
    assert lazy_old.point_covariances is None and lazy_old.point_tri_angles is None
    rng = np.random.default_rng(1)
    data.point_tri_angles = rng.uniform(0, 30, 7).astype(np.float32)
    data.point_covariances = rng.uniform(0, 1, (7, 6)).astype(np.float32)
    write_map(tmp_path / "v2.h5", data, format_version=2)
    back2 = read_map(tmp_path / "v2.h5")
    np.testing.assert_array_equal(back2.point_tri_angles, data.point_tri_angles)
    np.testing.assert_array_equal(back2.point_covariances, data.point_covariances)
    write_map(tmp_path / "v3.h5", data)
    back3 = read_map(tmp_path / "v3.h5")
    # version 3 renumbers points by first keyframe: compare through the xyz
    order = [int(np.flatnonzero((data.points3D == p).all(1))[0]) for p in back3.points3D]
    np.testing.assert_array_equal(back3.point_covariances, data.point_covariances[order])
    np.testing.assert_array_equal(back3.point_tri_angles, data.point_tri_angles[order])
    lazy = open_map(tmp_path / "v3.h5")
    np.testing.assert_array_equal(lazy.point_covariances[[4, 1]], back3.point_covariances[[4, 1]])
    np.testing.assert_array_equal(
        lazy.point_tri_angles[[2, 0]][:, 0], back3.point_tri_angles[[2, 0]]
    )
    data.point_covariances = data.point_covariances[:3]
    with pytest.raises(ValueError, match="points3D/covariance must be finite with shape"):
        write_map(tmp_path / "bad.h5", data)


def _observe(points: np.ndarray, rng) -> np.ndarray:
    """Pixels of world points in the query (identity pose) with 1 px noise."""
    uv = 500.0 * points[:, :2] / points[:, 2:] + [319.5, 239.5]
    return uv + rng.normal(0, 1.0, uv.shape)


def _sparse_case(rng):
    """A query at the origin; keyframe A beside it with accurate points; B-E ahead, whose
    points (triangulated from forward motion) are 8% too far along their rays, as uncertain as
    their covariance says."""
    keyframes = []  # (centre, map points, covariances (n, 3, 3), query pixels)
    for center, bias in (([0, 0, 10], 0.08), ([0, 0, 15], 0.08), ([0.5, 0, 0], 0.0),
                         ([0, 0, 20], 0.08), ([0, 0, 25], 0.08)):  # fmt: skip
        center = np.asarray(center, np.float64)
        true = np.c_[rng.uniform(-12, 12, (150, 2)), rng.uniform(15, 60, 150) + center[2]]
        true[:, 1] *= 0.5
        ray = true - center
        depth = np.linalg.norm(ray, axis=1)
        ray /= depth[:, None]
        stored = true + bias * depth[:, None] * ray
        sigma_d = 0.002 * depth + bias * depth  # weak in depth where biased (a 1-sigma bias)
        cov = sigma_d[:, None, None] ** 2 * np.einsum("ni,nj->nij", ray, ray) + 1e-4 * np.eye(3)
        keyframes.append((center, stored, cov, _observe(true, rng)))
    return keyframes


def _pnp(uv: np.ndarray, xyz: np.ndarray) -> Pose:
    est = pycolmap.AbsolutePoseEstimationOptions()
    est.ransac.max_error = 12.0
    est.ransac.random_seed = 0
    ret = pycolmap.estimate_and_refine_absolute_pose(
        uv, xyz, CAMERA.to_pycolmap(), est, pycolmap.AbsolutePoseRefinementOptions()
    )
    return Pose.from_pycolmap(ret["cam_from_world"])


def test_nearest_keyframes_keeps_those_about_as_near_as_the_nearest():
    centers = np.array([[0, 0, 10.0], [0, 0, 1.0], [0, 0, 3.0], [0, 0, -2.5]])
    assert list(nearest_keyframes(centers, np.zeros(3), 2)) == [1, 3]
    assert list(nearest_keyframes(centers, np.zeros(3), 10)) == [1, 3, 2]  # 10 > 4 x 1
    assert list(nearest_keyframes(centers, np.zeros(3), 0)) == []


def test_selection_is_never_worse_than_the_best_single_keyframe():
    truth = _at([0, 0, 0])
    for seed in range(3):
        keyframes = _sparse_case(np.random.default_rng(seed))
        pooled = _pnp(np.concatenate([k[3] for k in keyframes]),
                      np.concatenate([k[1] for k in keyframes]))  # fmt: skip
        a = keyframes[2]  # A, the best single keyframe: its PnP pose, refined the same way
        single = refine_pose(_pnp(a[3], a[1]), CAMERA.to_pycolmap(), a[3], a[1], a[2], 1.0, 12.0)
        err_pooled = pose_error(pooled, truth)[0]
        err_single = pose_error(single.cam_from_world, truth)[0]
        assert err_pooled > 5 * err_single  # the pooled points pull the pose: a hard case
        picked = nearest_keyframes(np.array([k[0] for k in keyframes]), pooled.center, 2)
        assert list(picked) == [2]  # A alone: the others are far ahead of the pooled pose
        group = [keyframes[j] for j in picked]
        refined = refine_pose(
            pooled, CAMERA.to_pycolmap(), np.concatenate([k[3] for k in group]),
            np.concatenate([k[1] for k in group]), np.concatenate([k[2] for k in group]),
            keypoint_sigma_px=1.0, max_error_px=12.0,
        )  # fmt: skip
        err_refined = pose_error(refined.cam_from_world, truth)[0]
        assert err_refined <= err_single + 1e-3, (seed, err_refined, err_single, err_pooled)
        # the refinement's covariance covers its error (within a few sigma)
        sigma = np.sqrt(np.diag(refined.covariance)[3:].sum())
        assert err_refined < 5 * sigma, (err_refined, sigma)
    # two keyframes of which one is biased: weighting by point uncertainty still keeps the
    # pose far closer to the truth than pooling everything
    b = keyframes[0]
    both = refine_pose(pooled, CAMERA.to_pycolmap(), *(np.concatenate([a[i], b[i]]) for i in (3, 1, 2)),
                       keypoint_sigma_px=1.0, max_error_px=12.0)  # fmt: skip
    assert pose_error(both.cam_from_world, truth)[0] < 0.2 * err_pooled


def test_evaluate_reports_nees_of_logged_covariances(data_dir: Path, tmp_path: Path):
    root = data_dir / "strecha" / "fountain-P11"
    ds = Dataset(root)
    names = ["0001.jpg", "0003.jpg", "0005.jpg"]
    sigma = 0.1
    log, estimates = [], {}
    for k, name in enumerate(names):  # camera moved k sigma along map x
        world_from_cam = ds.cam_from_world(name).inverse()
        moved = Pose(
            world_from_cam.qvec, world_from_cam.tvec + np.array([k * sigma, 0, 0])
        ).inverse()
        estimates[name] = moved
        cov = np.diag([sigma**2] * 3 + [1e-4] * 3)
        pose = {"qvec": moved.qvec.tolist(), "tvec": moved.tvec.tolist()}
        log.append({"name": name, "success": True, "cam_from_world": pose,
                    "map_covariance": cov.tolist()})  # fmt: skip
    log.append({"name": "0007.jpg", "success": False, "cam_from_world": None,
                "map_covariance": None})  # fmt: skip
    write_results(tmp_path / "r.txt", estimates)
    (tmp_path / "log.json").write_text(json.dumps(log))
    metrics = evaluate_results(
        tmp_path / "r.txt", root, [*names, "0007.jpg"], tmp_path / "log.json"
    )
    cov = metrics["covariance"]
    assert cov["num_fixes"] == 3
    assert cov["nees_median"] == pytest.approx(1.0, abs=1e-6)  # NEES 0, 1, 4
    assert cov["nees_mean"] == pytest.approx(5 / 3, abs=1e-6)
    assert cov["fraction_inside_99"] == 1.0
    (tmp_path / "bad.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(ValueError, match="is not a localize log"):
        evaluate_results(tmp_path / "r.txt", root, names, tmp_path / "bad.json")
