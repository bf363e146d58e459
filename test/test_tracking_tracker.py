"""The localization state machine: priors from odometry, confirmation of a first global fix, no
jumps, fallback to global mode after failures, seeding and resetting."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from supergf_ros.geometry import Pose
from supergf_ros.tracking.tracker import Tracker, TrackerConfig

S = 1_000_000_000
BASE_FROM_CAM = Pose(np.array([0.5, -0.5, 0.5, -0.5]), np.array([0.2, 0.0, 1.0]))  # z forward


@dataclass
class Result:  # the fields of a LocalizationResult the tracker reads
    success: bool
    mode: str = "global"
    reason: str = ""
    cam_from_world: Pose | None = None
    map_covariance: np.ndarray | None = None
    num_inliers: int = 100


def _base(x: float) -> Pose:
    return Pose(np.array([1.0, 0, 0, 0]), np.array([x, 0.0, 0.0]))


def _fix(x: float, mode: str = "global") -> Result:
    map_from_cam = _base(x) * BASE_FROM_CAM
    cov = np.diag([0.05**2] * 3 + [np.radians(0.5) ** 2] * 3)
    return Result(True, mode, cam_from_world=map_from_cam.inverse(), map_covariance=cov)


def test_first_global_fix_waits_for_a_consistent_second_one():
    tracker = Tracker(TrackerConfig(confirm_fixes=2))
    first = tracker.update(0, _fix(0.0), _base(0.0), BASE_FROM_CAM)
    assert not first.publish and "not yet confirmed (1/2" in first.reason
    second = tracker.update(S // 10, _fix(1.0), _base(1.0), BASE_FROM_CAM)
    assert second.publish and np.allclose(second.map_from_base.tvec, [1.0, 0, 0])
    assert tracker.mode() == "tracking"


def test_an_inconsistent_second_fix_restarts_the_confirmation():
    tracker = Tracker(TrackerConfig(confirm_fixes=2, max_speed_mps=10.0))
    tracker.update(0, _fix(0.0), None, BASE_FROM_CAM)
    far = tracker.update(S // 10, _fix(50.0), None, BASE_FROM_CAM)  # 50 m in 0.1 s
    assert not far.publish
    assert tracker.update(2 * S // 10, _fix(50.5), None, BASE_FROM_CAM).publish


def test_prior_is_the_last_fix_moved_by_odometry():
    tracker = Tracker(TrackerConfig(confirm_fixes=1))
    odom_at_fix = Pose(np.array([1.0, 0, 0, 0]), np.array([10.0, 5.0, 0.0]))  # drifting odom
    assert tracker.update(0, _fix(2.0), odom_at_fix, BASE_FROM_CAM).publish
    moved = Pose(odom_at_fix.qvec, odom_at_fix.tvec + np.array([3.0, 0.0, 0.0]))
    cam_from_world, cov = tracker.prior(S, moved, BASE_FROM_CAM)
    expected_cam = _base(5.0) * BASE_FROM_CAM
    assert np.allclose(cam_from_world.inverse().tvec, expected_cam.tvec, atol=1e-9)
    assert cov[0, 0] > 0.05**2  # grown by 3 m of odometry
    map_from_odom = tracker.propagator.map_from_odom
    assert np.allclose((map_from_odom * odom_at_fix).tvec, [2.0, 0.0, 0.0])


def test_failures_in_a_row_drop_the_prior():
    tracker = Tracker(TrackerConfig(confirm_fixes=1, max_failures=2))
    tracker.update(0, _fix(0.0), _base(0.0), BASE_FROM_CAM)
    assert tracker.prior(S, _base(1.0), BASE_FROM_CAM) is not None
    assert tracker.update(S, Result(False, "tracking", "gate"), _base(1.0), BASE_FROM_CAM).mode == (
        "tracking"
    )
    lost = tracker.update(2 * S, Result(False, "tracking", "gate"), _base(2.0), BASE_FROM_CAM)
    assert "back to global mode" in lost.reason and tracker.mode() == "lost"
    assert tracker.prior(3 * S, _base(3.0), BASE_FROM_CAM) is None


def test_seed_gives_a_prior_and_reset_forgets_it():
    tracker = Tracker()
    tracker.seed(0, _base(4.0), np.diag([1.0] * 3 + [0.1] * 3), _base(0.0))
    assert tracker.mode() == "tracking"
    cam_from_world, _ = tracker.prior(S, _base(1.0), BASE_FROM_CAM)
    assert np.allclose((cam_from_world.inverse() * BASE_FROM_CAM.inverse()).tvec, [5.0, 0, 0])
    tracker.reset()
    assert tracker.mode() == "global" and tracker.prior(S, _base(1.0), BASE_FROM_CAM) is None
