"""scripts/pose_consistency.py: the epipolar error of a pair under its given pose against one
fitted to its matches (real Strecha images: poses that fit them, then one pitched 0.05 deg)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from supergf_ros.datasets import Dataset
from supergf_ros.features import create_extractor
from supergf_ros.geometry import Pose

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pose_consistency.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("pose_consistency", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pitched(pose: Pose, angle_deg: float) -> Pose:
    """`pose` turned about its camera's x axis (across the epipolar lines of a sideways
    step), its centre kept."""
    a = np.radians(angle_deg)
    Rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    R = Rx @ pose.R
    return Pose.from_matrix(np.concatenate([R, (-R @ pose.center)[:, None]], 1))


def test_given_pose_error_against_the_fitted_one(tool, data_dir: Path, superpoint_weights: Path):
    fountain = Dataset(data_dir / "strecha" / "fountain-P11")
    extractor = create_extractor("superpoint", weights=str(superpoint_weights), resize_max=1024)
    a, b = "0004.jpg", "0005.jpg"
    features = {n: extractor.extract(fountain.read_image(n)) for n in (a, b)}
    good = tool.dataset_pair(fountain, features, a, b)
    assert good["matches"] > 100
    assert good["given_px"] < 1.2 * good["fitted_px"]  # the given poses fit these images
    K0, K1 = fountain.camera(a).K, fountain.camera(b).K
    rel = _pitched(fountain.cam_from_world(b), 0.05) * fountain.cam_from_world(a).inverse()
    bent = tool.pair_consistency(features[a], features[b], K0, K1, rel)
    # 0.05 deg off (2.4 px at the edge of the image): the given pose is now the worse one
    assert bent["given_px"] > 1.5 * bent["fitted_px"] and bent["given_px"] > 1.5 * good["given_px"]
    assert bent["fitted_px"] < 1.5 * good["fitted_px"]  # the fit does not depend on it
