"""Odometry propagation of a fix: exact for ground-truth odometry, covariance growth as configured."""

from __future__ import annotations

import numpy as np
import pytest

from supergf_ros.geometry import Pose
from supergf_ros.tracking import (
    OdometryNoise,
    OdometryPropagator,
    compose_map_from_odom,
    covariance_of_attached_frame,
    propagate_covariance,
)
from supergf_ros.tracking.lie import rotvec_to_quat, so3_exp

S = 1_000_000_000
QUIET = OdometryNoise(0.0, 0.0, 0.0, 0.0, 0.0)


def pose(rotvec, t) -> Pose:
    return Pose(rotvec_to_quat(np.asarray(rotvec, dtype=float)), np.asarray(t, dtype=float))


def gt_map_from_base(time_s: float) -> Pose:
    """A robot driving a circle of radius 5 m (one lap in 20 s) on a slight slope."""
    a = 2 * np.pi * time_s / 20.0
    return pose([0.0, 0.02, a + np.pi / 2], [5 * np.cos(a), 5 * np.sin(a), 0.1 * time_s])


MAP_FROM_ODOM = pose([0.01, -0.02, np.radians(30)], [5.0, -2.0, 0.3])


def odom_from_base(time_s: float) -> Pose:
    return MAP_FROM_ODOM.inverse() * gt_map_from_base(time_s)


def test_compose_map_from_odom() -> None:
    got = compose_map_from_odom(gt_map_from_base(3.0), odom_from_base(3.0))
    np.testing.assert_allclose(got.matrix, MAP_FROM_ODOM.matrix, atol=1e-12)


def test_prediction_with_ground_truth_odometry_is_exact() -> None:
    prop = OdometryPropagator()
    assert not prop.has_fix
    with pytest.raises(RuntimeError, match="no localization fix"):
        prop.predict(S, odom_from_base(1.0))
    prop.set_fix(2 * S, gt_map_from_base(2.0), np.eye(6) * 1e-4, odom_from_base(2.0))
    assert prop.fix_stamp_ns == 2 * S
    np.testing.assert_allclose(prop.map_from_odom.matrix, MAP_FROM_ODOM.matrix, atol=1e-12)
    for time_s in np.arange(2.1, 12.0, 0.1):
        pred = prop.predict(round(time_s * S), odom_from_base(time_s))
        np.testing.assert_allclose(
            pred.map_from_base.matrix, gt_map_from_base(time_s).matrix, atol=1e-9
        )
    # the path (a half lap, 5 pi m of arc plus the climb) is accumulated from the samples
    assert pred.distance_m == pytest.approx(np.hypot(5 * np.pi * 9.9 / 10, 0.99), rel=1e-3)
    assert pred.rotation_rad == pytest.approx(2 * np.pi * 9.9 / 20, rel=1e-3)
    assert pred.duration_s == pytest.approx(9.9)


def test_covariance_grows_with_distance_as_configured() -> None:
    noise = OdometryNoise(0.02, 0.0, np.radians(0.5), 0.0, 0.0)
    prop = OdometryPropagator(noise)
    start = pose([0, 0, 0], [0, 0, 0])
    prop.set_fix(0, start, np.zeros((6, 6)), start)
    sigmas = []
    for k in range(1, 11):  # 1 m per second along x
        pred = prop.predict(k * S, pose([0, 0, 0], [k, 0, 0]))
        sigmas.append(np.sqrt(np.diag(pred.covariance)))
    sigmas = np.array(sigmas)
    np.testing.assert_allclose(sigmas[:, :3], 0.02 * np.arange(1, 11)[:, None] * np.ones(3))
    np.testing.assert_allclose(sigmas[-1, 3:], np.radians(5.0) * np.ones(3))  # 0.5 deg/m * 10 m
    assert np.all(np.diff(sigmas, axis=0) > 0)


def test_rotation_and_time_terms() -> None:
    noise = OdometryNoise(0.0, 0.1, 0.0, 0.01, 0.002)
    cov = noise.covariance(distance_m=0.0, rotation_rad=np.pi, duration_s=100.0)
    np.testing.assert_allclose(np.diag(cov)[:3], 0.01**2 * 100)
    np.testing.assert_allclose(np.diag(cov)[3:], (0.1 * np.pi) ** 2 + 0.002**2 * 100)
    with pytest.raises(ValueError, match="translation_noise_per_m"):
        OdometryNoise(translation_noise_per_m=-1.0)
    # turning on the spot: the turn accumulates, the distance stays zero
    prop = OdometryPropagator(noise)
    prop.set_fix(0, Pose.identity(), np.zeros((6, 6)), Pose.identity())
    for k in range(1, 9):
        pred = prop.predict(k * S, pose([0, 0, k * np.pi / 4], [0, 0, 0]))
    assert pred.rotation_rad == pytest.approx(2 * np.pi)
    assert pred.distance_m == 0.0


def test_prior_rotation_uncertainty_swings_the_path() -> None:
    """J P0 J^T matches a finite-difference perturbation of the fix (lever arm)."""
    fix = pose([0.1, -0.2, 0.7], [1.0, 2.0, 0.5])
    odom0, odom1 = pose([0, 0, 0.2], [3, 1, 0]), pose([0.05, 0, 1.1], [13, -4, 1])
    prop = OdometryPropagator(QUIET)
    prop.set_fix(0, fix, np.diag([0.0, 0.0, 0.0, 0.0, 0.0, 0.01**2]), odom0)
    pred = prop.predict(S, odom1)
    p = pred.map_from_base.tvec - fix.tvec
    assert pred.covariance[1, 1] == pytest.approx((p[0] * 0.01) ** 2)
    # numeric Jacobian of the predicted error w.r.t. the fix error, same convention
    J = np.zeros((6, 6))
    for i in range(6):
        d = np.zeros(6)
        d[i] = 1e-6
        perturbed = Pose(rotvec_to_quat(d[3:]), np.zeros(3)) * fix  # rotation in the map frame
        perturbed = Pose(perturbed.qvec, fix.tvec + d[:3])  # the base position itself moves by dt
        moved = compose_map_from_odom(perturbed, odom0) * odom1
        J[:3, i] = (moved.tvec - pred.map_from_base.tvec) / 1e-6
        dR = moved.R @ pred.map_from_base.R.T
        J[3:, i] = np.array([dR[2, 1] - dR[1, 2], dR[0, 2] - dR[2, 0], dR[1, 0] - dR[0, 1]]) / 2e-6
    P0 = np.diag([0.1, 0.2, 0.3, 0.01, 0.02, 0.03]) ** 2
    np.testing.assert_allclose(propagate_covariance(P0, p), J @ P0 @ J.T, rtol=1e-4, atol=1e-10)
    np.testing.assert_allclose(so3_exp([0, 0, 0]), np.eye(3))


def test_out_of_order_stamp_uses_straight_segment() -> None:
    prop = OdometryPropagator(QUIET)
    prop.set_fix(0, Pose.identity(), np.zeros((6, 6)), Pose.identity())
    prop.predict(2 * S, pose([0, 0, 0], [1, 1, 0]))
    assert prop.predict(3 * S, pose([0, 0, 0], [2, 0, 0])).distance_m == pytest.approx(
        2 * np.sqrt(2)
    )
    late = prop.predict(S, pose([0, 0, 0], [0.5, 0, 0]))  # older than the newest sample
    assert late.distance_m == pytest.approx(0.5)
    np.testing.assert_allclose(late.map_from_base.tvec, [0.5, 0, 0])
    with pytest.raises(ValueError, match="6x6"):
        prop.set_fix(0, Pose.identity(), np.eye(3), Pose.identity())
    prop.reset()
    assert not prop.has_fix


def test_covariance_of_attached_frame_round_trips() -> None:
    map_from_cam = pose([0.3, -0.1, 1.2], [4.0, 1.0, 1.5])
    base_from_cam = pose([-1.2, 0.0, -1.57], [0.5, 0.0, 1.0])
    map_from_base = map_from_cam * base_from_cam.inverse()
    A = np.random.default_rng(1).normal(size=(6, 6))
    cov_cam = A @ A.T * 1e-3
    cov_base = covariance_of_attached_frame(cov_cam, map_from_cam, map_from_base)
    np.testing.assert_allclose(cov_base[3:, 3:], cov_cam[3:, 3:])  # rotation block unchanged
    back = covariance_of_attached_frame(cov_base, map_from_base, map_from_cam)
    np.testing.assert_allclose(back, cov_cam, atol=1e-15)
    lever = np.linalg.norm(map_from_base.tvec - map_from_cam.tvec)
    yaw_only = np.diag([0, 0, 0, 0, 0, 1e-4])
    grown = covariance_of_attached_frame(yaw_only, map_from_cam, map_from_base)
    assert np.trace(grown[:3, :3]) <= lever**2 * 1e-4 + 1e-18
