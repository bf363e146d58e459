"""INT8 SuperPoint queries against fp32-built Strecha maps, and a lean ONNX Runtime process.

- Strecha (even images map, odd images query, maps built with fp32 torch): with
  `superpoint_precision: int8` every query is within (0.25 m, 2 deg) and the median error stays
  within 1.5x of fp32 ONNX Runtime (plus 1 cm / 0.05 deg: the fp32 medians are millimetres).
- With backend onnxruntime, building a Localizer and localizing one image never imports torch
  (checked in a fresh interpreter), once the ONNX file is cached.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_mapping_build import cached_strecha_map

from supergf_ros.datasets import Dataset
from supergf_ros.geometry import pose_error
from supergf_ros.localization import Localizer

REPO = Path(__file__).resolve().parents[1]


def _errors(map_path: Path, dataset: Dataset, weights: Path, precision: str) -> np.ndarray:
    loc = Localizer.from_map(
        map_path,
        {
            "superpoint_weights": str(weights),
            "backend": "onnxruntime",
            "device": "cpu",
            "superpoint_precision": precision,
        },
    )
    out = []
    for name in dataset.names[1::2]:
        r = loc.localize(dataset.read_image(name), dataset.camera(name))
        truth = dataset.cam_from_world(name)
        out.append(pose_error(r.cam_from_world, truth) if r.success else (np.inf, np.inf))
    return np.array(out)


@pytest.mark.slow
@pytest.mark.parametrize("scene", ["fountain-P11", "Herz-Jesus-P25"])
def test_int8_queries_against_fp32_map(scene, data_dir, superpoint_weights, cache_dir):
    map_path, _ = cached_strecha_map(data_dir, superpoint_weights, cache_dir, scene)
    dataset = Dataset(data_dir / "strecha" / scene)
    fp32 = _errors(map_path, dataset, superpoint_weights, "fp32")
    int8 = _errors(map_path, dataset, superpoint_weights, "int8")
    report = {
        "scene": scene,
        "fp32_median": np.median(fp32, axis=0).tolist(),
        "int8_median": np.median(int8, axis=0).tolist(),
        "int8_max": int8.max(axis=0).tolist(),
    }
    (cache_dir / f"measurements_int8_{scene}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report))
    assert (int8[:, 0] <= 0.25).all() and (int8[:, 1] <= 2.0).all(), int8
    median_fp32, median_int8 = np.median(fp32, axis=0), np.median(int8, axis=0)
    assert median_int8[0] <= 1.5 * median_fp32[0] + 0.01, report
    assert median_int8[1] <= 1.5 * median_fp32[1] + 0.05, report


LEAN_SCRIPT = """
import sys
from supergf_ros.datasets import Dataset
from supergf_ros.localization import Localizer
map_path, scene, weights = sys.argv[1:4]
loc = Localizer.from_map(map_path, {"superpoint_weights": weights, "backend": "onnxruntime",
                                    "device": "cpu"})
dataset = Dataset(scene)
r = loc.localize(dataset.read_image("0001.jpg"), dataset.camera("0001.jpg"))
assert r.success, r.reason
assert "torch" not in sys.modules, "torch was imported"
print("lean ok")
"""


@pytest.mark.slow
def test_onnxruntime_localizer_does_not_import_torch(data_dir, superpoint_weights, cache_dir):
    from supergf_ros.features import create_extractor

    map_path, _ = cached_strecha_map(data_dir, superpoint_weights, cache_dir, "fountain-P11")
    # the ONNX file exists once an ONNX Runtime extractor was built (exporting it needs torch)
    create_extractor("superpoint", weights=str(superpoint_weights), backend="onnxruntime")
    scene = data_dir / "strecha" / "fountain-P11"
    args = [sys.executable, "-c", LEAN_SCRIPT, str(map_path), str(scene), str(superpoint_weights)]
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "lean ok" in proc.stdout, proc.stderr[-2000:]
