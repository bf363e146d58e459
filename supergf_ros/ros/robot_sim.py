"""A simulated robot for bags (ROS-free): the base under the camera, its dense ground-truth
trajectory and a drifting odometry.

Frames (REP-103/105): the base is x forward, y left, z up; the camera is an optical frame (z
forward, x right, y down) mounted on it by `DEFAULT_BASE_FROM_CAMERA`. A dataset pose
`cam_from_world` gives the ground-truth base `map_from_base = inverse(cam_from_world) *
inverse(base_from_camera)` (the dataset's world is the map).

Odometry (`simulate_odometry`): ``odom_from_base`` starts at the identity and integrates the true
relative motion between consecutive samples, each step perturbed by zero-mean Gaussian noise
proportional to its length ``L``: translation 1-sigma ``drift x L`` per axis (base frame), heading
(about base z) 1-sigma ``heading_drift x L``. The error is a seeded random walk: it grows as
``drift x sqrt(L x distance)``, so it depends on the odometry rate (at 50 Hz and 13 m/s, ``L`` is
0.26 m); `odometry_drift` reports what a bag actually got.

Pose encoding in files: 7 numbers ``qw qx qy qz tx ty tz`` (as `cam_from_world` in the bag's
source file).
"""

from __future__ import annotations

import bisect
from itertools import pairwise
from pathlib import Path

import numpy as np

from ..geometry import Pose
from ..tracking.lie import interpolate_pose, rotvec_to_quat

NS_PER_S = 1_000_000_000
# the camera 1.6 m above the base origin, 0.3 m ahead of it, looking along the base x axis
DEFAULT_BASE_FROM_CAMERA = Pose(np.array([0.5, -0.5, 0.5, -0.5]), np.array([0.3, 0.0, 1.6]))
DEFAULT_ODOMETRY_RATE_HZ = 50.0
DEFAULT_DRIFT = 0.01  # translation error per metre of step (1-sigma, per axis)
DEFAULT_HEADING_DRIFT_DEG_PER_M = 0.5


def encode_pose(pose: Pose) -> list[float]:
    return [float(v) for v in (*pose.qvec, *pose.tvec)]


def decode_pose(values) -> Pose:
    v = np.asarray(values, dtype=np.float64).reshape(7)
    return Pose(v[:4] / np.linalg.norm(v[:4]), v[4:])


def read_times(path: str | Path) -> dict[str, float]:
    """`name timestamp_s` per line ('#' comments and blank lines skipped) -> {name: seconds}."""
    times: dict[str, float] = {}
    for lineno, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: expected 'name timestamp_s', got '{line}'")
        try:
            t = float(parts[1])
        except ValueError as err:
            raise ValueError(f"{path}:{lineno}: bad timestamp '{parts[1]}'") from err
        if not np.isfinite(t):
            raise ValueError(f"{path}:{lineno}: timestamp must be finite, got {t}")
        times[parts[0]] = t
    return times


def frame_stamps(names: list[str], times: dict[str, float], start_ns: int) -> list[int]:
    """Stamps of `names` from `times` (relative to the first, so the bag starts at `start_ns`);
    they must increase strictly."""
    missing = [n for n in names if n not in times]
    if missing:
        raise ValueError(f"{len(missing)} image(s) have no timestamp: {missing[:5]}")
    t0 = times[names[0]]
    stamps = [start_ns + round((times[n] - t0) * NS_PER_S) for n in names]
    bad = [names[i] for i in range(1, len(stamps)) if stamps[i] <= stamps[i - 1]]
    if bad:
        raise ValueError(f"timestamps must increase along the image list; not at {bad[:5]}")
    return stamps


class Trajectory:
    """Poses at increasing stamps; `at(stamp)` interpolates (linear + slerp), clamping nothing:
    a stamp outside the range raises ValueError."""

    def __init__(self, stamps_ns: list[int], poses: list[Pose]) -> None:
        if len(stamps_ns) != len(poses) or not stamps_ns:
            raise ValueError("a trajectory needs as many poses as stamps, at least one")
        if any(b <= a for a, b in pairwise(stamps_ns)):
            raise ValueError("trajectory stamps must increase strictly")
        self.stamps_ns = [int(s) for s in stamps_ns]
        self.poses = list(poses)

    def covers(self, stamp_ns: int) -> bool:
        return self.stamps_ns[0] <= stamp_ns <= self.stamps_ns[-1]

    def at(self, stamp_ns: int) -> Pose:
        if not self.covers(stamp_ns):
            raise ValueError(
                f"stamp {stamp_ns} is outside the trajectory "
                f"[{self.stamps_ns[0]}, {self.stamps_ns[-1]}]"
            )
        i = bisect.bisect_left(self.stamps_ns, stamp_ns)
        if self.stamps_ns[i] == stamp_ns:
            return self.poses[i]
        s0, s1 = self.stamps_ns[i - 1], self.stamps_ns[i]
        return interpolate_pose(self.poses[i - 1], self.poses[i], (stamp_ns - s0) / (s1 - s0))

    def resampled(self, rate_hz: float) -> Trajectory:
        """Samples every 1 / rate_hz from the first stamp, plus the last stamp."""
        if not rate_hz > 0:
            raise ValueError(f"rate must be positive, got {rate_hz}")
        period = round(NS_PER_S / rate_hz)
        stamps = list(range(self.stamps_ns[0], self.stamps_ns[-1] + 1, period))
        if stamps[-1] != self.stamps_ns[-1]:
            stamps.append(self.stamps_ns[-1])
        return Trajectory(stamps, [self.at(s) for s in stamps])

    def to_json(self) -> dict:
        return {"stamps_ns": self.stamps_ns, "poses": [encode_pose(p) for p in self.poses]}

    @classmethod
    def from_json(cls, data: dict) -> Trajectory:
        return cls([int(s) for s in data["stamps_ns"]], [decode_pose(p) for p in data["poses"]])


def simulate_odometry(
    truth: Trajectory,
    drift: float = DEFAULT_DRIFT,
    heading_drift_deg_per_m: float = DEFAULT_HEADING_DRIFT_DEG_PER_M,
    seed: int = 0,
) -> tuple[Trajectory, np.ndarray]:
    """(odom_from_base at the stamps of `truth` (map_from_base), accumulated translation variance
    per sample (m^2, per axis)); see the module docstring for the noise model."""
    if not (drift >= 0 and heading_drift_deg_per_m >= 0):
        raise ValueError("odometry drift must be >= 0")
    rng = np.random.default_rng(seed)
    heading = np.radians(heading_drift_deg_per_m)
    odom = [Pose.identity()]
    variance = [0.0]
    for a, b in pairwise(truth.poses):
        step = a.inverse() * b  # the true motion in the base frame
        length = float(np.linalg.norm(step.tvec))
        dt = rng.normal(0.0, drift * length, 3) if length > 0 else np.zeros(3)
        dyaw = rng.normal(0.0, heading * length) if length > 0 else 0.0
        noisy = Pose(rotvec_to_quat(np.array([0.0, 0.0, dyaw])), dt) * step
        odom.append(odom[-1] * noisy)
        variance.append(variance[-1] + (drift * length) ** 2)
    return Trajectory(truth.stamps_ns, odom), np.array(variance)


def odometry_drift(truth: Trajectory, odom: Trajectory) -> dict[str, float]:
    """How far the odometry drifted over the whole trajectory (both start at the first sample)."""
    map_from_odom = truth.poses[0] * odom.poses[0].inverse()
    end = map_from_odom * odom.poses[-1]
    steps = [np.linalg.norm(b.tvec - a.tvec) for a, b in pairwise(truth.poses)]
    distance = float(np.sum(steps))
    error = float(np.linalg.norm(end.tvec - truth.poses[-1].tvec))
    cos = np.clip((np.trace(end.R @ truth.poses[-1].R.T) - 1.0) / 2.0, -1.0, 1.0)
    return {
        "distance_m": round(distance, 3),
        "end_error_m": round(error, 4),
        "end_error_fraction": round(error / distance, 5) if distance > 0 else 0.0,
        "end_rotation_error_deg": round(float(np.degrees(np.arccos(cos))), 4),
    }
