"""SIFT extractor: pixel-centre convention, RootSIFT, dense grid mode, resize, bad input."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from supergf_ros.features import create_extractor
from supergf_ros.features.sift import dense_grid


@pytest.fixture(scope="session")
def photo(data_dir) -> np.ndarray:
    path = sorted((data_dir / "photos" / "sacre_coeur" / "mapping").glob("*.jpg"))[1]
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)[..., ::-1]
    return np.ascontiguousarray(cv2.resize(image, (320, 240), interpolation=cv2.INTER_AREA))


def _blob(x0: float, y0: float, sigma: float, shape=(120, 160)) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    image = 30 + 200 * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("x0, y0", [(60.0, 50.0), (80.3, 40.7), (100.5, 70.25)])
def test_blob_detected_at_its_centre(x0, y0):
    """A Gaussian blob centred at pixel (x0, y0) (pixel-centre convention) is found there.

    Plain OpenCV SIFT reports such blobs at (x0 + 0.25, y0 + 0.25); the extractor must not.
    """
    sift = create_extractor("sift", contrast_threshold=0.01)
    for sigma in (2.0, 3.0):
        image = _blob(x0, y0, sigma)
        kp = sift.extract(image).keypoints
        err = np.linalg.norm(kp - [x0, y0], axis=1).min()
        assert err < 0.08, (sigma, kp)
        # the horizontally flipped image puts the blob at W - 1 - x0
        kp_flip = sift.extract(np.ascontiguousarray(image[:, ::-1])).keypoints
        err = np.linalg.norm(kp_flip - [image.shape[1] - 1 - x0, y0], axis=1).min()
        assert err < 0.08, (sigma, kp_flip)


def test_sparse_outputs(photo):
    feats = create_extractor("sift", max_keypoints=500).extract(photo)
    n = len(feats)
    assert n == 500
    assert feats.descriptors.shape == (n, 128) and feats.descriptors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1, atol=1e-5)
    assert (feats.descriptors >= 0).all()
    assert np.all(np.diff(feats.scores) <= 0)
    assert feats.dense is None
    assert feats.extra["sizes"].shape == (n,) and feats.extra["angles"].shape == (n,)
    kp = feats.keypoints
    assert kp.min() >= -0.5 and kp[:, 0].max() <= 319.5 and kp[:, 1].max() <= 239.5


def test_rootsift_relation(photo):
    plain = create_extractor("sift", root=False, max_keypoints=300).extract(photo)
    root = create_extractor("sift", root=True, max_keypoints=300).extract(photo)
    np.testing.assert_array_equal(plain.keypoints, root.keypoints)
    # RootSIFT = sqrt of the L1-normalized SIFT vector (already unit L2 norm)
    expected = np.sqrt(plain.descriptors / plain.descriptors.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(root.descriptors, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(plain.descriptors, axis=1), 1, atol=1e-5)


def test_dense_mode(photo):
    image = np.ascontiguousarray(photo[:235, :300])
    sift = create_extractor("sift", mode="dense", dense_step=8, dense_size=6.0)
    feats = sift.extract(image)
    h, w = 235 // 8, 300 // 8
    assert feats.dense.shape == (128, h, w)
    assert len(feats) == h * w and feats.descriptors.shape == (h * w, 128)
    np.testing.assert_allclose(np.linalg.norm(feats.dense, axis=0), 1, atol=1e-5)
    # grid keypoints sit at the cell centres, row-major, and index the dense map
    grid, gw, gh = dense_grid(300, 235, 8)
    assert (gw, gh) == (w, h)
    np.testing.assert_array_equal(feats.keypoints, grid)
    assert tuple(feats.keypoints[0]) == (3.5, 3.5) and tuple(feats.keypoints[1]) == (11.5, 3.5)
    np.testing.assert_array_equal(feats.dense[:, 2, 5], feats.descriptors[2 * w + 5])
    # the descriptors are those OpenCV computes for upright keypoints at those positions
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    kp = [cv2.KeyPoint(float(x), float(y), 6.0, 0.0) for x, y in grid[:20]]
    _, raw = cv2.SIFT_create().compute(gray, kp)
    raw = np.sqrt(raw / raw.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(feats.descriptors[:20], raw, atol=1e-5)


def test_dense_flat_region_is_unit_norm():
    feats = create_extractor("sift", mode="dense").extract(np.full((64, 64), 128, np.uint8))
    np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1, atol=1e-5)


def test_resize_max_returns_input_coordinates(photo):
    big = cv2.resize(photo, (640, 480), interpolation=cv2.INTER_LINEAR)
    big = cv2.cvtColor(big, cv2.COLOR_RGB2GRAY)
    small = create_extractor("sift", resize_max=320).extract(big)
    by_hand = create_extractor("sift").extract(
        cv2.resize(big, (320, 240), interpolation=cv2.INTER_AREA)
    )
    assert small.image_size == (640, 480)
    np.testing.assert_allclose(small.keypoints, (by_hand.keypoints + 0.5) * 2 - 0.5, atol=1e-4)
    np.testing.assert_allclose(small.extra["sizes"], by_hand.extra["sizes"] * 2, rtol=1e-6)
    dense = create_extractor("sift", mode="dense", resize_max=320).extract(big)
    assert dense.dense.shape == (128, 30, 40)
    assert tuple(dense.keypoints[0]) == (7.5, 7.5)  # cell centre 3.5 at half size


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((0, 5), np.uint8), "empty"),
        (np.zeros((64, 64), np.float64), "uint8"),
        (np.zeros((1, 1), np.uint8), "too small"),
    ],
)
def test_bad_images(bad, message):
    with pytest.raises(ValueError, match=message):
        create_extractor("sift").extract(bad)


def test_bad_options():
    with pytest.raises(ValueError, match="mode"):
        create_extractor("sift", mode="grid")
    with pytest.raises(ValueError, match="dense_step"):
        create_extractor("sift", dense_step=0)
    with pytest.raises(ValueError, match="unknown option"):
        create_extractor("sift", rootsift=True)


def test_no_keypoints_on_flat_image():
    feats = create_extractor("sift").extract(np.full((64, 64), 77, np.uint8))
    assert len(feats) == 0 and feats.descriptors.shape == (0, 128)
