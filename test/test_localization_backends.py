"""Backend choice end to end: maps are backend-free, "auto" resolves and says why, and matching
only against keyframe keypoints with a 3D point keeps the pose."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from supergf_ros.datasets import Dataset
from supergf_ros.geometry import pose_error
from supergf_ros.inference.backends import available_backends, select_backend
from supergf_ros.localization import Localizer
from supergf_ros.mapping import read_map, write_map
from supergf_ros.mapping.build_map import build_map

KEYFRAMES = ["0002.jpg", "0004.jpg", "0006.jpg"]
QUERY = "0005.jpg"
SMALL = {"resize_max": 320, "max_keypoints": 384}


def _torch_map(data_dir: Path, superpoint_weights: Path, path: Path, **conf) -> Path:
    """A small fountain map whose features were extracted with PyTorch."""
    build_map(
        data_dir / "strecha" / "fountain-P11",
        path,
        image_names=KEYFRAMES,
        extractor_conf={"weights": str(superpoint_weights), **SMALL},
        global_name="vlad",
        backend="torch",
        conf=conf or None,
        progress=False,
    )
    return path


@pytest.fixture(scope="module")
def torch_map(data_dir: Path, superpoint_weights: Path, tmp_path_factory) -> Path:
    """A small fountain map whose features were extracted with PyTorch."""
    path = tmp_path_factory.mktemp("backends") / "map_torch.h5"
    return _torch_map(data_dir, superpoint_weights, path)


@pytest.fixture(scope="module")
def torch_map_v2(data_dir: Path, superpoint_weights: Path, tmp_path_factory) -> Path:
    """The same map in format version 2: every keypoint and its descriptor."""
    path = tmp_path_factory.mktemp("backends") / "map_torch_v2.h5"
    return _torch_map(data_dir, superpoint_weights, path, format_version=2)


@pytest.fixture(scope="module")
def query(data_dir: Path):
    ds = Dataset(data_dir / "strecha" / "fountain-P11")
    return ds.read_image(QUERY), ds.camera(QUERY), ds.cam_from_world(QUERY)


def test_map_identity_has_no_runtime_options(torch_map: Path):
    m = read_map(torch_map)
    assert m.extractor["name"] == "superpoint"
    assert not {"backend", "device", "onnx_cache_dir"} & set(m.extractor["config"])
    assert m.extractor["config"]["max_keypoints"] == SMALL["max_keypoints"]


@pytest.mark.parametrize("backend", ["auto", "onnxruntime", "torch"])
def test_torch_map_localizes_with_every_cpu_backend(
    torch_map: Path, superpoint_weights: Path, query, backend: str
):
    image, camera, gt = query
    conf = {"superpoint_weights": superpoint_weights, "top_k": 2}
    if backend != "auto":  # "auto" is the default
        conf["backend"] = backend
    loc = Localizer.from_map(torch_map, conf)
    expected = select_backend("auto").backend if backend == "auto" else backend
    info = loc.backend_info
    assert info["backend"] == expected and loc.extractor.backend == expected
    assert info["reason"].startswith("auto:" if backend == "auto" else f"requested {backend}")
    r = loc.localize(image, camera)
    assert r.success, r.reason
    dt, dr = pose_error(r.cam_from_world, gt)
    assert dt < 0.05 and dr < 0.5


def test_map_with_backend_in_its_identity_still_loads_elsewhere(
    torch_map: Path, superpoint_weights: Path, tmp_path: Path, query
):
    """Maps written before backends left the identity carry backend/device: ignored."""
    m = read_map(torch_map)
    m.extractor = {**m.extractor, "config": {**m.extractor["config"], "backend": "tensorrt"}}
    m.extractor["config"]["device"] = "cuda:3"
    old = tmp_path / "old_style.h5"
    write_map(old, m)
    loc = Localizer.from_map(old, {"superpoint_weights": superpoint_weights, "top_k": 2})
    assert loc.backend_info["backend"] == select_backend("auto").backend
    assert loc.localize(*query[:2]).success


def test_match_3d_only_keeps_the_pose_with_less_work(
    torch_map_v2: Path, superpoint_weights: Path, query
):
    image, camera, gt = query
    conf = {"superpoint_weights": superpoint_weights, "top_k": 3, "backend": "onnxruntime"}
    loc3d = Localizer.from_map(torch_map_v2, conf)
    loc_all = Localizer.from_map(torch_map_v2, {**conf, "match_3d_only": False})
    m = loc3d.map
    # the matching arrays hold exactly the keypoints that have a 3D point, in keypoint order
    total = sum(len(d) for d in loc3d._kf_desc)
    assert total == int((m.point3D_ids >= 0).sum()) < len(m.point3D_ids)
    for i, sel in enumerate(loc3d._kf_sel):
        assert np.all(m.point3D_ids_of(i)[sel] >= 0)
        np.testing.assert_array_equal(loc3d._kf_desc[i], m.descriptors_of(i)[sel])
    features = loc3d.extractor.extract(image)
    r3d = loc3d.localize_features(features, camera)
    r_all = loc_all.localize_features(features, camera)
    assert r3d.success and r_all.success
    # matching against 3D keypoints only: fewer raw matches, as many 2D-3D correspondences
    assert r3d.num_matches <= r_all.num_matches
    assert r3d.num_correspondences >= 0.9 * r_all.num_correspondences
    for r in (r3d, r_all):
        dt, dr = pose_error(r.cam_from_world, gt)
        assert dt < 0.05 and dr < 0.5


def test_unavailable_backend_or_device_is_a_clear_error(torch_map: Path, superpoint_weights):
    status = available_backends()
    if status["tensorrt:cuda"] != "available":
        with pytest.raises(ValueError, match=r"not available here\. Available:"):
            Localizer.from_map(
                torch_map, {"superpoint_weights": superpoint_weights, "backend": "tensorrt"}
            )
    if all(status[k] != "available" for k in status if k.endswith(":cuda")):
        with pytest.raises(ValueError, match="not available"):
            Localizer.from_map(
                torch_map, {"superpoint_weights": superpoint_weights, "device": "cuda"}
            )
    with pytest.raises(ValueError, match="unknown backend"):
        Localizer.from_map(torch_map, {"superpoint_weights": superpoint_weights, "backend": "x"})


def test_sift_map_needs_no_network(data_dir: Path, tmp_path: Path):
    path = tmp_path / "sift.h5"
    build_map(
        data_dir / "strecha" / "fountain-P11",
        path,
        image_names=KEYFRAMES,
        features="sift",
        extractor_conf={"max_keypoints": 256},
        global_name="gem",
        progress=False,
    )
    loc = Localizer.from_map(path)
    assert loc.backend_info["backend"] == "none"
    assert "need no network" in loc.backend_info["reason"]


# ------------------------------------------------------------------------------------------------
# Matching on the networks' device (torch) vs on the host (numpy)
# ------------------------------------------------------------------------------------------------
def test_torch_matching_equals_numpy_matching(torch_map: Path, superpoint_weights: Path, query):
    """The device-side matching (keyframes uploaded once) run on CPU tensors localizes exactly
    as the numpy matcher; the query's descriptors are taken where the extractor left them."""
    from supergf_ros.features import create_extractor

    image, camera, gt = query
    conf = {"superpoint_weights": superpoint_weights, "top_k": 3, "backend": "torch"}
    auto = Localizer.from_map(torch_map, conf)
    if not auto.backend_info["device"].startswith("cuda"):
        assert auto._matcher is None  # on CPU "auto" matches with numpy
    on_host = Localizer.from_map(torch_map, {**conf, "match_backend": "numpy"})
    on_device = Localizer.from_map(torch_map, {**conf, "match_backend": "torch"})
    assert on_host._matcher is None
    assert on_device._matcher.num_groups == on_device.map.num_keyframes
    assert on_device._matcher.device.type == str(on_device.extractor.device).split(":")[0]
    # vlad reads no dense map: the extractor skips that copy
    assert on_device.extractor.conf["return_dense"] is False
    # features post-processed in torch carry their descriptors as a tensor (used by the matcher)
    ident = on_device.map.extractor["config"]
    extractor = create_extractor(
        "superpoint",
        **{k: v for k, v in ident.items() if k not in ("backend", "device")},
        weights=str(superpoint_weights),
        postprocess="torch",
        return_dense=False,
    )
    features = extractor.extract(image)
    assert features.dense is None and features.descriptors_device is not None
    r_host = on_host.localize_features(features, camera)
    r_device = on_device.localize_features(features, camera)
    assert r_host.success and r_device.success, (r_host.reason, r_device.reason)
    assert r_device.retrieved == r_host.retrieved
    assert r_device.num_matches == r_host.num_matches > 100
    assert r_device.num_correspondences == r_host.num_correspondences
    for r in (r_host, r_device):
        dt, dr = pose_error(r.cam_from_world, gt)
        assert dt < 0.05 and dr < 0.5
    # the full pipeline (numpy-post-processed features, descriptors uploaded per query) as well
    r = on_device.localize(image, camera)
    assert r.success and r.num_matches == r_host.num_matches
    with pytest.raises(ValueError, match="match_backend"):
        Localizer.from_map(torch_map, {**conf, "match_backend": "cuda"})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device visible to PyTorch")
def test_cuda_localizer_post_processes_and_matches_on_the_gpu(
    torch_map: Path, superpoint_weights: Path, query
):
    image, camera, gt = query
    conf = {"superpoint_weights": superpoint_weights, "top_k": 3}
    gpu = Localizer.from_map(torch_map, {**conf, "backend": "torch", "device": "cuda"})
    assert gpu.extractor.postprocess == "torch"
    assert gpu._matcher is not None and gpu._matcher.device.type == "cuda"
    cpu = Localizer.from_map(torch_map, {**conf, "backend": "torch", "device": "cpu"})
    r_gpu, r_cpu = gpu.localize(image, camera), cpu.localize(image, camera)
    assert r_gpu.success and r_cpu.success, (r_gpu.reason, r_cpu.reason)
    assert abs(r_gpu.num_matches - r_cpu.num_matches) <= 0.1 * r_cpu.num_matches
    dt, dr = pose_error(r_gpu.cam_from_world, gt)
    assert dt < 0.05 and dr < 0.5
