"""Bad input for the localizer: failed results, clear errors, incompatible maps."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from test_mapping_build import cached_strecha_map

from supergf_ros.datasets import Dataset
from supergf_ros.geometry import Camera
from supergf_ros.localization import Localizer
from supergf_ros.mapping.map_format import update_checksums


@pytest.fixture(scope="module")
def fountain(data_dir: Path, superpoint_weights: Path, cache_dir: Path):
    map_path, _ = cached_strecha_map(data_dir, superpoint_weights, cache_dir, "fountain-P11")
    loc = Localizer.from_map(map_path, {"superpoint_weights": superpoint_weights})
    return map_path, loc


def test_query_without_matches_is_a_failed_result(fountain):
    _, loc = fountain
    camera = Camera.pinhole(300, 300, 159.5, 119.5, 320, 240)
    flat = np.full((240, 320), 128, np.uint8)  # no keypoints at all
    r = loc.localize(flat, camera)
    assert not r.success and r.cam_from_world is None and "no keypoints" in r.reason
    assert r.retrieved and r.timings_ms["total"] > 0
    noise = np.random.default_rng(0).integers(0, 256, (240, 320), dtype=np.uint8)
    r = loc.localize(noise, camera)  # keypoints, but nothing consistent with the map
    assert not r.success and r.reason and r.cam_from_world is None
    assert r.to_dict()["success"] is False


def test_malformed_arguments_raise(fountain):
    _, loc = fountain
    camera = Camera.pinhole(300, 300, 159.5, 119.5, 320, 240)
    with pytest.raises(ValueError, match="camera is 320x240"):
        loc.localize(np.zeros((100, 100), np.uint8), camera)
    with pytest.raises(ValueError, match="uint8"):
        loc.localize(np.zeros((240, 320), np.float32), camera)
    with pytest.raises(ValueError, match="Camera"):
        loc.localize(np.zeros((240, 320), np.uint8), (300, 300, 160, 120))
    with pytest.raises(ValueError, match="unknown localizer option"):
        Localizer(loc.map, {"topk": 3})


def test_map_built_with_other_weights(fountain, superpoint_weights: Path, tmp_path: Path):
    map_path, _ = fountain
    state = torch.load(superpoint_weights, map_location="cpu", weights_only=True)
    state["convDb.bias"] = state["convDb.bias"] + 1e-3
    other = tmp_path / "other_superpoint.pth"
    torch.save(state, other)
    with pytest.raises(ValueError, match="built with superpoint weights sha256"):
        Localizer.from_map(map_path, {"superpoint_weights": other})


def test_corrupt_and_missing_maps(fountain, superpoint_weights: Path, tmp_path: Path):
    map_path, _ = fountain
    with pytest.raises(FileNotFoundError):
        Localizer.from_map(tmp_path / "missing.h5", {"superpoint_weights": superpoint_weights})
    raw = map_path.read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(ValueError, match=r"corrupt|truncated"):
        Localizer.from_map(truncated, {"superpoint_weights": superpoint_weights})
    flipped = bytearray(raw)
    flipped[:512] = b"\0" * 512  # destroy the HDF5 superblock
    (tmp_path / "flipped.h5").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="not a readable map file"):
        Localizer.from_map(tmp_path / "flipped.h5", {"superpoint_weights": superpoint_weights})


def test_missing_weights_is_a_clear_error(fountain, tmp_path: Path, monkeypatch):
    map_path, _ = fountain
    monkeypatch.delenv("SUPERGF_SUPERPOINT_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError, match=r"superpoint_v1\.pth"):
        Localizer.from_map(map_path, {"superpoint_weights": tmp_path / "nope.pth"})


def test_dataset_image_missing(data_dir: Path):
    ds = Dataset(data_dir / "strecha" / "fountain-P11")
    with pytest.raises(ValueError, match="not in dataset"):
        ds.read_image("0042.jpg")


def test_map_with_tampered_global_state(fountain, superpoint_weights: Path, tmp_path: Path):
    map_path, _ = fountain
    tampered = tmp_path / "tampered.h5"
    tampered.write_bytes(map_path.read_bytes())
    with h5py.File(tampered, "a") as f:
        f["aggregator_state/vlad_centroids"][0, 0] += 0.5  # codebook no longer matches the map
    with pytest.raises(ValueError, match="'aggregator_state/vlad_centroids' fails its checksum"):
        Localizer.from_map(tampered, {"superpoint_weights": superpoint_weights})
    update_checksums(tampered)  # a consistently written map with the wrong codebook
    with pytest.raises(ValueError, match="global descriptors"):
        Localizer.from_map(tampered, {"superpoint_weights": superpoint_weights})
