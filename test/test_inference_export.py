"""`supergf-ros export` and the model specs / TensorRT profiles it derives from the config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from supergf_ros.cli import main
from supergf_ros.features.superpoint import superpoint_profile
from supergf_ros.inference.tensorrt import check_profile, check_shape_in_profile
from supergf_ros.models.spec import supergf_profile


def test_superpoint_profile_from_config() -> None:
    profile = superpoint_profile(max_image_size=1000, opt_size=(640, 480))
    lo, opt, hi = profile["image"]
    assert lo == (1, 1, 16, 16) and opt == (1, 1, 480, 640) and hi == (1, 1, 1000, 1000)
    lo, opt, hi = superpoint_profile(max_image_size=601, opt_size=(1024, 768))["image"]
    assert hi == (1, 1, 608, 608) and opt == (1, 1, 608, 608)  # multiple of 8, clamped to max
    with pytest.raises(ValueError, match="max_image_size"):
        superpoint_profile(max_image_size=8)


def test_supergf_profiles_from_config() -> None:
    from supergf_ros.models.checkpoint import build_model

    small = {"latent_dim": 32, "mlp_dim": 64, "num_heads": 2, "num_layers": 1}
    dense = build_model("supergf-dense", small)
    assert supergf_profile(dense, max_image_size=1024)["dense"] == (
        (1, 256, 2, 2),
        (1, 256, 60, 80),
        (1, 256, 128, 128),
    )
    sparse = build_model("supergf-sparse", {**small, "num_slots": 4, "input_dim": 128})
    profile = supergf_profile(sparse, max_keypoints=2048, opt_keypoints=1024, max_batch=4)
    assert profile["descriptors"] == ((1, 1, 128), (1, 1024, 128), (4, 2048, 128))
    assert profile["mask"] == ((1, 1), (1, 1024), (4, 2048))
    assert profile["image_size"] == ((1, 2), (1, 2), (4, 2))
    # the profile matches the exported network's inputs (-1 = dynamic)
    network_inputs = {
        "keypoints": (-1, -1, 2),
        "descriptors": (-1, -1, 128),
        "scores": (-1, -1),
        "image_size": (-1, 2),
        "mask": (-1, -1),
    }
    assert set(check_profile(network_inputs, profile)) == set(network_inputs)
    with pytest.raises(ValueError, match="max_keypoints"):
        supergf_profile(sparse, max_keypoints=0)


def test_check_profile_rejects_mismatches() -> None:
    profile = {"image": ((1, 1, 16, 16), (1, 1, 480, 640), (1, 1, 1024, 1024))}
    with pytest.raises(ValueError, match="missing"):
        check_profile({"image": (1, 1, -1, -1), "mask": (-1,)}, profile)
    with pytest.raises(ValueError, match="static"):
        check_profile({"image": (1, 3, -1, -1)}, profile)
    with pytest.raises(ValueError, match="rank"):
        check_profile({"image": (1, -1, -1)}, profile)
    bounds = check_profile({"image": (-1, 1, -1, -1)}, profile)["image"]
    check_shape_in_profile("image", (1, 1, 480, 640), bounds)
    with pytest.raises(ValueError, match="outside the engine's profile"):
        check_shape_in_profile("image", (1, 1, 2048, 640), bounds)


def test_export_superpoint_onnx(tmp_path: Path, superpoint_weights: Path, capsys) -> None:
    output = tmp_path / "out" / "superpoint.onnx"
    argv = ["export", "--format", "onnx", "--model", "superpoint", "--json"]
    argv += ["--weights", str(superpoint_weights), "--cache-dir", str(tmp_path / "cache")]
    argv += ["--output", str(output), "--max-image-size", "512"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["onnxruntime_max_abs_diff"] < 1e-4
    assert summary["profile"]["image"] == [[1, 1, 16, 16], [1, 1, 480, 512], [1, 1, 512, 512]]
    assert Path(summary["onnx"]).parent == tmp_path / "cache" / "onnx"
    model = onnx.load(str(output))
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["scores", "descriptors"]
    assert output.read_bytes() == Path(summary["onnx"]).read_bytes()
    assert not [p for p in output.parent.iterdir() if p.name.endswith(".tmp")]


def test_export_supergf_sparse_random_init(tmp_path: Path, capsys) -> None:
    argv = ["export", "--format", "onnx", "--model", "supergf-sparse", "--random-init", "--json"]
    argv += ["--cache-dir", str(tmp_path), "--max-keypoints", "256", "--opt-keypoints", "128"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["onnxruntime_max_abs_diff"] < 1e-4
    assert summary["profile"]["descriptors"] == [[1, 1, 256], [1, 128, 256], [1, 256, 256]]
    # deterministic random init: the same command reuses the same file
    assert main([*argv, "--no-check"]) == 0
    assert json.loads(capsys.readouterr().out)["onnx_sha256"] == summary["onnx_sha256"]


def test_export_errors(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SUPERGF_CACHE_DIR", str(tmp_path))
    # missing SuperGF checkpoint: clear message naming the path and the remedies
    code = main(["export", "--format", "onnx", "--model", "supergf-sparse", "--weights", "none.pt"])
    assert code == 2 and "--random-init" in capsys.readouterr().err
    code = main(["export", "--format", "onnx", "--model", "superpoint", "--precision", "fp16"])
    assert code == 2 and "fp32" in capsys.readouterr().err


def test_export_tensorrt_unavailable_fails_fast(tmp_path: Path, capsys) -> None:
    from supergf_ros.inference.backends import available_backends

    if available_backends()["tensorrt:cuda"] == "available":
        pytest.skip("TensorRT is available here; covered by test_inference_tensorrt")
    argv = ["export", "--format", "tensorrt", "--model", "supergf-sparse", "--random-init"]
    assert main([*argv, "--cache-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "tensorrt" in err and "Available: ['onnxruntime:cpu', 'torch:cpu']" in err
    assert not (tmp_path / "onnx").exists()  # failed before exporting anything


def test_example_feed_matches_profile() -> None:
    from supergf_ros.features.superpoint import SuperPointNet, superpoint_spec
    from supergf_ros.inference.spec import example_feed

    spec = superpoint_spec(SuperPointNet(), "x", profile=superpoint_profile(640, (320, 240)))
    feed = example_feed(spec)
    assert feed["image"].shape == (1, 1, 240, 320) and feed["image"].dtype == np.float32
