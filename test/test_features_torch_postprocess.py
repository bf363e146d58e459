"""SuperPoint post-processing in torch (the GPU path) against the numpy/OpenCV path.

The torch code is the same on CPU and CUDA tensors: the CPU tests here run it for real on real
photos; the `gpu` tests run it on CUDA and check that a frame crosses to the host once.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from supergf_ros.features import create_extractor
from supergf_ros.features.base import LocalFeatures
from supergf_ros.features.superpoint import SuperPoint, postprocess_torch

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device visible to PyTorch"
)


def _photos(data_dir, count: int, size: tuple[int, int]) -> list[np.ndarray]:
    paths = sorted((data_dir / "photos" / "sacre_coeur" / "mapping").glob("*.jpg"))[:count]
    images = []
    for path in paths:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]
        images.append(np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA)))
    return images


@pytest.fixture(scope="module")
def photos(data_dir) -> list[np.ndarray]:
    """Three real RGB photos at 320x240 and one at an odd size (exercises the padding)."""
    images = _photos(data_dir, 3, (320, 240))
    images.append(np.ascontiguousarray(images[0][:237, :301]))
    return images


@pytest.fixture(scope="module")
def extractors(superpoint_weights) -> dict[str, SuperPoint]:
    conf = {"weights": str(superpoint_weights), "max_keypoints": 512}
    return {
        "numpy": create_extractor("superpoint", postprocess="numpy", **conf),
        "torch": create_extractor("superpoint", postprocess="torch", **conf),
    }


def assert_same_features(a: LocalFeatures, b: LocalFeatures, atol: float = 1e-5) -> None:
    """Same keypoints up to the order (and top-k choice) of equal scores; same descriptors."""
    assert a.image_size == b.image_size
    assert np.all(np.diff(a.scores) <= 0) and np.all(np.diff(b.scores) <= 0)
    np.testing.assert_array_equal(a.scores, b.scores)  # sorted: equal up to ties
    if len(a) == 0:
        return
    # keypoints scoring above the lowest kept score are kept by both; at the lowest score a
    # top-k cut may choose different ones among equals
    last = a.scores[-1]
    strict_a = {tuple(p) for p in a.keypoints[a.scores > last].tolist()}
    strict_b = {tuple(p) for p in b.keypoints[b.scores > last].tolist()}
    assert strict_a == strict_b
    index_a = {tuple(p): i for i, p in enumerate(a.keypoints.tolist())}
    pairs = [
        (index_a[tuple(p)], j) for j, p in enumerate(b.keypoints.tolist()) if tuple(p) in index_a
    ]
    assert len(pairs) >= len(strict_a)
    ia, ib = np.array(pairs).T
    np.testing.assert_array_equal(a.scores[ia], b.scores[ib])
    assert float(np.abs(a.descriptors[ia] - b.descriptors[ib]).max()) < atol


def test_auto_is_numpy_on_cpu_and_bad_options(superpoint_weights):
    ex = create_extractor("superpoint", weights=str(superpoint_weights))
    if str(ex.device).startswith("cpu"):
        assert ex.postprocess == "numpy"
    onnx = create_extractor("superpoint", weights=str(superpoint_weights), backend="onnxruntime")
    assert onnx.postprocess == "numpy"  # ONNX Runtime returns host arrays: nothing to keep
    with pytest.raises(ValueError, match="postprocess must be"):
        create_extractor("superpoint", weights=str(superpoint_weights), postprocess="gpu")
    with pytest.raises(ValueError, match="return_dense must be"):
        create_extractor("superpoint", weights=str(superpoint_weights), return_dense="no")


def test_runtime_options_stay_out_of_identity(extractors):
    a, b = extractors["numpy"].identity(), extractors["torch"].identity()
    assert a == b
    assert not {"postprocess", "return_dense", "weights"} & set(a["config"])


def test_torch_postprocess_equals_numpy_on_real_photos(extractors, photos):
    for image in photos:
        a = extractors["numpy"].extract(image)
        b = extractors["torch"].extract(image)
        assert 100 < len(a) <= 512
        assert a.extra["postprocess"] == "numpy" and b.extra["postprocess"] == "torch"
        assert_same_features(a, b)
        np.testing.assert_array_equal(a.dense, b.dense)
        # the device copy of the descriptors is the host copy
        device_desc = b.descriptors_device
        assert isinstance(device_desc, torch.Tensor) and device_desc.dtype == torch.float32
        np.testing.assert_array_equal(device_desc.cpu().numpy(), b.descriptors)
        assert a.descriptors_device is None


@pytest.mark.parametrize(
    "conf",
    [
        {"max_keypoints": -1},  # all above the threshold: nonzero + stable sort
        {"max_keypoints": 300, "nms_radius": 0, "remove_borders": 0},
        {"max_keypoints": 200, "resize_max": 200, "detection_threshold": 0.02},
        {"max_keypoints": 100000, "nms_radius": 2},  # k above the pixel count
    ],
)
def test_torch_postprocess_equals_numpy_per_option(superpoint_weights, photos, conf):
    kwargs = {"weights": str(superpoint_weights), **conf}
    a = create_extractor("superpoint", postprocess="numpy", **kwargs).extract(photos[3])
    b = create_extractor("superpoint", postprocess="torch", **kwargs).extract(photos[3])
    assert len(a) > 50
    assert_same_features(a, b)
    if conf["max_keypoints"] < 0 or conf["max_keypoints"] > len(a):
        # no top-k cut: both are sorted by score with a stable row-major tie order
        np.testing.assert_array_equal(a.keypoints, b.keypoints)
        np.testing.assert_allclose(a.descriptors, b.descriptors, atol=1e-6)


def test_return_dense_false_keeps_sparse_features(superpoint_weights, extractors, photos):
    for post in ("numpy", "torch"):
        sparse_only = create_extractor(
            "superpoint",
            weights=str(superpoint_weights),
            max_keypoints=512,
            postprocess=post,
            return_dense=False,
        )
        a = extractors[post].extract(photos[1])
        b = sparse_only.extract(photos[1])
        assert b.dense is None and a.dense is not None
        np.testing.assert_array_equal(a.keypoints, b.keypoints)
        np.testing.assert_array_equal(a.descriptors, b.descriptors)


def test_postprocess_torch_function(extractors, photos):
    """The function itself: shapes, valid prefix, input untouched, bad shapes rejected."""
    ex = extractors["torch"]
    gray = cv2.cvtColor(photos[0], cv2.COLOR_RGB2GRAY)
    x = torch.from_numpy(gray).float()[None, None] / 255
    scores, dense = ex.run_network(x)
    before = scores.clone()
    out = postprocess_torch(
        scores[0], dense[0], nms_radius=0, detection_threshold=0.05, max_keypoints=4000
    )
    torch.testing.assert_close(scores, before, rtol=0, atol=0)  # not modified in place
    k = out["keypoints"].shape[0]
    assert k == 4000 and out["descriptors"].shape == (k, 256) and out["valid"].dtype == torch.bool
    valid = out["valid"].numpy()
    n = int(valid.sum())
    assert 0 < n < k and valid[:n].all()  # a prefix: the candidates are sorted by score
    assert float(out["scores"][n - 1]) > 0.05 >= float(out["scores"][n])
    np.testing.assert_allclose(out["descriptors"].norm(dim=1).numpy(), 1, atol=1e-5)
    with pytest.raises(ValueError, match=r"scores must have shape \(H, W\)"):
        postprocess_torch(scores, dense[0])
    with pytest.raises(ValueError, match=r"dense must have shape"):
        postprocess_torch(scores[0], dense)
    with pytest.raises(ValueError, match="max_keypoints"):
        postprocess_torch(scores[0], dense[0], max_keypoints=0)


# ------------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cuda_photos(data_dir) -> list[np.ndarray]:
    return _photos(data_dir, 3, (640, 480))


@pytest.mark.gpu
@needs_cuda
def test_cuda_torch_postprocess_equals_numpy_on_the_same_scores(superpoint_weights, cuda_photos):
    """Same network outputs on the GPU, post-processed on the GPU or on the host."""
    conf = {"weights": str(superpoint_weights), "device": "cuda", "backend": "torch"}
    gpu = create_extractor("superpoint", **conf)
    host = create_extractor("superpoint", postprocess="numpy", **conf)
    assert gpu.postprocess == "torch"  # auto: the network runs on the GPU
    for image in cuda_photos:
        a, b = host.extract(image), gpu.extract(image)
        assert_same_features(a, b, atol=1e-5)
        assert b.descriptors_device.device.type == "cuda"


@pytest.mark.gpu
@needs_cuda
def test_cuda_extraction_close_to_cpu(superpoint_weights, cuda_photos):
    """GPU vs CPU end to end (different convolution kernels: close, not identical)."""
    cpu = create_extractor("superpoint", weights=str(superpoint_weights))
    gpu = create_extractor("superpoint", weights=str(superpoint_weights), device="cuda")
    for image in cuda_photos:
        a, b = cpu.extract(image), gpu.extract(image)
        index_a = {tuple(p): i for i, p in enumerate(a.keypoints.tolist())}
        pairs = [
            (index_a[tuple(p)], j)
            for j, p in enumerate(b.keypoints.tolist())
            if tuple(p) in index_a
        ]
        assert len(pairs) >= 0.9 * len(a)
        ia, ib = np.array(pairs).T
        cosine = np.sum(a.descriptors[ia] * b.descriptors[ib], axis=1)
        assert float(cosine.min()) > 0.99
        assert float(np.abs(a.dense - b.dense).max()) < 5e-2


@pytest.mark.gpu
@needs_cuda
def test_cuda_frame_crosses_to_the_host_once(superpoint_weights, cuda_photos):
    """Device -> host copies per frame: one packed copy, plus the dense map when asked."""
    from torch.profiler import ProfilerActivity, profile

    image = cuda_photos[0]
    for return_dense, expected in ((False, 1), (True, 2)):
        ex = create_extractor(
            "superpoint",
            weights=str(superpoint_weights),
            device="cuda",
            backend="torch",
            return_dense=return_dense,
        )
        ex.extract(image)  # warm-up (cuDNN autotuning, allocations)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            ex.extract(image)
            torch.cuda.synchronize()
        events = list(prof.events())
        if not any(e.device_type == torch.autograd.DeviceType.CUDA for e in events):
            pytest.skip("the profiler recorded no CUDA activity (CUPTI unavailable)")
        names = [e.name for e in events]
        copies = [n for n in names if "DtoH" in n or "Device -> Pageable" in n]
        assert len(copies) == expected, (return_dense, copies)
