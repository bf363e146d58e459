"""The localization state of a moving robot: which prior a frame gets, which fixes are published.

Per camera frame: `prior()` gives the Localizer a `PosePrior` (the last fix propagated by
odometry) or None (global mode); `update()` takes the Localizer's result and decides whether it
becomes a published fix. Integrity rules: a tracking fix must pass the Localizer's gate; without a
prior, a first fix is published only after `confirm_fixes` consistent global fixes in a row (or at
once with `strong_inliers`), and later global fixes must agree with the last published one within
what `max_speed_mps` allows. `max_failures` failures in a row drop the prior (mode "lost").
Poses of the base are `map_from_base`; covariances are 6x6 (x, y, z, rot_x, rot_y, rot_z) in map.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..geometry import Pose
from .odometry import OdometryNoise, OdometryPropagator, Prediction, covariance_of_attached_frame

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class TrackerConfig:
    confirm_fixes: int = 2  # consistent global fixes before the first one is published
    strong_inliers: int = 0  # a first global fix with this many PnP inliers counts as confirmed
    max_failures: int = 3  # failed tracking frames in a row before the prior is dropped
    max_speed_mps: float = 30.0  # consistency of two fixes without odometry
    max_prior_age_s: float = 30.0  # a fix older than this gives no prior
    noise: OdometryNoise = field(default_factory=OdometryNoise)


@dataclass
class Decision:
    """What to do with a frame's result: publish it as a fix or not, and why."""

    publish: bool
    mode: str  # "global" | "tracking" | "lost"
    reason: str = ""
    map_from_base: Pose | None = None
    covariance: np.ndarray | None = None


class Tracker:
    """Thread-safe localization state (the node's subscription and worker threads share it)."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self.propagator = OdometryPropagator(self.config.noise)
        self._lock = threading.RLock()
        self._candidate: tuple[int, Pose] | None = None  # unconfirmed global fix
        self._confirmations = 0
        self._published: tuple[int, Pose] | None = None  # last published fix (base)
        self._failures = 0
        self._lost = False

    # -- seeding and resetting -----------------------------------------------------------------
    def seed(
        self, stamp_ns: int, map_from_base: Pose, covariance: np.ndarray, odom_from_base: Pose
    ) -> None:
        """A pose given by a person or a supervisor (`initialpose`): the next prior."""
        with self._lock:
            self.propagator.set_fix(stamp_ns, map_from_base, covariance, odom_from_base)
            self._failures, self._lost = 0, False

    def reset(self) -> None:
        """Forget everything: the next fix is a global one and must be confirmed again."""
        with self._lock:
            self.propagator.reset()
            self._candidate, self._confirmations, self._published = None, 0, None
            self._failures, self._lost = 0, False

    # -- per frame -----------------------------------------------------------------------------
    def mode(self) -> str:
        with self._lock:
            if self.propagator.has_fix:
                return "tracking"
            return "lost" if self._lost else "global"

    def prior_age_s(self, stamp_ns: int) -> float:
        """Seconds since the fix the prior comes from (nan without one)."""
        with self._lock:
            if not self.propagator.has_fix:
                return float("nan")
            return (stamp_ns - self.propagator.fix_stamp_ns) / NS_PER_S

    def predict(self, stamp_ns: int, odom_from_base: Pose | None) -> Prediction | None:
        """The base pose at `stamp_ns` from the last fix and odometry, or None."""
        with self._lock:
            if odom_from_base is None or not self.propagator.has_fix:
                return None
            if abs(self.prior_age_s(stamp_ns)) > self.config.max_prior_age_s:
                return None
            return self.propagator.predict(stamp_ns, odom_from_base)

    def prior(
        self, stamp_ns: int, odom_from_base: Pose | None, base_from_cam: Pose
    ) -> tuple[Pose, np.ndarray] | None:
        """(cam_from_world, camera covariance) of the predicted camera pose, or None."""
        prediction = self.predict(stamp_ns, odom_from_base)
        if prediction is None:
            return None
        map_from_cam = prediction.map_from_base * base_from_cam
        cov = covariance_of_attached_frame(
            prediction.covariance, prediction.map_from_base, map_from_cam
        )
        return map_from_cam.inverse(), cov

    def update(
        self, stamp_ns: int, result: Any, odom_from_base: Pose | None, base_from_cam: Pose
    ) -> Decision:
        """Decide on a Localizer result (`success`, `mode`, `cam_from_world`, `map_covariance`)."""
        with self._lock:
            mode = self.mode() if result.mode == "global" else "tracking"
            if not result.success:
                return self._failed(mode, result.reason or "localization failed")
            map_from_cam = result.cam_from_world.inverse()
            map_from_base = map_from_cam * base_from_cam.inverse()
            cov = covariance_of_attached_frame(result.map_covariance, map_from_cam, map_from_base)
            if result.mode == "global":
                reason = self._confirm_global(stamp_ns, map_from_base, result.num_inliers)
                if reason:
                    return Decision(False, mode, reason, map_from_base, cov)
            self._accept(stamp_ns, map_from_base, cov, odom_from_base)
            return Decision(True, result.mode, "", map_from_base, cov)

    # -- internals -----------------------------------------------------------------------------
    def _failed(self, mode: str, reason: str) -> Decision:
        if mode == "tracking":
            self._failures += 1
            if self._failures >= self.config.max_failures:
                self.propagator.reset()
                self._lost, self._failures = True, 0
                reason += f" ({self.config.max_failures} failures in a row: back to global mode)"
        return Decision(False, mode, reason)

    def _confirm_global(self, stamp_ns: int, map_from_base: Pose, num_inliers: int) -> str:
        """'' when a global fix may be published, else why not."""
        if self._published is not None:  # localized before: it must not jump
            if self._consistent(self._published, stamp_ns, map_from_base):
                return ""
            self._published = None  # a different place: confirm it from scratch
        if self.config.strong_inliers and num_inliers >= self.config.strong_inliers:
            return ""
        if self._candidate is not None and self._consistent(
            self._candidate, stamp_ns, map_from_base
        ):
            self._confirmations += 1
        else:
            self._confirmations = 1
        self._candidate = (stamp_ns, map_from_base)
        if self._confirmations >= self.config.confirm_fixes:
            return ""
        return (
            f"first fix not yet confirmed ({self._confirmations}/{self.config.confirm_fixes} "
            "consistent global fixes)"
        )

    def _consistent(self, earlier: tuple[int, Pose], stamp_ns: int, map_from_base: Pose) -> bool:
        dt = abs(stamp_ns - earlier[0]) / NS_PER_S
        distance = float(np.linalg.norm(map_from_base.tvec - earlier[1].tvec))
        return distance <= self.config.max_speed_mps * max(dt, 0.1)

    def _accept(
        self, stamp_ns: int, map_from_base: Pose, cov: np.ndarray, odom_from_base: Pose | None
    ) -> None:
        self._published = (stamp_ns, map_from_base)
        self._candidate, self._confirmations = None, 0
        self._failures, self._lost = 0, False
        if odom_from_base is not None:
            self.propagator.set_fix(stamp_ns, map_from_base, cov, odom_from_base)
