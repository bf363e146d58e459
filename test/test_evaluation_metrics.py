"""Pose metrics, the `evaluate` command and place-recognition Recall@N."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from supergf_ros.cli import main
from supergf_ros.datasets import Dataset, write_image_list, write_results
from supergf_ros.evaluation.evaluate import evaluate_results
from supergf_ros.evaluation.metrics import (
    camera_frame_error,
    camera_frame_medians,
    pose_metrics,
    recall_at_n,
)
from supergf_ros.geometry import Pose


def _perturb(pose: Pose, dt: float, angle_deg: float) -> Pose:
    """Move the camera centre by dt (metres, along x) and rotate by angle_deg about z."""
    a = np.radians(angle_deg)
    Rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    R = Rz @ pose.R
    center = pose.center + np.array([dt, 0, 0])
    return Pose.from_matrix(np.concatenate([R, (-R @ center)[:, None]], 1))


def test_pose_metrics_counts_missing_as_failures():
    errors = {"a": (0.01, 0.1), "b": (0.3, 1.0), "c": (1.0, 8.0), "d": None}
    m = pose_metrics(errors)
    assert m["recall"] == {"0.25m_2deg": 0.25, "0.5m_5deg": 0.5, "5m_10deg": 0.75}
    assert m["num_queries"] == 4 and m["num_localized"] == 3
    assert m["median_translation_m"] == pytest.approx(0.3)
    assert m["median_rotation_deg"] == pytest.approx(1.0)
    none = pose_metrics({"a": None})
    assert none["median_translation_m"] is None and none["recall"]["5m_10deg"] == 0.0
    with pytest.raises(ValueError, match="no queries"):
        pose_metrics({})


def test_camera_frame_error_splits_the_offset_along_the_true_camera_axes(data_dir: Path):
    """A KITTI right camera moved 3 cm right, 1 cm up and 7 cm back in its own axes (the
    sequence turns: its axes are not the world's)."""
    kitti = Dataset(data_dir / "sequences" / "kitti01")
    truth = {n: kitti.cam_from_world(n) for n in ("image_1/000020.png", "image_1/000040.png")}
    offset = np.array([0.03, -0.01, -0.07])
    moved = {}
    for name, pose in truth.items():
        assert abs(pose.R[2] @ np.array([0.0, 0.0, 1.0])) < 0.95  # not looking along world z
        center = pose.center + pose.R.T @ offset
        moved[name] = Pose.from_matrix(np.concatenate([pose.R, (-pose.R @ center)[:, None]], 1))
        assert np.allclose(camera_frame_error(moved[name], pose), offset, atol=1e-9)
    medians = camera_frame_medians(moved, truth)
    assert medians == pytest.approx({"lateral": 0.03, "vertical": 0.01, "axial": 0.07})
    assert camera_frame_medians({}, truth) is None


def test_recall_at_n():
    ranked = np.array([[3, 1, 2], [0, 1, 2], [2, 0, 1]])
    r = recall_at_n(ranked, [[1], [0], [5]], ns=(1, 2, 3))
    assert r == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="ranked must be"):
        recall_at_n(ranked, [[1]], ns=(1,))


def test_evaluate_results_and_cli(data_dir: Path, tmp_path: Path, capsys):
    root = data_dir / "strecha" / "fountain-P11"
    ds = Dataset(root)
    queries = ["0001.jpg", "0003.jpg", "0005.jpg", "0007.jpg"]
    est = {
        "0001.jpg": ds.cam_from_world("0001.jpg"),  # exact
        "0003.jpg": _perturb(ds.cam_from_world("0003.jpg"), 0.1, 1.0),  # inside (0.25 m, 2 deg)
        "0005.jpg": _perturb(ds.cam_from_world("0005.jpg"), 0.4, 3.0),  # inside (0.5 m, 5 deg)
    }  # 0007.jpg missing -> failure
    write_results(tmp_path / "res.txt", est)
    write_image_list(tmp_path / "q.txt", queries)
    m = evaluate_results(tmp_path / "res.txt", root, queries)
    assert m["recall"]["0.25m_2deg"] == pytest.approx(0.5)
    assert m["recall"]["0.5m_5deg"] == pytest.approx(0.75)
    assert m["num_localized"] == 3 and m["num_queries"] == 4
    assert m["errors"]["0003.jpg"][0] == pytest.approx(0.1, abs=1e-6)
    assert m["errors"]["0003.jpg"][1] == pytest.approx(1.0, abs=1e-4)
    assert m["errors"]["0007.jpg"] is None

    assert (
        main(
            [
                "evaluate",
                str(tmp_path / "res.txt"),
                str(root),
                "--queries",
                str(tmp_path / "q.txt"),
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {
        "recall",
        "median_translation_m",
        "median_rotation_deg",
        "num_queries",
        "num_localized",
    }
    assert out["recall"] == m["recall"] and out["num_queries"] == 4
    assert main(["evaluate", str(tmp_path / "res.txt"), str(root)]) == 0
    text = capsys.readouterr().out
    assert "recall @ 0.25 m, 2 deg: 0.6667" in text and "median translation error" in text

    write_results(tmp_path / "bad.txt", {"nope.jpg": ds.cam_from_world("0001.jpg")})
    assert main(["evaluate", str(tmp_path / "bad.txt"), str(root)]) == 2
    assert "no ground-truth pose" in capsys.readouterr().err
