"""Triangulation of a large posed map by spatial submaps, so its memory does not grow with the map.

pycolmap holds a whole reconstruction, its database cache and correspondence graph in memory
while it triangulates: for 2,000 images that alone is 130 MB more than for 200. Here:

1. `partition_images`: the camera centres split at the median of their widest axis, again and
   again, into blocks of at most `max_images` images (deterministic).
2. Each block is triangulated (`triangulation.triangulate_known_poses`) with its border: every
   image paired with one of its images, and every pair that touches the block, so a point at
   the block's edge is seen from both sides.
3. `merge_submaps`: each keypoint belongs to the point its own block found. A border
   observation joins its point to that one, or claims the keypoint where its own block left it
   free. Each merged point keeps the position of its longest-track member; observations that
   reproject worse than `max_reproj_error_px` (or twice in one image) are dropped, and points
   left with fewer than two.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import Camera, Pose

logger = logging.getLogger(__name__)


def partition_images(centers: np.ndarray, max_images: int) -> list[np.ndarray]:
    """Blocks (sorted image indices) of at most `max_images` images, each a spatial cell of the
    camera `centers` (N, 3): median splits along the widest axis, depth first."""
    if max_images < 2:
        raise ValueError(f"submap size must be at least 2 images, got {max_images}")
    centers = np.asarray(centers, np.float64).reshape(-1, 3)
    blocks: list[np.ndarray] = []
    todo = [np.arange(len(centers))]
    while todo:
        idx = todo.pop()
        if len(idx) <= max_images:
            blocks.append(np.sort(idx))
            continue
        pts = centers[idx]
        axis = int(np.argmax(np.ptp(pts, axis=0)))
        order = idx[np.argsort(pts[:, axis], kind="stable")]
        half = len(order) // 2
        todo += [order[half:], order[:half]]  # the lower half is taken first
    return blocks


class _PairSubset:
    """The matches of the pairs at positions `indices` of the build's pair list (those that
    touch one block), renumbered to the block's run images: a source for
    `triangulate_known_poses` (`items()` in pair order). A matches file reads just those."""

    def __init__(self, pair_matches, pairs: np.ndarray, indices: np.ndarray, local) -> None:
        self.source, self.pairs, self.indices, self.local = pair_matches, pairs, indices, local

    def items(self):
        if isinstance(self.source, dict):
            found = (((int(i), int(j)), self.source[(int(i), int(j))])
                     for i, j in self.pairs[self.indices])  # fmt: skip
        else:
            found = self.source.items_at(self.indices)
        for (i, j), m in found:
            yield (int(self.local[i]), int(self.local[j])), m


def pairs_of(pair_matches) -> np.ndarray:
    """(P, 2) image index pairs of a {(i, j): matches} dict or a matches file (`.pairs`)."""
    pairs = sorted(pair_matches) if isinstance(pair_matches, dict) else pair_matches.pairs
    return np.asarray(pairs, np.int64).reshape(-1, 2)


@dataclass
class SubmapRuns:
    """What the block runs leave for the merge, in global point ids (runs numbered in turn)."""

    owner_ids: list[np.ndarray]  # per image (N_i,): the point its own block gave each keypoint
    xyz: list[np.ndarray] = field(default_factory=list)
    track_lengths: list[np.ndarray] = field(default_factory=list)
    border: list[np.ndarray] = field(default_factory=list)  # (K, 3): point, image, keypoint
    num_points: int = 0
    num_verified_matches: int = 0
    num_pairs: int = 0

    def add(self, run_images: np.ndarray, core: np.ndarray, tri: dict) -> None:
        is_core = np.isin(run_images, core)
        for local, (g, ids) in enumerate(zip(run_images, tri["point3D_ids"])):
            ids = np.where(ids >= 0, ids + self.num_points, -1)
            if is_core[local]:
                self.owner_ids[g] = ids
            else:
                rows = np.flatnonzero(ids >= 0)
                self.border.append(np.stack([ids[rows], np.full(len(rows), g), rows], 1))
        self.xyz.append(tri["points3D"])
        self.track_lengths.append(tri["track_lengths"])
        self.num_points += len(tri["points3D"])
        self.num_verified_matches += tri["num_verified_matches"]
        self.num_pairs += tri["num_pairs"]


def triangulate_submaps(
    cameras: Sequence[Camera],
    cam_from_world: Sequence[Pose],
    names: Sequence[str],
    num_keypoints: Sequence[int],
    load_keypoints: Callable[[int], np.ndarray],
    pair_matches,
    conf: dict[str, Any],
    max_images: int,
    work_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """`triangulate_known_poses` block by block (see the module); the same result keys.

    `num_keypoints[i]`: image i's keypoint count; `load_keypoints(i)`: its (N_i, 2) keypoints
    (read when its block, then the merge, needs them)."""
    from tqdm import tqdm

    from .triangulation import default_triangulation_conf, triangulate_known_poses

    conf = {**default_triangulation_conf, **(conf or {})}
    centers = np.stack([p.center for p in cam_from_world])
    blocks = partition_images(centers, max_images)
    pairs = pairs_of(pair_matches)
    runs = SubmapRuns([np.full(int(n), -1, np.int64) for n in num_keypoints])
    for core in tqdm(blocks, desc="submaps", unit="block", disable=not progress):
        in_core = np.zeros(len(names), bool)
        in_core[core] = True
        touch = np.flatnonzero(in_core[pairs[:, 0]] | in_core[pairs[:, 1]])
        run_images = np.union1d(core, pairs[touch].ravel())
        local = np.full(len(names), -1, np.int64)
        local[run_images] = np.arange(len(run_images))
        subset = _PairSubset(pair_matches, pairs, touch, local)
        tri = triangulate_known_poses(
            [cameras[g] for g in run_images], [cam_from_world[g] for g in run_images],
            [names[g] for g in run_images], [load_keypoints(int(g)) for g in run_images],
            subset, conf, work_dir=work_dir,
        )  # fmt: skip
        runs.add(run_images, core, tri)
    logger.info("triangulated %d images in %d submaps of at most %d", len(names), len(blocks),
                max_images)  # fmt: skip
    return merge_submaps(runs, cameras, cam_from_world, load_keypoints, conf)


def _components(runs: SubmapRuns) -> np.ndarray:
    """(P,) the merged point of each run point: border observations link points (in run order,
    the first claim of a free keypoint takes it) and linked points are one."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    offsets = np.concatenate([[0], np.cumsum([len(o) for o in runs.owner_ids])])
    owner = np.concatenate(runs.owner_ids) if runs.owner_ids else np.zeros(0, np.int64)
    border = np.concatenate(runs.border) if runs.border else np.zeros((0, 3), np.int64)
    flat = offsets[border[:, 1]] + border[:, 2]
    free = owner[flat] < 0
    # a free keypoint goes to its first claimer; later claims link to that one
    _, first = np.unique(flat[free], return_index=True)
    claimer = np.flatnonzero(free)[first]
    owner[flat[claimer]] = border[claimer, 0]
    edges = np.stack([border[:, 0], owner[flat]], 1)
    n = runs.num_points
    if n == 0:
        return np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    for i in range(len(runs.owner_ids)):  # the claimed keypoints, written back
        runs.owner_ids[i] = owner[offsets[i] : offsets[i + 1]]
    return labels


def merge_submaps(
    runs: SubmapRuns,
    cameras: Sequence[Camera],
    cam_from_world: Sequence[Pose],
    load_keypoints: Callable[[int], np.ndarray],
    conf: dict[str, Any],
) -> dict[str, Any]:
    """One set of points from the block runs (see the module); `triangulate_known_poses`'s keys."""
    labels = _components(runs)
    xyz = np.concatenate(runs.xyz) if runs.xyz else np.zeros((0, 3))
    tracks = np.concatenate(runs.track_lengths) if runs.xyz else np.zeros(0, np.int32)
    # each merged point at its longest-track member (the lowest id among equals)
    order = np.lexsort((np.arange(len(tracks)), -tracks))
    _, first = np.unique(labels[order], return_index=True)
    merged_xyz = xyz[order[first]]
    num_merged = len(merged_xyz)
    ids, errors = [], []
    for i, owner in enumerate(runs.owner_ids):
        comp = np.where(owner >= 0, labels[np.maximum(owner, 0)], -1)
        err = _reprojection_errors(merged_xyz, comp, cameras[i], cam_from_world[i],
                                   load_keypoints(i))  # fmt: skip
        comp[~(err <= conf["max_reproj_error_px"])] = -1
        _drop_repeats(comp, err)
        ids.append(comp)
        errors.append((comp[comp >= 0], err[comp >= 0]))
    return _renumbered(ids, errors, merged_xyz, num_merged, runs)


def _reprojection_errors(xyz, comp, camera: Camera, pose: Pose, keypoints) -> np.ndarray:
    """(N_i,) pixel error of each keypoint against its merged point (inf where none or behind)."""
    err = np.full(len(comp), np.inf)
    rows = np.flatnonzero(comp >= 0)
    if len(rows):
        cam_points = pose.transform(xyz[comp[rows]])
        proj = camera.to_pycolmap().img_from_cam(cam_points, check_cheirality=True)
        e = np.linalg.norm(proj - np.asarray(keypoints, np.float64)[rows], axis=1)
        err[rows] = np.where(np.isfinite(e), e, np.inf)
    return err


def _drop_repeats(comp: np.ndarray, err: np.ndarray) -> None:
    """A point seen twice in one image keeps its best-reprojecting keypoint (in place)."""
    rows = np.flatnonzero(comp >= 0)
    order = rows[np.lexsort((err[rows], comp[rows]))]
    repeat = np.concatenate([[False], comp[order][1:] == comp[order][:-1]])
    comp[order[repeat]] = -1


def _renumbered(ids, errors, merged_xyz, num_merged, runs: SubmapRuns) -> dict[str, Any]:
    """Points seen at least twice, numbered 0.. in merged order, with their tracks and errors."""
    seen = np.concatenate([c for c, _ in errors]) if errors else np.zeros(0, np.int64)
    errs = np.concatenate([e for _, e in errors]) if errors else np.zeros(0)
    counts = np.bincount(seen, minlength=num_merged)
    keep = counts >= 2
    new_id = np.full(num_merged, -1, np.int64)
    new_id[keep] = np.arange(int(keep.sum()))
    sums = np.bincount(seen, weights=errs, minlength=num_merged)
    return {
        "point3D_ids": [np.where(c >= 0, new_id[np.maximum(c, 0)], -1) for c in ids],
        "points3D": merged_xyz[keep],
        "track_lengths": counts[keep].astype(np.int32),
        "errors": (sums[keep] / np.maximum(counts[keep], 1)).astype(np.float32),
        "num_verified_matches": runs.num_verified_matches,
        "num_pairs": runs.num_pairs,
    }
