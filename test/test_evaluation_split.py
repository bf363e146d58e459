"""The dusk proxy (seeded, darkens as specified), the split-eval command on a tiny real split, and
contrast normalization changing what a dark query matches."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from supergf_ros.cli import main
from supergf_ros.datasets import Dataset
from supergf_ros.datasets.dusk import DUSK, dusk_image, dusk_rng, write_dusk_dataset
from supergf_ros.evaluation.split_eval import Split, parse_option, prepare_split, split_names
from supergf_ros.features import to_grayscale
from supergf_ros.features.contrast import normalize_contrast

SCENE = ("strecha", "fountain-P11")
TINY = ["0002.jpg", "0003.jpg", "0004.jpg", "0005.jpg"]


@pytest.fixture(scope="module")
def fountain(data_dir: Path) -> Dataset:
    return Dataset(data_dir.joinpath(*SCENE))


@pytest.fixture(scope="module")
def daylight(fountain: Dataset) -> np.ndarray:
    image = fountain.read_image("0003.jpg")
    return cv2.resize(image, (512, 341), interpolation=cv2.INTER_AREA)


def test_dusk_is_a_function_of_seed_and_name(daylight: np.ndarray):
    a = dusk_image(daylight, dusk_rng(7, "0003.jpg"))
    assert a.shape == daylight.shape and a.dtype == np.uint8
    assert np.array_equal(a, dusk_image(daylight, dusk_rng(7, "0003.jpg")))
    assert not np.array_equal(a, dusk_image(daylight, dusk_rng(8, "0003.jpg")))
    assert not np.array_equal(a, dusk_image(daylight, dusk_rng(7, "0005.jpg")))
    with pytest.raises(ValueError, match="non-negative integer"):
        dusk_rng(-1, "0003.jpg")


def test_dusk_darkens_casts_blue_blurs_and_adds_noise(daylight: np.ndarray):
    clean = replace(DUSK, read_noise=0.0, shot_gain=0.0, blur_sigma=0.0)
    x = daylight.astype(np.float64) / 255.0
    expected = np.clip(x**1.8 * 0.3 * np.asarray(DUSK.cast), 0, 1) * 255.0
    tone = dusk_image(daylight, dusk_rng(0, "a"), clean).astype(np.float64)
    assert np.abs(tone - expected).max() <= 0.5 + 1e-6  # exactly the tone curve, rounded
    assert tone.mean() < 0.25 * daylight.mean()  # x0.3 and gamma 1.8 on a daylight photo
    ratio_before = daylight[..., 2].mean() / daylight[..., 0].mean()
    assert tone[..., 2].mean() / tone[..., 0].mean() > 1.3 * ratio_before  # blue cast

    blurred = dusk_image(daylight, dusk_rng(0, "a"), replace(clean, blur_sigma=DUSK.blur_sigma))
    sharpness = [cv2.Laplacian(v.astype(np.float32), cv2.CV_32F).var() for v in (tone, blurred)]
    assert sharpness[1] < 0.7 * sharpness[0]

    noisy = dusk_image(daylight, dusk_rng(0, "a"), replace(DUSK, blur_sigma=0.0)).astype(float)
    sigma = np.sqrt(DUSK.read_noise**2 + DUSK.shot_gain * expected)
    dark = (expected > 2 * DUSK.read_noise) & (expected < 200)  # unclipped pixels
    z = (noisy - tone)[dark] / sigma[dark]
    assert 0.8 < z.std() < 1.2 and abs(z.mean()) < 0.1


def test_auto_contrast_equalizes_dark_images_only(daylight: np.ndarray):
    gray = to_grayscale(daylight)
    assert np.array_equal(normalize_contrast(daylight, "auto"), gray)  # as extracted before
    dusk = to_grayscale(dusk_image(daylight, dusk_rng(0, "0003.jpg")))
    assert np.array_equal(normalize_contrast(dusk, "auto"), cv2.equalizeHist(dusk))
    with pytest.raises(ValueError, match="unknown contrast normalization"):
        normalize_contrast(gray, "retinex")


def test_dusk_dataset_keeps_the_model(fountain: Dataset, tmp_path: Path):
    out = write_dusk_dataset(fountain, ["0003.jpg"], 5, tmp_path / "dusk")
    dusk = Dataset(out)
    pose, truth = dusk.cam_from_world("0003.jpg"), fountain.cam_from_world("0003.jpg")
    assert np.allclose(pose.qvec, truth.qvec) and np.allclose(pose.tvec, truth.tvec)
    expected = dusk_image(fountain.read_image("0003.jpg"), dusk_rng(5, "0003.jpg"))
    assert np.array_equal(dusk.read_image("0003.jpg"), expected)  # PNG: lossless


def test_split_names_and_options():
    names = [f"image_{c}/{i:06d}.png" for c in (0, 1) for i in range(10)]
    m, q = split_names(names, 5, "image_0/", "image_1/")
    assert m == ["image_0/000000.png", "image_0/000005.png"] and len(q) == 10
    m, q = split_names(names, 5, "image_0/", "image_1/", map_offset=2)  # another phase
    assert m == ["image_0/000002.png", "image_0/000007.png"] and len(q) == 10
    m, q = split_names(names, 3, "image_0/", map_offset=1)
    assert m == ["image_0/000001.png", "image_0/000004.png", "image_0/000007.png"]
    assert "image_0/000000.png" in q and not set(m) & set(q)
    for bad in (5, -1):
        with pytest.raises(ValueError, match=r"--map-offset must be in \[0, --map-every\)"):
            split_names(names, 5, "image_0/", "image_1/", map_offset=bad)
    m, q = split_names([f"{i:04d}.jpg" for i in range(5)])
    assert m == ["0000.jpg", "0002.jpg", "0004.jpg"] and q == ["0001.jpg", "0003.jpg"]
    with pytest.raises(ValueError, match="no query images"):
        split_names(names, 1, "image_0/")
    assert parse_option("ratio_threshold=0.9") == ("ratio_threshold", 0.9)
    assert parse_option("contrast_normalization=clahe") == ("contrast_normalization", "clahe")
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_option("ratio_threshold")


def tiny_dataset(source: Dataset, names: list[str], out: Path) -> Path:
    """`names` of `source` as a dataset of their own (image links + a text model of them)."""
    (out / "sparse_gt").mkdir(parents=True)
    (out / "images").mkdir()
    lines = (source.model_dir / "images.txt").read_text().splitlines()
    keep, i = [], 0
    while i < len(lines):
        if lines[i].startswith("#") or not lines[i].strip():
            i += 1
            continue
        if lines[i].split()[-1] in names:
            keep += lines[i : i + 2]
        i += 2
    (out / "sparse_gt" / "images.txt").write_text("\n".join(keep) + "\n")
    for f in ("cameras.txt", "points3D.txt"):
        (out / "sparse_gt" / f).write_text((source.model_dir / f).read_text())
    for n in names:
        (out / "images" / n).symlink_to(source.image_path(n).resolve())
    return out


@pytest.fixture(scope="module")
def tiny_split(fountain: Dataset, superpoint_weights: Path, tmp_path_factory) -> Split:
    """Map 0002, 0004 (512 px, 512 keypoints); queries 0003, 0005 at dusk (seed 3)."""
    root = tmp_path_factory.mktemp("tiny_split")
    return prepare_split(
        tiny_dataset(fountain, TINY, root / "tiny"),
        dusk_seed=3,
        superpoint_weights=superpoint_weights,
        map_extractor_conf={"resize_max": 512, "max_keypoints": 512},
        work_dir=root / "work",
        progress=False,
    )


@pytest.mark.slow
def test_split_eval_command_reports_per_top_k(tiny_split: Split, capsys):
    work_dir = tiny_split.map_path.parent
    args = ["split-eval", str(tiny_split.dataset.root), "--dusk", "3", "--top-k", "1,2",
            "--json", "--quiet", "--superpoint-weights", str(tiny_split.weights),
            "--resize-max", "512", "--max-keypoints", "512", "--work-dir", str(work_dir),
            "--set", "contrast_normalization=clahe"]  # fmt: skip
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["map"] == str(tiny_split.map_path)  # the cached map of the same split
    assert report["split"]["num_map"] == 2 and report["split"]["num_queries"] == 2
    assert report["options"]["contrast_normalization"] == "clahe"
    assert set(report["top_k"]) == {"1", "2"}
    for m in report["top_k"].values():
        assert {"recall", "median_translation_m", "median_rotation_deg", "nees_median"} <= set(m)
        assert m["fraction_inside_99"] is None or 0.0 <= m["fraction_inside_99"] <= 1.0
        assert m["num_queries"] == 2 and "0.25m_2deg" in m["recall"]
        axes = m["median_error_camera_m"]  # the position error in the camera's axes
        assert set(axes) == {"lateral", "vertical", "axial"}
        assert np.linalg.norm(list(axes.values())) >= 0.5 * m["median_translation_m"]
    dusk_files = sorted(p.name for p in work_dir.glob("dusk_*/images/*"))
    assert dusk_files == ["0003.jpg", "0005.jpg"]  # the queries, darkened
    assert len(list(work_dir.glob("map_*.h5"))) == 1
    assert main([*args[:-2], "--map-every", "1", "--query-prefix", "0003"]) == 0
    report = json.loads(capsys.readouterr().out)  # another split: another map
    assert report["split"]["num_map"] == 4 and report["options"]["contrast_normalization"] == "auto"
    assert len(list(work_dir.glob("map_*.h5"))) == 2
    assert main([*args[:-2], "--map-every", "2", "--map-offset", "1"]) == 0
    report = json.loads(capsys.readouterr().out)  # map 0003, 0005; queries 0002, 0004
    assert report["split"]["map_offset"] == 1 and report["split"]["num_map"] == 2
    assert len(list(work_dir.glob("map_*.h5"))) == 3  # another phase: another map


@pytest.mark.slow
def test_contrast_normalization_changes_what_a_dusk_query_matches(tiny_split: Split):
    from supergf_ros.localization import Localizer

    name = "0003.jpg"
    image, camera = tiny_split.query_source.read_image(name), tiny_split.dataset.camera(name)
    results = {}
    for method in ("none", "equalize"):
        conf = {"superpoint_weights": str(tiny_split.weights), "contrast_normalization": method}
        loc = Localizer.from_map(tiny_split.map_path, conf)
        features, cam = loc.extract(image, camera)
        results[method] = (features, loc.localize_features(features, cam, top_k=2))
    (f0, r0), (f1, r1) = results["none"], results["equalize"]
    assert r0.success and r1.success
    shared = len(set(map(tuple, f0.keypoints.round())) & set(map(tuple, f1.keypoints.round())))
    assert shared < 0.8 * len(f0)  # other keypoints are detected
    print(f"dusk {name}: inliers {r0.num_inliers} -> {r1.num_inliers} with equalize")
    assert r1.num_inliers > 1.05 * r0.num_inliers


@pytest.mark.slow
def test_map_scales_make_a_multi_scale_map_localized_at_one_scale(tiny_split: Split, capsys):
    """`--map-scales 1,0.5`: the map's keyframes hold both scales' points, queries use one."""
    from supergf_ros.localization.localizer import Localizer
    from supergf_ros.mapping import read_map

    work_dir = tiny_split.map_path.parent
    args = ["split-eval", str(tiny_split.dataset.root), "--top-k", "1", "--json", "--quiet",
            "--superpoint-weights", str(tiny_split.weights), "--resize-max", "512",
            "--max-keypoints", "512", "--work-dir", str(work_dir), "--map-scales", "1,0.5"]  # fmt: skip
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["map"] != str(tiny_split.map_path)  # its own cached map
    multi, single = read_map(report["map"]), read_map(tiny_split.map_path)
    assert multi.extractor["config"]["scales"] == [1.0, 0.5]
    assert "scales" not in single.extractor["config"]
    assert len(multi.keypoints) > 1.2 * len(single.keypoints)
    loc = Localizer.from_map(report["map"], {"superpoint_weights": str(tiny_split.weights)})
    assert loc.extractor.conf["scales"] == [1.0]
    assert report["top_k"]["1"]["num_localized"] == 2
    with pytest.raises(SystemExit):
        main([*args[:-1], "0.5,1"])
    assert "scales must start with 1.0" in capsys.readouterr().err
