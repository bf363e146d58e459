"""match_mutual_nn: agreement with a brute-force reference, thresholds, types and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from supergf_ros.matching import match_mutual_nn


def _unit(rng: np.random.Generator, n: int, d: int = 32) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _reference(d0, d1, ratio=None, dist=None):
    """Loop-based mutual NN on Euclidean distances (independent of the vectorized code)."""
    out = []
    for i in range(len(d0)):
        dists = np.linalg.norm(d1 - d0[i], axis=1)
        j = int(np.argmin(dists))
        back = int(np.argmin(np.linalg.norm(d0 - d1[j], axis=1)))
        if back != i:
            continue
        if ratio is not None and len(d1) > 1 and dists[j] > ratio * np.sort(dists)[1]:
            continue
        if dist is not None and dists[j] > dist:
            continue
        out.append((i, j))
    return np.array(out, dtype=np.int64).reshape(-1, 2)


@pytest.fixture(scope="module")
def descriptors():
    rng = np.random.default_rng(0)
    d1 = _unit(rng, 300)
    # d0: noisy copies of 150 rows of d1 (in shuffled order) plus 100 distractors
    perm = rng.permutation(300)[:150]
    noisy = d1[perm] + rng.normal(scale=0.15, size=(150, 32)).astype(np.float32)
    d0 = np.concatenate([noisy / np.linalg.norm(noisy, axis=1, keepdims=True), _unit(rng, 100)])
    return d0, d1, perm


def test_recovers_true_matches(descriptors):
    d0, d1, perm = descriptors
    matches, sims = match_mutual_nn(d0, d1)
    assert matches.dtype == np.int64 and matches.shape[1] == 2 and sims.dtype == np.float32
    truth = {(i, int(j)) for i, j in enumerate(perm)}
    found = {tuple(m) for m in matches.tolist()}
    assert len(found & truth) >= 145
    np.testing.assert_allclose(
        sims, np.sum(d0[matches[:, 0]] * d1[matches[:, 1]], axis=1), atol=1e-5
    )
    assert np.all(np.diff(matches[:, 0]) > 0)


@pytest.mark.parametrize("ratio, dist", [(None, None), (0.8, None), (None, 0.9), (0.9, 0.7)])
def test_matches_reference(descriptors, ratio, dist):
    d0, d1, _ = descriptors
    matches, _ = match_mutual_nn(d0, d1, ratio_threshold=ratio, distance_threshold=dist)
    np.testing.assert_array_equal(matches, _reference(d0, d1, ratio, dist))
    matches_t, sims_t = match_mutual_nn(
        torch.from_numpy(d0), torch.from_numpy(d1), ratio_threshold=ratio, distance_threshold=dist
    )
    assert isinstance(matches_t, torch.Tensor) and matches_t.dtype == torch.int64
    assert sims_t.dtype == torch.float32
    np.testing.assert_array_equal(matches_t.numpy(), matches)


def test_thresholds_reduce_matches(descriptors):
    d0, d1, _ = descriptors
    n_all = len(match_mutual_nn(d0, d1)[0])
    n_ratio = len(match_mutual_nn(d0, d1, ratio_threshold=0.7)[0])
    n_dist = len(match_mutual_nn(d0, d1, distance_threshold=0.5)[0])
    assert n_ratio < n_all and n_dist < n_all
    assert len(match_mutual_nn(d0, d1, distance_threshold=0.0)[0]) == 0


def test_fp16_and_float64(descriptors):
    d0, d1, _ = descriptors
    m32, _ = match_mutual_nn(d0, d1)
    m16, s16 = match_mutual_nn(d0.astype(np.float16), d1.astype(np.float16))
    assert s16.dtype == np.float32
    assert len({tuple(m) for m in m16.tolist()} & {tuple(m) for m in m32.tolist()}) >= 0.98 * len(
        m32
    )
    m64, _ = match_mutual_nn(d0.astype(np.float64), d1.astype(np.float64))
    np.testing.assert_array_equal(m64, m32)
    mt, _ = match_mutual_nn(torch.from_numpy(d0).half(), torch.from_numpy(d1).half())
    assert len(mt) >= 0.98 * len(m32)


def test_empty_and_single():
    rng = np.random.default_rng(1)
    d = _unit(rng, 5)
    for a, b in ((np.zeros((0, 32), np.float32), d), (d, np.zeros((0, 32), np.float32))):
        matches, sims = match_mutual_nn(a, b, ratio_threshold=0.8)
        assert matches.shape == (0, 2) and matches.dtype == np.int64 and sims.shape == (0,)
    matches, _ = match_mutual_nn(
        torch.zeros(0, 32), torch.from_numpy(d), ratio_threshold=0.8, distance_threshold=1.0
    )
    assert tuple(matches.shape) == (0, 2)
    # a single candidate: the ratio test has no second neighbour and is skipped
    matches, _ = match_mutual_nn(d[:1], d[:1], ratio_threshold=0.8)
    np.testing.assert_array_equal(matches, [[0, 0]])


@pytest.mark.parametrize(
    "d0, d1, message",
    [
        (np.full((3, 8), np.nan, np.float32), np.ones((3, 8), np.float32), "NaN"),
        (np.ones((3, 8), np.float32), np.array([[np.inf] * 8], np.float32), "desc1.*NaN or inf"),
        (np.ones((3, 8), np.float32), np.ones((3, 16), np.float32), "dimensions differ"),
        (np.ones(8, np.float32), np.ones((3, 8), np.float32), r"shape \(N, D\)"),
        (np.ones((3, 8), np.int32), np.ones((3, 8), np.int32), "floating-point"),
        (torch.ones(3, 8), np.ones((3, 8), np.float32), "both"),
    ],
)
def test_bad_input(d0, d1, message):
    with pytest.raises(ValueError, match=message):
        match_mutual_nn(d0, d1)


def test_bad_thresholds():
    d = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="ratio_threshold"):
        match_mutual_nn(d, d, ratio_threshold=1.5)
    with pytest.raises(ValueError, match="distance_threshold"):
        match_mutual_nn(d, d, distance_threshold=-1.0)


@pytest.mark.parametrize("ratio, dist", [(None, None), (0.8, 0.9)])
def test_accelerator_path_matches_reference(descriptors, ratio, dist):
    """The pure-torch path (used for CUDA tensors) run on CPU tensors agrees with the reference."""
    from supergf_ros.matching import _match_torch

    d0, d1, _ = descriptors
    matches, sims = _match_torch(torch.from_numpy(d0), torch.from_numpy(d1), ratio, dist)
    assert matches.dtype == torch.int64 and sims.dtype == torch.float32
    ref = _reference(d0, d1, ratio, dist)
    np.testing.assert_array_equal(matches.numpy(), ref)
