"""Overlap labels on real Strecha poses, co-visible points, and an MSLS-layout fixture."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from supergf_ros.training.data import CandidateSampler, load_msls, load_project_dataset
from supergf_ros.training.labels import msls_overlap, overlap_from_points


@pytest.fixture(scope="module")
def herz_jesus(data_dir):
    return load_project_dataset(data_dir / "strecha" / "Herz-Jesus-P25")


def test_strecha_overlap_neighbours_high_opposite_low(herz_jesus, data_dir):
    s = herz_jesus
    assert s.info["labels"] == "estimate"  # poses only: frusta + depth estimated from the poses
    o = s.overlap
    assert o.shape == (25, 25)
    np.testing.assert_allclose(o, o.T)
    assert np.all(np.diag(o) == 1)
    neighbours = [o[i, i + 1] for i in range(13)]  # 0000..0013 sweep along the facade
    assert min(neighbours) > 0.6
    assert o[0, 13] < 0.1  # the two ends of the sweep look at different parts of the building
    assert o[0, 1] > o[0, 11] > o[0, 12] > o[0, 13]  # overlap decays with the viewpoint change
    fountain = load_project_dataset(data_dir / "strecha" / "fountain-P11").overlap
    assert min(fountain[i, i + 1] for i in range(10)) > 0.8
    assert fountain[0, 10] < 0.15


def test_overlap_from_points():
    o = overlap_from_points([np.array([1, 2, 3, 4]), np.array([3, 4, 5, 6]), np.array([7, 8])])
    np.testing.assert_allclose(o, [[1, 0.5, 0], [0.5, 1, 0], [0, 0, 1]])
    o = overlap_from_points([np.array([1, 2]), np.array([1, 2, 3, 4])])
    assert o[0, 1] == pytest.approx(0.75)  # mean of 2/2 and 2/4


def test_msls_overlap_geometry():
    xy = np.array([[0.0, 0.0]])
    db = np.array([[0.0, 5.0], [0.0, 5.0], [200.0, 0.0], [0.0, 0.0]])
    heading = np.array([0.0, 180.0, 0.0, 45.0])  # north, south, north (far away), north-east
    o = msls_overlap(xy, [0.0], db, heading)
    assert o[0, 0] > 0.8  # same direction, 5 m ahead
    assert o[0, 1] < 0.05  # facing each other: sectors barely intersect
    assert o[0, 2] == 0  # far away
    assert 0.3 < o[0, 3] < 0.7  # same place, 45 degrees apart: half overlap


def _write_msls_fixture(root, images):
    """A tiny MSLS-layout city: 4 query and 8 database frames on a straight street (UTM metres),
    database frames driving north, queries driving north except the last one (heading south)."""
    city = root / "train_val" / "tinycity"
    rows = {
        "query": [(f"q{i}", 0.0, 10.0 * i + 3, 0.0 if i < 3 else 180.0) for i in range(4)],
        "database": [(f"d{i}", 1.0, 10.0 * i, 0.0) for i in range(8)],
    }
    for split, items in rows.items():
        (city / split / "images").mkdir(parents=True)
        with open(city / split / "postprocessed.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["", "key", "easting", "northing", "night", "view_direction"])
            for k, (key, e, n, _) in enumerate(items):
                w.writerow([k, key, 500000 + e, 4000000 + n, False, "Forward"])
        with open(city / split / "raw.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["", "key", "lon", "lat", "ca", "captured_at", "pano"])
            for k, (key, _, _, ca) in enumerate(items):
                w.writerow([k, key, 0.0, 0.0, ca, 0, False])
        for k, (key, *_) in enumerate(items):
            cv2.imwrite(str(city / split / "images" / f"{key}.jpg"), images[k % len(images)])
    return root


def test_msls_layout_fixture(tmp_path, data_dir):
    photos = sorted((data_dir / "photos" / "sacre_coeur").rglob("*.jpg"))[:4]
    images = [cv2.resize(cv2.imread(str(p)), (64, 48)) for p in photos]
    root = _write_msls_fixture(tmp_path / "msls", images)
    (s,) = load_msls(root)
    assert s.name == "msls-tinycity"
    assert len(s.paths) == 12 and list(s.query_ids) == [0, 1, 2, 3]
    o = s.overlap[np.ix_(s.query_ids, s.db_ids)]
    # query i at northing 10 i + 3 is just ahead of database frame i (northing 10 i)
    for i in range(3):
        assert o[i].argmax() == i + 1 or o[i].argmax() == i
        assert o[i, i] > 0.7
        assert o[i, 7] < o[i, i]
    assert o[3].max() < 0.3  # the south-facing query overlaps little with north-facing frames
    sampler = CandidateSampler([s], num_negatives=3)
    sample = sampler.sample(0, np.random.default_rng(0))
    assert sample.labels[0] >= 0.5 and set(sample.candidates) <= set(s.db_ids)
    with pytest.raises(ValueError, match="cities"):
        load_msls(root, ["atlantis"])
    with pytest.raises(ValueError, match="not an MSLS"):
        load_msls(tmp_path)


def test_built_map_covisibility_labels(tmp_path, data_dir):
    """A map in the mapping engineer's format: labels from the co-visibility of its points."""
    from supergf_ros.geometry import Camera, Pose
    from supergf_ros.mapping.map_format import MapData, write_map
    from supergf_ros.training.data import load_built_map, load_source

    images = data_dir / "strecha" / "fountain-P11" / "images"
    names = [f"{i:04d}.jpg" for i in range(6)]
    ids = [np.arange(10 * i, 10 * i + 30) for i in range(6)]  # neighbours share 20 of 30 points
    counts = [len(i) + 5 for i in ids]  # plus 5 keypoints without a 3D point each
    point3D_ids = np.concatenate([np.r_[i, -np.ones(5, int)] for i in ids])
    m, p = int(sum(counts)), 80
    data = MapData(
        keyframe_names=names,
        cameras=[Camera.pinhole(900, 900, 512, 340, 1024, 683)] * 6,
        cam_from_world=[Pose.identity()] * 6,
        keypoint_offsets=np.r_[0, np.cumsum(counts)].astype(np.int64),
        keypoints=np.zeros((m, 2), np.float32),
        scores=np.ones(m, np.float32),
        descriptors=np.full((m, 4), 0.5, np.float32),
        point3D_ids=point3D_ids,
        points3D=np.zeros((p, 3)),
        track_lengths=np.full(p, 2, np.int32),
        point_errors=np.zeros(p, np.float32),
        global_descriptors=np.full((6, 4), 0.5, np.float32),
        extractor={"name": "superpoint", "config": {}, "weights_sha256": ""},
        aggregator={"name": "gem", "config": {}, "weights_sha256": ""},
    )
    map_path = tmp_path / "map.h5"
    write_map(map_path, data)
    (s,) = load_source(map_path, images)
    assert s.info["labels"] == "map-covisibility"
    assert s.paths[2] == images / "0002.jpg"
    assert s.overlap[0, 1] == pytest.approx(2 / 3, abs=1e-6)
    assert s.overlap[0, 2] == pytest.approx(1 / 3, abs=1e-6)
    assert s.overlap[0, 3] == 0
    with pytest.raises(ValueError, match="not found under"):
        load_built_map(map_path, tmp_path)
    with pytest.raises(ValueError, match="--map-images"):
        load_source(map_path)


def test_sequence_labels_from_frame_distance(tmp_path, data_dir):
    """A recording without poses (the corridor's reference run, frames in time order): labels
    from frame distance, positives within half the window."""
    from supergf_ros.training.data import CandidateSampler, load_source
    from supergf_ros.training.labels import overlap_from_sequence

    ov = overlap_from_sequence(6, 4)
    np.testing.assert_allclose(ov[0], [1, 0.75, 0.5, 0.25, 0, 0])
    np.testing.assert_array_equal(ov, ov.T)
    with pytest.raises(ValueError, match="window"):
        overlap_from_sequence(6, 0)

    ref = data_dir / "vpr" / "corridor" / "ref"
    (s,) = load_source(ref, sequence_window=4)
    assert s.info["labels"] == "sequence" and len(s.paths) == 111
    assert [p.name for p in s.paths] == sorted(p.name for p in ref.glob("*.jpg"))
    assert s.overlap[10, 12] == pytest.approx(0.5) and s.overlap[10, 14] == 0
    sampler = CandidateSampler([s], 1, 2, 6, 0.5)
    sample = sampler.sample(50, np.random.default_rng(0))
    frame = {c: abs(int(c) - 50) for c in sample.candidates}
    pos = [c for c, label in zip(sample.candidates, sample.labels) if label >= 0.5]
    assert pos and all(frame[c] <= 2 for c in pos)
    assert sum(label == 0 for label in sample.labels) == 6
    # a folder of images without a model and without a window: no labels, a clear error
    with pytest.raises(ValueError, match="--sequence-window"):
        load_source(ref)
    (tmp_path / "two").mkdir()
    for p in sorted(ref.glob("*.jpg"))[:2]:
        (tmp_path / "two" / p.name).write_bytes(p.read_bytes())
    with pytest.raises(ValueError, match="at least 3 frames"):
        load_source(tmp_path / "two", sequence_window=4)
