"""The synthetic scene generator: exact geometry, COLMAP read-back, features, determinism, errors."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from supergf_ros.datasets.synthetic import (
    SceneConfig,
    build_scene,
    generate_scene,
    make_trajectories,
)
from supergf_ros.geometry import Camera, Pose, pose_error

SEED = 3
CONF = {"num_map": 16, "num_queries": 4, "num_points": 1500}  # default 640x480 camera and room


@pytest.fixture(scope="session")
def scene_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "scene"
    summary = generate_scene(out, CONF, seed=SEED, progress=False)
    assert summary["num_images"] == 20
    return out


def _read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)


def _names(scene_dir: Path, which: str) -> list[str]:
    return (scene_dir / f"{which}.txt").read_text().split()


def _reproject(depth_i, pose_i: Pose, pose_j: Pose, K: np.ndarray, step: int = 1):
    """Pixels of view i (every `step`-th, with depth) mapped into view j: (uv_j, z_j)."""
    H, W = depth_i.shape
    u, v = np.meshgrid(
        np.arange(0, W, step, dtype=np.float64), np.arange(0, H, step, dtype=np.float64)
    )
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    x_i = rays * depth_i[::step, ::step].astype(np.float64)[..., None]
    x_j = (pose_j * pose_i.inverse()).transform(x_i.reshape(-1, 3)).reshape(*u.shape, 3)
    z_j = x_j[..., 2]
    uv_j = np.stack(
        [x_j[..., 0] / z_j * K[0, 0] + K[0, 2], x_j[..., 1] / z_j * K[1, 1] + K[1, 2]], -1
    )
    return uv_j, z_j


def _photometric(img_i, depth_i, img_j, depth_j, pose_i, pose_j, K) -> dict:
    """Compare view i with view j warped into it through depth_i and the poses."""
    H, W = depth_i.shape
    uv, z_j = _reproject(depth_i, pose_i, pose_j, K)
    inb = (z_j > 0.05) & (uv[..., 0] >= 0) & (uv[..., 0] <= W - 1)
    inb &= (uv[..., 1] >= 0) & (uv[..., 1] <= H - 1)
    col = np.clip(np.round(uv[..., 0]), 0, W - 1).astype(int)
    row = np.clip(np.round(uv[..., 1]), 0, H - 1).astype(int)
    dj = depth_j.astype(np.float64)[row, col]
    visible = inb & (np.abs(dj - z_j) < 0.03 * z_j)
    mx = uv[..., 0].astype(np.float32)
    my = uv[..., 1].astype(np.float32)
    warped = cv2.remap(_gray(img_j), mx, my, cv2.INTER_LINEAR)
    diff = np.abs(_gray(img_i) - warped)[visible]
    return {
        "overlap": float(visible.mean()),
        "visible_of_inbounds": float(visible.sum() / max(1, inb.sum())),
        "median": float(np.median(diff)) if diff.size else np.inf,
        "mean": float(diff.mean()) if diff.size else np.inf,
        "good": float((diff < 12).mean()) if diff.size else 0.0,
    }


def test_layout_and_depth(scene_dir: Path):
    mapping, queries = _names(scene_dir, "mapping"), _names(scene_dir, "queries")
    assert len(mapping) == 16 and len(queries) == 4
    assert not set(mapping) & set(queries)
    images = sorted(p.name for p in (scene_dir / "images").iterdir())
    assert images == sorted(mapping + queries)
    meta = json.loads((scene_dir / "scene.json").read_text())
    assert meta["seed"] == SEED and meta["config"]["num_map"] == 16
    for name in images:
        image = _read_rgb(scene_dir / "images" / name)
        assert image.shape == (480, 640, 3)
        assert image.std() > 20  # textured, not blank
        depth = np.load(scene_dir / "depth" / (Path(name).stem + ".npy"))
        assert depth.dtype == np.float16 and depth.shape == (480, 640)
        # closed room: every ray hits a surface at a plausible distance
        assert np.isfinite(depth).all()
        assert depth.min() > 0.3 and depth.max() < 13.0


def test_colmap_model_reads_back_with_exact_poses(scene_dir: Path):
    import pycolmap

    rec = pycolmap.Reconstruction(str(scene_dir / "sparse_gt"))
    config = SceneConfig.from_dict(CONF)
    assert len(rec.images) == 20 and len(rec.cameras) == 1
    camera = rec.cameras[1]
    assert camera.model.name == "PINHOLE"
    assert (camera.width, camera.height) == (640, 640 * 3 // 4)
    np.testing.assert_allclose(camera.params, config.camera().params)
    trajectories = make_trajectories(config, seed=SEED)
    expected = dict(
        zip(
            _names(scene_dir, "mapping") + _names(scene_dir, "queries"),
            trajectories["mapping"] + trajectories["queries"],
        )
    )
    for image in rec.images.values():
        dt, dr = pose_error(Pose.from_pycolmap(image.cam_from_world()), expected[image.name])
        assert dt < 1e-6 and dr < 1e-4, (image.name, dt, dr)

    # 3D points: exact reprojections, multi-view tracks
    assert len(rec.points3D) > 300
    errors = []
    for point in rec.points3D.values():
        assert point.track.length() >= 2
        for el in point.track.elements:
            image = rec.images[el.image_id]
            p_cam = image.cam_from_world() * point.xyz
            uv = camera.img_from_cam(np.array([p_cam]))[0]
            errors.append(np.linalg.norm(uv - image.points2D[el.point2D_idx].xy))
    assert np.max(errors) < 1e-3


def test_map_frames_match_a_fresh_render_at_the_read_back_poses(scene_dir: Path):
    """The images on disk are exactly what the renderer produces at the poses in the model."""
    import pycolmap

    rec = pycolmap.Reconstruction(str(scene_dir / "sparse_gt"))
    config = SceneConfig.from_dict(CONF)
    scene = build_scene(config, seed=SEED)
    by_name = {im.name: im for im in rec.images.values()}
    name = _names(scene_dir, "mapping")[5]
    view = scene.render(config.camera(), Pose.from_pycolmap(by_name[name].cam_from_world()))
    np.testing.assert_array_equal(view["image"], _read_rgb(scene_dir / "images" / name))
    depth = np.load(scene_dir / "depth" / (Path(name).stem + ".npy"))
    np.testing.assert_allclose(depth.astype(np.float32), view["depth"], rtol=1e-3)
    # queries are the same view with mild photometric changes, not identical
    qname = _names(scene_dir, "queries")[0]
    qview = scene.render(config.camera(), Pose.from_pycolmap(by_name[qname].cam_from_world()))
    qdiff = np.abs(_gray(_read_rgb(scene_dir / "images" / qname)) - _gray(qview["image"]))
    assert 0.5 < qdiff.mean() < 40


def test_depth_points_lie_on_their_planes():
    """Back-projected depth lands exactly on the plane each pixel was textured from, also for a
    camera close to a corner whose nearby planes extend behind it."""
    config = SceneConfig(width=160, height=120, num_boxes=2, num_pillars=1, texture_ppm=60)
    scene = build_scene(config, seed=1)
    camera = config.camera()
    trajectories = make_trajectories(config, seed=1)
    lx, ly, lz = config.room_size
    # 0.3 m from two walls, looking into the corner, tilted: walls/floor partly behind the camera
    corner_pose = Pose.from_matrix(
        np.linalg.inv(
            _world_from_cam(
                np.array([lx - 0.3, ly - 0.3, lz - 0.4]), np.radians(40), np.radians(25)
            )
        )
    )
    K = camera.K
    for pose in [trajectories["mapping"][0], trajectories["queries"][0], corner_pose]:
        view = scene.render(camera, pose)
        depth, ids = view["depth"], view["plane_ids"]
        assert (ids >= 0).all() and np.isfinite(depth).all()
        H, W = depth.shape
        u, v = np.meshgrid(np.arange(W), np.arange(H))
        rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones((H, W))], -1)
        world = pose.inverse().transform((rays * depth[..., None]).reshape(-1, 3))
        flat_ids = ids.ravel()
        for k in np.unique(flat_ids):
            plane = scene.planes[k]
            rel = world[flat_ids == k] - plane.origin
            dist = np.abs(rel @ plane.normal)
            assert dist.max() < 1e-3 + 1e-5 * depth.max(), (plane.name, dist.max())
            a, b = rel @ plane.u_axis, rel @ plane.v_axis
            assert a.min() > -1e-3 and a.max() < plane.size[0] + 1e-3
            assert b.min() > -1e-3 and b.max() < plane.size[1] + 1e-3
        # z-buffer: no plane hit is nearer than the recorded depth (sampled pixels)
        assert depth.min() > 0.05


def _world_from_cam(center, yaw, pitch) -> np.ndarray:
    forward = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), np.sin(pitch)])
    right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
    down = np.cross(forward, right)
    M = np.eye(4)
    M[:3, :3] = np.stack([right, down, forward], 1)
    M[:3, 3] = center
    return M


def test_photometric_consistency_between_views(scene_dir: Path):
    import pycolmap

    rec = pycolmap.Reconstruction(str(scene_dir / "sparse_gt"))
    by_name = {im.name: Pose.from_pycolmap(im.cam_from_world()) for im in rec.images.values()}
    K = SceneConfig.from_dict(CONF).camera().K
    mapping = _names(scene_dir, "mapping")

    def load(name):
        return (
            _read_rgb(scene_dir / "images" / name),
            np.load(scene_dir / "depth" / (Path(name).stem + ".npy")),
        )

    results, perturbed = [], []
    for name_i, name_j in itertools.pairwise(mapping[:6]):
        img_i, depth_i = load(name_i)
        img_j, depth_j = load(name_j)
        res = _photometric(img_i, depth_i, img_j, depth_j, by_name[name_i], by_name[name_j], K)
        results.append(res)
        # negative control: the same pair with view j's pose off by 1 degree of yaw
        delta = Pose.from_matrix(_rot_y(np.radians(1.0)))
        bad = _photometric(
            img_i, depth_i, img_j, depth_j, by_name[name_i], delta * by_name[name_j], K
        )
        perturbed.append(bad)
    checked = 0
    for res, bad in zip(results, perturbed):
        if res["overlap"] < 0.15:  # consecutive frames may turn away from each other
            continue
        checked += 1
        assert res["visible_of_inbounds"] > 0.8, res
        assert res["mean"] < 4.0 and res["median"] < 2.0 and res["good"] > 0.9, res
        assert bad["mean"] > 3 * res["mean"] + 5 and bad["good"] < res["good"] - 0.1, (res, bad)
    assert checked >= 4, results


def _rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    M = np.eye(4)
    M[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    return M


def test_queries_overlap_the_map(scene_dir: Path):
    """Every query sees a good part of what some map frame sees (a localizable setup)."""
    import pycolmap

    rec = pycolmap.Reconstruction(str(scene_dir / "sparse_gt"))
    by_name = {im.name: Pose.from_pycolmap(im.cam_from_world()) for im in rec.images.values()}
    K = SceneConfig.from_dict(CONF).camera().K
    map_depths = {
        n: np.load(scene_dir / "depth" / (Path(n).stem + ".npy"))
        for n in _names(scene_dir, "mapping")
    }
    for q in _names(scene_dir, "queries"):
        depth_q = np.load(scene_dir / "depth" / (Path(q).stem + ".npy"))
        best = 0.0
        for m, depth_m in map_depths.items():
            uv, z = _reproject(depth_q, by_name[q], by_name[m], K, step=4)
            inb = (z > 0.05) & (uv[..., 0] >= 0) & (uv[..., 0] <= 639)
            inb &= (uv[..., 1] >= 0) & (uv[..., 1] <= 479)
            col = np.clip(np.round(uv[..., 0]), 0, 639).astype(int)
            row = np.clip(np.round(uv[..., 1]), 0, 479).astype(int)
            vis = inb & (np.abs(depth_m.astype(np.float64)[row, col] - z) < 0.03 * z)
            best = max(best, float(vis.mean()))
        assert best > 0.3, (q, best)
        # and it is not a copy of a map frame
        centers = [by_name[m].center for m in map_depths]
        assert min(np.linalg.norm(c - by_name[q].center) for c in centers) > 0.1


def test_sift_features_are_plentiful_and_agree_with_poses(scene_dir: Path):
    import pycolmap

    sift = cv2.SIFT_create()
    names = _names(scene_dir, "mapping") + _names(scene_dir, "queries")
    feats = {}
    for name in names:
        kps, desc = sift.detectAndCompute(
            _gray(_read_rgb(scene_dir / "images" / name)).astype(np.uint8), None
        )
        assert len(kps) >= 300, (name, len(kps))
        feats[name] = (np.array([k.pt for k in kps]), desc)

    rec = pycolmap.Reconstruction(str(scene_dir / "sparse_gt"))
    by_name = {im.name: Pose.from_pycolmap(im.cam_from_world()) for im in rec.images.values()}
    K = SceneConfig.from_dict(CONF).camera().K
    Kinv = np.linalg.inv(K)
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    mapping, queries = _names(scene_dir, "mapping"), _names(scene_dir, "queries")
    nearest = min(
        mapping, key=lambda m: np.linalg.norm(by_name[m].center - by_name[queries[0]].center)
    )
    for a, b in [(mapping[0], mapping[1]), (queries[0], nearest)]:
        (pa, da), (pb, db) = feats[a], feats[b]
        pairs = [m for m, n in matcher.knnMatch(da, db, k=2) if m.distance < 0.8 * n.distance]
        xa = pa[[m.queryIdx for m in pairs]]
        xb = pb[[m.trainIdx for m in pairs]]
        # OpenCV keypoints, like the scene, put the centre of the top-left pixel at (0, 0)
        rel = by_name[b] * by_name[a].inverse()
        tx = np.array(
            [
                [0, -rel.tvec[2], rel.tvec[1]],
                [rel.tvec[2], 0, -rel.tvec[0]],
                [-rel.tvec[1], rel.tvec[0], 0],
            ]
        )
        F = Kinv.T @ tx @ rel.R @ Kinv
        ha = np.c_[xa, np.ones(len(xa))]
        hb = np.c_[xb, np.ones(len(xb))]
        lines = ha @ F.T
        dist = np.abs(np.sum(lines * hb, 1)) / np.hypot(lines[:, 0], lines[:, 1])
        inliers = int((dist < 1.0).sum())
        assert inliers >= 80, (a, b, inliers, len(pairs))
        assert np.median(dist[dist < 1.0]) < 0.4


def test_surfaces_have_distinct_textures():
    config = SceneConfig(texture_ppm=40)
    scene = build_scene(config, seed=0)
    assert scene.info["num_planes"] == len(scene.planes) >= 6 + 4
    room = [
        t.reshape(-1, 3).astype(np.float64) for t in map(scene.texture, range(6))
    ]  # walls, floor, ceiling
    means = np.array([t.mean(0) for t in room])
    for i, j in itertools.combinations(range(6), 2):
        assert np.linalg.norm(means[i] - means[j]) > 8, (i, j, means[i], means[j])
    for tex in map(scene.texture, range(len(scene.planes))):
        gray = cv2.cvtColor(tex, cv2.COLOR_RGB2GRAY)
        assert cv2.Laplacian(gray, cv2.CV_32F).std() > 5  # rich in edges and corners
    with pytest.raises(ValueError, match="PINHOLE"):
        scene.render(Camera("SIMPLE_RADIAL", 64, 48, (50.0, 32, 24, 0.1)), Pose.identity())


def test_deterministic_for_a_seed(tmp_path: Path):
    conf = {
        "width": 160,
        "height": 120,
        "num_map": 3,
        "num_queries": 2,
        "texture_ppm": 50,
        "num_points": 200,
    }

    def digest(out: Path) -> dict:
        return {
            p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != "scene.json"
        }

    generate_scene(tmp_path / "a", conf, seed=7, progress=False)
    generate_scene(tmp_path / "b", conf, seed=7, progress=False)
    generate_scene(tmp_path / "c", conf, seed=8, progress=False)
    da, db, dc = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert da == db
    assert da["images/0000.png"] != dc["images/0000.png"]
    # textures do not depend on how many frames are rendered
    more = generate_scene(tmp_path / "d", {**conf, "num_map": 4}, seed=7, progress=False)
    assert more["num_images"] == 6
    assert digest(tmp_path / "d")["images/0000.png"] == da["images/0000.png"]


def test_regenerating_into_a_scene_removes_stale_frames(tmp_path: Path):
    conf = {
        "width": 96,
        "height": 64,
        "num_map": 4,
        "num_queries": 1,
        "texture_ppm": 40,
        "num_points": 0,
    }
    generate_scene(tmp_path, conf, seed=0, progress=False)
    assert len(list((tmp_path / "images").iterdir())) == 5
    generate_scene(tmp_path, {**conf, "num_map": 2}, seed=0, progress=False)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        "0000.png",
        "0001.png",
        "0002.png",
    ]
    assert len(list((tmp_path / "depth").iterdir())) == 3
    assert (tmp_path / "sparse_gt" / "points3D.txt").read_text().count("\n") == 3  # header only


def test_photo_textures(tmp_path: Path, data_dir: Path):
    photos = data_dir / "photos" / "sacre_coeur"
    conf = {
        "width": 160,
        "height": 120,
        "num_map": 2,
        "num_queries": 1,
        "texture_ppm": 60,
        "num_points": 0,
        "image_format": "jpg",
    }
    summary = generate_scene(
        tmp_path / "photo", {**conf, "texture_dir": photos}, seed=0, progress=False
    )
    assert summary["textures"] == str(photos)
    generate_scene(tmp_path / "proc", conf, seed=0, progress=False)
    a = _read_rgb(tmp_path / "photo" / "images" / "0000.jpg").astype(np.float32)
    b = _read_rgb(tmp_path / "proc" / "images" / "0000.jpg").astype(np.float32)
    assert a.std() > 15 and np.abs(a - b).mean() > 20


@pytest.mark.parametrize(
    "conf, match",
    [
        ({"width": 0}, "image size"),
        ({"height": 100.5}, "integer"),
        ({"num_map": 1}, "num_map"),
        ({"num_queries": -1}, "num_queries"),
        ({"room_size": (2.0, 7.0, 3.0)}, "room_size"),
        ({"room_size": (10.0, 7.0)}, "room_size"),
        ({"camera_height": 2.9}, "camera_height"),
        ({"texture_ppm": 5}, "texture_ppm"),
        ({"image_format": "bmp"}, "image_format"),
        ({"query_offset": 2.5}, "query_offset"),
        ({"query_noise_std": -1.0}, "query_noise_std"),
        ({"focal": -100.0}, "focal"),
        ({"yaw_sweep_deg": 120.0}, "yaw_sweep_deg"),
        ({"texture_dir": "no/such/folder"}, "texture_dir"),
        ({"bogus": 1}, "unknown SceneConfig keys"),
        ({"camera_height": "high"}, "camera_height"),
        ({"query_offset": float("nan")}, "query_offset"),
    ],
)
def test_bad_config_raises_value_error(conf, match):
    with pytest.raises(ValueError, match=match):
        SceneConfig.from_dict(conf)


def test_bad_arguments_raise_value_error(tmp_path: Path):
    small = {"width": 64, "height": 48, "num_map": 2, "num_queries": 0, "texture_ppm": 30}
    with pytest.raises(ValueError, match="seed"):
        generate_scene(tmp_path / "s", small, seed=-1)
    with pytest.raises(ValueError, match="config must be"):
        generate_scene(tmp_path / "s", "not a config")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        generate_scene(tmp_path / "busy", small, progress=False)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        generate_scene(tmp_path / "file", small, progress=False)
    with pytest.raises(ValueError, match="texture_dir"):
        SceneConfig(texture_dir=tmp_path / "busy")  # a folder without images


def test_cli_make_scene(tmp_path: Path, capsys):
    from supergf_ros.cli import main

    out = tmp_path / "cli"
    args = [
        "make-scene",
        str(out),
        "--seed",
        "2",
        "--num-map",
        "3",
        "--num-queries",
        "1",
        "--width",
        "128",
        "--height",
        "96",
        "--json",
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_images"] == 4 and summary["seed"] == 2
    assert _names(out, "mapping") == ["0000.png", "0001.png", "0002.png"]
    assert _names(out, "queries") == ["0003.png"]
    assert main(["make-scene", str(tmp_path / "bad"), "--num-map", "1"]) == 2
    assert "num_map" in capsys.readouterr().err


def test_loads_as_a_project_dataset(scene_dir: Path):
    """The scene is a dataset in the project layout, readable by the dataset reader."""
    from supergf_ros.datasets import Dataset, read_image_list

    dataset = Dataset(scene_dir)
    mapping = read_image_list(scene_dir / "mapping.txt")
    queries = read_image_list(scene_dir / "queries.txt")
    assert dataset.check_names(mapping + queries, need_pose=True) == mapping + queries
    assert dataset.camera(queries[0]) == SceneConfig.from_dict(CONF).camera()
    expected = make_trajectories(CONF, seed=SEED)["queries"][0]
    assert pose_error(dataset.cam_from_world(queries[0]), expected)[0] < 1e-6
    assert dataset.read_image(mapping[0]).shape == (480, 640, 3)


def test_superpoint_finds_plenty_of_features(scene_dir: Path, superpoint_weights: Path):
    from supergf_ros.features import create_extractor

    extractor = create_extractor("superpoint", weights=superpoint_weights)
    for name in [_names(scene_dir, "mapping")[0], _names(scene_dir, "queries")[0]]:
        features = extractor.extract(_read_rgb(scene_dir / "images" / name))
        assert len(features) >= 300, (name, len(features))
