"""The streaming map builder: resumable work files, the same map after an interruption, on Ray.

A small synthetic room (real SuperPoint, VLAD fitted from the feature file, pycolmap); every
map is compared with the uninterrupted single-process build dataset by dataset.
"""

from __future__ import annotations

import importlib.util
import itertools
import shutil
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from supergf_ros.datasets.synthetic import generate_scene
from supergf_ros.features.base import LocalFeatures
from supergf_ros.mapping.build_map import build_map, default_work_dir
from supergf_ros.mapping.feature_store import FeatureFile, MatchesFile
from supergf_ros.models.aggregators import create_aggregator

SCENE = {"num_map": 16, "num_queries": 2, "width": 240, "height": 180, "room_size": (6, 4, 3),
         "yaw_sweep_deg": 10}  # fmt: skip


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stream") / "scene"
    generate_scene(out, SCENE, seed=3, progress=False)
    return out


def _build(scene: Path, out: Path, weights: Path, **kw) -> dict:
    names = (scene / "mapping.txt").read_text().split()
    return build_map(
        scene, out, image_names=names, extractor_conf={"weights": str(weights)},
        global_name="vlad", global_conf={"num_clusters": 16}, progress=False, **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def reference(scene: Path, superpoint_weights: Path) -> Path:
    out = scene.parent / "reference.h5"
    summary = _build(scene, out, superpoint_weights)
    assert summary["num_points3D"] > 100 and summary["work_dir"] is None
    assert not default_work_dir(out).exists()  # removed once the map is written
    return out


def map_contents(path: Path) -> dict:
    """Every dataset's bytes and every attribute but the creation time."""
    out = {}
    with h5py.File(path, "r") as f:
        out.update({f"@{k}": str(v) for k, v in f.attrs.items() if k != "created"})

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                value = obj[()]
                out[name] = repr(value.tolist()) if value.dtype == object else value.tobytes()

        f.visititems(visit)
    return out


def assert_same_map(a: Path, b: Path) -> None:
    ca, cb = map_contents(a), map_contents(b)
    assert sorted(ca) == sorted(cb)
    assert [k for k in ca if ca[k] != cb[k]] == []


class _Stop(KeyboardInterrupt):
    pass


def test_interrupted_build_resumes_to_the_same_map(scene, reference, superpoint_weights, tmp_path):
    out, work = tmp_path / "map.h5", tmp_path / "work"
    seen: list[str] = []

    def stop_after_five(index: int, name: str) -> None:
        seen.append(name)
        if len(seen) == 5:
            raise _Stop  # a real interruption, raised from inside the extraction loop

    with pytest.raises(_Stop):
        _build(scene, out, superpoint_weights, work_dir=work, on_image=stop_after_five)
    assert not out.exists()
    # one image re-saved with other bytes: its stored features no longer count
    changed = scene.parent / "changed"
    shutil.copytree(scene, changed)
    image = changed / "images" / seen[0]
    before = image.read_bytes()
    cv2.imwrite(str(image), cv2.imread(str(image)), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert image.read_bytes() != before  # same pixels, another file
    resumed: list[str] = []
    summary = _build(changed, out, superpoint_weights, work_dir=work,
                     on_image=lambda i, n: resumed.append(n))  # fmt: skip
    names = (scene / "mapping.txt").read_text().split()
    assert sorted(resumed) == sorted([seen[0], *(n for n in names if n not in seen)])
    assert summary["work_dir"] == str(work) and (work / "features.h5").is_file()
    assert_same_map(reference, out)
    # a finished build run again extracts and matches nothing new, and writes the same map
    again: list[str] = []
    _build(changed, tmp_path / "again.h5", superpoint_weights, work_dir=work,
           on_image=lambda i, n: again.append(n))  # fmt: skip
    assert again == []
    assert_same_map(reference, tmp_path / "again.h5")


def test_feature_file_of_another_extractor_is_refused(scene, superpoint_weights, tmp_path):
    ff = FeatureFile(tmp_path / "features.h5", {"extractor": {"name": "other"}})
    ff.close()
    with pytest.raises(ValueError, match=r"another extractor.*--work-dir"):
        _build(scene, tmp_path / "m.h5", superpoint_weights, work_dir=tmp_path)
    assert not (tmp_path / "m.h5").exists()


def test_matches_file_continues_or_starts_over(tmp_path):
    pairs = [(0, 1), (0, 2), (1, 2)]
    mf = MatchesFile(tmp_path / "m.h5", pairs, "id-1")
    mf.append([np.array([[0, 1], [2, 3]]), np.zeros((0, 2))])
    mf.close()
    mf = MatchesFile(tmp_path / "m.h5", pairs, "id-1")
    assert mf.num_done == 2
    mf.append([np.array([[5, 6]])])
    got = [(p, m.tolist()) for p, m in mf.items(chunk_pairs=2)]
    assert got == [((0, 1), [[0, 1], [2, 3]]), ((0, 2), []), ((1, 2), [[5, 6]])]
    for indices in ([0, 2], [1, 2], [2], []):  # a block's pairs: runs read together
        for chunk_pairs in (1, 2, 4096):
            part = [(p, m.tolist()) for p, m in mf.items_at(indices, chunk_pairs=chunk_pairs)]
            assert part == [got[k] for k in indices]
    with pytest.raises(ValueError, match="increasing positions"):
        list(mf.items_at([2, 1]))
    mf.close()
    mf = MatchesFile(tmp_path / "m.h5", pairs[:2], "id-2")  # other features: nothing reused
    assert mf.num_done == 0 and mf.pairs == pairs[:2]
    mf.close()


def test_vlad_fit_streamed_equals_fit():
    rng = np.random.default_rng(0)
    feats = []
    for n in (0, 40, 7, 90, 33):
        d = rng.normal(size=(n, 256)).astype(np.float32)
        d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
        feats.append(LocalFeatures(np.zeros((n, 2), np.float32), np.ones(n, np.float32), d))
    conf = {"features": "superpoint", "num_clusters": 8, "max_training_descriptors": 60}
    a, b = create_aggregator("vlad", **conf), create_aggregator("vlad", **conf)
    a.fit(feats)
    read: list[int] = []
    b.fit_streamed([len(f) for f in feats], lambda i: read.append(i) or feats[i].descriptors)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert read == sorted(set(read)) and 0 not in read  # each image once, in order


def test_ray_address_without_ray_is_a_clear_error(monkeypatch):
    from supergf_ros.mapping.distributed import create_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: import fails
    with pytest.raises(ValueError, match="needs Ray: install it"):
        create_executor("auto")
    assert create_executor(None).name == "local"


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_ray_build_equals_single_process(scene, reference, superpoint_weights, tmp_path):
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = _build(scene, tmp_path / "ray.h5", superpoint_weights, ray_address="auto")
    finally:
        ray.shutdown()
    assert summary["num_keyframes"] == SCENE["num_map"] and summary["executor"] == "ray"
    assert_same_map(reference, tmp_path / "ray.h5")


def test_extend_map_adds_a_recording(scene, superpoint_weights, tmp_path):
    from supergf_ros.datasets import Dataset
    from supergf_ros.geometry import pose_error
    from supergf_ros.io_utils import file_sha256
    from supergf_ros.localization.localizer import Localizer
    from supergf_ros.mapping import read_map
    from supergf_ros.mapping.extend_map import extend_map

    names = (scene / "mapping.txt").read_text().split()
    first, second = names[::2], names[1::2]  # a second recording along the same path
    base = tmp_path / "base.h5"
    build_map(scene, base, image_names=first, extractor_conf={"weights": str(superpoint_weights)},
              global_name="vlad", global_conf={"num_clusters": 16}, progress=False)  # fmt: skip
    sha = file_sha256(base)
    with pytest.raises(ValueError, match="already keyframes"):
        extend_map(base, scene, tmp_path / "x.h5", image_names=first[:1],
                   superpoint_weights=superpoint_weights, progress=False)  # fmt: skip
    out = tmp_path / "extended.h5"
    summary = extend_map(base, scene, out, image_names=second,
                         superpoint_weights=superpoint_weights, progress=False)  # fmt: skip
    assert file_sha256(base) == sha  # the old map is only read
    old, new = read_map(base), read_map(out)
    assert new.keyframe_names == first + second and summary["new_keyframes"] == len(second)
    ds = Dataset(scene)
    for name, pose in zip(new.keyframe_names, new.cam_from_world):
        dt, dr = pose_error(pose, ds.cam_from_world(name))
        assert dt < 1e-9 and dr < 1e-4
    ids = new.point3D_ids
    np.testing.assert_array_equal(np.bincount(ids[ids >= 0], minlength=len(new.points3D)),
                                  new.track_lengths)  # fmt: skip
    split = new.keypoint_offsets[len(first)]
    seen_old, seen_new = set(ids[:split].tolist()), set(ids[split:][ids[split:] >= 0].tolist())
    assert len(seen_old & seen_new) > 0.3 * len(old.points3D)  # old tracks continued
    assert len(seen_new - seen_old) > 0 and len(new.points3D) > len(old.points3D)
    # every point, old or new, has its quality recomputed with all its observations
    assert new.point_tri_angles.shape == (len(new.points3D),)
    assert new.point_covariances.shape == (len(new.points3D), 6)
    assert np.all(new.point_tri_angles[new.track_lengths >= 2] > 0)
    # the extended map localizes its queries
    loc = Localizer.from_map(out, {"superpoint_weights": str(superpoint_weights)})
    for q in (scene / "queries.txt").read_text().split():
        result = loc.localize(ds.read_image(q), ds.camera(q))
        assert result.success and pose_error(result.cam_from_world, ds.cam_from_world(q))[0] < 0.3


def test_partition_images_makes_spatial_blocks():
    from supergf_ros.mapping.submaps import partition_images

    centers = np.zeros((23, 3))
    centers[:, 0] = np.random.default_rng(0).permutation(23) * 2.0  # cameras along a line
    blocks = partition_images(centers, 5)
    assert sorted(np.concatenate(blocks).tolist()) == list(range(23))
    assert all(2 <= len(b) <= 5 for b in blocks)
    spans = sorted((centers[b, 0].min(), centers[b, 0].max()) for b in blocks)
    assert all(hi < lo for (_, hi), (lo, _) in itertools.pairwise(spans))  # cells do not overlap
    assert [b.tolist() for b in partition_images(centers, 5)] == [b.tolist() for b in blocks]
    with pytest.raises(ValueError, match="at least 2 images"):
        partition_images(centers, 1)


def _depth_errors(map_path: Path, scene: Path) -> np.ndarray:
    """Relative depth error of every observed map point against the scene's true depth."""
    from supergf_ros.mapping import read_map

    m = read_map(map_path)
    errors = []
    for i, (name, pose) in enumerate(zip(m.keyframe_names, m.cam_from_world)):
        a, b = m.keypoint_offsets[i], m.keypoint_offsets[i + 1]
        ids, kp = m.point3D_ids[a:b], m.keypoints[a:b]
        depth = np.load(scene / "depth" / f"{Path(name).stem}.npy").astype(np.float64)
        px = np.round(kp[ids >= 0]).astype(int)
        true = depth[px[:, 1], px[:, 0]]
        z = pose.transform(m.points3D[ids[ids >= 0]])[:, 2]
        errors.append(np.abs(z - true)[np.isfinite(true)] / true[np.isfinite(true)])
    return np.concatenate(errors)


def test_submap_triangulation_merges_to_one_consistent_map(scene, reference, superpoint_weights,
                                                           tmp_path):  # fmt: skip
    """16 images in blocks of at most 4: the points of neighbouring blocks are merged, every
    observation reprojects within the threshold, and the points are as accurate as one run's."""
    from supergf_ros.datasets import Dataset
    from supergf_ros.geometry import pose_error
    from supergf_ros.localization.localizer import Localizer
    from supergf_ros.mapping import read_map
    from supergf_ros.mapping.submaps import partition_images

    out = tmp_path / "submaps.h5"
    summary = _build(scene, out, superpoint_weights, conf={"submap_images": 4})
    ref, m = read_map(reference), read_map(out)
    assert 0.8 * len(ref.points3D) <= len(m.points3D) <= 1.2 * len(ref.points3D)
    ids = m.point3D_ids
    np.testing.assert_array_equal(np.bincount(ids[ids >= 0], minlength=len(m.points3D)),
                                  m.track_lengths)  # fmt: skip
    assert m.track_lengths.min() >= 2 and summary["mean_reproj_error_px"] < 4.0
    keyframe = np.repeat(np.arange(len(m.keyframe_names)), np.diff(m.keypoint_offsets))
    seen = ids >= 0
    pairs = np.unique(np.stack([keyframe[seen], ids[seen]], 1), axis=0)
    assert len(pairs) == seen.sum()  # no point is seen twice in one keyframe
    block_of = np.empty(len(m.keyframe_names), int)
    centers = np.stack([p.center for p in m.cam_from_world])
    for b, members in enumerate(partition_images(centers, 4)):
        block_of[members] = b
    blocks_per_point = [len(set(block_of[keyframe[ids == p]])) for p in range(len(m.points3D))]
    assert np.mean(np.asarray(blocks_per_point) > 1) > 0.3  # tracks continue across blocks
    assert np.median(_depth_errors(out, scene)) <= 1.25 * np.median(_depth_errors(reference, scene))
    loc = Localizer.from_map(out, {"superpoint_weights": str(superpoint_weights)})
    ds = Dataset(scene)
    for q in (scene / "queries.txt").read_text().split():
        result = loc.localize(ds.read_image(q), ds.camera(q))
        assert result.success and pose_error(result.cam_from_world, ds.cam_from_world(q))[0] < 0.3
    _build(scene, tmp_path / "again.h5", superpoint_weights, conf={"submap_images": 4})
    assert_same_map(out, tmp_path / "again.h5")  # the merge is deterministic


def test_submap_images_is_validated(scene, superpoint_weights, tmp_path):
    with pytest.raises(ValueError, match="submap_images must be an integer >= 2"):
        _build(scene, tmp_path / "m.h5", superpoint_weights, conf={"submap_images": 1})
