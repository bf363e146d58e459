"""CUDA and TensorRT backends, for real; skipped with the reason when this machine lacks them.

Run on a GPU machine with `pytest -m gpu test/test_inference_tensorrt.py` (scripts/gpu_check.sh).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from supergf_ros.inference.backends import (
    available_backends,
    create_runner,
    select_backend,
)
from supergf_ros.inference.spec import ModelSpec

pytestmark = pytest.mark.gpu


def require(kind: str) -> None:
    status = available_backends()[kind]
    if status != "available":
        pytest.skip(f"{kind} not available: {status}")


class SmallNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.head = torch.nn.Conv2d(16, 8, 1)

    def forward(self, image: torch.Tensor):
        x = torch.relu(self.conv(image))
        return torch.nn.functional.normalize(self.head(x), dim=1), x.mean(dim=(2, 3))


def small_spec() -> ModelSpec:
    net = SmallNet().eval()
    return ModelSpec(
        name="smallnet",
        build_module=lambda: net,
        example_inputs=lambda: (np.zeros((1, 1, 32, 48), np.float32),),
        input_names=["image"],
        output_names=["dense", "pooled"],
        dynamic_axes={"image": {2: "h", 3: "w"}, "dense": {2: "h", 3: "w"}},
        key="smallnet-v1",
        profile={"image": ((1, 1, 16, 16), (1, 1, 48, 64), (1, 1, 128, 128))},
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    spec = small_spec()
    cpu = create_runner(spec, "onnxruntime", "cpu", onnx_cache_dir=tmp_path_factory.mktemp("o"))
    rng = np.random.default_rng(0)
    feeds = [{"image": rng.random((1, 1, h, w), dtype=np.float32)} for h, w in [(48, 64), (96, 40)]]
    return spec, feeds, [cpu(f) for f in feeds]


def assert_close(a: dict, b: dict, atol: float) -> None:
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=atol, err_msg=name)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_cuda_runner(reference, precision: str) -> None:
    require("torch:cuda")
    spec, feeds, expected = reference
    runner = create_runner(spec, "torch", "cuda", precision)
    assert runner.describe() == {"backend": "torch", "device": "cuda", "precision": precision}
    for feed, ref in zip(feeds, expected):
        assert_close(runner(feed), ref, 1e-4 if precision == "fp32" else 2e-2)
    # outputs can stay on the GPU for device-side post-processing
    out = runner.run_torch([torch.from_numpy(feeds[0]["image"]).cuda()])
    assert out["dense"].is_cuda


def test_onnxruntime_cuda_runner(reference, tmp_path: Path) -> None:
    require("onnxruntime:cuda")
    spec, feeds, expected = reference
    runner = create_runner(spec, "onnxruntime", "cuda", onnx_cache_dir=tmp_path)
    assert runner.providers[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    for feed, ref in zip(feeds, expected):
        assert_close(runner(feed), ref, 1e-4)


def test_auto_on_cuda_picks_a_gpu_backend(reference, tmp_path: Path) -> None:
    if all(
        available_backends()[k] != "available"
        for k in ("tensorrt:cuda", "onnxruntime:cuda", "torch:cuda")
    ):
        pytest.skip("no CUDA backend available here")
    choice = select_backend("auto", "auto")
    assert choice.device.startswith("cuda")
    spec, feeds, expected = reference
    runner = create_runner(spec, choice, onnx_cache_dir=tmp_path, engine_cache_dir=tmp_path)
    assert_close(runner(feeds[0]), expected[0], 1e-3)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_engine_build_cache_and_run(reference, tmp_path: Path, precision: str) -> None:
    require("tensorrt:cuda")
    from supergf_ros.inference.tensorrt import TensorRTRunner

    spec, feeds, expected = reference
    onnx_path = spec.export_onnx(tmp_path / "onnx")
    kwargs = dict(
        model=spec.name,
        profile=spec.profile,
        precision=precision,
        device="cuda",
        cache_dir=tmp_path / "engines",
    )
    runner = TensorRTRunner.from_onnx(onnx_path, **kwargs)
    assert runner.cache_status == "built"
    for feed, ref in zip(feeds, expected):
        assert_close(runner(feed), ref, 1e-4 if precision == "fp32" else 2e-2)
    start = time.perf_counter()
    again = TensorRTRunner.from_onnx(onnx_path, **kwargs)
    assert again.cache_status == "hit" and time.perf_counter() - start < 5.0
    assert_close(again(feeds[0]), expected[0], 1e-4 if precision == "fp32" else 2e-2)
    # corrupt cache file -> rebuilt
    again.engine_path.write_bytes(again.engine_path.read_bytes()[:-100])
    assert TensorRTRunner.from_onnx(onnx_path, **kwargs).cache_status == "rebuilt"
    with pytest.raises(ValueError, match="outside the engine's profile"):
        runner({"image": np.zeros((1, 1, 256, 256), np.float32)})


def test_superpoint_tensorrt_matches_torch(superpoint_weights: Path, tmp_path: Path) -> None:
    require("tensorrt:cuda")
    from supergf_ros.features.base import file_sha256
    from supergf_ros.features.superpoint import (
        load_superpoint_net,
        superpoint_profile,
        superpoint_spec,
    )
    from supergf_ros.inference.spec import example_feed

    spec = superpoint_spec(
        load_superpoint_net(superpoint_weights),
        file_sha256(superpoint_weights),
        profile=superpoint_profile(640, (640, 480)),
    )
    feed = example_feed(spec)
    ref = create_runner(spec, "torch", "cpu")(feed)
    runner = create_runner(
        spec, "tensorrt", "cuda", onnx_cache_dir=tmp_path, engine_cache_dir=tmp_path
    )
    out = runner(feed)
    np.testing.assert_allclose(out["scores"], ref["scores"], atol=1e-3)
    np.testing.assert_allclose(out["descriptors"], ref["descriptors"], atol=1e-3)


@pytest.mark.parametrize("backend", ["tensorrt", "onnxruntime", "torch"])
def test_superpoint_extractor_on_cuda(
    superpoint_weights: Path, data_dir: Path, tmp_path: Path, backend: str
):
    require(f"{backend}:cuda")
    import cv2

    from supergf_ros.features import create_extractor

    image_path = sorted((data_dir / "photos" / "sacre_coeur" / "mapping").glob("*.jpg"))[0]
    image = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
    conf = dict(
        weights=superpoint_weights, max_keypoints=512, resize_max=640, onnx_cache_dir=tmp_path
    )
    reference = create_extractor("superpoint", backend="torch", device="cpu", **conf).extract(image)
    features = create_extractor("superpoint", backend=backend, device="cuda", **conf).extract(image)
    matched = np.isclose(features.keypoints[:, None], reference.keypoints[None], atol=0.5).all(-1)
    assert matched.any(1).mean() > 0.95  # the same keypoints, up to ties in the ordering
