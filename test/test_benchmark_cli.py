"""`supergf-ros benchmark`: runs end to end (tiny size) and reports the documented keys."""

from __future__ import annotations

import json

import pytest

from supergf_ros.cli import main
from supergf_ros.evaluation.benchmark import format_table, time_ms
from supergf_ros.models import default_weights_path, load_checkpoint


@pytest.mark.slow
def test_benchmark_cli_json(tmp_path, superpoint_weights, capsys):
    out = tmp_path / "bench" / "result.json"
    args = ["benchmark", "--json", "--repeats", "2", "--warmup", "1", "--netvlad-repeats", "1"]
    args += ["--size", "128x96", "--num-keypoints", "100", "--out", str(out)]
    args += ["--superpoint-weights", str(superpoint_weights), "--no-pipeline"]
    assert main(args) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert json.loads(out.read_text()) == result
    for key in ("superpoint_ms", "supergf_dense_ms", "supergf_sparse_ms", "netvlad_ms"):
        assert set(result[key]) == {"torch", "onnxruntime"}
        assert all(v > 0 for v in result[key].values())
    ratio = result["ratio_supergf_sparse_over_superpoint"]
    expected = result["supergf_sparse_ms"]["torch"] / result["superpoint_ms"]["torch"]
    assert ratio == pytest.approx(expected, rel=0.01)
    dense = result["ratio_supergf_dense_over_superpoint_by_backend"]["onnxruntime"]
    expected = result["supergf_dense_ms"]["onnxruntime"] / result["superpoint_ms"]["onnxruntime"]
    assert dense == pytest.approx(expected, rel=0.01)
    setup = result["setup"]
    assert setup["image_size"] == [128, 96] and setup["superpoint_weights"].endswith(".pth")
    # the shipped checkpoint's config when it exists, else the paper config (random weights)
    shipped = default_weights_path("sparse", "superpoint")
    latent = load_checkpoint(shipped)[0].conf["latent_dim"] if shipped.is_file() else 512
    assert setup["supergf_configs"]["sparse"]["latent_dim"] == latent
    assert "SuperGF-sparse (100 kp)" in captured.err  # the readable table
    assert "median latency" in format_table(result)
    ratios = result["ratio_torch_over_onnxruntime"]  # both CPU backends measured in one run
    assert ratios["superpoint"] == pytest.approx(
        result["superpoint_ms"]["torch"] / result["superpoint_ms"]["onnxruntime"], rel=0.02
    )
    assert "pipeline" not in result


@pytest.mark.slow
def test_benchmark_pipeline_ours_vs_two_network_baseline(tmp_path, superpoint_weights, capsys):
    """End to end on a small synthetic scene: both pipelines localize; per-stage times, ratio."""
    work = tmp_path / "work"
    args = ["benchmark", "--json", "--repeats", "1", "--warmup", "0", "--no-netvlad"]
    args += ["--size", "64x48", "--num-keypoints", "32", "--backends", "torch,onnxruntime"]
    args += ["--superpoint-weights", str(superpoint_weights), "--work-dir", str(work)]
    args += ["--pipeline-size", "320x240", "--pipeline-queries", "2", "--top-k", "3"]
    args += ["--map-keypoints", "256", "--baseline-keypoints", "1024", "--baseline-resize", "320"]
    assert main(args) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    for key in ("superpoint_ms", "supergf_dense_ms", "supergf_sparse_ms"):  # existing keys kept
        assert set(result[key]) == {"torch", "onnxruntime"}
    p = result["pipeline"]
    assert p["ours_ms"] > 0 and p["baseline_ms"] > 0
    assert p["speedup"] == pytest.approx(p["baseline_ms"] / p["ours_ms"], rel=0.01)
    stages = {"extract", "global", "retrieval", "matching", "pose", "total"}
    assert set(p["ours_stages_ms"]) == stages == set(p["baseline_stages_ms"])
    assert p["baseline_stages_ms"]["global"] > p["ours_stages_ms"]["global"]  # NetVLAD vs ours
    assert set(p["localization_ms"]) >= {"torch", "onnxruntime"}
    assert p["ours"]["backend"] == "onnxruntime" and p["ours"]["match_3d_only"]
    assert p["baseline"]["backend"] == "torch" and not p["baseline"]["match_3d_only"]
    assert p["baseline"]["map_keypoints_per_keyframe"] > p["ours"]["map_keypoints_per_keyframe"]
    for who in ("ours", "baseline"):
        acc = p["accuracy"][who]
        assert acc["num_queries"] == 2 and acc["num_localized"] == 2
        assert acc["recall"]["0.5m_5deg"] == 1.0
    assert len(p["load_average"]["before"]) == 3
    assert (work / "map_ours.h5").is_file() and (work / "map_baseline.h5").is_file()
    assert "speedup (baseline / ours)" in captured.err and "accuracy baseline" in captured.err


def test_benchmark_bad_arguments(capsys):
    assert main(["benchmark", "--size", "640by480"]) == 2
    assert "--size must look like 640x480" in capsys.readouterr().err
    assert main(["benchmark", "--backends", "tensorrt-fp8", "--size", "64x64"]) == 2
    assert "unknown backend" in capsys.readouterr().err
    assert main(["benchmark", "--repeats", "0", "--size", "64x64"]) == 2
    capsys.readouterr()
    assert main(["benchmark", "--size", "64x64", "--dataset", "/nonexistent/dataset"]) == 2
    assert "dataset folder not found" in capsys.readouterr().err


def test_time_ms_reports_median():
    calls = []
    stats = time_ms(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7
    assert 0 <= stats["min"] <= stats["median"] <= stats["max"]
