"""Mahalanobis gating of a localization fix against a (predicted) prior.

Pose and covariance convention (shared with `tracking.odometry`):

* poses are ``map_from_base`` (``parent_from_child``: `tvec` is the position of the base in the
  map; for a ``cam_from_world`` pose pass its ``inverse()``, i.e. ``world_from_cam``);
* a 6-vector error / 6x6 covariance is ordered as in ROS ``PoseWithCovariance``:
  ``(x, y, z, rot_x, rot_y, rot_z)`` — the translation error of the base position in the map
  frame (metres), then a small rotation vector (radians) *in the map frame*, applied on the left:
  ``R_true = exp(drot) @ R_estimate`` (a rotation about the fixed map X, Y, Z axes).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..geometry import Pose
from .lie import so3_log

DOF = 6


def check_covariance(covariance: np.ndarray, name: str = "covariance") -> np.ndarray:
    """A 6x6 finite symmetric matrix (symmetrised) or ValueError."""
    cov = np.asarray(covariance, dtype=np.float64)
    if cov.shape == (36,):  # ROS messages carry the covariance row-major, flat
        cov = cov.reshape(6, 6)
    if cov.shape != (6, 6):
        raise ValueError(f"{name} must be 6x6 (or 36 values row-major), got shape {cov.shape}")
    if not np.isfinite(cov).all():
        raise ValueError(f"{name} has non-finite values")
    if not np.allclose(cov, cov.T, rtol=1e-6, atol=1e-12):
        raise ValueError(f"{name} is not symmetric")
    return 0.5 * (cov + cov.T)


def pose_error_vector(pose_a: Pose, pose_b: Pose) -> np.ndarray:
    """Error of `pose_b` against `pose_a` (both map_from_base): [t_b - t_a, log(R_b R_a^T)]."""
    dt = pose_b.tvec - pose_a.tvec
    drot = so3_log(pose_b.R @ pose_a.R.T)
    return np.concatenate([dt, drot])


def pose_mahalanobis(pose_a: Pose, pose_b: Pose, covariance: np.ndarray) -> float:
    """Squared Mahalanobis distance of `pose_b` from `pose_a` under the 6x6 `covariance`."""
    cov = check_covariance(covariance)
    e = pose_error_vector(pose_a, pose_b)
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError as err:
        raise ValueError(
            "covariance is not positive definite (a zero or negative variance?); "
            f"diagonal: {np.diag(cov)}"
        ) from err
    z = np.linalg.solve(chol, e)
    return float(z @ z)


def chi2_threshold(probability: float = 0.999, dof: int = DOF) -> float:
    """Chi-square quantile: d2 below it for `probability` of the inliers."""
    from scipy.stats import chi2

    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability must be in (0, 1), got {probability}")
    return float(chi2.ppf(probability, dof))


class GateResult(NamedTuple):
    accepted: bool
    d2: float
    threshold: float


def gate(
    pose: Pose,
    prior: Pose,
    prior_cov: np.ndarray,
    meas_cov: np.ndarray | None = None,
    probability: float = 0.999,
) -> GateResult:
    """Accept `pose` (a new fix, map_from_base) if it is consistent with `prior`.

    The innovation covariance is `prior_cov + meas_cov` (meas_cov: the fix's own uncertainty,
    optional). Accepted when the squared Mahalanobis distance is at most the 6-dof chi-square
    quantile of `probability`.
    """
    cov = check_covariance(prior_cov, "prior_cov")
    if meas_cov is not None:
        cov = cov + check_covariance(meas_cov, "meas_cov")
    d2 = pose_mahalanobis(prior, pose, cov)
    threshold = chi2_threshold(probability)
    return GateResult(bool(d2 <= threshold), d2, threshold)
