"""DeviceMatcher (a descriptor bank on a torch device) against the numpy matcher.

The torch code is the same for CPU and CUDA tensors: it runs for real on CPU here, and the `gpu`
tests repeat the comparison on CUDA when a GPU is visible.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from supergf_ros.features import create_extractor
from supergf_ros.matching import DeviceMatcher, match_mutual_nn

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device visible to PyTorch"
)
THRESHOLDS = [(None, None), (0.8, None), (None, 0.9), (0.9, 0.7)]


def _unit(rng: np.random.Generator, n: int, d: int = 32) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def synthetic():
    """A query and groups holding noisy copies of some of its rows, an empty and a 1-row group."""
    rng = np.random.default_rng(3)
    query = _unit(rng, 200)
    groups = []
    for size in (150, 0, 1, 300, 80):
        g = _unit(rng, size)
        take = rng.permutation(200)[: size // 2]
        noisy = query[take] + rng.normal(scale=0.2, size=(len(take), 32)).astype(np.float32)
        g[: len(take)] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
        groups.append(g[rng.permutation(size)])
    return query, groups


@pytest.fixture(scope="module")
def real(data_dir, superpoint_weights):
    """SuperPoint descriptors of real photos: a query and three 'keyframes', the first of which
    is the query seen through a mild homography (many true matches), two other photos."""
    paths = sorted((data_dir / "photos" / "sacre_coeur" / "mapping").glob("*.jpg"))[:3]
    ex = create_extractor("superpoint", weights=str(superpoint_weights), max_keypoints=512)
    images = [cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (320, 240)) for p in paths]
    warp = np.array([[0.9, 0.05, 20.0], [-0.04, 0.95, 10.0], [1e-4, 0.0, 1.0]])
    warped = cv2.warpPerspective(images[0], warp, (320, 240))
    descs = [ex.extract(image).descriptors for image in [images[0], warped, *images[1:]]]
    return descs[0], descs[1:]


def _assert_same(got, query, groups, ids, ratio, dist):
    assert len(got) == len(ids)
    for (matches, sims), i in zip(got, ids):
        ref_m, ref_s = match_mutual_nn(query, groups[i], ratio, dist)
        assert matches.dtype == np.int64 and matches.shape[1] == 2 and sims.dtype == np.float32
        np.testing.assert_array_equal(matches, ref_m)
        np.testing.assert_allclose(sims, ref_s, atol=1e-5)


@pytest.mark.parametrize("ratio, dist", THRESHOLDS)
def test_cpu_bank_equals_numpy_synthetic(synthetic, ratio, dist):
    query, groups = synthetic
    matcher = DeviceMatcher(groups, device="cpu")
    assert matcher.num_groups == 5 and matcher.dim == 32
    assert matcher.nbytes == sum(len(g) for g in groups) * 32 * 4
    ids = [3, 0, 1, 2, 4, 3]  # any order, repeats, an empty and a single-row group
    got = matcher.match(query, ids, ratio_threshold=ratio, distance_threshold=dist)
    _assert_same(got, query, groups, ids, ratio, dist)
    assert len(got[0][0]) > 50 or dist is not None  # the noisy copies are found
    assert got[2][0].shape == (0, 2)  # the empty group (id 1)
    # a torch query on the bank's device gives the same
    got_t = matcher.match(torch.from_numpy(query), ids, ratio, dist)
    for (a, sa), (b, sb) in zip(got, got_t):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(sa, sb)


@pytest.mark.parametrize("ratio, dist", [(None, None), (0.8, None)])
def test_cpu_bank_equals_numpy_on_superpoint(real, ratio, dist):
    query, keyframes = real
    matcher = DeviceMatcher(keyframes, device="cpu")
    got = matcher.match(query, [2, 0, 1], ratio, dist)
    _assert_same(got, query, keyframes, [2, 0, 1], ratio, dist)
    assert len(got[1][0]) > 100  # keyframe 0: the warped query


def test_empty_query_and_fp16_groups(synthetic):
    query, groups = synthetic
    matcher = DeviceMatcher([g.astype(np.float16) for g in groups])
    got = matcher.match(np.zeros((0, 32), np.float32), [0, 3])
    assert [m.shape for m, _ in got] == [(0, 2), (0, 2)]
    # fp16 storage is widened to float32 on upload: the same as numpy on the widened groups
    widened = [g.astype(np.float16).astype(np.float32) for g in groups]
    _assert_same(matcher.match(query, [0, 4]), query, widened, [0, 4], None, None)


def test_bad_input(synthetic):
    query, groups = synthetic
    matcher = DeviceMatcher(groups)
    with pytest.raises(ValueError, match="out of range"):
        matcher.match(query, [0, 5])
    with pytest.raises(ValueError, match="dimensions differ"):
        matcher.match(query[:, :16], [0])
    with pytest.raises(ValueError, match="NaN"):
        matcher.match(np.full((3, 32), np.nan, np.float32), [0])
    nan_query = torch.from_numpy(query.copy())
    nan_query[5, 3] = float("inf")
    for ids in ([0, 3], [1]):  # checked with the matches' copy, or alone without live groups
        with pytest.raises(ValueError, match="desc0 contain NaN or infinite"):
            matcher.match(nan_query, ids)
    with pytest.raises(ValueError, match="floating-point"):
        matcher.match(torch.ones(3, 32, dtype=torch.int32), [0])
    with pytest.raises(ValueError, match="ratio_threshold"):
        matcher.match(query, [0], ratio_threshold=2.0)
    with pytest.raises(ValueError, match="distance_threshold"):
        matcher.match(query, [0], distance_threshold=-1.0)
    with pytest.raises(ValueError, match="at least one"):
        DeviceMatcher([])
    with pytest.raises(ValueError, match="one D"):
        DeviceMatcher([groups[0], groups[0][:, :16]])
    with pytest.raises(ValueError, match="group 1 contain NaN"):
        DeviceMatcher([groups[0], np.full((2, 32), np.inf, np.float32)])
    with pytest.raises(ValueError, match="invalid device"):
        DeviceMatcher(groups, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            DeviceMatcher(groups, device="cuda")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("ratio, dist", THRESHOLDS)
def test_cuda_bank_equals_numpy(synthetic, real, ratio, dist):
    for query, groups in (synthetic, real):
        matcher = DeviceMatcher(groups, device="cuda")
        assert matcher.device.type == "cuda"
        ids = list(range(len(groups)))
        got = matcher.match(torch.from_numpy(query).cuda(), ids, ratio, dist)
        for (matches, _), i in zip(got, ids):
            ref, _ = match_mutual_nn(query, groups[i], ratio, dist)
            # different GEMM kernels: near-ties may flip, nothing more
            same = {tuple(m) for m in matches.tolist()} & {tuple(m) for m in ref.tolist()}
            assert len(same) >= 0.99 * len(ref) and len(matches) <= len(ref) + 0.01 * len(ref) + 1


@pytest.mark.gpu
@needs_cuda
def test_cuda_matching_copies_to_the_host_once(real):
    from torch.profiler import ProfilerActivity, profile

    query, keyframes = real
    matcher = DeviceMatcher(keyframes, device="cuda")
    assert matcher.device == torch.device("cuda", 0)
    q = torch.from_numpy(query).to(matcher.device)
    matcher.match(q, [0, 1, 2], ratio_threshold=0.8)  # warm-up
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        matcher.match(q, [0, 1, 2], ratio_threshold=0.8)
    events = list(prof.events())
    if not any(e.device_type == torch.autograd.DeviceType.CUDA for e in events):
        pytest.skip("the profiler recorded no CUDA activity (CUPTI unavailable)")
    copies = [e.name for e in events if "DtoH" in e.name or "Device -> Pageable" in e.name]
    assert len(copies) == 1, copies


@pytest.mark.gpu
@needs_cuda
def test_cuda_tensors_through_match_mutual_nn(real):
    query, keyframes = real
    ref, _ = match_mutual_nn(query, keyframes[0], ratio_threshold=0.8)
    matches, sims = match_mutual_nn(
        torch.from_numpy(query).cuda(), torch.from_numpy(keyframes[0]).cuda(), ratio_threshold=0.8
    )
    assert matches.device.type == "cuda" and sims.device.type == "cuda"
    same = {tuple(m) for m in matches.cpu().tolist()} & {tuple(m) for m in ref.tolist()}
    assert len(same) >= 0.99 * len(ref)
