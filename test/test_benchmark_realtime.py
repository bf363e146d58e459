"""`supergf-ros benchmark --realtime --json` on a tiny demo bag: four real node runs
(fp32/int8 x serial/pipelined) at the bag's rate, and the keys of its JSON contract."""

from __future__ import annotations

import json

import pytest

from supergf_ros.cli import main

pytest.importorskip("rclpy")
pytestmark = [pytest.mark.ros, pytest.mark.slow]

RUN_KEYS = {
    "precision",
    "pipelined",
    "rate_hz",
    "latency_ms_p50",
    "latency_ms_p95",
    "dropped_fraction",
    "recall_0.25m_2deg",
    "node_peak_rss_mb",
}


def test_realtime_benchmark_json_contract(cache_dir, tmp_path, superpoint_weights, capsys):
    out = tmp_path / "realtime.json"
    args = ["benchmark", "--realtime", "--json", "--work-dir", str(cache_dir / "realtime")]
    args += ["--realtime-size", "320x240", "--realtime-queries", "6", "--camera-rate", "6"]
    args += ["--superpoint-weights", str(superpoint_weights), "--out", str(out)]
    args += ["--plot", str(tmp_path / "realtime.png")]
    assert main(args) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert json.loads(out.read_text()) == result
    runs = result["realtime"]
    assert [(r["precision"], r["pipelined"]) for r in runs] == [
        ("fp32", False),
        ("fp32", True),
        ("int8", False),
        ("int8", True),
    ]
    for r in runs:
        assert set(r) >= RUN_KEYS
        assert r["frames_in"] == 6 and r["frames_processed"] >= 1
        assert r["frames_processed"] + r["frames_dropped"] == r["frames_in"]
        assert r["dropped_fraction"] == pytest.approx(r["frames_dropped"] / 6)
        assert r["rate_hz"] > 0 and r["latency_ms_p95"] >= r["latency_ms_p50"] > 0
        assert 0.0 <= r["recall_0.25m_2deg"] <= 1.0
        assert r["node_peak_rss_mb"] > 50
    rates = {(r["precision"], r["pipelined"]): r["rate_hz"] for r in runs}
    ratio = result["ratio_rate_int8_pipelined_over_fp32_serial"]
    assert ratio == pytest.approx(rates["int8", True] / rates["fp32", False])
    assert (tmp_path / "realtime.png").stat().st_size > 0 and result["plot"]
    assert "pipelined int8 / serial fp32" in captured.err  # the readable table


def test_realtime_options_are_checked_before_any_run(capsys):
    assert main(["benchmark", "--realtime", "--precisions", "fp16"]) == 2
    assert "precisions are fp32,int8" in capsys.readouterr().err
    assert main(["benchmark", "--realtime", "--bag", "some_bag"]) == 2
    assert "--bag and --map go together" in capsys.readouterr().err
