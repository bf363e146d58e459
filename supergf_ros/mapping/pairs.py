"""Image pair selection for map building: by pose (co-visibility proxy) and by retrieval."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..geometry import Pose


def pairs_from_poses(
    cam_from_world: Sequence[Pose], num_neighbors: int = 10, max_angle_deg: float = 60.0
) -> set[tuple[int, int]]:
    """For each camera, its `num_neighbors` nearest cameras (centre distance) among those whose
    viewing direction differs by at most `max_angle_deg`. Returns pairs (i, j) with i < j."""
    n = len(cam_from_world)
    if n < 2 or num_neighbors <= 0:
        return set()
    centers = np.stack([p.center for p in cam_from_world])
    # viewing direction = camera z axis in world coordinates = third row of R
    dirs = np.stack([p.R[2] for p in cam_from_world])
    dist = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
    cos = np.clip(dirs @ dirs.T, -1.0, 1.0)
    valid = np.degrees(np.arccos(cos)) <= max_angle_deg
    np.fill_diagonal(valid, False)
    dist = np.where(valid, dist, np.inf)
    pairs = set()
    for i in range(n):
        order = np.argsort(dist[i], kind="stable")[:num_neighbors]
        for j in order:
            if np.isfinite(dist[i, j]):
                pairs.add((min(i, int(j)), max(i, int(j))))
    return pairs


def pairs_from_retrieval(
    global_descriptors: np.ndarray, num_neighbors: int = 5
) -> set[tuple[int, int]]:
    """For each image, its `num_neighbors` most similar images by global descriptor (cosine)."""
    g = np.asarray(global_descriptors, dtype=np.float32)
    n = g.shape[0]
    if n < 2 or num_neighbors <= 0:
        return set()
    sim = g @ g.T
    np.fill_diagonal(sim, -np.inf)
    k = min(num_neighbors, n - 1)
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return {(min(i, int(j)), max(i, int(j))) for i in range(n) for j in top[i]}


def select_pairs(
    cam_from_world: Sequence[Pose] | None,
    global_descriptors: np.ndarray | None,
    num_pose_neighbors: int = 10,
    max_angle_deg: float = 60.0,
    num_retrieval_neighbors: int = 5,
) -> list[tuple[int, int]]:
    """Union of pose-based and retrieval-based pairs, sorted. Either source may be None."""
    pairs: set[tuple[int, int]] = set()
    if cam_from_world is not None:
        pairs |= pairs_from_poses(cam_from_world, num_pose_neighbors, max_angle_deg)
    if global_descriptors is not None:
        pairs |= pairs_from_retrieval(global_descriptors, num_retrieval_neighbors)
    return sorted(pairs)
