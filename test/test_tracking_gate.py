"""Mahalanobis gate of a fix against a prior (6 dof, chi-square threshold)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chi2

from supergf_ros.geometry import Pose
from supergf_ros.tracking import chi2_threshold, gate, pose_error_vector, pose_mahalanobis
from supergf_ros.tracking.lie import rotvec_to_quat


def pose(rotvec, t) -> Pose:
    return Pose(rotvec_to_quat(np.asarray(rotvec, dtype=float)), np.asarray(t, dtype=float))


def cov(sigma_t: float, sigma_r: float) -> np.ndarray:
    return np.diag([sigma_t**2] * 3 + [sigma_r**2] * 3)


TRUTH = pose([0.0, 0.0, 0.8], [10.0, -3.0, 0.5])


def test_identical_poses_give_zero() -> None:
    assert pose_mahalanobis(TRUTH, TRUTH, cov(0.1, 0.01)) == pytest.approx(0.0, abs=1e-18)
    accepted, d2, threshold = gate(TRUTH, TRUTH, cov(0.1, 0.01))
    assert accepted and d2 == pytest.approx(0.0, abs=1e-18)
    assert threshold == pytest.approx(chi2.ppf(0.999, 6)) == pytest.approx(22.4577, abs=1e-3)


def test_fix_5m_from_tight_prior_is_rejected() -> None:
    fix = Pose(TRUTH.qvec, TRUTH.tvec + np.array([3.0, 4.0, 0.0]))
    result = gate(fix, TRUTH, cov(0.1, np.radians(1)))
    assert not result.accepted
    assert result.d2 == pytest.approx(25.0 / 0.01)


def test_far_prior_with_large_covariance_lets_the_right_fix_through() -> None:
    prior = pose([0.0, 0.0, 0.8 + np.radians(10)], TRUTH.tvec + np.array([3.0, 0.0, 0.0]))
    result = gate(TRUTH, prior, cov(5.0, np.radians(30)))
    assert result.accepted
    assert result.d2 == pytest.approx((3.0 / 5.0) ** 2 + (10.0 / 30.0) ** 2, rel=1e-9)
    wrong = Pose(TRUTH.qvec, TRUTH.tvec + np.array([40.0, 0.0, 0.0]))  # still rejected far away
    assert not gate(wrong, prior, cov(5.0, np.radians(30))).accepted


def test_error_vector_convention_and_measurement_covariance() -> None:
    small = np.array([0.0, 0.0, 0.01])
    b = Pose(rotvec_to_quat(small), [0, 0, 0]) * TRUTH  # rotated about the map z axis
    b = Pose(b.qvec, TRUTH.tvec + np.array([0.1, 0.2, 0.3]))
    np.testing.assert_allclose(pose_error_vector(TRUTH, b), [0.1, 0.2, 0.3, 0, 0, 0.01], atol=1e-12)
    fix = Pose(TRUTH.qvec, TRUTH.tvec + np.array([0.5, 0.0, 0.0]))
    alone = gate(fix, TRUTH, cov(0.1, 0.01))
    both = gate(fix, TRUTH, cov(0.1, 0.01), meas_cov=cov(0.2, 0.01).reshape(36))
    assert not alone.accepted and both.accepted
    assert both.d2 == pytest.approx(0.25 / 0.05)
    assert chi2_threshold(0.99) == pytest.approx(chi2.ppf(0.99, 6))


def test_bad_covariance_raises() -> None:
    with pytest.raises(ValueError, match="positive definite"):
        pose_mahalanobis(TRUTH, TRUTH, np.zeros((6, 6)))
    with pytest.raises(ValueError, match="6x6"):
        gate(TRUTH, TRUTH, np.eye(5))
    with pytest.raises(ValueError, match="symmetric"):
        gate(TRUTH, TRUTH, np.eye(6) + np.triu(np.ones((6, 6)), 1))
    with pytest.raises(ValueError, match="probability"):
        gate(TRUTH, TRUTH, np.eye(6), probability=1.0)
