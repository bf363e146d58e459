"""Map building on real data: triangulation from known poses and incremental SfM.

`cached_strecha_map` builds (or reuses from the test cache) the even-image map of a Strecha scene;
the localization tests import it so that each map is built once per code/weights version.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import supergf_ros
from supergf_ros.datasets import Dataset
from supergf_ros.features.base import file_sha256
from supergf_ros.geometry import pose_error
from supergf_ros.mapping import read_map
from supergf_ros.mapping.build_map import build_map

# Strecha images are 1024 px wide; 640 px keeps the accuracy bar at a third of the extraction cost.
TEST_EXTRACTOR_CONF = {"resize_max": 640, "max_keypoints": 1024}
_SOURCES = [
    "mapping/build_map.py",
    "mapping/triangulation.py",
    "mapping/pairs.py",
    "mapping/map_format.py",
    "mapping/map_base.py",
    "mapping/map_store.py",
    "localization/retrieval.py",
    "features/superpoint.py",
    "models/aggregators.py",
    "matching.py",
]


def _code_hash() -> str:
    root = Path(supergf_ros.__file__).parent
    digest = hashlib.sha256()
    for rel in _SOURCES:
        path = root / rel
        digest.update(path.read_bytes() if path.exists() else b"")
    return digest.hexdigest()


def cached_strecha_map(
    data_dir: Path, weights: Path, cache_dir: Path, scene: str, global_name: str = "vlad"
) -> tuple[Path, dict]:
    """(map path, build summary) of `scene` with even images as keyframes, cached by config."""
    dataset_dir = data_dir / "strecha" / scene
    names = Dataset(dataset_dir).names[::2]
    key_src = json.dumps(
        {
            "scene": scene,
            "names": names,
            "extractor": TEST_EXTRACTOR_CONF,
            "weights": file_sha256(weights),
            "global": global_name,
            "code": _code_hash(),
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    path = cache_dir / f"map_{scene}_{global_name}_{key}.h5"
    summary_path = path.with_suffix(".json")
    if path.exists() and summary_path.exists():
        try:
            read_map(path)
            return path, json.loads(summary_path.read_text())
        except ValueError:
            pass  # stale or broken cache entry: rebuild
    summary = build_map(
        dataset_dir,
        path,
        image_names=names,
        features="superpoint",
        extractor_conf={"weights": str(weights), **TEST_EXTRACTOR_CONF},
        global_name=global_name,
        progress=False,
    )
    summary_path.write_text(json.dumps(summary, indent=1))
    return path, summary


@pytest.fixture(scope="session")
def fountain_map(data_dir: Path, superpoint_weights: Path, cache_dir: Path) -> tuple[Path, dict]:
    return cached_strecha_map(data_dir, superpoint_weights, cache_dir, "fountain-P11")


@pytest.mark.slow
def test_triangulated_map_from_known_poses(fountain_map, data_dir: Path):
    path, summary = fountain_map
    data = read_map(path)
    ds = Dataset(data_dir / "strecha" / "fountain-P11")
    assert data.keyframe_names == [
        "0000.jpg",
        "0002.jpg",
        "0004.jpg",
        "0006.jpg",
        "0008.jpg",
        "0010.jpg",
    ]
    assert summary["num_keyframes"] == 6
    assert summary["num_points3D"] == len(data.points3D) > 500
    assert summary["mean_track_length"] >= 2.0 and summary["mean_reproj_error_px"] < 1.5
    assert summary["file_size_bytes"] == path.stat().st_size
    # keyframe poses are the dataset's, untouched
    for name, pose in zip(data.keyframe_names, data.cam_from_world):
        dt, dr = pose_error(pose, ds.cam_from_world(name))
        assert dt < 1e-9 and dr < 1e-4
    # every observation reprojects close to its keypoint with the ground-truth camera
    errors = []
    for i in range(data.num_keyframes):
        pids = data.point3D_ids_of(i)
        obs = pids >= 0
        assert obs.sum() > 100
        cam, pose = data.cameras[i], data.cam_from_world[i]
        x = pose.transform(data.points3D[pids[obs]])
        assert (x[:, 2] > 0).all()  # in front of the camera
        uv = (x[:, :2] / x[:, 2:]) @ cam.K[:2, :2].T + cam.K[:2, 2]
        errors.append(np.linalg.norm(uv - data.keypoints_of(i)[obs], axis=1))
    errors = np.concatenate(errors)
    assert np.median(errors) < 1.0 and np.max(errors) < 8.0
    # each point is observed as many times as its track length says
    counts = np.bincount(data.point3D_ids[data.point3D_ids >= 0], minlength=len(data.points3D))
    np.testing.assert_array_equal(counts, data.track_lengths)
    _check_point_quality(data)
    assert data.aggregator["name"] == "vlad" and "vlad_centroids" in data.aggregator_state
    assert data.extractor["weights_sha256"] and data.global_descriptors.shape[0] == 6


def _check_point_quality(data) -> None:
    """Stored triangulation angles are the rays' largest angle; wider angles, smaller sigma."""
    from supergf_ros.mapping.point_quality import depth_sigma

    assert data.point_tri_angles is not None and data.point_covariances is not None
    centers = np.array([p.center for p in data.cam_from_world])
    owner = np.repeat(np.arange(data.num_keyframes), np.diff(data.keypoint_offsets))
    for pid in range(0, len(data.points3D), max(1, len(data.points3D) // 50)):
        rays = data.points3D[pid] - centers[owner[data.point3D_ids == pid]]
        rays /= np.linalg.norm(rays, axis=1, keepdims=True)
        angle = np.degrees(np.arccos(np.clip((rays @ rays.T).min(), -1, 1)))
        assert data.point_tri_angles[pid] == pytest.approx(angle, abs=1e-3)
    sigma = depth_sigma(data.point_covariances)
    wide = data.point_tri_angles > np.median(data.point_tri_angles)
    assert np.median(sigma[wide]) < np.median(sigma[~wide])


@pytest.mark.slow
def test_incremental_sfm_without_poses(data_dir: Path, superpoint_weights: Path, tmp_path: Path):
    src = data_dir / "strecha" / "fountain-P11"
    (tmp_path / "images").mkdir()
    names = ["0000.jpg", "0001.jpg", "0002.jpg", "0003.jpg"]
    for name in names:  # a dataset with images only (links, no copies)
        (tmp_path / "images" / name).symlink_to(src / "images" / name)
    summary = build_map(
        tmp_path,
        tmp_path / "sfm.h5",
        features="superpoint",
        extractor_conf={"weights": str(superpoint_weights), "resize_max": 512},
        global_name="gem",
        progress=False,
    )
    assert summary["num_keyframes"] == 4 and summary["num_points3D"] > 200
    data = read_map(tmp_path / "sfm.h5")
    assert data.build_conf["source"] == "incremental_sfm"
    gt = Dataset(src)
    # SfM is up to a similarity: compare relative rotations with the ground truth
    for i in range(1, 4):
        a, b = data.keyframe_names[0], data.keyframe_names[i]
        rel = data.cam_from_world[i] * data.cam_from_world[0].inverse()
        rel_gt = gt.cam_from_world(b) * gt.cam_from_world(a).inverse()
        assert pose_error(rel, rel_gt)[1] < 1.0
    f_gt = gt.camera("0001.jpg").params[0]
    assert abs(data.cameras[1].params[0] - f_gt) / f_gt < 0.05


def test_build_map_bad_input(data_dir: Path, superpoint_weights: Path, tmp_path: Path):
    root = data_dir / "strecha" / "fountain-P11"
    with pytest.raises(ValueError, match=r"missing from .*nope\.jpg"):
        build_map(
            root,
            tmp_path / "m.h5",
            image_names=["0000.jpg", "nope.jpg"],
            extractor_conf={"weights": str(superpoint_weights)},
            progress=False,
        )
    with pytest.raises(ValueError, match="unknown build option"):
        build_map(root, tmp_path / "m.h5", conf={"bogus": 1}, progress=False)
    with pytest.raises(ValueError, match="unknown global descriptor"):
        build_map(
            root,
            tmp_path / "m.h5",
            image_names=["0000.jpg"],
            global_name="netvlad",
            extractor_conf={"weights": str(superpoint_weights)},
            progress=False,
        )
    with pytest.raises(FileNotFoundError, match="weights"):
        build_map(
            root,
            tmp_path / "m.h5",
            image_names=["0000.jpg"],
            extractor_conf={"weights": str(tmp_path / "missing.pth")},
            progress=False,
        )
    assert not list(tmp_path.iterdir())  # nothing written
