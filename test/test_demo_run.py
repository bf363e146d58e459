"""The offline demo end to end (synthetic scene -> map -> bag -> replay through the real node)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
@pytest.mark.ros
def test_demo_without_weights_says_so_uses_sift_and_localizes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SUPERGF_SUPERPOINT_WEIGHTS"}
    out = tmp_path / "demo"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "supergf_ros.cli",
            "demo",
            "--output",
            str(out),
            "--num-map",
            "14",
            "--num-queries",
            "4",
            "--size",
            "320x240",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SuperPoint weights not found" in proc.stdout and "using SIFT" in proc.stdout
    assert "recall: 0.25m_2deg" in proc.stdout and "latency (publish -> pose): p50" in proc.stdout
    recall = float(proc.stdout.split("recall: 0.25m_2deg ")[1].split(",")[0])
    assert recall >= 0.75
    png = Path(out / "replay" / "trajectory.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_demo_rejects_missing_weights_file(tmp_path):
    from supergf_ros.demo import find_superpoint_weights

    with pytest.raises(FileNotFoundError, match="SuperPoint weights not found at"):
        find_superpoint_weights(tmp_path / "nope.pth")
