"""TransformBuffer: hand-computed chains, interpolation, static edges, errors, pruning, staleness."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from supergf_ros.geometry import Pose, rotmat_to_qvec
from supergf_ros.tracking import (
    ConnectivityError,
    ExtrapolationError,
    StaleTransformError,
    TransformBuffer,
    TransformError,
    TransformTreeError,
    UnknownFrameError,
)
from supergf_ros.tracking.lie import quat_slerp, so3_exp, so3_log

S = 1_000_000_000  # ns per second


def yaw(deg: float, t=(0.0, 0.0, 0.0)) -> Pose:
    a = np.radians(deg) / 2
    return Pose(np.array([np.cos(a), 0.0, 0.0, np.sin(a)]), np.array(t, dtype=float))


# base_link -> camera optical frame: z_cam = x_base, x_cam = -y_base, y_cam = -z_base
BASE_FROM_CAMERA = Pose(
    rotmat_to_qvec(np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])),
    np.array([0.5, 0.0, 1.0]),
)


@pytest.fixture
def robot() -> TransformBuffer:
    """map -> odom (yaw 90, t=(10,0,0)) -> base_link (t=(1,2,0)) -> camera; base_link -> lidar."""
    buf = TransformBuffer()
    buf.set_transform("map", "odom", 5 * S, yaw(90, (10, 0, 0)))
    buf.set_transform("odom", "base_link", 5 * S, yaw(0, (1, 2, 0)))
    buf.set_transform("base_link", "camera", 0, BASE_FROM_CAMERA, static=True)
    buf.set_transform("base_link", "lidar", 0, Pose(np.array([1.0, 0, 0, 0]), [0, 0, 2]), True)
    return buf


def test_chain_map_to_camera_by_hand(robot: TransformBuffer) -> None:
    map_from_camera = robot.lookup("map", "camera", 5 * S)
    # camera origin: base (0.5, 0, 1) -> odom (1.5, 2, 1) -> map Rz90 (-2, 1.5, 1) + (10, 0, 0)
    np.testing.assert_allclose(map_from_camera.tvec, [8.0, 1.5, 1.0], atol=1e-12)
    points = np.array([[0.0, 0, 1], [1.0, 0, 0], [0.0, 1, 0]])  # optical z, x, y axes
    np.testing.assert_allclose(
        map_from_camera.transform(points), [[8, 2.5, 1], [9, 1.5, 1], [8, 1.5, 0]], atol=1e-12
    )
    camera_from_map = robot.lookup("camera", "map", 5 * S)
    np.testing.assert_allclose(camera_from_map.transform([[8, 2.5, 1]]), [[0, 0, 1]], atol=1e-12)
    identity = robot.lookup("odom", "odom", 5 * S)
    np.testing.assert_allclose(identity.matrix, np.eye(4), atol=1e-12)


def test_chain_through_common_ancestor(robot: TransformBuffer) -> None:
    camera_from_lidar = robot.lookup("camera", "lidar", 5 * S)
    # lidar origin: base (0, 0, 2); minus camera origin (0.5, 0, 1) = (-0.5, 0, 1) in base axes
    # -> camera axes (x=-y_base, y=-z_base, z=x_base): (0, -1, -0.5)
    np.testing.assert_allclose(camera_from_lidar.tvec, [0.0, -1.0, -0.5], atol=1e-12)
    # static-only chain: valid at any time
    for stamp in (0, 1, 123 * S):
        np.testing.assert_allclose(
            robot.lookup("camera", "lidar", stamp).tvec, [0, -1, -0.5], atol=1e-12
        )
    assert robot.latest_common_time("camera", "lidar") == 0
    assert robot.latest_common_time("map", "camera") == 5 * S
    assert robot.parent_of("camera") == "base_link"
    assert robot.parent_of("map") is None
    assert robot.frames == ["base_link", "camera", "lidar", "map", "odom"]


def test_interpolation_midway_and_quarter() -> None:
    buf = TransformBuffer()
    buf.set_transform("odom", "base_link", 1 * S, yaw(0, (0, 0, 0)))
    buf.set_transform("odom", "base_link", 3 * S, yaw(90, (2, 4, 0)))
    mid = buf.lookup("odom", "base_link", 2 * S)
    np.testing.assert_allclose(mid.tvec, [1.0, 2.0, 0.0], atol=1e-12)
    c, s = np.cos(np.radians(22.5)), np.sin(np.radians(22.5))
    np.testing.assert_allclose(mid.qvec, [c, 0, 0, s], atol=1e-12)  # yaw 45 deg
    quarter = buf.lookup("odom", "base_link", S + S // 2)
    np.testing.assert_allclose(quarter.tvec, [0.5, 1.0, 0.0], atol=1e-12)
    c, s = np.cos(np.radians(11.25)), np.sin(np.radians(11.25))
    np.testing.assert_allclose(quarter.qvec, [c, 0, 0, s], atol=1e-12)  # yaw 22.5 deg
    np.testing.assert_allclose(
        buf.lookup("odom", "base_link", 3 * S).qvec, yaw(90).qvec, atol=1e-12
    )


def test_interpolation_general_rotation_matches_slerp_formula() -> None:
    q0 = Pose(np.array([0.9, 0.1, -0.3, 0.2]), np.zeros(3)).qvec
    q1 = Pose(np.array([0.5, -0.4, 0.6, 0.1]), np.zeros(3)).qvec
    theta = np.arccos(q0 @ q1)
    expected = (np.sin(0.7 * theta) * q0 + np.sin(0.3 * theta) * q1) / np.sin(theta)
    buf = TransformBuffer()
    buf.set_transform("a", "b", 10 * S, Pose(q0, [0, 0, 0]))
    buf.set_transform("a", "b", 20 * S, Pose(-q1, [10, 0, 0]))  # -q1: same rotation
    got = buf.lookup("a", "b", 13 * S)
    np.testing.assert_allclose(got.qvec * np.sign(got.qvec[0]), expected, atol=1e-12)
    np.testing.assert_allclose(got.tvec, [3.0, 0, 0], atol=1e-12)
    # slerp moves at constant angular speed along the geodesic
    r0, r1 = Pose(q0, [0, 0, 0]).R, Pose(q1, [0, 0, 0]).R
    np.testing.assert_allclose(got.R, so3_exp(0.3 * so3_log(r1 @ r0.T)) @ r0, atol=1e-12)
    np.testing.assert_allclose(quat_slerp(q0, q1, 0.0), q0, atol=1e-12)


def test_stamp_zero_is_latest_common_time() -> None:
    buf = TransformBuffer()
    buf.set_transform("map", "odom", 1 * S, yaw(0, (0, 0, 0)))
    buf.set_transform("map", "odom", 4 * S, yaw(0, (3, 0, 0)))
    buf.set_transform("odom", "base_link", 2 * S, yaw(0, (0, 0, 0)))
    buf.set_transform("odom", "base_link", 3 * S, yaw(0, (0, 1, 0)))
    assert buf.latest_common_time("map", "base_link") == 3 * S
    np.testing.assert_allclose(buf.lookup("map", "base_link", 0).tvec, [2.0, 1.0, 0.0])
    np.testing.assert_allclose(buf.lookup("map", "odom", 0).tvec, [3.0, 0.0, 0.0])


def test_unknown_frame_names_it_and_lists_known(robot: TransformBuffer) -> None:
    with pytest.raises(UnknownFrameError, match="'base_footprint' does not exist") as info:
        robot.lookup("map", "base_footprint", 0)
    assert "'base_link', 'camera', 'lidar', 'map', 'odom'" in str(info.value)
    assert isinstance(info.value, LookupError)
    with pytest.raises(UnknownFrameError, match="nothing received yet"):
        TransformBuffer().lookup("map", "odom")
    assert not robot.can_transform("map", "base_footprint")


def test_not_connected(robot: TransformBuffer) -> None:
    robot.set_transform("world", "gps", 5 * S, Pose.identity())
    with pytest.raises(ConnectivityError, match=r"not connected.*root 'map'.*root 'world'"):
        robot.lookup("gps", "camera", 5 * S)
    with pytest.raises(ConnectivityError):
        robot.latest_common_time("gps", "camera")


def test_extrapolation_future_and_past() -> None:
    buf = TransformBuffer()
    buf.set_transform("odom", "base_link", 10 * S, Pose.identity())
    buf.set_transform("odom", "base_link", 12 * S, Pose.identity())
    with pytest.raises(ExtrapolationError, match=r"0\.5 s into the future") as info:
        buf.lookup("odom", "base_link", 12 * S + S // 2)
    assert "available from 10 s to 12 s" in str(info.value)
    assert "'odom' -> 'base_link'" in str(info.value)
    with pytest.raises(ExtrapolationError, match=r"1\.25 s into the past.*from 10 s to 12 s"):
        buf.lookup("base_link", "odom", 8 * S + 3 * S // 4)
    assert not buf.can_transform("odom", "base_link", 13 * S)
    assert buf.can_transform("odom", "base_link", 11 * S)


def test_single_sample_valid_only_at_its_stamp() -> None:
    buf = TransformBuffer()
    buf.set_transform("odom", "base_link", 7 * S, yaw(0, (1, 0, 0)))
    np.testing.assert_allclose(buf.lookup("odom", "base_link", 7 * S).tvec, [1, 0, 0])
    np.testing.assert_allclose(buf.lookup("odom", "base_link", 0).tvec, [1, 0, 0])
    with pytest.raises(ExtrapolationError, match="into the future"):
        buf.lookup("odom", "base_link", 7 * S + 1)


def test_static_transform_valid_at_any_time_and_updatable() -> None:
    buf = TransformBuffer()
    buf.set_transform("base_link", "camera", 5 * S, BASE_FROM_CAMERA, static=True)
    for stamp in (0, 1, 5 * S, 10**18):
        got = buf.lookup("base_link", "camera", stamp)
        np.testing.assert_allclose(got.matrix, BASE_FROM_CAMERA.matrix, atol=1e-12)
    buf.set_transform("base_link", "camera", 0, Pose.identity(), static=True)
    np.testing.assert_allclose(buf.lookup("base_link", "camera", 3).matrix, np.eye(4))
    with pytest.raises(TransformTreeError, match="is static; cannot set it as dynamic"):
        buf.set_transform("base_link", "camera", 6 * S, Pose.identity())


def test_reparent_cycle_and_bad_input_raise() -> None:
    buf = TransformBuffer()
    buf.set_transform("odom", "base_link", S, Pose.identity())
    with pytest.raises(TransformTreeError, match=r"already has parent 'odom'.*re-parent.*'map'"):
        buf.set_transform("map", "base_link", S, Pose.identity())
    buf.set_transform("base_link", "camera", S, Pose.identity(), static=True)
    with pytest.raises(TransformTreeError, match="cycle"):
        buf.set_transform("camera", "odom", S, Pose.identity())
    with pytest.raises(TransformTreeError, match="own parent"):
        buf.set_transform("a", "a", S, Pose.identity())
    with pytest.raises(TransformTreeError, match="must not start with '/'"):
        buf.set_transform("/map", "odom", S, Pose.identity())
    with pytest.raises(TransformTreeError, match="non-empty"):
        buf.set_transform("", "odom", S, Pose.identity())
    with pytest.raises(TransformTreeError, match=">= 0"):
        buf.set_transform("map", "odom", -1, Pose.identity())
    assert isinstance(TransformTreeError("x"), ValueError)
    with pytest.raises(ValueError, match="positive"):
        TransformBuffer(cache_time_s=0)


def test_pruning_keeps_cache_time() -> None:
    buf = TransformBuffer(cache_time_s=2.0)
    for k in range(6):  # samples at 0..5 s
        assert buf.set_transform("odom", "base_link", k * S, yaw(0, (k, 0, 0)))
    with pytest.raises(ExtrapolationError, match=r"into the past.*from 3 s to 5 s \(3 sample"):
        buf.lookup("odom", "base_link", 2 * S + S // 2)
    np.testing.assert_allclose(buf.lookup("odom", "base_link", 3 * S + S // 2).tvec, [3.5, 0, 0])
    assert not buf.set_transform("odom", "base_link", 2 * S, Pose.identity())  # too old: dropped
    assert buf.set_transform("odom", "base_link", 4 * S + S // 2, yaw(0, (9, 0, 0)))  # in order
    np.testing.assert_allclose(buf.lookup("odom", "base_link", 4 * S + S // 2).tvec, [9, 0, 0])
    buf.set_transform("odom", "base_link", 5 * S, yaw(0, (7, 0, 0)))  # same stamp: replaced
    np.testing.assert_allclose(buf.lookup("odom", "base_link", 5 * S).tvec, [7, 0, 0])


def test_check_age_names_the_stale_edge(robot: TransformBuffer) -> None:
    robot.set_transform("odom", "base_link", 9 * S, Pose.identity())  # map->odom stays at 5 s
    assert robot.check_age("map", "base_link", 6 * S, max_age_s=2.0) == pytest.approx(1.0)
    with pytest.raises(StaleTransformError, match="'map' -> 'odom' was last updated at 5 s") as e:
        robot.check_age("camera", "map", 9 * S, max_age_s=1.5)
    assert "4.000 s before now" in str(e.value)
    assert isinstance(e.value, TransformError)
    assert robot.check_age("camera", "lidar", 100 * S, max_age_s=0.1) == 0.0


def test_concurrent_writer_and_reader() -> None:
    buf = TransformBuffer(cache_time_s=0.5)
    buf.set_transform("base_link", "camera", 0, BASE_FROM_CAMERA, static=True)
    buf.set_transform("odom", "base_link", 1, Pose.identity())
    errors: list[BaseException] = []
    stop = threading.Event()

    def write() -> None:
        for k in range(2, 3000):
            buf.set_transform("odom", "base_link", k * S // 100, yaw(k % 360, (k, 0, 0)))
        stop.set()

    def read() -> None:
        try:
            while not stop.is_set():
                buf.lookup("odom", "camera", 0)
                # let a writer waiting on the lock in: a lock taken again at once starved it
                # (2,301 of 2,998 writes within the 60 s join on a clean clone)
                time.sleep(0)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "the writer or the reader did not finish"
    assert not errors
    np.testing.assert_allclose(buf.lookup("odom", "base_link", 0).tvec, [2999, 0, 0])
