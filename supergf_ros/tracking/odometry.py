"""Odometry-aided propagation of a localization fix (REP-105: map -> odom -> base_link).

Given a fix ``map_from_base(t0)`` with its 6x6 covariance and the odometry ``odom_from_base(t)``,

    map_from_odom   = map_from_base(t0) * inverse(odom_from_base(t0))
    map_from_base(t) = map_from_odom * odom_from_base(t)

The covariance follows the convention of `tracking.gate` (base position in the map, then a
left rotation vector in the map frame, order x, y, z, rot_x, rot_y, rot_z). It is propagated to
first order, ``J P0 J^T`` with ``J = [[I, -skew(p)], [0, I]]`` where ``p`` is the displacement of
the base in the map since the fix (a rotation error of the fix swings the travelled path), plus
the odometry noise `OdometryNoise.covariance` (isotropic per block):

    sigma_t = translation_noise_per_m * D                                  (metres, 1-sigma)
    sigma_r = rotation_noise_per_rad * A + rotation_noise_per_m * D        (radians, 1-sigma)
    var_t = sigma_t^2 + translation_noise_per_sqrt_s^2 * T
    var_r = sigma_r^2 + rotation_noise_per_sqrt_s^2 * T

with D the path length travelled by the base since the fix (m), A the accumulated rotation
angle (rad) and T the elapsed time (s).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ..geometry import Pose
from .gate import check_covariance
from .lie import rotation_angle, skew

NS_PER_S = 1_000_000_000


def compose_map_from_odom(map_from_base: Pose, odom_from_base: Pose) -> Pose:
    """The map -> odom transform that makes `odom_from_base` land on `map_from_base`."""
    return map_from_base * odom_from_base.inverse()


def propagate_covariance(covariance: np.ndarray, displacement: np.ndarray) -> np.ndarray:
    """J P J^T for a pose moved by `displacement` (map frame) after the fix, J as documented."""
    J = np.eye(6)
    J[:3, 3:] = -skew(displacement)
    out = J @ check_covariance(covariance) @ J.T
    return 0.5 * (out + out.T)


def covariance_of_attached_frame(
    covariance: np.ndarray, map_from_a: Pose, map_from_b: Pose
) -> np.ndarray:
    """Covariance of frame b rigidly attached to frame a, from the covariance of a.

    E.g. a camera fix (``conversions.covariance_to_ros`` gives this module's convention for
    ``map_from_cam``) to the base: ``covariance_of_attached_frame(cov, map_from_cam,
    map_from_base)``. The rotation block is unchanged; position picks up the lever arm.
    """
    return propagate_covariance(covariance, map_from_b.tvec - map_from_a.tvec)


@dataclass(frozen=True)
class OdometryNoise:
    """Odometry drift model (see the module docstring); all terms 1-sigma, >= 0."""

    translation_noise_per_m: float = 0.02  # 2 % of the distance travelled
    rotation_noise_per_rad: float = 0.05  # 5 % of the angle turned
    rotation_noise_per_m: float = float(np.radians(0.5))  # 0.5 deg per metre
    translation_noise_per_sqrt_s: float = 0.01  # m / sqrt(s), random walk while standing
    rotation_noise_per_sqrt_s: float = 0.001  # rad / sqrt(s)

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"OdometryNoise.{name} must be finite and >= 0, got {value}")

    def covariance(self, distance_m: float, rotation_rad: float, duration_s: float) -> np.ndarray:
        """6x6 covariance added by odometry over a path of the given length, turn and time."""
        sigma_t = self.translation_noise_per_m * distance_m
        sigma_r = (
            self.rotation_noise_per_rad * rotation_rad + self.rotation_noise_per_m * distance_m
        )
        var_t = sigma_t**2 + self.translation_noise_per_sqrt_s**2 * abs(duration_s)
        var_r = sigma_r**2 + self.rotation_noise_per_sqrt_s**2 * abs(duration_s)
        return np.diag([var_t] * 3 + [var_r] * 3)


@dataclass(frozen=True)
class Prediction:
    """A propagated pose: `map_from_base` at `stamp_ns` with its 6x6 covariance."""

    stamp_ns: int
    map_from_base: Pose
    covariance: np.ndarray
    distance_m: float  # path length since the fix
    rotation_rad: float  # accumulated rotation since the fix
    duration_s: float  # |stamp - fix stamp|


class OdometryPropagator:
    """Holds the last fix and predicts `map_from_base(t)` from odometry (thread-safe).

    Path length and turn are accumulated over the odometry poses passed to `predict` in time
    order (pass odometry often for curved paths); a stamp older than the newest one seen uses
    the straight segment from the fix (a lower bound).
    """

    def __init__(self, noise: OdometryNoise | None = None) -> None:
        self.noise = noise or OdometryNoise()
        self._lock = threading.Lock()
        self._fix: tuple[int, Pose, np.ndarray, Pose] | None = None
        self._last: tuple[int, Pose] | None = None
        self._distance = 0.0
        self._rotation = 0.0

    def set_fix(
        self, stamp_ns: int, map_from_base: Pose, covariance: np.ndarray, odom_from_base: Pose
    ) -> None:
        """A new fix at `stamp_ns`, with the odometry `odom_from_base` at the same stamp."""
        cov = check_covariance(covariance)
        with self._lock:
            self._fix = (int(stamp_ns), map_from_base, cov, odom_from_base)
            self._last = (int(stamp_ns), odom_from_base)
            self._distance = self._rotation = 0.0

    def reset(self) -> None:
        """Forget the fix (e.g. after the localization was lost for too long)."""
        with self._lock:
            self._fix = self._last = None
            self._distance = self._rotation = 0.0

    @property
    def has_fix(self) -> bool:
        return self._fix is not None

    @property
    def fix_stamp_ns(self) -> int:
        return self._require_fix()[0]

    @property
    def map_from_odom(self) -> Pose:
        """The map -> odom transform of the last fix (to publish on /tf)."""
        _, map_from_base, _, odom_from_base = self._require_fix()
        return compose_map_from_odom(map_from_base, odom_from_base)

    def predict(self, stamp_ns: int, odom_from_base: Pose) -> Prediction:
        """`map_from_base` at `stamp_ns` from the odometry pose at that stamp."""
        with self._lock:
            t0, map_from_base0, cov0, odom_from_base0 = self._require_fix()
            distance, rotation = self._advance(int(stamp_ns), odom_from_base, odom_from_base0)
            map_from_base = compose_map_from_odom(map_from_base0, odom_from_base0) * odom_from_base
            duration_s = abs(int(stamp_ns) - t0) / NS_PER_S
            cov = propagate_covariance(cov0, map_from_base.tvec - map_from_base0.tvec)
            cov = cov + self.noise.covariance(distance, rotation, duration_s)
            return Prediction(int(stamp_ns), map_from_base, cov, distance, rotation, duration_s)

    def _advance(self, stamp_ns: int, odom_from_base: Pose, odom_from_base0: Pose):
        """(path length, turn) since the fix, accumulating when `stamp_ns` is the newest."""
        assert self._last is not None
        last_stamp, last_odom = self._last
        if stamp_ns < last_stamp:
            return _segment(odom_from_base0, odom_from_base)
        step_m, step_rad = _segment(last_odom, odom_from_base)
        self._distance += step_m
        self._rotation += step_rad
        self._last = (stamp_ns, odom_from_base)
        return self._distance, self._rotation

    def _require_fix(self) -> tuple[int, Pose, np.ndarray, Pose]:
        fix = self._fix
        if fix is None:
            raise RuntimeError("no localization fix yet: call set_fix() before predicting")
        return fix


def _segment(odom_from_a: Pose, odom_from_b: Pose) -> tuple[float, float]:
    """(distance, rotation angle) between two odometry poses of the base."""
    distance = float(np.linalg.norm(odom_from_b.tvec - odom_from_a.tvec))
    return distance, rotation_angle(odom_from_b.R @ odom_from_a.R.T)
