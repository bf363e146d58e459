"""How well each 3D point of a map is known: triangulation angle and position covariance.

A point triangulated from forward motion (rays nearly parallel) is weak in depth; the
localizer weights its 2D-3D matches by this (`localization.refinement`). The covariance is the
inverse of the point's Gauss-Newton information over its observations for a keypoint noise of
1 px (pinhole projection with the keyframe's focal lengths; lens distortion ignored), so it
scales with the square of the real keypoint noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..geometry import Camera, Pose

# the upper triangle of a symmetric 3x3 matrix, row-major: xx, xy, xz, yy, yz, zz
TRIU = (np.array([0, 0, 0, 1, 1, 2]), np.array([0, 1, 2, 1, 2, 2]))
# a point seen along a single ray has no depth information: its variance is capped here (m^2)
MAX_VARIANCE = 1e6


def point_quality(
    points3D: np.ndarray,
    observations: Sequence[np.ndarray],
    cameras: Sequence[Camera],
    cam_from_world: Sequence[Pose],
) -> tuple[np.ndarray, np.ndarray]:
    """(tri_angle_deg (P,) float32, covariance (P, 6) float32 upper triangles in m^2 at 1 px).

    `observations[i]`: the point ids (>= 0) keyframe `i` observes. `tri_angle_deg` is the
    largest angle between two of a point's viewing rays.
    """
    xyz = np.asarray(points3D, np.float64).reshape(-1, 3)
    num = len(xyz)
    info = np.zeros((num, 3, 3))
    ray_sets: list[tuple[np.ndarray, np.ndarray]] = []
    for ids, camera, pose in zip(observations, cameras, cam_from_world, strict=True):
        ids = np.unique(np.asarray(ids, np.int64))
        ids = ids[ids >= 0]
        jac = _projection_jacobian(xyz[ids], camera, pose)
        np.add.at(info, ids, np.einsum("nij,nik->njk", jac, jac))
        rays = xyz[ids] - pose.center
        ray_sets.append(
            (ids, rays / np.maximum(np.linalg.norm(rays, axis=1, keepdims=True), 1e-12))
        )
    cov = np.linalg.pinv(info, hermitian=True) if num else info
    if num:  # one ray (or none): nothing known along it
        cov[np.linalg.matrix_rank(info, hermitian=True) < 3] = np.eye(3) * MAX_VARIANCE
    return _max_ray_angles(num, ray_sets), cov[:, TRIU[0], TRIU[1]].astype(np.float32)


def _projection_jacobian(xyz: np.ndarray, camera: Camera, pose: Pose) -> np.ndarray:
    """(n, 2, 3) d(pixel)/d(world point) of a pinhole camera with `camera`'s focal lengths."""
    K = camera.K
    x, y, z = (xyz @ pose.R.T + pose.tvec).T
    z = np.where(np.abs(z) < 1e-9, 1e-9, z)
    jac = np.zeros((len(xyz), 2, 3))
    jac[:, 0, 0], jac[:, 0, 2] = K[0, 0] / z, -K[0, 0] * x / z**2
    jac[:, 1, 1], jac[:, 1, 2] = K[1, 1] / z, -K[1, 1] * y / z**2
    return jac @ pose.R


def _max_ray_angles(num: int, ray_sets: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """(P,) float32 degrees: the largest angle between two viewing rays of each point."""
    if not ray_sets:
        return np.zeros(num, np.float32)
    ids = np.concatenate([i for i, _ in ray_sets])
    rays = np.concatenate([r for _, r in ray_sets])
    order = np.argsort(ids, kind="stable")
    ids, rays = ids[order], rays[order]
    starts = np.flatnonzero(np.r_[True, np.diff(ids) > 0]) if len(ids) else np.zeros(0, int)
    out = np.zeros(num, np.float32)
    for a, b in zip(starts, np.r_[starts[1:], len(ids)]):
        cos = np.clip((rays[a:b] @ rays[a:b].T).min(), -1.0, 1.0)
        out[ids[a]] = np.degrees(np.arccos(cos))
    return out


def covariance_matrices(upper: np.ndarray) -> np.ndarray:
    """(n, 3, 3) symmetric matrices from (n, 6) upper triangles (`TRIU` order)."""
    upper = np.asarray(upper, np.float64).reshape(-1, 6)
    out = np.empty((len(upper), 3, 3))
    out[:, TRIU[0], TRIU[1]] = upper
    out[:, TRIU[1], TRIU[0]] = upper
    return out


def depth_sigma(upper: np.ndarray) -> np.ndarray:
    """(n,) the largest standard deviation of each point (m at 1 px keypoint noise)."""
    return np.sqrt(np.maximum(np.linalg.eigvalsh(covariance_matrices(upper))[:, -1], 0.0))


def keyframes_point_quality(source, points3D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`point_quality` of a map writer's keyframe source (`cameras`, `poses`, `point3D_ids(i)`)."""
    observations = [source.point3D_ids(i) for i in range(source.num_keyframes)]
    return point_quality(points3D, observations, source.cameras, source.poses)


def quality_summary(tri_angles: np.ndarray, covariances: np.ndarray) -> dict[str, float]:
    """Median triangulation angle and depth sigma (1 px) of a map's points (none: {})."""
    if not len(tri_angles):
        return {}
    return {
        "median_tri_angle_deg": float(np.median(tri_angles)),
        "median_depth_sigma_m": float(np.median(depth_sigma(covariances))),
    }
