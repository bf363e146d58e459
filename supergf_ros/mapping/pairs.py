"""Image pair selection for map building: by pose (co-visibility proxy) and by retrieval.

Both work on blocks of `PAIR_BLOCK_ROWS` images at a time (a block-by-all matrix, never the
all-by-all one), so pair selection for a large map holds O(block * images) numbers; the
retrieval side reads the global descriptors block by block through a `read_rows(a, b)` callback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..geometry import Pose

PAIR_BLOCK_ROWS = 256


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
    pairs = set()
    for a in range(0, n, PAIR_BLOCK_ROWS):
        b = min(n, a + PAIR_BLOCK_ROWS)
        dist = _distances(centers[a:b], centers)
        cos = np.clip(dirs[a:b] @ dirs.T, -1.0, 1.0)
        valid = np.degrees(np.arccos(cos)) <= max_angle_deg
        valid[np.arange(b - a), np.arange(a, b)] = False
        dist = np.where(valid, dist, np.inf)
        for r, i in enumerate(range(a, b)):
            order = np.argsort(dist[r], kind="stable")[:num_neighbors]
            for j in order:
                if np.isfinite(dist[r, j]):
                    pairs.add((min(i, int(j)), max(i, int(j))))
    return pairs


def _distances(rows: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """(len(rows), N) centre distances, summed axis by axis in place (the values of
    `np.linalg.norm` over a (rows, N, 3) difference array, without that array)."""
    dist = np.zeros((len(rows), len(centers)))
    for axis in range(3):
        diff = rows[:, axis, None] - centers[None, :, axis]
        diff *= diff
        dist += diff
    return np.sqrt(dist, out=dist)


def pairs_from_retrieval(
    global_descriptors: np.ndarray | None,
    num_neighbors: int = 5,
    *,
    read_rows: Callable[[int, int], np.ndarray] | None = None,
    num_images: int | None = None,
) -> set[tuple[int, int]]:
    """For each image, its `num_neighbors` most similar images by global descriptor (cosine).

    The descriptors are `global_descriptors` (N, G), or, for descriptors that stay on disk,
    `read_rows(a, b)` -> rows a..b-1 of `num_images`."""
    if read_rows is None:
        g = np.asarray(global_descriptors, dtype=np.float32)
        n = g.shape[0]
        read_rows = lambda a, b: g[a:b]  # noqa: E731
    else:
        n = int(num_images or 0)
    if n < 2 or num_neighbors <= 0:
        return set()
    k = min(num_neighbors, n - 1)
    blocks = [(a, min(n, a + PAIR_BLOCK_ROWS)) for a in range(0, n, PAIR_BLOCK_ROWS)]
    pairs = set()
    for a, b in blocks:
        rows = np.asarray(read_rows(a, b), np.float32)
        sim = np.concatenate(
            [rows @ np.asarray(read_rows(c, d), np.float32).T for c, d in blocks], axis=1
        )
        sim[np.arange(b - a), np.arange(a, b)] = -np.inf
        top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        pairs |= {
            (min(i, int(j)), max(i, int(j))) for r, i in enumerate(range(a, b)) for j in top[r]
        }
    return pairs


def select_pairs(
    cam_from_world: Sequence[Pose] | None,
    global_descriptors: np.ndarray | None,
    num_pose_neighbors: int = 10,
    max_angle_deg: float = 60.0,
    num_retrieval_neighbors: int = 5,
    *,
    read_rows: Callable[[int, int], np.ndarray] | None = None,
    num_images: int | None = None,
) -> list[tuple[int, int]]:
    """Union of pose-based and retrieval-based pairs, sorted. Either source may be None
    (`read_rows`/`num_images`: the global descriptors read by blocks, `pairs_from_retrieval`)."""
    pairs: set[tuple[int, int]] = set()
    if cam_from_world is not None:
        pairs |= pairs_from_poses(cam_from_world, num_pose_neighbors, max_angle_deg)
    if global_descriptors is not None or read_rows is not None:
        pairs |= pairs_from_retrieval(
            global_descriptors, num_retrieval_neighbors, read_rows=read_rows, num_images=num_images
        )
    return sorted(pairs)
