"""Tracking mode of the Localizer: candidates from a pose prior, fixes gated by it, a calibrated
covariance. Real images (Strecha fountain-P11, even images as the map, odd ones as queries)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_mapping_build import cached_strecha_map

from supergf_ros.datasets import Dataset
from supergf_ros.geometry import Pose, pose_error
from supergf_ros.localization import Localizer
from supergf_ros.localization.localizer import PosePrior


@pytest.fixture(scope="module")
def fountain(data_dir: Path, superpoint_weights: Path, cache_dir: Path):
    map_path, _ = cached_strecha_map(data_dir, superpoint_weights, cache_dir, "fountain-P11")
    loc = Localizer.from_map(map_path, {"superpoint_weights": superpoint_weights})
    return loc, Dataset(data_dir / "strecha" / "fountain-P11")


def _prior(gt: Pose, offset_m: float, sigma_m: float, sigma_deg: float = 5.0) -> PosePrior:
    world_from_cam = gt.inverse()
    moved = Pose(world_from_cam.qvec, world_from_cam.tvec + np.array([offset_m, 0.0, 0.0]))
    cov = np.diag([sigma_m**2] * 3 + [np.radians(sigma_deg) ** 2] * 3)
    return PosePrior(moved.inverse(), cov)


def _query(dataset: Dataset, name: str):
    return dataset.read_image(name), dataset.camera(name), dataset.cam_from_world(name)


def test_candidates_come_from_the_prior(fountain):
    loc, ds = fountain
    loc_conf = {"tracking_keyframes": 2, "tracking_global_k": 0}
    image, camera, gt = _query(ds, "0005.jpg")
    prior = _prior(gt, 0.0, 0.2)
    nearest = loc.spatial_index.near_pose(prior.cam_from_world, k=2)
    saved = loc.conf
    try:
        loc.update(**loc_conf)
        result = loc.localize(image, camera, prior=prior)
    finally:
        loc.conf = saved
    assert result.mode == "tracking" and result.success, result.reason
    assert result.retrieved == [loc.map.keyframe_names[i] for i in nearest]
    dt, dr = pose_error(result.cam_from_world, gt)
    assert dt < 0.05 and dr < 0.5
    assert result.gate is not None and result.gate.accepted


def test_gate_rejects_a_fix_far_from_a_tight_prior(fountain):
    loc, ds = fountain
    image, camera, gt = _query(ds, "0003.jpg")
    result = loc.localize(image, camera, prior=_prior(gt, 5.0, 0.1))
    assert not result.success and result.gate is not None and not result.gate.accepted
    assert "disagrees with the prior" in result.reason
    assert pose_error(result.cam_from_world, gt)[0] < 0.05  # the fix itself was right


def test_a_loose_prior_far_from_the_truth_lets_the_right_fix_through(fountain):
    loc, ds = fountain
    image, camera, gt = _query(ds, "0007.jpg")
    result = loc.localize(image, camera, prior=_prior(gt, 3.0, 5.0, 30.0))
    assert result.success and result.gate.accepted, result.reason
    assert pose_error(result.cam_from_world, gt)[0] < 0.05


def test_global_fix_covariance_is_calibrated_and_in_the_map_frame(fountain):
    loc, ds = fountain
    image, camera, _ = _query(ds, "0001.jpg")
    result = loc.localize(image, camera)
    assert result.mode == "global" and result.gate is None and result.success
    cov = result.map_covariance
    assert cov.shape == (6, 6) and np.allclose(cov, cov.T)
    assert np.all(np.linalg.eigvalsh(cov) > 0)
    floor = np.radians(loc.conf["fix_sigma_floor_deg"]) ** 2
    assert np.all(np.diag(cov)[3:] >= floor)


def test_prepared_query_localizes_as_the_whole_step(fountain):
    """`prepare` then `localize_prepared` (the node's two pipeline stages) is `localize`: the
    same features and candidates, so the same matches; the pose up to PnP-RANSAC's randomness."""
    loc, ds = fountain
    image, camera, gt = _query(ds, "0003.jpg")
    for prior in (None, _prior(gt, 0.1, 0.3)):
        whole = loc.localize(image, camera, prior=prior)
        query = loc.prepare(image, camera)
        assert set(query.timings_ms) == {"extract", "global"}
        staged = loc.localize_prepared(query, prior=prior)
        assert staged.success and whole.success and staged.mode == whole.mode
        assert staged.retrieved == whole.retrieved and staged.num_matches == whole.num_matches
        assert staged.num_correspondences == whole.num_correspondences
        assert abs(staged.num_inliers - whole.num_inliers) <= 0.05 * whole.num_inliers
        t_err, r_err = pose_error(staged.cam_from_world, whole.cam_from_world)
        assert t_err < 0.01 and r_err < 0.2
        t = staged.timings_ms
        assert t["total"] >= t["extract"] + t["global"] + t["matching"] > 0


def test_refined_fix_and_a_map_without_point_uncertainty(fountain, tmp_path: Path):
    """Strecha's points are well triangulated (median angle about 40 deg): the fix stays PnP's
    unless refining is asked for at any angle; then it is refined on the nearest keyframes. An
    older map without point quality keeps the PnP pose and its covariance scale."""
    from supergf_ros.mapping import read_map, write_map

    loc, ds = fountain
    image, camera, gt = _query(ds, "0003.jpg")
    assert loc.localize(image, camera).refined_keyframes == []
    loc.update(refine_max_tri_angle_deg=180.0)
    try:
        refined = loc.localize(image, camera)
    finally:
        loc.update(refine_max_tri_angle_deg=loc.default_conf["refine_max_tri_angle_deg"])
    assert refined.success and refined.refined_keyframes
    assert set(refined.refined_keyframes) <= set(refined.retrieved)
    assert pose_error(refined.cam_from_world, gt)[0] < 0.05
    old = read_map(loc.map.path) if hasattr(loc.map, "path") else loc.map
    old.point_tri_angles = old.point_covariances = None
    write_map(tmp_path / "old.h5", old)
    plain = Localizer.from_map(tmp_path / "old.h5", {**loc.conf, "refine_max_tri_angle_deg": 180.0})
    result = plain.localize(image, camera)
    assert result.success and result.refined_keyframes == []
    assert pose_error(result.cam_from_world, gt)[0] < 0.05
    floor = np.diag([0.0] * 3 + [np.radians(loc.conf["fix_sigma_floor_deg"]) ** 2] * 3)
    from supergf_ros.geometry import world_from_cam_covariance

    expected = loc.conf["fix_sigma_scale"] ** 2 * world_from_cam_covariance(
        result.cam_from_world, result.covariance
    )
    np.testing.assert_allclose(result.map_covariance, expected + floor, rtol=1e-9, atol=1e-15)
