"""KeyframeSpatialIndex on a synthetic grid of cameras and on the KITTI 01 ground-truth poses."""

from __future__ import annotations

import numpy as np
import pytest

from supergf_ros.datasets.colmap_dataset import Dataset
from supergf_ros.geometry import Pose
from supergf_ros.mapping.spatial_index import KeyframeSpatialIndex

HEADINGS = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (-1.0, 0.0, 0.0), (0.0, -1.0, 0.0))


def camera_looking(center, direction) -> Pose:
    """cam_from_world of a camera at `center` with its optical axis along `direction`, y down."""
    z = np.asarray(direction, dtype=float) / np.linalg.norm(direction)
    y = np.array([0.0, 0.0, -1.0])
    x = np.cross(y, z)
    world_from_cam = np.column_stack([x, y, z])
    R = world_from_cam.T
    return Pose.from_matrix(np.column_stack([R, -R @ np.asarray(center, dtype=float)]))


@pytest.fixture(scope="module")
def grid() -> tuple[KeyframeSpatialIndex, np.ndarray, np.ndarray]:
    """A 10 x 10 grid (1 m spacing), four headings per point: id = 4 * cell + heading."""
    centers, dirs, poses = [], [], []
    for gx in range(10):
        for gy in range(10):
            for h in HEADINGS:
                poses.append(camera_looking((gx, gy, 0.0), h))
                centers.append((gx, gy, 0.0))
                dirs.append(h)
    return KeyframeSpatialIndex(poses), np.array(centers), np.array(dirs)


def brute_force(centers, dirs, position, radius, direction=None, max_angle_deg=180.0):
    dist = np.linalg.norm(centers - position, axis=1)
    keep = dist <= radius
    if direction is not None:
        cos = dirs @ (np.asarray(direction) / np.linalg.norm(direction))
        keep &= np.degrees(np.arccos(np.clip(cos, -1, 1))) <= max_angle_deg
    return set(np.flatnonzero(keep).tolist())


def check_sorted(index: KeyframeSpatialIndex, position, ids: list[int]) -> None:
    dist = np.linalg.norm(index.centers[ids] - position, axis=1)
    assert np.all(np.diff(dist) >= 0)


def test_centres_and_directions(grid) -> None:
    index, centers, dirs = grid
    assert len(index) == 400
    np.testing.assert_allclose(index.centers, centers, atol=1e-12)
    np.testing.assert_allclose(index.directions, dirs, atol=1e-12)


def test_radius_and_angle_match_brute_force(grid) -> None:
    index, centers, dirs = grid
    rng = np.random.default_rng(0)
    for _ in range(50):
        position = np.append(rng.uniform(-1, 10, 2), rng.uniform(-0.5, 0.5))
        radius = rng.uniform(0.3, 3.0)
        got = index.near(position, radius=radius)
        assert set(got) == brute_force(centers, dirs, position, radius) and len(set(got)) == len(
            got
        )
        check_sorted(index, position, got)
        direction = np.append(rng.normal(size=2), 0.0)
        got = index.near(position, direction, radius=radius, max_angle_deg=50.0)
        assert set(got) == brute_force(centers, dirs, position, radius, direction, 50.0)
        check_sorted(index, position, got)


def test_k_nearest_with_angle_widens_the_query(grid) -> None:
    index, _, _ = grid
    hits = index.neighbours([4.1, 5.0, 0.0], direction=[1, 0.1, 0], max_angle_deg=30.0, k=3)
    # heading 0 (+x) only: cells (4,5), (5,5), then (4,4) or (4,6) (equally far)
    assert [h.id for h in hits[:2]] == [4 * (4 * 10 + 5), 4 * (5 * 10 + 5)]
    assert hits[2].id in (4 * (4 * 10 + 4), 4 * (4 * 10 + 6))
    assert hits[0].distance == pytest.approx(0.1)
    assert hits[0].angle_deg == pytest.approx(np.degrees(np.arctan(0.1)))
    assert len(index.near([4.1, 5.0, 0.0], k=7)) == 7
    near_cell = index.near([4.1, 5.0, 0.0], radius=1.0, k=4)  # the four headings of (4, 5)
    assert sorted(near_cell) == [4 * 45, 4 * 45 + 1, 4 * 45 + 2, 4 * 45 + 3]
    assert index.near([4.1, 5.0, 0.0], [0, -1, 0], radius=1.0, max_angle_deg=1.0) == [
        4 * 45 + 3,
        4 * 55 + 3,
    ]
    assert index.near([100.0, 0, 0], radius=1.0) == []
    assert len(index.near([100.0, 0, 0], k=1000)) == 400


def test_near_pose_and_errors(grid) -> None:
    index, _, _ = grid
    pose = camera_looking((3.0, 7.0, 0.0), HEADINGS[1])
    assert index.near_pose(pose, radius=1.5, max_angle_deg=10.0)[0] == 4 * 37 + 1
    with pytest.raises(ValueError, match="radius, a number of neighbours k"):
        index.near([0, 0, 0])
    with pytest.raises(ValueError, match="needs a query direction"):
        index.near([0, 0, 0], radius=1.0, max_angle_deg=10.0)
    with pytest.raises(ValueError, match="non-zero"):
        index.near([0, 0, 0], direction=[0, 0, 0], radius=1.0)
    with pytest.raises(ValueError, match="k must be"):
        index.near([0, 0, 0], k=0)
    assert KeyframeSpatialIndex([]).near([0, 0, 0], radius=1.0, k=3) == []


def test_kitti01_neighbours_are_temporal_neighbours(data_dir) -> None:
    dataset = Dataset(data_dir / "sequences" / "kitti01")
    names = [n for n in dataset.names if n.startswith("image_0/")]
    poses = [dataset.cam_from_world(n) for n in names]
    assert len(poses) > 40
    index = KeyframeSpatialIndex(poses)
    steps = np.linalg.norm(np.diff(index.centers, axis=0), axis=1)
    radius = 1.5  # the car moves 0.9 to 1.3 m per frame here
    assert steps.max() < radius < 2 * steps.min()
    for i in range(2, len(poses) - 2):
        got = index.near_pose(poses[i], radius=radius, max_angle_deg=30.0)
        assert got[0] == i
        assert sorted(got) == [i - 1, i, i + 1]
        five = index.near_pose(poses[i], k=5)
        assert five[0] == i and set(five[1:3]) == {i - 1, i + 1}
        assert sorted(five) == list(range(i - 2, i + 3))
        assert index.near(index.centers[i], -index.directions[i], radius, 90.0) == []
    # the right stereo camera (0.54 m to the side, same heading) finds its left twin first
    right = dataset.cam_from_world(names[10].replace("image_0/", "image_1/"))
    assert index.near_pose(right, k=1) == [10]
