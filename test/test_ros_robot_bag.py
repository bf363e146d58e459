"""Bags that carry a robot: the simulated base and odometry (`robot_sim`), what make-bag writes
(/tf_static, /tf, /odom, the ground truth), and the replay's robot metrics (`robot_eval`).
No rclpy needed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from supergf_ros.geometry import Pose
from supergf_ros.ros.robot_eval import BasePose, robot_metrics
from supergf_ros.ros.robot_sim import (
    DEFAULT_BASE_FROM_CAMERA,
    Trajectory,
    frame_stamps,
    odometry_drift,
    read_times,
    simulate_odometry,
)
from supergf_ros.tracking.lie import rotvec_to_quat

S = 1_000_000_000


def _straight(speed: float = 10.0, seconds: float = 5.0, rate: float = 50.0) -> Trajectory:
    """The base driving along map x, turning slowly left (yaw rate 0.1 rad/s)."""
    stamps = [round(i * S / rate) for i in range(int(seconds * rate) + 1)]
    poses = [
        Pose(rotvec_to_quat([0.0, 0.0, 0.1 * t / S]), np.array([speed * t / S, 0.0, 0.0]))
        for t in stamps
    ]
    return Trajectory(stamps, poses)


def test_camera_is_mounted_looking_along_the_base_x_axis():
    R = DEFAULT_BASE_FROM_CAMERA.R  # columns: the camera axes in the base frame
    assert np.allclose(R[:, 2], [1, 0, 0])  # optical axis z: forward
    assert np.allclose(R[:, 0], [0, -1, 0])  # image x: right
    assert np.allclose(R[:, 1], [0, 0, -1])  # image y: down


def test_trajectory_interpolates_and_resamples():
    a = Pose(np.array([1.0, 0, 0, 0]), np.zeros(3))
    b = Pose(rotvec_to_quat([0, 0, 0.2]), np.array([2.0, 0, 0]))
    traj = Trajectory([0, S], [a, b])
    mid = traj.at(S // 2)
    assert np.allclose(mid.tvec, [1.0, 0, 0])
    assert np.allclose(mid.qvec, rotvec_to_quat([0, 0, 0.1]))
    dense = traj.resampled(50.0)
    assert len(dense.stamps_ns) == 51 and dense.stamps_ns[-1] == S
    with pytest.raises(ValueError, match="outside"):
        traj.at(S + 1)
    assert Trajectory.from_json(json.loads(json.dumps(dense.to_json()))).stamps_ns == (
        dense.stamps_ns
    )


def test_odometry_without_drift_is_the_true_motion_and_drift_is_seeded():
    truth = _straight()
    odom, _ = simulate_odometry(truth, drift=0.0, heading_drift_deg_per_m=0.0)
    map_from_odom = truth.poses[0] * odom.poses[0].inverse()
    for t, o in zip(truth.poses, odom.poses):
        assert np.allclose((map_from_odom * o).matrix, t.matrix, atol=1e-9)
    noisy, var = simulate_odometry(truth, drift=0.01, seed=3)
    again, _ = simulate_odometry(truth, drift=0.01, seed=3)
    assert np.allclose(noisy.poses[-1].matrix, again.poses[-1].matrix)
    drift = odometry_drift(truth, noisy)
    assert drift["distance_m"] == pytest.approx(50.0, rel=1e-3)
    assert 0 < drift["end_error_m"] < 2.0  # a random walk of 1% steps, heading 0.5 deg/m
    assert var[0] == 0 and np.all(np.diff(var) > 0)


def test_times_file_gives_stamps(tmp_path):
    path = tmp_path / "times.txt"
    path.write_text("# name timestamp_s\na.png 0.5\nb.png 0.6\n\nc.png 0.7037\n")
    times = read_times(path)
    assert frame_stamps(["a.png", "b.png", "c.png"], times, 10 * S) == [
        10 * S,
        10 * S + 100_000_000,
        10 * S + 203_700_000,
    ]
    with pytest.raises(ValueError, match="increase"):
        frame_stamps(["b.png", "a.png"], times, 0)
    with pytest.raises(ValueError, match="no timestamp"):
        frame_stamps(["x.png"], times, 0)


def test_make_bag_writes_the_robot_and_its_ground_truth(cache_dir, tmp_path):
    from ros_testing import synthetic_sift_map
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import Stores, get_typestore

    from supergf_ros.ros.make_bag import make_bag, read_source
    from supergf_ros.ros.robot_bag import RobotOptions

    scene = synthetic_sift_map(cache_dir)
    names = scene["queries"][:4]
    times = {n: 0.25 * i for i, n in enumerate(names)}
    summary = make_bag(
        scene["scene"],
        tmp_path / "b",
        image_names=names,
        times=times,
        robot=RobotOptions(odometry_rate_hz=20.0, drift=0.0, heading_drift_deg_per_m=0.0),
        progress=False,
    )
    assert summary["has_odometry"] and summary["rate_hz"] == pytest.approx(4.0)
    assert summary["odometry_drift"]["end_error_m"] == pytest.approx(0.0, abs=1e-9)
    source = read_source(tmp_path / "b")
    robot = source["robot"]
    truth = Trajectory.from_json(robot["base_trajectory"])
    assert len(truth.stamps_ns) == 16  # 0.75 s at 20 Hz
    ts = get_typestore(Stores.ROS2_KILTED)
    counts: dict[str, int] = {}
    log_times: dict[str, list[int]] = {}
    odom_msgs = []
    with Reader(tmp_path / "b") as reader:
        for conn, t, raw in reader.messages():
            counts[conn.topic] = counts.get(conn.topic, 0) + 1
            log_times.setdefault(conn.topic, []).append(t)
            if conn.topic == "/odom":
                odom_msgs.append(ts.deserialize_cdr(raw, conn.msgtype))
            if conn.topic == "/tf_static":
                static = ts.deserialize_cdr(raw, conn.msgtype).transforms[0]
                assert (static.header.frame_id, static.child_frame_id) == ("base_link", "camera")
    assert counts == {
        "/camera/image_raw": 4,
        "/camera/camera_info": 4,
        "/tf_static": 1,
        "/tf": 16,
        "/odom": 16,
    }
    stamps = [f["stamp_ns"] for f in source["frames"]]
    # images are logged after their stamp, so the odometry of the stamp is already in
    assert [t - s for t, s in zip(log_times["/camera/image_raw"], stamps)] == [30_000_000] * 4
    # without drift, odometry is the true motion: map_from_odom * odom_from_base = ground truth
    first = odom_msgs[0].pose.pose
    assert (first.position.x, first.position.y, first.orientation.w) == (0.0, 0.0, 1.0)
    for f in source["frames"]:
        gt_base = Pose(np.array(f["map_from_base"][:4]), np.array(f["map_from_base"][4:]))
        cam = Pose(np.array(f["cam_from_world"][:4]), np.array(f["cam_from_world"][4:]))
        expected = cam.inverse() * DEFAULT_BASE_FROM_CAMERA.inverse()
        assert np.allclose(gt_base.matrix, expected.matrix, atol=1e-9)
        assert np.allclose(truth.at(f["stamp_ns"]).matrix, expected.matrix, atol=1e-9)
    no_odom = make_bag(
        scene["scene"],
        tmp_path / "c",
        image_names=names,
        times=times,
        robot=RobotOptions(odometry=False),
        progress=False,
    )
    assert not no_odom["has_odometry"] and "/odom" not in no_odom["topics"]
    assert "base_trajectory" in read_source(tmp_path / "c")["robot"]


def _pose_at(truth: Trajectory, stamp: int, offset: float = 0.0) -> Pose:
    p = truth.at(stamp)
    return Pose(p.qvec, p.tvec + np.array([0.0, offset, 0.0]))


def test_robot_metrics_on_a_made_up_stream():
    truth = _straight()
    cov = np.diag([0.1**2] * 3 + [np.radians(1.0) ** 2] * 3)
    frames = {i * S // 10: 100.0 + i * 0.1 for i in range(51)}  # 10 Hz, played from t=100
    fixes = {0, S, 2 * S}
    poses = [BasePose(100.5, 0, _pose_at(truth, 0, 0.05), cov)]  # first fix at 100.5
    for k in range(1, 91):  # propagated to 5 s, 20 Hz, with a 2 m jump at 2.5 s
        stamp = round(0.5 * S + k * S / 20)
        off = 2.0 if 2.5 * S <= stamp < 2.6 * S else 0.1
        poses.append(BasePose(100.5 + k / 20, stamp, _pose_at(truth, stamp, off), cov))
    poses.append(BasePose(101.5, S, _pose_at(truth, S, 0.05), cov))  # fix for frame 1 s
    poses.append(BasePose(102.5, 2 * S, _pose_at(truth, 2 * S, 1.5), cov))  # a wrong fix
    reasons = ["", "fix disagrees with the prior: d2 40 > 22", "first fix not yet confirmed (1/2)"]
    m = robot_metrics(poses, frames, fixes, reasons, truth, t_start=100.0)
    assert m["time_to_first_fix_s"] == pytest.approx(0.5)
    assert m["fixes"] == 3 and m["fix_rate_hz"] == pytest.approx(0.6)
    assert m["fixes_rejected"] == 2
    assert m["wrong_fixes_1m"] == 1
    assert m["base_pose_recall_frames"] == 46  # frames played from 100.5 s on
    # misses: 0.5 s (only the first fix, 0.5 s earlier), 2.5 s (the 2 m offset), 2 s (the 1.5 m
    # wrong fix arrived after the propagated pose of the same stamp); the rest is 0.1 m off
    assert m["base_pose_recall"]["0.5m_2deg"] == pytest.approx(43 / 46, abs=1e-4)
    assert m["base_pose_recall"]["0.25m_2deg"] == pytest.approx(43 / 46, abs=1e-4)
    assert m["jumps"] == 3  # into and out of the 2 m offset, and into the wrong fix
    nees = [0.05**2 / 0.1**2, 0.05**2 / 0.1**2, 1.5**2 / 0.1**2]
    assert m["nees_mean"] == pytest.approx(np.mean(nees), rel=1e-3)
