"""3D points for a map with pycolmap: triangulation from known poses, or incremental SfM.

Both paths go through a COLMAP database. pycolmap 4.x skips two-view geometries whose `config` is
UNDEFINED, so every verified pair is written with an explicit configuration (CALIBRATED when the
poses are known and the matches passed the epipolar check).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import Camera, Pose

logger = logging.getLogger(__name__)

default_triangulation_conf: dict[str, Any] = {
    "max_epipolar_error_px": 4.0,  # Sampson error gate on matches, using the known poses
    "min_tri_angle_deg": 1.5,  # triangulation angle: creation and filtering
    "max_reproj_error_px": 4.0,  # filter points whose reprojection error exceeds this
    "ignore_two_view_tracks": False,  # keep points seen by two keyframes (small maps need them)
    "min_num_matches": 15,  # pairs with fewer verified matches are dropped
    # bundle adjustment threads: 1 makes the points the same bits from the same matches (COLMAP
    # runs problems over its multi-threading threshold on all cores, in a varying sum order)
    "num_threads": 1,
}


@contextmanager
def _quiet_pycolmap():
    """Only warnings and errors from COLMAP's log while inside; the old level is restored."""
    import pycolmap

    old = pycolmap.logging.minloglevel
    pycolmap.logging.minloglevel = 2
    try:
        yield pycolmap
    finally:
        pycolmap.logging.minloglevel = old


def epipolar_filter(
    kp0_normalized: np.ndarray,
    kp1_normalized: np.ndarray,
    matches: np.ndarray,
    cam1_from_cam0: Pose,
    threshold: float,
) -> np.ndarray:
    """Boolean mask of matches whose Sampson error (normalized image plane) is below
    `threshold` for the essential matrix of the known relative pose."""
    if len(matches) == 0:
        return np.zeros(0, dtype=bool)
    t = cam1_from_cam0.tvec
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    E = tx @ cam1_from_cam0.R
    x0 = np.concatenate([kp0_normalized[matches[:, 0]], np.ones((len(matches), 1))], 1)
    x1 = np.concatenate([kp1_normalized[matches[:, 1]], np.ones((len(matches), 1))], 1)
    Ex0 = x0 @ E.T
    Etx1 = x1 @ E
    num = np.sum(x1 * Ex0, axis=1) ** 2
    den = Ex0[:, 0] ** 2 + Ex0[:, 1] ** 2 + Etx1[:, 0] ** 2 + Etx1[:, 1] ** 2
    return num / np.maximum(den, 1e-15) < threshold**2


def _in_pair_order(pair_matches):
    """((i, j), matches) sorted by pair: a dict's items sorted, or a streamed source's
    `items()` (which yields them in pair order, e.g. `feature_store.MatchesFile`)."""
    return sorted(pair_matches.items()) if isinstance(pair_matches, dict) else pair_matches.items()


def _fill_database(db, rec, keypoints: Sequence[np.ndarray]) -> None:
    for cam in rec.cameras.values():
        db.write_camera(cam, use_camera_id=True)
    for rig in rec.rigs.values():
        db.write_rig(rig, use_rig_id=True)
    for frame in rec.frames.values():
        db.write_frame(frame, use_frame_id=True)
    for image_id in sorted(rec.images):
        image = rec.images[image_id]
        db.write_image(image, use_image_id=True)
        db.write_keypoints(image_id, np.asarray(keypoints[image_id - 1], dtype=np.float32))


def _point3D_ids(rec, num_keypoints: Sequence[int]) -> tuple[list[np.ndarray], np.ndarray, dict]:
    """Per-keyframe (N_i,) arrays of contiguous point indices (-1 = none) + (P,3) xyz + stats."""
    colmap_ids = sorted(rec.points3D)
    remap = {pid: i for i, pid in enumerate(colmap_ids)}
    xyz = np.array([rec.points3D[p].xyz for p in colmap_ids], dtype=np.float64).reshape(-1, 3)
    track = np.array([rec.points3D[p].track.length() for p in colmap_ids], dtype=np.int32)
    error = np.array([rec.points3D[p].error for p in colmap_ids], dtype=np.float32)
    ids = []
    for i, n in enumerate(num_keypoints):
        out = np.full(n, -1, dtype=np.int64)
        if (i + 1) in rec.images:
            for j, p2d in enumerate(rec.images[i + 1].points2D):
                if p2d.has_point3D():
                    out[j] = remap[p2d.point3D_id]
        ids.append(out)
    return ids, xyz, {"track_lengths": track, "errors": error}


def _reconstruction(cams_pc: list, names: Sequence[str], keypoints, poses=None):
    """A pycolmap Reconstruction of the images (ids from 1) with their cameras and keypoints,
    posed where `poses` (cam_from_world) are given."""
    import pycolmap

    rec = pycolmap.Reconstruction()
    for i, (cam_pc, name) in enumerate(zip(cams_pc, names), 1):
        cam_pc.camera_id = i
        rec.add_camera_with_trivial_rig(cam_pc)
        image = pycolmap.Image(
            name=name,
            keypoints=np.asarray(keypoints[i - 1], dtype=np.float64).reshape(-1, 2),
            camera_id=i,
            image_id=i,
        )
        if poses is None:
            rec.add_image_with_trivial_frame(image)
        else:
            rec.add_image_with_trivial_frame(image, poses[i - 1].to_pycolmap())
    return rec


def triangulate_known_poses(
    cameras: Sequence[Camera],
    cam_from_world: Sequence[Pose],
    names: Sequence[str],
    keypoints: Sequence[np.ndarray],
    pair_matches: dict[tuple[int, int], np.ndarray],
    conf: dict[str, Any] | None = None,
    work_dir: Path | None = None,
    existing_points: tuple[np.ndarray, Sequence[np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Triangulate 3D points from matches between keyframes with known poses (as hloc does).

    Args:
        cameras, cam_from_world, names, keypoints: per keyframe (keypoints (N_i, 2) float32).
        pair_matches: {(i, j): (K, 2) int matches of keypoint indices}, i < j keyframe indices,
            or a source whose `items()` yields them in pair order (streamed from a file).
        conf: overrides of `default_triangulation_conf`.
        existing_points: (xyz (P, 3), per keyframe (N_i,) point ids, -1 = none) of points kept
            (refined, extended by new observations) rather than triangulated again.
    Returns: {"point3D_ids": list of (N_i,) int64 (-1 = none), "points3D": (P, 3) float64,
        "track_lengths": (P,) int32, "errors": (P,) float32 px, "num_verified_matches": int,
        "num_pairs": int}.
    """
    import pycolmap

    conf = {**default_triangulation_conf, **(conf or {})}
    unknown = set(conf) - set(default_triangulation_conf)
    if unknown:
        raise ValueError(f"unknown triangulation option(s): {sorted(unknown)}")
    cams_pc = [cam.to_pycolmap() for cam in cameras]
    rec = _reconstruction(cams_pc, names, keypoints, cam_from_world)
    if existing_points is not None:
        _add_points(rec, *existing_points)
    with tempfile.TemporaryDirectory(prefix="supergf_tri_", dir=work_dir) as tmp:
        tmp = Path(tmp)
        db = pycolmap.Database.open(str(tmp / "database.db"))
        _fill_database(db, rec, keypoints)
        num_verified, num_pairs = _write_verified_matches(
            db, pair_matches, cams_pc, cam_from_world, keypoints, conf
        )
        db.close()
        out_dir = tmp / "model"
        out_dir.mkdir()
        with _quiet_pycolmap():
            rec = pycolmap.triangulate_points(
                rec, str(tmp / "database.db"), str(tmp), str(out_dir),
                clear_points=existing_points is None, options=_tri_options(conf),
            )  # fmt: skip
    ids, xyz, stats = _point3D_ids(rec, [len(k) for k in keypoints])
    return {
        "point3D_ids": ids,
        "points3D": xyz,
        "num_verified_matches": num_verified,
        "num_pairs": num_pairs,
        **stats,
    }


def _add_points(rec, xyz: np.ndarray, point3D_ids: Sequence[np.ndarray]) -> None:
    """Add points `xyz` to `rec` with their tracks: keypoint j of image i (id i + 1) observes
    point point3D_ids[i][j]."""
    import pycolmap

    tracks = [pycolmap.Track() for _ in range(len(xyz))]
    for i, pids in enumerate(point3D_ids):
        for j in np.flatnonzero(np.asarray(pids) >= 0):
            tracks[int(pids[j])].add_element(i + 1, int(j))
    for p, track in zip(np.asarray(xyz, np.float64), tracks):
        if track.length():
            rec.add_point3D(p, track)


def _write_verified_matches(db, pair_matches, cams_pc, cam_from_world, keypoints, conf):
    """Write every pair's matches and, where enough pass the epipolar check with the known
    poses, a CALIBRATED two-view geometry; (verified matches, verified pairs)."""
    import pycolmap

    normalized = [
        cams_pc[i].cam_from_img(np.asarray(kp, dtype=np.float64).reshape(-1, 2))
        for i, kp in enumerate(keypoints)
    ]
    num_verified = 0
    num_pairs = 0
    for (i, j), m in _in_pair_order(pair_matches):
        m = np.asarray(m, dtype=np.int64).reshape(-1, 2)
        if len(m) == 0:
            continue
        cam1_from_cam0 = cam_from_world[j] * cam_from_world[i].inverse()
        f = 0.5 * (cams_pc[i].mean_focal_length() + cams_pc[j].mean_focal_length())
        keep = epipolar_filter(
            normalized[i], normalized[j], m, cam1_from_cam0, conf["max_epipolar_error_px"] / f
        )
        inliers = m[keep].astype(np.uint32)
        db.write_matches(i + 1, j + 1, m.astype(np.uint32))
        if len(inliers) < conf["min_num_matches"]:
            continue
        tvg = pycolmap.TwoViewGeometry()
        tvg.config = pycolmap.TwoViewGeometryConfiguration.CALIBRATED
        tvg.inlier_matches = inliers
        tvg.cam2_from_cam1 = cam1_from_cam0.to_pycolmap()
        db.write_two_view_geometry(i + 1, j + 1, tvg)
        num_verified += len(inliers)
        num_pairs += 1
    return num_verified, num_pairs


def _tri_options(conf: dict[str, Any]):
    import pycolmap

    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = int(conf["num_threads"])
    opts.triangulation.min_angle = conf["min_tri_angle_deg"]
    opts.triangulation.ignore_two_view_tracks = conf["ignore_two_view_tracks"]
    opts.triangulation.complete_max_reproj_error = conf["max_reproj_error_px"]
    opts.triangulation.merge_max_reproj_error = conf["max_reproj_error_px"]
    opts.mapper.filter_max_reproj_error = conf["max_reproj_error_px"]
    opts.mapper.filter_min_tri_angle = conf["min_tri_angle_deg"]
    opts.extract_colors = False
    return opts


def incremental_sfm(
    cameras: Sequence[Camera] | None,
    names: Sequence[str],
    image_sizes: Sequence[tuple[int, int]],
    keypoints: Sequence[np.ndarray],
    pair_matches: dict[tuple[int, int], np.ndarray],
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Recover poses and points with pycolmap's incremental SfM (no known poses).

    Cameras default to one SIMPLE_RADIAL guess per image (f = 1.2 * max(w, h)) refined by SfM.
    Returns {"cameras", "cam_from_world" (Pose or None per image, None = not registered),
    "point3D_ids", "points3D", "track_lengths", "errors", "num_registered"} for the largest model.
    """
    import pycolmap

    if cameras is not None:
        cams_pc = [cam.to_pycolmap() for cam in cameras]
    else:
        cams_pc = [_guess_camera(w, h) for w, h in image_sizes]
    rec = _reconstruction(cams_pc, names, keypoints)
    with tempfile.TemporaryDirectory(prefix="supergf_sfm_", dir=work_dir) as tmp:
        tmp = Path(tmp)
        db = pycolmap.Database.open(str(tmp / "database.db"))
        _fill_database(db, rec, keypoints)
        _write_estimated_geometries(db, pair_matches, cams_pc, keypoints, cameras is not None)
        db.close()
        opts = pycolmap.IncrementalPipelineOptions()
        opts.extract_colors = False
        if cameras is not None:
            opts.ba_refine_focal_length = False
            opts.ba_refine_principal_point = False
            opts.ba_refine_extra_params = False
        out_dir = tmp / "models"
        out_dir.mkdir()
        with _quiet_pycolmap():
            models = pycolmap.incremental_mapping(
                str(tmp / "database.db"), str(tmp), str(out_dir), options=opts
            )
    if not models:
        raise ValueError(
            "incremental SfM registered no images: too few matches between the images "
            "(check that they overlap) or provide poses in DATASET/sparse_gt"
        )
    return _sfm_result(max(models.values(), key=lambda r: r.num_reg_images()), cams_pc, keypoints)


def _guess_camera(w: int, h: int):
    import pycolmap

    f = 1.2 * max(w, h)
    return pycolmap.Camera(
        model="SIMPLE_RADIAL", width=w, height=h, params=[f, w / 2 - 0.5, h / 2 - 0.5, 0]
    )


def _write_estimated_geometries(db, pair_matches, cams_pc, keypoints, calibrated: bool) -> None:
    """Write the matches of pairs with >= 15 and the two-view geometry estimated from them."""
    import pycolmap

    opts2v = pycolmap.TwoViewGeometryOptions()
    for (i, j), m in _in_pair_order(pair_matches):
        m = np.asarray(m, dtype=np.uint32).reshape(-1, 2)
        if len(m) < 15:
            continue
        db.write_matches(i + 1, j + 1, m)
        kp0 = np.asarray(keypoints[i], dtype=np.float64)
        kp1 = np.asarray(keypoints[j], dtype=np.float64)
        if calibrated:
            tvg = pycolmap.estimate_calibrated_two_view_geometry(
                cams_pc[i], kp0, cams_pc[j], kp1, m, opts2v
            )
        else:
            tvg = pycolmap.estimate_two_view_geometry(cams_pc[i], kp0, cams_pc[j], kp1, m, opts2v)
        if tvg.config != pycolmap.TwoViewGeometryConfiguration.UNDEFINED:
            db.write_two_view_geometry(i + 1, j + 1, tvg)


def _sfm_result(rec, cams_pc: list, keypoints) -> dict[str, Any]:
    """Poses (None: not registered), refined cameras and points of the SfM model `rec`."""
    ids, xyz, stats = _point3D_ids(rec, [len(k) for k in keypoints])
    poses: list[Pose | None] = []
    cams_out = []
    registered = set(rec.reg_image_ids())
    for i in range(1, len(cams_pc) + 1):
        if i in registered and rec.images[i].has_pose:
            image = rec.images[i]
            poses.append(Pose.from_pycolmap(image.cam_from_world()))
        else:
            poses.append(None)
        c = rec.cameras[i] if i in rec.cameras else cams_pc[i - 1]
        cams_out.append(Camera(c.model.name, int(c.width), int(c.height), tuple(c.params)))
    return {
        "cameras": cams_out,
        "cam_from_world": poses,
        "point3D_ids": ids,
        "points3D": xyz,
        "num_registered": int(rec.num_reg_images()),
        **stats,
    }
