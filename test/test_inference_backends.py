"""Backend selection and the runner layer: PyTorch vs ONNX Runtime parity on CPU, real models."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from supergf_ros.inference.backends import (
    BackendChoice,
    Capabilities,
    available_backends,
    create_runner,
    probe_capabilities,
    select_backend,
)
from supergf_ros.inference.runners import OrtRunner, TorchRunner
from supergf_ros.inference.spec import ModelSpec

CPU_ONLY = Capabilities(
    ort_providers=("CPUExecutionProvider",), torch="2.13.0", notes={"cuda": "no GPU"}
)
FULL_GPU = Capabilities(
    cuda_devices=1,
    gpu_names=("NVIDIA Jetson Orin",),
    tensorrt="10.3.0",
    pycuda=True,
    ort_providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    torch="2.13.0",
    torch_cuda=True,
)
TORCH_GPU_ONLY = Capabilities(
    cuda_devices=1,
    gpu_names=("NVIDIA H200",),
    ort_providers=("CPUExecutionProvider",),
    torch="2.13.0",
    torch_cuda=True,
    notes={"tensorrt": "Python package 'tensorrt' is not installed"},
)


# ------------------------------------------------------------------------------ selection
@pytest.mark.parametrize(
    ("caps", "device", "expected"),
    [
        (FULL_GPU, "auto", ("tensorrt", "cuda")),
        (FULL_GPU, "cuda:0", ("tensorrt", "cuda:0")),
        (FULL_GPU, "cpu", ("onnxruntime", "cpu")),
        (TORCH_GPU_ONLY, "auto", ("torch", "cuda")),
        (TORCH_GPU_ONLY, "cpu", ("onnxruntime", "cpu")),
        (CPU_ONLY, "auto", ("onnxruntime", "cpu")),
        (
            Capabilities(
                cuda_devices=1,
                pycuda=True,
                tensorrt=None,
                torch="2",
                torch_cuda=False,
                ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
            ),
            "auto",
            ("onnxruntime", "cuda"),
        ),
    ],
)
def test_auto_priority(caps: Capabilities, device: str, expected: tuple[str, str]) -> None:
    choice = select_backend("auto", device, capabilities=caps)
    assert (choice.backend, choice.device) == expected
    assert choice.reason.startswith("auto:")


def test_auto_explains_what_it_skipped() -> None:
    choice = select_backend("auto", capabilities=TORCH_GPU_ONLY)
    assert "skipped tensorrt:cuda" in choice.reason and "not installed" in choice.reason
    assert "onnxruntime:cuda" in choice.reason


def test_cpu_preference_and_fallback() -> None:
    assert select_backend("auto", "cpu", capabilities=CPU_ONLY, cpu_preference="torch").backend == (
        "torch"
    )
    no_ort = Capabilities(torch="2.13.0")
    choice = select_backend("auto", capabilities=no_ort)
    assert (choice.backend, choice.device) == ("torch", "cpu")


def test_explicit_requests() -> None:
    assert select_backend("torch", "cuda", "fp16", capabilities=FULL_GPU).backend == "torch"
    assert select_backend("onnxruntime", capabilities=FULL_GPU).device == "cuda"
    assert select_backend("onnxruntime", "cpu", capabilities=FULL_GPU).device == "cpu"
    choice = select_backend("tensorrt", capabilities=FULL_GPU)
    assert choice.reason.startswith("requested tensorrt")


@pytest.mark.parametrize(
    ("backend", "device", "precision", "message"),
    [
        (
            "tensorrt",
            "auto",
            "fp32",
            r"backend 'tensorrt' is not available.*Available: \['onnxruntime:cpu', 'torch:cpu'\]",
        ),
        ("torch", "cuda", "fp32", "torch has no CUDA|no CUDA device"),
        ("onnxruntime", "cuda", "fp32", "install onnxruntime-gpu"),
        ("tensorrt", "cpu", "fp32", "TensorRT needs a CUDA device"),
        ("auto", "cpu", "fp16", "fp16' needs a CUDA device"),
        ("auto", "auto", "fp16", "with fp16"),
        ("tensorflow", "auto", "fp32", "unknown backend"),
        ("auto", "gpu", "fp32", "unknown device"),
        ("auto", "auto", "int8", "unknown precision"),
    ],
)
def test_unavailable_or_invalid_requests_raise(backend, device, precision, message) -> None:
    with pytest.raises(ValueError, match=message):
        select_backend(backend, device, precision, capabilities=CPU_ONLY)


def test_missing_device_index() -> None:
    with pytest.raises(ValueError, match="does not exist"):
        select_backend("auto", "cuda:3", capabilities=FULL_GPU)


def test_choice_is_logged(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="supergf_ros.inference.backends"):
        select_backend("auto", capabilities=CPU_ONLY)
    assert "inference backend onnxruntime on cpu" in caplog.text


def test_real_probe_is_consistent() -> None:
    caps = probe_capabilities()
    status = available_backends(caps)
    assert status["onnxruntime:cpu"] == "available" and status["torch:cpu"] == "available"
    choice = select_backend("auto")
    assert status[f"{choice.backend}:{choice.device_kind}"] == "available"
    if caps.cuda_devices == 0:
        assert choice == BackendChoice("onnxruntime", "cpu", "fp32", choice.reason)
        assert status["tensorrt:cuda"] != "available"


# ------------------------------------------------------------------------------ runners
class TinyNet(torch.nn.Module):
    """Conv + pooling with a dynamic spatial size, two outputs (like SuperPointNet)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.head = torch.nn.Conv2d(8, 4, 1)

    def forward(self, image: torch.Tensor, gain: torch.Tensor):
        x = torch.relu(self.conv(image))
        dense = torch.nn.functional.normalize(self.head(x), dim=1)
        return dense * gain[:, :, None, None], x.mean(dim=(2, 3))


def tiny_spec(tmp_key: str = "tiny-v1") -> ModelSpec:
    net = TinyNet().eval()
    return ModelSpec(
        name="tinynet",
        build_module=lambda: net,
        example_inputs=lambda: (np.zeros((1, 1, 24, 32), np.float32), np.ones((1, 4), np.float32)),
        input_names=["image", "gain"],
        output_names=["dense", "pooled"],
        dynamic_axes={
            "image": {0: "b", 2: "h", 3: "w"},
            "gain": {0: "b"},
            "dense": {0: "b", 2: "h", 3: "w"},
            "pooled": {0: "b"},
        },
        key=tmp_key,
        profile={
            "image": ((1, 1, 8, 8), (1, 1, 24, 32), (2, 1, 64, 64)),
            "gain": ((1, 4), (1, 4), (2, 4)),
        },
    )


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory) -> Path:
    """Fresh per run: these exports take about a second and must never be stale."""
    return tmp_path_factory.mktemp("inference_onnx")


def test_torch_and_ort_runners_agree_at_two_sizes(onnx_cache: Path) -> None:
    spec = tiny_spec()
    torch_runner = create_runner(spec, "torch", "cpu")
    ort_runner = create_runner(spec, "onnxruntime", "cpu", onnx_cache_dir=onnx_cache)
    assert isinstance(torch_runner, TorchRunner) and isinstance(ort_runner, OrtRunner)
    assert ort_runner.describe()["providers"] == ["CPUExecutionProvider"]
    assert ort_runner.choice.backend == "onnxruntime"
    rng = np.random.default_rng(0)
    for shape in [(1, 1, 24, 32), (2, 1, 40, 56)]:
        feed = {
            "image": rng.random(shape, dtype=np.float32),
            "gain": rng.random((shape[0], 4)).astype(np.float32),
        }
        a, b = torch_runner(feed), ort_runner(feed)
        assert set(a) == set(b) == {"dense", "pooled"}
        assert a["dense"].shape == (shape[0], 4, shape[2], shape[3])
        for name in a:
            assert a[name].dtype == b[name].dtype == np.float32
            np.testing.assert_allclose(a[name], b[name], atol=1e-5)
        # positional API returns the same, in output order
        dense, _ = ort_runner.run(feed["image"], feed["gain"])
        np.testing.assert_array_equal(dense, b["dense"])


def test_runner_input_validation(onnx_cache: Path) -> None:
    runner = create_runner(tiny_spec(), "onnxruntime", "cpu", onnx_cache_dir=onnx_cache)
    image = np.zeros((1, 1, 16, 16), np.float32)
    with pytest.raises(ValueError, match=r"missing \['gain'\]"):
        runner({"image": image})
    with pytest.raises(ValueError, match=r"unexpected \['extra'\]"):
        runner({"image": image, "gain": np.ones((1, 4), np.float32), "extra": image})
    with pytest.raises(ValueError, match="dict"):
        runner([image])
    with pytest.raises(ValueError, match=r"expected 2 inputs"):
        runner.run(image)
    # float64 inputs are accepted and cast
    out = runner({"image": image.astype(np.float64), "gain": np.ones((1, 4))})
    assert out["dense"].dtype == np.float32


def test_runner_construction_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fp16 with PyTorch needs a CUDA device"):
        TorchRunner(TinyNet(), ["image", "gain"], ["dense", "pooled"], precision="fp16")
    with pytest.raises(ValueError, match="explicit device"):
        TorchRunner(TinyNet(), ["image", "gain"], ["dense", "pooled"], device="auto")
    with pytest.raises(FileNotFoundError, match="ONNX model not found"):
        OrtRunner(tmp_path / "none.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(ValueError, match="cannot load ONNX model"):
        OrtRunner(bad)


def test_create_runner_auto_on_this_machine(onnx_cache: Path) -> None:
    runner = create_runner(tiny_spec(), "auto", onnx_cache_dir=onnx_cache)
    if probe_capabilities().cuda_devices == 0:
        assert runner.describe()["backend"] == "onnxruntime" and runner.device == "cpu"
    with pytest.raises(ValueError, match="tensorrt"):
        if available_backends()["tensorrt:cuda"] != "available":
            create_runner(tiny_spec(), "tensorrt", onnx_cache_dir=onnx_cache)
        else:
            raise ValueError("tensorrt present: covered by the gpu tests")


def test_superpoint_runner_parity_real_weights(
    data_dir: Path, superpoint_weights: Path, onnx_cache: Path
) -> None:
    """Real SuperPointNet through both runners on a real photo crop (runner layer, CPU)."""
    import cv2

    from supergf_ros.features.base import file_sha256
    from supergf_ros.features.superpoint import load_superpoint_net, superpoint_spec

    image_path = sorted((data_dir / "photos" / "sacre_coeur" / "mapping").glob("*.jpg"))[0]
    gray = cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE)
    gray = cv2.resize(gray, (160, 120), interpolation=cv2.INTER_AREA)
    image = (gray.astype(np.float32) / 255.0)[None, None]
    spec = superpoint_spec(load_superpoint_net(superpoint_weights), file_sha256(superpoint_weights))
    a = create_runner(spec, "torch", "cpu")({"image": image})
    b = create_runner(spec, "onnxruntime", "cpu", onnx_cache_dir=onnx_cache)({"image": image})
    assert a["scores"].shape == (1, 120, 160) and a["descriptors"].shape == (1, 256, 15, 20)
    np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-4)
    np.testing.assert_allclose(a["descriptors"], b["descriptors"], atol=1e-4)
    assert float(a["scores"].max()) > 0.05  # real detections on a real photo


def test_supergf_sparse_runner_parity(onnx_cache: Path) -> None:
    from supergf_ros.inference.spec import example_feed
    from supergf_ros.models.checkpoint import build_model
    from supergf_ros.models.spec import supergf_spec

    torch.manual_seed(0)
    model = build_model(
        "supergf-sparse",
        {
            "latent_dim": 64,
            "mlp_dim": 128,
            "num_heads": 4,
            "num_slots": 8,
            "keypoint_encoder": [16, 32],
        },
    ).eval()
    spec = supergf_spec(model)
    feed = example_feed(spec)
    assert feed["keypoints"].shape == (1, 1024, 2) and feed["mask"].dtype == np.bool_
    a = create_runner(spec, "torch", "cpu")(feed)
    b = create_runner(spec, "onnxruntime", "cpu", onnx_cache_dir=onnx_cache)(feed)
    np.testing.assert_allclose(a["global_descriptor"], b["global_descriptor"], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(b["global_descriptor"], axis=1), 1.0, atol=1e-5)


def test_time_runner(onnx_cache: Path) -> None:
    from supergf_ros.inference.runners import time_runner

    runner = create_runner(tiny_spec(), "onnxruntime", "cpu", onnx_cache_dir=onnx_cache)
    feed = {"image": np.zeros((1, 1, 16, 16), np.float32), "gain": np.ones((1, 4), np.float32)}
    stats = time_runner(runner, feed, warmup=1, repeats=5)
    assert 0 < stats["min_ms"] <= stats["median_ms"] <= stats["p90_ms"]
    with pytest.raises(ValueError, match="repeats"):
        time_runner(runner, feed, repeats=0)


def test_ort_providers_for_devices() -> None:
    from supergf_ros.inference.runners import ort_providers_for

    gpu_wheel = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert ort_providers_for("cpu", available=gpu_wheel) == ["CPUExecutionProvider"]
    assert ort_providers_for("cuda:1", available=gpu_wheel) == [
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
    with pytest.raises(ValueError, match="unknown device"):
        ort_providers_for("gpu0", available=gpu_wheel)


# ------------------------------------------------------------------------------ integration
def test_superpoint_extractor_accepts_auto_and_tensorrt(
    data_dir: Path, superpoint_weights: Path, onnx_cache: Path
) -> None:
    import cv2

    from supergf_ros.features import create_extractor

    image_path = sorted((data_dir / "photos" / "sacre_coeur" / "mapping").glob("*.jpg"))[1]
    image = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
    conf = dict(weights=superpoint_weights, max_keypoints=256, resize_max=320)
    auto = create_extractor("superpoint", backend="auto", onnx_cache_dir=onnx_cache, **conf)
    expected = select_backend("auto", "cpu").backend
    assert auto.backend == expected
    reference = create_extractor("superpoint", backend="torch", **conf).extract(image)
    features = auto.extract(image)
    assert len(features) == len(reference) > 100
    np.testing.assert_allclose(features.keypoints, reference.keypoints, atol=1e-3)
    np.testing.assert_allclose(features.descriptors, reference.descriptors, atol=1e-4)
    if available_backends()["tensorrt:cuda"] != "available":
        with pytest.raises(ValueError, match=r"tensorrt.*Available"):
            create_extractor("superpoint", backend="tensorrt", device="cuda", **conf)
    with pytest.raises(ValueError, match="use device 'cuda'"):
        create_extractor("superpoint", backend="tensorrt", device="cpu", **conf)
    with pytest.raises(ValueError, match="backend must be"):
        create_extractor("superpoint", backend="openvino", **conf)


def test_supergf_aggregator_accepts_auto_and_tensorrt(onnx_cache: Path) -> None:
    from supergf_ros.features.base import LocalFeatures
    from supergf_ros.models.aggregators import create_aggregator
    from supergf_ros.models.checkpoint import build_model

    torch.manual_seed(0)
    small = {"latent_dim": 64, "mlp_dim": 128, "num_heads": 4, "num_slots": 8}
    model = build_model("supergf-sparse", small).eval()
    rng = np.random.default_rng(1)
    desc = rng.standard_normal((300, 256)).astype(np.float32)
    feats = LocalFeatures(
        keypoints=(rng.random((300, 2)) * [640, 480]).astype(np.float32),
        scores=rng.random(300).astype(np.float32),
        descriptors=desc / np.linalg.norm(desc, axis=1, keepdims=True),
        image_size=(640, 480),
    )
    reference = create_aggregator("supergf-sparse", model=model, backend="torch")(feats)
    auto = create_aggregator(
        "supergf-sparse", model=model, backend="auto", onnx_cache_dir=onnx_cache
    )
    assert auto.backend == select_backend("auto").backend
    np.testing.assert_allclose(auto(feats), reference, atol=1e-5)
    if available_backends()["tensorrt:cuda"] != "available":
        with pytest.raises(ValueError, match=r"tensorrt.*Available"):
            create_aggregator("supergf-sparse", model=model, backend="tensorrt", device="cuda")
