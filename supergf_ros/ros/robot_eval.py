"""How well a replayed robot was localized (ROS-free): the node's `base_pose` stream against the
bag's dense ground truth (`make_bag`'s source file, "robot").

Inputs are plain records: every received `base_pose` as `BasePose` (in the order received), the
camera frames' stamps and which of them the node answered with a fix or rejected. The metrics
(`robot_metrics`):

* time_to_first_fix_s: playback start to the first fix received (wall seconds);
* base_pose_recall: for every camera frame from the first fix on (played once the first fix had
  been received: the node cannot publish for a frame before it has a fix), the newest base pose
  stamped at most `RECALL_WINDOW_S` before the frame's stamp, its error against the ground truth
  at the pose's own stamp; fraction within each threshold (a frame without such a pose is a
  miss); `base_pose_recall_frames` says how many frames that was;
* fix_rate_hz: fixes per second of bag time (first to last camera stamp);
* fixes_rejected: statuses whose reason says the gate or the confirmation rejected a fix;
* jumps: consecutive received base poses whose displacement differs from the ground truth's
  between their stamps by more than `JUMP_M`;
* wrong_fixes_1m: fixes (base poses at a fix's frame stamp) more than 1 m from the ground truth;
* nees_mean: mean normalized estimation error squared of the fixes under their published
  covariance (6 dof, the `tracking.gate` convention: error vector `pose_error_vector(est, gt)`,
  i.e. [t_gt - t_est; log(R_gt R_est^T)], so R_gt = exp(drot) R_est); ideal 6.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import Pose
from ..tracking.gate import pose_mahalanobis
from ..tracking.lie import rotation_angle
from .robot_sim import NS_PER_S, Trajectory

RECALL_WINDOW_S = 0.15
RECALL_THRESHOLDS = {"0.5m_2deg": (0.5, 2.0), "0.25m_2deg": (0.25, 2.0)}
JUMP_M = 0.5
WRONG_FIX_M = 1.0
REJECTION_REASONS = ("fix disagrees with the prior", "first fix not yet confirmed")


@dataclass(frozen=True)
class BasePose:
    received_s: float  # perf_counter time it arrived
    stamp_ns: int
    map_from_base: Pose
    covariance: np.ndarray  # 6x6


def is_rejection(reason: str) -> bool:
    return any(r in reason for r in REJECTION_REASONS)


def base_error(truth: Trajectory, pose: BasePose) -> tuple[float, float] | None:
    """(metres, degrees) of a base pose against the ground truth at its stamp; None outside."""
    if not truth.covers(pose.stamp_ns):
        return None
    gt = truth.at(pose.stamp_ns)
    dt = float(np.linalg.norm(pose.map_from_base.tvec - gt.tvec))
    return dt, float(np.degrees(rotation_angle(pose.map_from_base.R @ gt.R.T)))


def fix_poses(base_poses: list[BasePose], fix_stamps: set[int]) -> dict[int, BasePose]:
    """The base pose of each fix: the last one received at the fix's frame stamp (a propagated
    pose at the same stamp comes from the previous fix and arrives before it)."""
    out: dict[int, BasePose] = {}
    for p in base_poses:
        if p.stamp_ns in fix_stamps:
            out[p.stamp_ns] = p
    return out


def robot_metrics(
    base_poses: list[BasePose],
    frames: dict[int, float],
    fix_stamps: set[int],
    reasons: list[str],
    truth: Trajectory | None,
    t_start: float,
) -> dict[str, Any]:
    """The robot metrics of the module docstring (ground-truth ones only with `truth`); `frames`:
    {camera frame stamp: the time it was played}."""
    fixes = fix_poses(base_poses, fix_stamps)
    first = min(fixes.values(), key=lambda p: p.received_s) if fixes else None
    stamps = sorted(frames)
    span_s = (stamps[-1] - stamps[0]) / NS_PER_S if len(stamps) > 1 else 0.0
    out: dict[str, Any] = {
        "time_to_first_fix_s": None if first is None else round(first.received_s - t_start, 3),
        "first_fix_stamp_s": None
        if first is None
        else round((first.stamp_ns - stamps[0]) / NS_PER_S, 3),
        "fixes": len(fixes),
        "fix_rate_hz": round(len(fixes) / span_s, 3) if span_s > 0 else None,
        "fixes_rejected": sum(1 for r in reasons if is_rejection(r)),
        "base_poses": len(base_poses),
    }
    if truth is None:
        return out
    after = [s for s in stamps if first is not None and frames[s] >= first.received_s]
    out["base_pose_recall"] = _recall(base_poses, after, truth)
    out["base_pose_recall_frames"] = len(after)
    out["jumps"] = _jumps(base_poses, truth)
    errors = {s: base_error(truth, p) for s, p in fixes.items()}
    out["wrong_fixes_1m"] = sum(1 for e in errors.values() if e is not None and e[0] > WRONG_FIX_M)
    nees = [_nees(p, truth) for p in fixes.values()]
    nees = [v for v in nees if v is not None]
    out["nees_mean"] = round(float(np.mean(nees)), 3) if nees else None
    fix_t = [e[0] for e in errors.values() if e is not None]
    out["fix_error_m_median"] = round(float(np.median(fix_t)), 4) if fix_t else None
    return out


def _recall(base_poses, frames: list[int], truth: Trajectory) -> dict:
    if not frames:
        return {k: 0.0 for k in RECALL_THRESHOLDS}
    by_stamp = sorted(base_poses, key=lambda p: p.stamp_ns)  # stable: ties keep receipt order
    keys = [p.stamp_ns for p in by_stamp]
    window = round(RECALL_WINDOW_S * NS_PER_S)
    hits = dict.fromkeys(RECALL_THRESHOLDS, 0)
    for s in frames:
        i = int(np.searchsorted(keys, s, side="right")) - 1
        if i < 0 or keys[i] < s - window:
            continue
        err = base_error(truth, by_stamp[i])
        if err is None:
            continue
        for name, (max_m, max_deg) in RECALL_THRESHOLDS.items():
            hits[name] += err[0] <= max_m and err[1] <= max_deg
    return {k: round(v / len(frames), 4) for k, v in hits.items()}


def _jumps(base_poses: list[BasePose], truth: Trajectory) -> int:
    jumps = 0
    covered = [p for p in base_poses if truth.covers(p.stamp_ns)]
    for a, b in zip(covered, covered[1:]):  # noqa: RUF007 - pairs of a filtered list
        moved = b.map_from_base.tvec - a.map_from_base.tvec
        true = truth.at(b.stamp_ns).tvec - truth.at(a.stamp_ns).tvec
        jumps += float(np.linalg.norm(moved - true)) > JUMP_M
    return jumps


def _nees(pose: BasePose, truth: Trajectory) -> float | None:
    if not truth.covers(pose.stamp_ns):
        return None
    try:
        return pose_mahalanobis(pose.map_from_base, truth.at(pose.stamp_ns), pose.covariance)
    except ValueError:  # a covariance that is not positive definite
        return None


def write_base_poses(path: Path, base_poses: list[BasePose], fix_stamps: set[int]) -> Path:
    """Every received base pose, one a line: `stamp_ns received_s kind qw qx qy qz tx ty tz
    sigma_x_m sigma_yaw_deg` (kind: fix | propagated)."""
    from supergf_ros.io_utils import atomic_write_text

    fix_ids = {id(p) for p in fix_poses(base_poses, fix_stamps).values()}
    lines = ["# stamp_ns received_s kind qw qx qy qz tx ty tz sigma_x_m sigma_yaw_deg"]
    for p in base_poses:
        kind = "fix" if id(p) in fix_ids else "propagated"
        values = " ".join(f"{v:.9g}" for v in (*p.map_from_base.qvec, *p.map_from_base.tvec))
        sx = float(np.sqrt(max(p.covariance[0, 0], 0.0)))
        syaw = float(np.degrees(np.sqrt(max(p.covariance[5, 5], 0.0))))
        lines.append(f"{p.stamp_ns} {p.received_s:.6f} {kind} {values} {sx:.4g} {syaw:.4g}")
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def plot_base_trajectory(
    base_poses: list[BasePose], fix_stamps: set[int], truth: Trajectory | None, path: Path
) -> Path:
    """Top view (the ground truth's two main axes) of the base: truth, fixes, propagated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from supergf_ros.io_utils import atomic_output

    fixes = fix_poses(base_poses, fix_stamps)
    fix_ids = {id(p) for p in fixes.values()}
    est_fix = np.array([p.map_from_base.tvec for p in fixes.values()]).reshape(-1, 3)
    est_prop = np.array([p.map_from_base.tvec for p in base_poses if id(p) not in fix_ids]).reshape(
        -1, 3
    )
    ref = np.array([p.tvec for p in truth.poses]).reshape(-1, 3) if truth else np.zeros((0, 3))
    pts = ref if len(ref) >= 2 else np.concatenate([est_fix, est_prop])
    mean = pts.mean(axis=0) if len(pts) else np.zeros(3)
    axes = np.linalg.svd(pts - mean)[2][:2] if len(pts) >= 2 else np.eye(3)[:2]
    fig, ax = plt.subplots(figsize=(8, 6), dpi=110)
    for data, style, kw in (
        (ref, "-", {"color": "0.5", "lw": 2, "label": "ground truth"}),
        (est_prop, ".", {"color": "tab:blue", "ms": 3, "label": f"propagated ({len(est_prop)})"}),
        (est_fix, "x", {"color": "tab:red", "ms": 8, "mew": 2, "label": f"fixes ({len(est_fix)})"}),
    ):
        if len(data):
            xy = (data - mean) @ axes.T
            ax.plot(xy[:, 0], xy[:, 1], style, **kw)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("principal axis 1 [m]")
    ax.set_ylabel("principal axis 2 [m]")
    ax.set_title("replay: base_pose in the map")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    try:
        with atomic_output(path, suffix=".tmp.png") as tmp:
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return path
