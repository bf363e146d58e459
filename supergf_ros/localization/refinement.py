"""Pose refinement weighted by how well each map point is known.

Each 2D-3D match gets the 2x2 covariance of its residual: the query keypoint's noise plus the
map point's position covariance (`mapping.point_quality`) projected into the query. Points
triangulated from forward motion are uncertain along their ray; seen from a camera beside that
ray their depth error moves the projection, so they weigh less where they would bias the pose.
Gauss-Newton from the PnP-RANSAC pose; after the first step, a match takes part while its
whitened residual is below `GATE` sigmas. The inverse of the final normal matrix is the pose
covariance, which so includes the map's uncertainty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import Pose, rotmat_to_qvec
from ..tracking.lie import so3_exp

# measured on KITTI 01 (map every 10th frame): gate 3 kept every query within (0.25 m, 2 deg)
# against 0.93-0.97 for 5 and 8; a Huber loss on top of it changed nothing
GATE = 3.0
ITERATIONS = 10
# a keyframe joins the refinement when it is at most this many times as far from the first pose
# as the nearest one: a query beside a keyframe is refined on that keyframe's points alone, not
# pulled by those of keyframes far ahead (KITTI 01, map every 10th frame: 10.95 cm median
# against 11.10 cm without the rule; the constructed case in test_point_uncertainty)
NEAR_RATIO = 4.0


@dataclass(frozen=True)
class RefinedPose:
    """`cam_from_world`, its 6x6 covariance in pycolmap's parameterization (rotation first, as
    `LocalizationResult.covariance`) and the matches used (inlier mask)."""

    cam_from_world: Pose
    covariance: np.ndarray
    inliers: np.ndarray


def refine_pose(
    cam_from_world: Pose,
    camera_pc,
    points2D: np.ndarray,
    points3D: np.ndarray,
    point_covariances: np.ndarray,
    keypoint_sigma_px: float,
    max_error_px: float,
    min_inliers: int = 6,
) -> RefinedPose | None:
    """Refine `cam_from_world` on matches (pixels, world points, (n, 3, 3) point covariances in
    m^2); the first step uses the matches within `max_error_px` of the start pose, each next
    one those within `GATE` sigmas. None when fewer than `min_inliers` take part or the problem
    is degenerate (the caller keeps its start pose).

    `camera_pc` (pycolmap.Camera) undistorts the keypoints: the problem is solved on the
    ideal pinhole image of focal length `mean_focal_length()`.
    """
    f = float(camera_pc.mean_focal_length())
    uv = f * camera_pc.cam_from_img(np.asarray(points2D, np.float64).reshape(-1, 2))
    X = np.asarray(points3D, np.float64).reshape(-1, 3)
    R, t = cam_from_world.R.copy(), cam_from_world.tvec.copy()
    xc, proj = _project(X, R, t, f)
    used = (np.linalg.norm(proj - uv, axis=1) < max_error_px) & (xc[:, 2] > 0)
    cov_x = np.asarray(point_covariances, np.float64).reshape(-1, 3, 3)
    noise = keypoint_sigma_px**2 * np.eye(2)
    for _ in range(ITERATIONS):
        if used.sum() < max(min_inliers, 3):
            return None
        H, b, _ = _normal_equations(X[used], uv[used], cov_x[used], noise, R, t, f)
        try:
            step = np.linalg.solve(H, b)
        except np.linalg.LinAlgError:
            return None
        if not np.isfinite(step).all():
            return None
        R, t = so3_exp(step[:3]) @ R, t + step[3:]
        _, _, whitened = _normal_equations(X, uv, cov_x, noise, R, t, f)
        used = (whitened < GATE) & ((X @ R.T + t)[:, 2] > 0)
        if np.linalg.norm(step) < 1e-10:
            break
    if used.sum() < max(min_inliers, 3):
        return None
    H, _, _ = _normal_equations(X[used], uv[used], cov_x[used], noise, R, t, f)
    try:
        cov = np.linalg.inv(H)
    except np.linalg.LinAlgError:
        return None
    # (w, dt) with R' = Exp(w) R, t' = t + dt -> pycolmap's (w / 2, dt)
    half = np.diag([0.5, 0.5, 0.5, 1.0, 1.0, 1.0])
    cov = half @ cov @ half
    if not np.isfinite(cov).all():
        return None
    return RefinedPose(Pose(rotmat_to_qvec(R), t), 0.5 * (cov + cov.T), used)


def nearest_keyframes(centers: np.ndarray, position: np.ndarray, count: int) -> np.ndarray:
    """Indices into `centers` (the candidate keyframes' camera centres) of at most `count`
    nearest `position`, nearest first (ties: the better retrieved first), leaving out those more
    than `NEAR_RATIO` times as far as the nearest."""
    dist = np.linalg.norm(np.asarray(centers).reshape(-1, 3) - np.asarray(position), axis=1)
    order = np.argsort(dist, kind="stable")[: max(int(count), 0)]
    return order[dist[order] <= NEAR_RATIO * dist[order[0]]] if len(order) else order


def _project(X: np.ndarray, R: np.ndarray, t: np.ndarray, f: float):
    xc = X @ R.T + t
    z = np.where(np.abs(xc[:, 2]) < 1e-9, 1e-9, xc[:, 2])
    return xc, f * xc[:, :2] / z[:, None]


def _normal_equations(X, uv, cov_x, noise, R, t, f) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H = sum J^T W J, b = sum J^T W e, whitened residual norms), W the inverse residual
    covariance of each match."""
    xc, proj = _project(X, R, t, f)
    x, y, z = xc.T
    jac_x = np.zeros((len(X), 2, 3))  # d(projection) / d(camera point)
    jac_x[:, 0, 0], jac_x[:, 0, 2] = f / z, -f * x / z**2
    jac_x[:, 1, 1], jac_x[:, 1, 2] = f / z, -f * y / z**2
    jac_w = jac_x @ R  # d(projection) / d(world point)
    info = np.linalg.inv(noise + jac_w @ cov_x @ jac_w.transpose(0, 2, 1))
    err = uv - proj
    whitened = np.sqrt(np.maximum(np.einsum("ni,nij,nj->n", err, info, err), 0.0))
    jac = np.concatenate([jac_x @ -_skew(X @ R.T), jac_x], axis=2)  # (n, 2, 6): (w, dt)
    jt_info = jac.transpose(0, 2, 1) @ info
    return np.einsum("nij,njk->ik", jt_info, jac), np.einsum("nij,nj->i", jt_info, err), whitened


def _skew(v: np.ndarray) -> np.ndarray:
    """(..., 3, 3) cross-product matrices of (..., 3) vectors."""
    out = np.zeros((*v.shape[:-1], 3, 3))
    out[..., 0, 1], out[..., 0, 2], out[..., 1, 2] = -v[..., 2], v[..., 1], -v[..., 0]
    out[..., 1, 0], out[..., 2, 0], out[..., 2, 1] = v[..., 2], -v[..., 1], v[..., 0]
    return out
