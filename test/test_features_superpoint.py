"""SuperPoint: weights handling, network outputs, post-processing and coordinate conventions."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from supergf_ros.features import create_extractor
from supergf_ros.features.base import file_sha256, to_grayscale
from supergf_ros.features.superpoint import (
    WEIGHTS_ENV,
    SuperPoint,
    SuperPointNet,
    load_superpoint_net,
    resolve_weights,
    sample_descriptors,
    simple_nms,
    simple_nms_np,
)


@pytest.fixture(scope="session")
def superpoint(superpoint_weights) -> SuperPoint:
    return create_extractor("superpoint", weights=str(superpoint_weights))


@pytest.fixture(scope="session")
def photo(data_dir) -> np.ndarray:
    """One real RGB photo resized to 320x240."""
    path = sorted((data_dir / "photos" / "sacre_coeur" / "mapping").glob("*.jpg"))[0]
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]
    return np.ascontiguousarray(cv2.resize(image, (320, 240), interpolation=cv2.INTER_AREA))


# ------------------------------------------------------------------------------------------------
# Weights
# ------------------------------------------------------------------------------------------------
def test_weights_missing_everywhere(monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=r"superpoint_v1\.pth") as err:
        create_extractor("superpoint")
    message = str(err.value)
    assert (
        WEIGHTS_ENV in message and "weights=PATH" in message and "--superpoint-weights" in message
    )


def test_weights_missing_file_names_path(tmp_path):
    missing = tmp_path / "nowhere" / "superpoint_v1.pth"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        create_extractor("superpoint", weights=str(missing))


def test_weights_from_env(monkeypatch, superpoint_weights, tmp_path):
    monkeypatch.setenv(WEIGHTS_ENV, str(superpoint_weights))
    assert resolve_weights(None) == superpoint_weights
    monkeypatch.setenv(WEIGHTS_ENV, str(tmp_path / "gone.pth"))
    with pytest.raises(FileNotFoundError, match=r"gone\.pth"):
        resolve_weights(None)


def test_weights_wrong_file(tmp_path):
    text = tmp_path / "not_weights.pth"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"superpoint_v1\.pth"):
        create_extractor("superpoint", weights=str(text))
    wrong_keys = tmp_path / "other_net.pth"
    torch.save({"conv1.weight": torch.zeros(3, 3)}, wrong_keys)
    with pytest.raises(ValueError, match=r"not a SuperPointNet state dict.*conv1a"):
        load_superpoint_net(wrong_keys)
    not_dict = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), not_dict)
    with pytest.raises(ValueError, match="not a state dict"):
        load_superpoint_net(not_dict)


def test_identity_has_weights_hash(superpoint, superpoint_weights):
    ident = superpoint.identity()
    assert ident["name"] == "superpoint"
    assert ident["weights_sha256"] == file_sha256(superpoint_weights)
    assert ident["config"]["nms_radius"] == 4 and "weights" not in ident["config"]
    assert superpoint.descriptor_dim == 256


def test_bad_options(superpoint_weights):
    with pytest.raises(ValueError, match="unknown option"):
        create_extractor("superpoint", weights=str(superpoint_weights), nms=3)
    with pytest.raises(ValueError, match="backend"):
        create_extractor("superpoint", weights=str(superpoint_weights), backend="tf")
    with pytest.raises(ValueError, match="max_keypoints"):
        create_extractor("superpoint", weights=str(superpoint_weights), max_keypoints=0)
    with pytest.raises(ValueError, match="device"):
        create_extractor("superpoint", weights=str(superpoint_weights), device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            create_extractor("superpoint", weights=str(superpoint_weights), device="cuda")


# ------------------------------------------------------------------------------------------------
# Network
# ------------------------------------------------------------------------------------------------
def test_network_outputs(superpoint):
    net: SuperPointNet = superpoint.net
    assert sum(p.numel() for p in net.parameters()) == 1_300_865
    x = torch.rand(2, 1, 48, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        scores, desc = net(x)
    assert scores.shape == (2, 48, 64) and desc.shape == (2, 256, 6, 8)
    assert float(scores.min()) >= 0 and float(scores.max()) <= 1
    # the 64 non-dustbin probabilities of one cell sum to <= 1
    cell_sums = scores.reshape(2, 6, 8, 8, 8).sum(dim=(2, 4))
    assert float(cell_sums.max()) <= 1 + 1e-5
    torch.testing.assert_close(desc.norm(dim=1), torch.ones(2, 6, 8))
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.zeros(1, 1, 50, 64))


def test_depth_to_space_layout(superpoint):
    """Score of pixel (8i + a, 8j + b) is channel 8a + b of cell (i, j), as in MagicLeap's code."""
    net = superpoint.net
    x = torch.rand(1, 1, 32, 40, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        scores, _ = net(x)
        f = x
        for i, name in enumerate(["conv1", "conv2", "conv3", "conv4"]):
            f = net.relu(getattr(net, name + "a")(f))
            f = net.relu(getattr(net, name + "b")(f))
            if i < 3:
                f = net.pool(f)
        prob = torch.softmax(net.convPb(net.relu(net.convPa(f))), 1)[0, :-1]  # (64, 4, 5)
    reference = prob.permute(1, 2, 0).reshape(4, 5, 8, 8).permute(0, 2, 1, 3).reshape(32, 40)
    torch.testing.assert_close(scores[0], reference)


def test_nms_numpy_matches_torch(superpoint, photo):
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    with torch.inference_mode():
        scores, _ = superpoint.net(torch.from_numpy(gray).float()[None, None] / 255)
    for radius in (0, 2, 4):
        expected = simple_nms(scores, radius)[0].numpy()
        got = simple_nms_np(np.ascontiguousarray(scores[0].numpy()), radius)
        np.testing.assert_array_equal(got, expected)
    kept = simple_nms_np(np.ascontiguousarray(scores[0].numpy()), 4) > 0
    ys, xs = np.nonzero(kept)
    d = np.maximum(np.abs(ys[:, None] - ys[None]), np.abs(xs[:, None] - xs[None]))
    np.fill_diagonal(d, 99)
    assert d.min() > 4  # no two survivors within the NMS window


def test_sample_descriptors_cell_centres():
    rng = np.random.default_rng(0)
    dense = torch.from_numpy(rng.normal(size=(16, 5, 7)).astype(np.float32))
    dense = torch.nn.functional.normalize(dense, dim=0)
    # at a cell centre (8j + 3.5, 8i + 3.5) the sample is exactly that cell's descriptor
    jj, ii = np.meshgrid(np.arange(7), np.arange(5))
    centres = np.stack([8 * jj.ravel() + 3.5, 8 * ii.ravel() + 3.5], 1).astype(np.float32)
    got = sample_descriptors(torch.from_numpy(centres), dense).numpy()
    np.testing.assert_allclose(got, dense.reshape(16, -1).T.numpy(), atol=1e-6)
    # elsewhere: bilinear interpolation between cell centres (independent numpy reference)
    pts = rng.uniform([3.5, 3.5], [8 * 6 + 3.5, 8 * 4 + 3.5], size=(50, 2)).astype(np.float32)
    u, v = (pts[:, 0] + 0.5) / 8 - 0.5, (pts[:, 1] + 0.5) / 8 - 0.5
    u0, v0 = np.minimum(np.floor(u).astype(int), 5), np.minimum(np.floor(v).astype(int), 3)
    fu, fv = (u - u0)[:, None], (v - v0)[:, None]
    dn = dense.numpy()

    def at(r, c):
        return dn[:, r, c].T

    ref = (at(v0, u0) * (1 - fu) + at(v0, u0 + 1) * fu) * (1 - fv) + (
        at(v0 + 1, u0) * (1 - fu) + at(v0 + 1, u0 + 1) * fu
    ) * fv
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    got = sample_descriptors(torch.from_numpy(pts), dense).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Extractor outputs and bad input
# ------------------------------------------------------------------------------------------------
def test_extract_outputs(superpoint, photo):
    feats = superpoint.extract(photo)
    n = len(feats)
    assert 200 < n <= 1024
    assert feats.keypoints.dtype == np.float32 and feats.keypoints.shape == (n, 2)
    assert feats.descriptors.shape == (n, 256) and feats.descriptors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1, atol=1e-5)
    assert np.all(np.diff(feats.scores) <= 0) and feats.scores.min() > 0.005
    assert feats.dense.shape == (256, 30, 40)
    np.testing.assert_allclose(np.linalg.norm(feats.dense, axis=0), 1, atol=1e-5)
    kp = feats.keypoints
    assert kp.min() >= 4 and kp[:, 0].max() <= 320 - 5 and kp[:, 1].max() <= 240 - 5
    assert feats.image_size == (320, 240)
    # grayscale input gives the same result as RGB converted by the same rule
    gray = superpoint.extract(cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY))
    assert len(gray) > 0.9 * n

    few = create_extractor("superpoint", weights=superpoint.conf["weights"], max_keypoints=50)
    top = few.extract(photo)
    np.testing.assert_array_equal(top.keypoints, feats.keypoints[:50])
    np.testing.assert_allclose(top.descriptors, feats.descriptors[:50], atol=1e-6)


def test_odd_sizes_pad_not_crop(superpoint, photo):
    image = np.ascontiguousarray(photo[:237, :301])
    feats = superpoint.extract(image)
    assert feats.dense.shape == (256, 30, 38)  # ceil(237 / 8), ceil(301 / 8)
    kp = feats.keypoints
    assert kp[:, 0].max() <= 301 - 5 and kp[:, 1].max() <= 237 - 5
    # content near the right/bottom edge (in the padded cells) still yields keypoints
    assert (kp[:, 0] > 296 - 16).any() and (kp[:, 1] > 232 - 16).any()


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((0, 0), np.uint8), "empty"),
        (np.zeros((64, 64), np.float32), "uint8"),
        (np.zeros((1, 1), np.uint8), "too small"),
        (np.full((64, 64), np.nan, np.float32), "uint8"),
        (np.zeros((64, 64, 4), np.uint8), "HxWx3"),
        ([[0, 1], [2, 3]], "numpy array"),
    ],
)
def test_bad_images(superpoint, bad, message):
    with pytest.raises(ValueError, match=message):
        superpoint.extract(bad)


# ------------------------------------------------------------------------------------------------
# Coordinate conventions
# ------------------------------------------------------------------------------------------------
def _nearest(points: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points[None] - targets[:, None], axis=2).min(axis=1)


def test_synthetic_corners_detected_at_their_pixels(superpoint_weights):
    ex = create_extractor(
        "superpoint", weights=str(superpoint_weights), max_keypoints=-1, detection_threshold=0.05
    )
    for shift in ((0, 0), (5, 3)):  # a shift of the content shifts keypoints by the same amount
        dx, dy = shift
        image = np.full((123, 157), 40, np.uint8)  # not multiples of 8: exercises the padding
        triangle = np.array([[37, 21], [118, 45], [61, 97]]) + np.array([dx, dy])
        cv2.fillPoly(image, [triangle.astype(np.int32)], 220)
        kp = ex.extract(image).keypoints
        assert len(kp) >= 3
        assert _nearest(kp, triangle.astype(np.float32)).max() <= 1.5, kp
    # a filled rectangle covering pixels 50..110 x 30..70: corners at the outermost pixels
    image = np.full((120, 160), 40, np.uint8)
    image[30:71, 50:111] = 220
    kp = ex.extract(image).keypoints
    corners = np.array([[50, 30], [110, 30], [50, 70], [110, 70]], np.float32)
    assert _nearest(kp, corners).max() <= 1.5, kp


def test_resize_max_returns_input_coordinates(superpoint_weights):
    # a rectangle covering pixels 100..221 x 60..141 of a 640x480 image (edges at 99.5, 221.5)
    image = np.full((480, 640), 40, np.uint8)
    image[60:142, 100:222] = 220
    corners = np.array([[99.5, 59.5], [221.5, 59.5], [99.5, 141.5], [221.5, 141.5]], np.float32)
    conf = {"weights": str(superpoint_weights), "max_keypoints": -1, "detection_threshold": 0.05}
    full = create_extractor("superpoint", **conf).extract(image)
    small = create_extractor("superpoint", resize_max=320, **conf).extract(image)
    assert small.image_size == (640, 480) and small.extra["scale"] == (2.0, 2.0)
    assert small.dense.shape == (256, 30, 40)
    for feats, tol in ((full, 1.0), (small, 3.5)):  # small: +-1.5 processed px
        assert _nearest(feats.keypoints, corners).max() <= tol, feats.keypoints
    # identical to resizing by hand and mapping with the pixel-centre rule
    by_hand = create_extractor("superpoint", **conf).extract(
        cv2.resize(image, (320, 240), interpolation=cv2.INTER_AREA)
    )
    np.testing.assert_allclose(small.keypoints, (by_hand.keypoints + 0.5) * 2 - 0.5)
    np.testing.assert_allclose(small.descriptors, by_hand.descriptors, atol=1e-6)


def test_scales_add_the_half_size_image_features(superpoint_weights, photo):
    conf = {"weights": str(superpoint_weights), "max_keypoints": 300}
    single = create_extractor("superpoint", **conf)
    multi = create_extractor("superpoint", scales=[1, 0.5], **conf)
    assert "scales" not in single.identity()["config"]  # maps built before keep their identity
    assert multi.identity()["config"]["scales"] == [1.0, 0.5]
    a, b = single.extract(photo), multi.extract(photo)
    n_full, n_half = b.extra["scale_counts"]
    assert n_full == len(a) and n_half > 50 and len(b) == n_full + n_half
    np.testing.assert_array_equal(b.keypoints[:n_full], a.keypoints)
    np.testing.assert_array_equal(b.descriptors[:n_full], a.descriptors)
    assert b.dense.shape == a.dense.shape  # the full scale's
    # the half scale's keypoints in input coordinates, as if the 160x120 image was given
    gray = to_grayscale(photo)  # resized after the grayscale conversion
    half = single.extract(cv2.resize(gray, (160, 120), interpolation=cv2.INTER_AREA))
    np.testing.assert_allclose(b.keypoints[n_full:], (half.keypoints + 0.5) * 2 - 0.5)
    np.testing.assert_allclose(b.descriptors[n_full:], half.descriptors, atol=1e-6)
    for bad in ([0.5, 1.0], [1.0, 1.0], [1.0, 0.0], [], "1,x"):
        with pytest.raises(ValueError, match="scales"):
            create_extractor("superpoint", scales=bad, **conf)


# ------------------------------------------------------------------------------------------------
# ONNX Runtime backend
# ------------------------------------------------------------------------------------------------
def test_onnxruntime_matches_torch(superpoint, superpoint_weights, photo, cache_dir):
    ort = create_extractor(
        "superpoint",
        weights=str(superpoint_weights),
        backend="onnxruntime",
        onnx_cache_dir=str(cache_dir / "onnx"),
    )
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    for h, w in ((240, 320), (96, 152)):  # two image sizes through one dynamic-shape model
        x = torch.from_numpy(np.ascontiguousarray(gray[:h, :w])).float()[None, None] / 255
        s_torch, d_torch = superpoint.run_network(x)
        s_ort, d_ort = ort.run_network(x)
        assert s_ort.shape == (1, h, w) and d_ort.shape == (1, 256, h // 8, w // 8)
        assert float((s_torch - s_ort).abs().max()) < 1e-4
        assert float((d_torch - d_ort).abs().max()) < 1e-4
    a, b = superpoint.extract(photo), ort.extract(photo)
    same = {tuple(p) for p in a.keypoints.tolist()} & {tuple(p) for p in b.keypoints.tolist()}
    assert len(same) >= 0.99 * len(a)
    np.testing.assert_allclose(a.dense, b.dense, atol=1e-4)
