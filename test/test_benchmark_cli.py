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
    args += ["--superpoint-weights", str(superpoint_weights)]
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
    setup = result["setup"]
    assert setup["image_size"] == [128, 96] and setup["superpoint_weights"].endswith(".pth")
    # the shipped checkpoint's config when it exists, else the paper config (random weights)
    shipped = default_weights_path("sparse", "superpoint")
    latent = load_checkpoint(shipped)[0].conf["latent_dim"] if shipped.is_file() else 512
    assert setup["supergf_configs"]["sparse"]["latent_dim"] == latent
    assert "SuperGF-sparse (100 kp)" in captured.err  # the readable table
    assert "median latency" in format_table(result)


def test_benchmark_bad_arguments(capsys):
    assert main(["benchmark", "--size", "640by480"]) == 2
    assert "--size must look like 640x480" in capsys.readouterr().err
    assert main(["benchmark", "--backends", "tensorrt-fp8", "--size", "64x64"]) == 2
    assert "unknown backend" in capsys.readouterr().err
    assert main(["benchmark", "--repeats", "0", "--size", "64x64"]) == 2


def test_time_ms_reports_median():
    calls = []
    stats = time_ms(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7
    assert 0 <= stats["min"] <= stats["median"] <= stats["max"]
