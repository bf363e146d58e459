"""Metrics: pose recall at (position, rotation) thresholds and place-recognition Recall@N."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ..geometry import Pose, pose_error

# (metres, degrees) and the key each gets in JSON outputs
POSE_THRESHOLDS: tuple[tuple[float, float], ...] = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))


def threshold_key(position_m: float, rotation_deg: float) -> str:
    """'0.25m_2deg' style key for a threshold pair."""
    return f"{position_m:g}m_{rotation_deg:g}deg"


def pose_errors(
    estimates: Mapping[str, Pose], ground_truth: Mapping[str, Pose], names: Iterable[str]
) -> dict[str, tuple[float, float] | None]:
    """{name: (position error m, rotation error deg)} or None where `estimates` lacks the name."""
    out: dict[str, tuple[float, float] | None] = {}
    for name in names:
        if name not in ground_truth:
            raise ValueError(f"query '{name}' has no ground-truth pose")
        est = estimates.get(name)
        out[name] = None if est is None else pose_error(est, ground_truth[name])
    return out


def camera_frame_error(cam_from_world_est: Pose, cam_from_world_gt: Pose) -> np.ndarray:
    """(3,) the position error in the true camera's axes: lateral (x, right), vertical (y,
    down), along the optical axis (z)."""
    return cam_from_world_gt.R @ (cam_from_world_est.center - cam_from_world_gt.center)


def camera_frame_medians(
    estimates: Mapping[str, Pose], ground_truth: Mapping[str, Pose]
) -> dict[str, float] | None:
    """Median absolute position error per camera axis over `estimates` (m; None: none)."""
    errors = [camera_frame_error(p, ground_truth[n]) for n, p in estimates.items()]
    if not errors:
        return None
    med = np.median(np.abs(np.asarray(errors)), axis=0)
    return {"lateral": float(med[0]), "vertical": float(med[1]), "axial": float(med[2])}


def pose_metrics(
    errors: Mapping[str, tuple[float, float] | None],
    thresholds: Sequence[tuple[float, float]] = POSE_THRESHOLDS,
) -> dict:
    """Recall at each threshold (missing = failure) and median errors over localized queries.

    Returns {"recall": {key: fraction}, "median_translation_m", "median_rotation_deg",
    "num_queries", "num_localized"}; medians are None when nothing was localized.
    """
    n = len(errors)
    if n == 0:
        raise ValueError("no queries to evaluate")
    found = np.array([e for e in errors.values() if e is not None], dtype=np.float64).reshape(-1, 2)
    recall = {}
    for t_m, r_deg in thresholds:
        ok = np.sum((found[:, 0] <= t_m) & (found[:, 1] <= r_deg)) if len(found) else 0
        recall[threshold_key(t_m, r_deg)] = float(ok) / n
    return {
        "recall": recall,
        "median_translation_m": float(np.median(found[:, 0])) if len(found) else None,
        "median_rotation_deg": float(np.median(found[:, 1])) if len(found) else None,
        "num_queries": n,
        "num_localized": len(found),
    }


def recall_at_n(
    ranked: np.ndarray, positives: Sequence[Iterable[int]], ns: Sequence[int] = (1, 5, 10)
) -> dict[int, float]:
    """Place-recognition Recall@N: the fraction of queries with a true match in the top N.

    Args:
        ranked: (Q, >= max(ns)) database indices per query, best first.
        positives: per query, the database indices that count as correct.
    """
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or len(ranked) != len(positives):
        raise ValueError(
            f"ranked must be (Q, K) with Q={len(positives)} queries, got shape {ranked.shape}"
        )
    out = {}
    for n in ns:
        hits = [bool(set(ranked[q, :n].tolist()) & set(positives[q])) for q in range(len(ranked))]
        out[int(n)] = float(np.mean(hits)) if hits else 0.0
    return out


# chi-square 99% quantile with 6 degrees of freedom: the 99% ellipsoid of a 6-dof pose
CHI2_6DOF_99 = 16.812


def covariance_consistency(
    fixes: Mapping[str, tuple[Pose, np.ndarray]], ground_truth: Mapping[str, Pose]
) -> dict:
    """How well published covariances cover the real error: NEES of each fix.

    `fixes`: {name: (cam_from_world, 6x6 map-frame covariance, order x y z rot_x rot_y rot_z
    as `LocalizationResult.map_covariance`)}. NEES = e^T C^-1 e with e the error of the camera
    pose in the map ([position, rotation vector], `tracking.gate.pose_error_vector`); 6 is ideal.
    Returns {"num_fixes", "nees_median", "nees_mean", "fraction_inside_99"} (None without fixes).
    """
    from ..tracking.gate import pose_error_vector

    nees = []
    for name, (cam_from_world, covariance) in fixes.items():
        if name not in ground_truth:
            raise ValueError(f"query '{name}' has no ground-truth pose")
        err = pose_error_vector(ground_truth[name].inverse(), cam_from_world.inverse())
        nees.append(float(err @ np.linalg.solve(np.asarray(covariance, np.float64), err)))
    if not nees:
        return {"num_fixes": 0, "nees_median": None, "nees_mean": None, "fraction_inside_99": None}
    values = np.asarray(nees)
    return {
        "num_fixes": len(values),
        "nees_median": float(np.median(values)),
        "nees_mean": float(values.mean()),
        "fraction_inside_99": float(np.mean(values <= CHI2_6DOF_99)),
    }
