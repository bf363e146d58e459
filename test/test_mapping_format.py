"""Map file format, dataset I/O and pair selection: fast tests without feature extraction."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from supergf_ros.datasets import Dataset, read_image_list, read_results, write_results
from supergf_ros.geometry import Camera, Pose
from supergf_ros.mapping import FORMAT_VERSION, MapData, MapFormatError, read_map, write_map
from supergf_ros.mapping.map_format import update_checksums
from supergf_ros.mapping.pairs import pairs_from_poses, pairs_from_retrieval, select_pairs


def _toy_map(num_keyframes: int = 3, n: int = 20, seed: int = 0) -> MapData:
    rng = np.random.default_rng(seed)
    m = num_keyframes * n
    desc = rng.standard_normal((m, 8)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    pids = np.full(m, -1, np.int64)
    pids[::2] = np.arange(m // 2) % 7
    g = rng.standard_normal((num_keyframes, 4)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    return MapData(
        keyframe_names=[f"img{i}.jpg" for i in range(num_keyframes)],
        cameras=[Camera.pinhole(100, 100, 31.5, 23.5, 64, 48)] * num_keyframes,
        cam_from_world=[
            Pose(np.array([1.0, 0, 0, 0]), np.array([i, 0, 0])) for i in range(num_keyframes)
        ],
        keypoint_offsets=np.arange(0, m + 1, n, dtype=np.int64),
        keypoints=rng.uniform(0, 40, (m, 2)).astype(np.float32),
        scores=rng.uniform(0, 1, m).astype(np.float32),
        descriptors=desc,
        point3D_ids=pids,
        points3D=rng.standard_normal((7, 3)),
        track_lengths=np.full(7, 3, np.int32),
        point_errors=np.full(7, 0.5, np.float32),
        global_descriptors=g,
        extractor={"name": "superpoint", "config": {"max_keypoints": 20}, "weights_sha256": "ab"},
        aggregator={"name": "vlad", "config": {"num_clusters": 2}, "weights_sha256": "cd"},
        aggregator_state={"vlad_centroids": rng.standard_normal((2, 8)).astype(np.float32)},
    )


def test_map_roundtrip(tmp_path: Path):
    """Format version 2 keeps every keypoint and descriptor (version 3: test_mapping_store)."""
    data = _toy_map()
    size = write_map(tmp_path / "m.h5", data, format_version=2)
    assert size == (tmp_path / "m.h5").stat().st_size > 0
    back = read_map(tmp_path / "m.h5")
    assert back.keyframe_names == data.keyframe_names
    assert back.cameras == data.cameras
    np.testing.assert_allclose(back.cam_from_world[2].tvec, [2, 0, 0])
    np.testing.assert_array_equal(back.point3D_ids, data.point3D_ids)
    # descriptors are stored as float16 and come back as contiguous float32
    assert back.descriptors.dtype == np.float32 and back.descriptors.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(back.descriptors, data.descriptors, atol=2e-3)
    np.testing.assert_allclose(back.descriptors_of(1), data.descriptors[20:40], atol=2e-3)
    assert back.extractor == data.extractor and back.aggregator == data.aggregator
    np.testing.assert_array_equal(
        back.aggregator_state["vlad_centroids"], data.aggregator_state["vlad_centroids"]
    )
    with h5py.File(tmp_path / "m.h5") as f:  # self-describing
        assert f.attrs["format"] == "supergf_ros.map"
        assert int(f.attrs["format_version"]) == 2
        assert "cam_from_world" in f.attrs["description"]
    write_map(tmp_path / "m3.h5", data)
    with h5py.File(tmp_path / "m3.h5") as f:
        assert int(f.attrs["format_version"]) == FORMAT_VERSION == 3


def test_map_missing_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="map file not found"):
        read_map(tmp_path / "nope.h5")


def test_map_corrupt_and_truncated(tmp_path: Path):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"this is not an HDF5 file" * 100)
    with pytest.raises(ValueError, match="not a readable map file"):
        read_map(garbage)
    write_map(tmp_path / "m.h5", _toy_map())
    raw = (tmp_path / "m.h5").read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"corrupt|truncated"):
        read_map(truncated)


def test_map_incompatible_or_incomplete(tmp_path: Path):
    path = tmp_path / "m.h5"
    write_map(path, _toy_map(), format_version=2)
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(MapFormatError, match="longer than written"):  # edited after writing
        read_map(path)
    update_checksums(path)  # as if written so
    with pytest.raises(ValueError, match="format version"):
        read_map(path)
    write_map(path, _toy_map(), format_version=2)
    with h5py.File(path, "a") as f:
        del f["points3D/xyz"]
    update_checksums(path)
    with pytest.raises(ValueError, match="missing datasets"):
        read_map(path)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="not a supergf_ros map"):
        read_map(other)


def test_map_validation_rejects_bad_point_ids(tmp_path: Path):
    data = _toy_map()
    data.point3D_ids[0] = 99
    with pytest.raises(ValueError, match="point3D_ids out of range"):
        write_map(tmp_path / "m.h5", data)
    assert not list(tmp_path.iterdir())


def test_interrupted_write_leaves_nothing_half_written(tmp_path: Path):
    path = tmp_path / "m.h5"
    write_map(path, _toy_map(seed=1))
    before = path.read_bytes()
    bad = _toy_map(seed=2)
    # an object array cannot be stored: h5py fails in the middle of writing the file
    bad.aggregator_state = {"ok": np.zeros(3), "bad": np.array([object(), object()], dtype=object)}
    with pytest.raises(TypeError):
        write_map(path, bad)
    assert path.read_bytes() == before  # the old map is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.h5"]  # no temp file left
    assert read_map(path).keyframe_names == _toy_map().keyframe_names


def test_pairs_from_poses_and_retrieval():
    def cam_at(x: float, yaw_deg: float = 0.0) -> Pose:
        a = np.radians(yaw_deg)
        R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        return Pose.from_matrix(np.concatenate([R, (-R @ [x, 0, 0])[:, None]], 1))

    poses = [cam_at(0), cam_at(1), cam_at(2), cam_at(10), cam_at(1.5, 180)]
    pairs = pairs_from_poses(poses, num_neighbors=1, max_angle_deg=60)
    assert (0, 1) in pairs and (1, 2) in pairs and (2, 3) in pairs
    assert all(4 not in p for p in pairs)  # looks the other way: never paired
    g = np.eye(4, dtype=np.float32)[[0, 0, 1, 1]] + 0.01
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    assert pairs_from_retrieval(g, 1) == {(0, 1), (2, 3)}
    assert select_pairs(poses[:2], None) == [(0, 1)]


def test_dataset_io(data_dir: Path, tmp_path: Path):
    ds = Dataset(data_dir / "strecha" / "fountain-P11")
    assert ds.names[:2] == ["0000.jpg", "0001.jpg"] and len(ds.names) == 11
    cam = ds.camera("0003.jpg")
    assert (cam.model, cam.width, cam.height) == ("PINHOLE", 1024, 683)
    assert ds.read_image("0003.jpg").shape == (683, 1024, 3)
    with pytest.raises(ValueError, match="missing from"):
        ds.check_names(["0000.jpg", "9999.jpg"])
    with pytest.raises(ValueError, match="not in dataset"):
        ds.image_path("9999.jpg")
    with pytest.raises(FileNotFoundError):
        Dataset(tmp_path / "none")
    (tmp_path / "noimages").mkdir()
    with pytest.raises(ValueError, match="images/"):
        Dataset(tmp_path / "noimages")


def test_lists_and_results(tmp_path: Path):
    (tmp_path / "q.txt").write_text("# queries\na.jpg\n\nb.jpg PINHOLE 1 2 3\n")
    assert read_image_list(tmp_path / "q.txt") == ["a.jpg", "b.jpg"]
    (tmp_path / "dup.txt").write_text("a.jpg\na.jpg\n")
    with pytest.raises(ValueError, match="duplicate"):
        read_image_list(tmp_path / "dup.txt")
    poses = {"a.jpg": Pose(np.array([0.5, 0.5, 0.5, 0.5]), np.array([1.0, -2.0, 3.5]))}
    write_results(tmp_path / "r.txt", poses)
    back = read_results(tmp_path / "r.txt")
    np.testing.assert_allclose(back["a.jpg"].qvec, poses["a.jpg"].qvec)
    np.testing.assert_allclose(back["a.jpg"].tvec, poses["a.jpg"].tvec)
    (tmp_path / "bad.txt").write_text("a.jpg 1 0 0\n")
    with pytest.raises(ValueError, match="expected 'name qw qx qy qz tx ty tz'"):
        read_results(tmp_path / "bad.txt")
