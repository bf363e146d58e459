"""Acceptance: localize the odd images of Strecha scenes against a map of the even images."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from test_mapping_build import cached_strecha_map

from supergf_ros.datasets import Dataset
from supergf_ros.geometry import pose_error
from supergf_ros.localization import Localizer


@pytest.mark.slow
@pytest.mark.parametrize("scene", ["fountain-P11", "Herz-Jesus-P25"])
def test_strecha_even_map_odd_queries(
    scene: str, data_dir: Path, superpoint_weights: Path, cache_dir: Path
):
    map_path, summary = cached_strecha_map(data_dir, superpoint_weights, cache_dir, scene)
    dataset = Dataset(data_dir / "strecha" / scene)
    queries = dataset.names[1::2]
    # the map was built with the torch backend; queries run through ONNX Runtime (faster on CPU)
    loc = Localizer.from_map(
        map_path,
        {"superpoint_weights": superpoint_weights, "top_k": 5, "backend": "onnxruntime"},
    )
    errors: dict[int, list] = {5: [], 1: []}
    timings: dict[int, list] = {5: [], 1: []}
    for name in queries:
        image, camera = dataset.read_image(name), dataset.camera(name)
        t = time.perf_counter()
        features = loc.extractor.extract(image)
        t_extract = (time.perf_counter() - t) * 1e3
        for k in (5, 1):
            r = loc.localize_features(features, camera, top_k=k)
            assert len(r.retrieved) == k and r.retrieved[0] in loc.map.keyframe_names
            e = pose_error(r.cam_from_world, dataset.cam_from_world(name)) if r.success else None
            errors[k].append(e)
            if r.success:
                assert r.covariance.shape == (6, 6) and np.all(np.diag(r.covariance) > 0)
                assert r.num_inliers >= 12 and r.reason == ""
            timings[k].append({**r.timings_ms, "extract": t_extract})
    report = {"scene": scene, "map": summary}
    for k in (5, 1):
        ok = [e is not None and e[0] <= 0.25 and e[1] <= 2.0 for e in errors[k]]
        found = np.array([e for e in errors[k] if e is not None]).reshape(-1, 2)
        report[f"top{k}"] = {
            "recall_0.25m_2deg": float(np.mean(ok)),
            "median_translation_m": float(np.median(found[:, 0])),
            "median_rotation_deg": float(np.median(found[:, 1])),
            "median_timings_ms": {
                s: float(np.median([t[s] for t in timings[k]])) for s in timings[k][0]
            },
        }
        assert np.mean(ok) >= 0.95, (k, errors[k])
        assert np.median(found[:, 0]) < 0.05
    (cache_dir / f"measurements_localization_{scene}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


@pytest.mark.slow
def test_localize_image_end_to_end_with_rerank(
    data_dir: Path, superpoint_weights: Path, cache_dir: Path
):
    map_path, _ = cached_strecha_map(data_dir, superpoint_weights, cache_dir, "fountain-P11")
    dataset = Dataset(data_dir / "strecha" / "fountain-P11")
    loc = Localizer.from_map(
        map_path,
        {"superpoint_weights": superpoint_weights, "rerank": True, "rerank_keep": 2, "top_k": 4},
    )
    name = "0005.jpg"
    r = loc.localize(dataset.read_image(name), dataset.camera(name))
    assert r.success, r.reason
    dt, dr = pose_error(r.cam_from_world, dataset.cam_from_world(name))
    assert dt < 0.05 and dr < 0.5
    # re-ranked by homography inliers: the neighbours of image 5 come first
    assert set(r.retrieved) <= {"0004.jpg", "0006.jpg", "0002.jpg", "0008.jpg"}
    assert len(r.retrieved) == 2 and set(r.retrieved) == {"0004.jpg", "0006.jpg"}
    assert set(r.timings_ms) >= {"extract", "global", "retrieval", "matching", "pose", "total"}
    assert r.timings_ms["total"] >= r.timings_ms["extract"] > 0
    d = json.loads(json.dumps(r.to_dict()))
    assert d["success"] and len(d["cam_from_world"]["qvec"]) == 4 and len(d["covariance"]) == 6
