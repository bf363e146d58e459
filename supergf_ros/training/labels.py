"""Soft labels S in [0, 1]: the field-of-view overlap between two images.

Every function returns a symmetric (N, N) float32 matrix (or (Nq, Ndb) for MSLS) with ones on the
diagonal of square matrices. Overlap of images i and j is the mean of the two directional overlaps
"fraction of what i sees that j also sees" and vice versa. Three ways to get it:

- `overlap_from_points`: co-visible 3D points (a COLMAP model with points, or a built map).
- `overlap_from_depth`: camera frusta and depth. A regular grid of pixels of image i is lifted to
  3D with its depth and projected into image j; a point counts as seen by j when it lands inside
  j's image in front of the camera and, with a depth map for j, agrees with j's depth (occlusion
  test), else when it faces j (the surface, approximated by a plane facing camera i, is not seen
  from behind). Depth is either exact per-pixel depth maps (synthetic scenes) or one scene depth
  per image from `estimate_scene_depths` (datasets with poses only, e.g. Strecha).
- `msls_overlap`: 2-D positions (UTM) and compass headings, as in the graded similarity of
  Leyva-Vallina et al. (each view is a circular sector: radius `radius_m`, opening `fov_deg`).
- `overlap_from_sequence`: frame distance in a time-ordered recording (no poses at all), a proxy
  that holds while the camera moves steadily forward: 1 - |i - j| / window, 0 beyond.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..geometry import Camera, Pose


def _symmetrize(directional: np.ndarray) -> np.ndarray:
    overlap = 0.5 * (directional + directional.T)
    np.fill_diagonal(overlap, 1.0)
    return np.clip(overlap, 0.0, 1.0).astype(np.float32)


def overlap_from_points(point_ids: Sequence[np.ndarray]) -> np.ndarray:
    """Overlap from co-visible 3D points.

    Args:
        point_ids: per image, the ids (any integers) of the 3D points it observes.
    Returns:
        (N, N) float32: 0.5 * (|Pi & Pj| / |Pi| + |Pi & Pj| / |Pj|); 0 where either set is empty.
    """
    n = len(point_ids)
    sets = [np.unique(np.asarray(p, dtype=np.int64)) for p in point_ids]
    if not sets:
        return np.zeros((0, 0), np.float32)
    all_ids = (
        np.unique(np.concatenate(sets)) if any(len(s) for s in sets) else np.zeros(0, np.int64)
    )
    # sparse incidence matrix as dense bool (images x points); maps here hold <= ~1e5 points
    from scipy.sparse import csr_matrix

    rows = np.concatenate([np.full(len(s), i) for i, s in enumerate(sets)])
    cols = np.searchsorted(all_ids, np.concatenate(sets)) if len(all_ids) else np.zeros(0, int)
    inc = csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, len(all_ids)))
    common = np.asarray((inc @ inc.T).todense(), dtype=np.float64)
    counts = np.array([len(s) for s in sets], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        directional = np.where(counts[:, None] > 0, common / counts[:, None], 0.0)
    return _symmetrize(directional)


def estimate_scene_depths(poses: Sequence[Pose], min_angle_deg: float = 5.0) -> np.ndarray:
    """One scene depth per image from the poses alone (no images, no points).

    For every pair of cameras whose optical axes are at least `min_angle_deg` apart, the axes'
    points of closest approach are triangulated (the cameras of a capture look at a common scene);
    the depth of image i is the median depth along its axis over the pairs with both depths
    positive. Images without such a pair get the median over all images.

    Returns:
        (N,) float64 depths (in the poses' units); raises ValueError if none can be estimated.
    """
    n = len(poses)
    if n < 2:
        raise ValueError("estimate_scene_depths needs at least 2 poses")
    centres = np.stack([p.center for p in poses])
    axes = np.stack([p.R[2] for p in poses])  # optical axes in world
    per_image: list[list[float]] = [[] for _ in range(n)]
    cos_min = np.cos(np.radians(min_angle_deg))
    for i in range(n):
        for j in range(i + 1, n):
            d1, d2 = axes[i], axes[j]
            b = float(d1 @ d2)
            if abs(b) > cos_min:
                continue
            w = centres[i] - centres[j]
            denom = 1 - b * b
            s = (b * (d2 @ w) - (d1 @ w)) / denom
            t = ((d2 @ w) - b * (d1 @ w)) / denom
            if s > 0 and t > 0:
                per_image[i].append(s)
                per_image[j].append(t)
    depths = np.array([np.median(d) if d else np.nan for d in per_image])
    if np.isnan(depths).all():
        raise ValueError(
            "cannot estimate scene depth from these poses (no converging optical axes); "
            "pass depths explicitly"
        )
    depths[np.isnan(depths)] = np.nanmedian(depths)
    return depths


def _pixel_grid(camera: Camera, grid: tuple[int, int]) -> np.ndarray:
    gx, gy = grid
    xs = (np.arange(gx) + 0.5) * camera.width / gx - 0.5
    ys = (np.arange(gy) + 0.5) * camera.height / gy - 0.5
    u, v = np.meshgrid(xs, ys)
    return np.stack([u.ravel(), v.ravel()], 1)


def _sample_depth(depth: np.ndarray, uv: np.ndarray, camera: Camera) -> np.ndarray:
    """Nearest-neighbour depth lookup at pixel coordinates of `camera` (depth may be smaller)."""
    h, w = depth.shape
    x = np.clip(np.round((uv[:, 0] + 0.5) * w / camera.width - 0.5), 0, w - 1).astype(int)
    y = np.clip(np.round((uv[:, 1] + 0.5) * h / camera.height - 0.5), 0, h - 1).astype(int)
    return depth[y, x].astype(np.float64)


def overlap_from_depth(
    cameras: Sequence[Camera],
    poses: Sequence[Pose],
    depths: Sequence[np.ndarray | float] | np.ndarray,
    *,
    grid: tuple[int, int] = (32, 24),
    depth_tolerance: float = 0.05,
    max_view_angle_deg: float = 75.0,
) -> np.ndarray:
    """Overlap from camera frusta and depth.

    Args:
        cameras: intrinsics per image (distortion ignored).
        poses: cam_from_world per image.
        depths: per image either an (h, w) z-depth map (any resolution, aligned with the image;
            non-finite or <= 0 means no depth) or one scalar scene depth (fronto-parallel plane).
        grid: (columns, rows) of sampled pixels per image.
        depth_tolerance: relative depth agreement required by the occlusion test (depth maps).
        max_view_angle_deg: a point is not counted as seen by j when the rays from i and j to it
            differ by more than this (also rejects seeing a plane from behind).
    Returns:
        (N, N) float32 symmetric overlap in [0, 1].
    """
    n = len(cameras)
    if len(poses) != n or len(depths) != n:
        raise ValueError(
            f"need one pose and one depth per camera, got {n} cameras, {len(poses)} poses, "
            f"{len(depths)} depths"
        )
    cos_max = np.cos(np.radians(max_view_angle_deg))
    centres = [p.center for p in poses]
    points: list[np.ndarray] = []
    normals: list[np.ndarray] = []
    for cam, pose, depth in zip(cameras, poses, depths):
        uv = _pixel_grid(cam, grid)
        rays = np.c_[uv, np.ones(len(uv))] @ np.linalg.inv(cam.K).T  # z = 1
        if np.ndim(depth) == 0:
            z = np.full(len(uv), float(depth))
        else:
            z = _sample_depth(np.asarray(depth), uv, cam)
        valid = np.isfinite(z) & (z > 0)
        world = pose.inverse().transform(rays[valid] * z[valid, None])
        points.append(world)
        normals.append(np.broadcast_to(-pose.R[2], world.shape) if np.ndim(depth) == 0 else None)
    directional = np.zeros((n, n))
    grid_size = grid[0] * grid[1]
    for i in range(n):
        X = points[i]
        if len(X) == 0:
            continue
        ray_i = X - centres[i]
        ray_i /= np.linalg.norm(ray_i, axis=1, keepdims=True)
        for j in range(n):
            if i == j:
                directional[i, j] = 1.0
                continue
            cam, pose = cameras[j], poses[j]
            Xc = pose.transform(X)
            z = Xc[:, 2]
            front = z > 1e-6
            uv = Xc[:, :2] / np.where(front, z, 1)[:, None] * [cam.K[0, 0], cam.K[1, 1]]
            uv += [cam.K[0, 2], cam.K[1, 2]]
            inside = (
                front
                & (uv[:, 0] >= -0.5)
                & (uv[:, 0] <= cam.width - 0.5)
                & (uv[:, 1] >= -0.5)
                & (uv[:, 1] <= cam.height - 0.5)
            )
            ray_j = X - centres[j]
            ray_j /= np.linalg.norm(ray_j, axis=1, keepdims=True)
            seen = inside & ((ray_i * ray_j).sum(1) >= cos_max)
            if np.ndim(depths[j]) > 0 and seen.any():
                dj = _sample_depth(np.asarray(depths[j]), uv[seen], cam)
                agree = np.abs(dj - z[seen]) <= depth_tolerance * z[seen]
                seen[np.flatnonzero(seen)[~agree]] = False
            # fraction of image i's sampled pixels (with depth) seen by j
            directional[i, j] = seen.sum() / max(len(X), 0.25 * grid_size)
    return _symmetrize(directional)


def msls_overlap(
    query_xy: np.ndarray,
    query_heading_deg: np.ndarray,
    db_xy: np.ndarray,
    db_heading_deg: np.ndarray,
    *,
    fov_deg: float = 90.0,
    radius_m: float = 50.0,
    samples: int = 400,
    seed: int = 0,
) -> np.ndarray:
    """Graded field-of-view overlap from 2-D positions (metres) and compass headings.

    Each view is the circular sector of radius `radius_m` and opening `fov_deg` centred on its
    heading (compass: degrees clockwise from north, x = east, y = north). The directional overlap
    is the fraction of `samples` points, uniform in the query's sector, inside the database sector
    (and vice versa); the result is their mean.

    Returns:
        (Nq, Ndb) float32 in [0, 1].
    """
    query_xy = np.asarray(query_xy, np.float64).reshape(-1, 2)
    db_xy = np.asarray(db_xy, np.float64).reshape(-1, 2)
    q_head = np.radians(np.asarray(query_heading_deg, np.float64).reshape(-1))
    d_head = np.radians(np.asarray(db_heading_deg, np.float64).reshape(-1))
    if len(q_head) != len(query_xy) or len(d_head) != len(db_xy):
        raise ValueError("need one heading per position for queries and database")
    if not (0 < fov_deg < 360 and radius_m > 0):
        raise ValueError(f"invalid fov_deg={fov_deg} or radius_m={radius_m}")
    rng = np.random.default_rng(seed)
    half = np.radians(fov_deg) / 2
    r = radius_m * np.sqrt(rng.random(samples))
    a = rng.uniform(-half, half, samples)

    def sector_points(xy: np.ndarray, head: np.ndarray) -> np.ndarray:  # (N, S, 2)
        ang = head[:, None] + a[None]
        return xy[:, None] + np.stack([r * np.sin(ang), r * np.cos(ang)], -1)

    def inside(pts: np.ndarray, xy: np.ndarray, head: np.ndarray) -> np.ndarray:
        # pts (S, 2) of one sector vs sectors (M,) -> fraction (M,)
        d = pts[None] - xy[:, None]  # (M, S, 2)
        dist = np.linalg.norm(d, axis=-1)
        bearing = np.arctan2(d[..., 0], d[..., 1])
        diff = np.angle(np.exp(1j * (bearing - head[:, None])))
        return ((dist <= radius_m) & (np.abs(diff) <= half)).mean(-1)

    overlap = np.zeros((len(query_xy), len(db_xy)))
    for i in range(len(query_xy)):
        near = np.flatnonzero(np.linalg.norm(db_xy - query_xy[i], axis=1) < 2 * radius_m)
        if len(near) == 0:
            continue
        q_pts = sector_points(query_xy[i : i + 1], q_head[i : i + 1])[0]
        fwd = inside(q_pts, db_xy[near], d_head[near])
        bwd = np.array(
            [
                inside(
                    sector_points(db_xy[k : k + 1], d_head[k : k + 1])[0],
                    query_xy[i : i + 1],
                    q_head[i : i + 1],
                )[0]
                for k in near
            ]
        )
        overlap[i, near] = 0.5 * (fwd + bwd)
    return overlap.astype(np.float32)


def overlap_from_sequence(num_frames: int, window: float) -> np.ndarray:
    """Overlap of the frames of one time-ordered sequence from their distance in frames.

    Args:
        num_frames: frames in the sequence.
        window: frame distance at which the overlap reaches 0; frames within window / 2 of each
            other get S >= 0.5 (positives), the next ones up to the window soft negatives.
    Returns:
        (N, N) float32: max(0, 1 - |i - j| / window).
    """
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    if not window > 0:
        raise ValueError(f"sequence window must be > 0 frames, got {window}")
    idx = np.arange(num_frames, dtype=np.float64)
    return np.clip(1.0 - np.abs(idx[:, None] - idx[None]) / float(window), 0.0, 1.0).astype(
        np.float32
    )
