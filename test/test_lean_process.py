"""A lean ONNX Runtime process: with SuperPoint + SuperGF on ONNX Runtime, once their ONNX files
are cached (here prepared by `supergf-ros export`, as for a robot image), a Localizer, the
`localize` command and the real node start and localize without importing PyTorch; without PyTorch and without a cache the
start-up fails with a ValueError naming the command; the cached network gives the PyTorch
descriptors and is the file today's ONNX Runtime path exports (same key)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from supergf_ros.cli import main
from supergf_ros.features import LocalFeatures

REPO = Path(__file__).resolve().parents[1]
SMALL = {"width": 320, "height": 240, "num_map": 8, "num_queries": 2}


@pytest.fixture(scope="module")
def scene(cache_dir, superpoint_weights) -> dict:
    """A small synthetic room and its SuperPoint + SuperGF-dense map, built once and cached."""
    from supergf_ros.datasets import read_image_list
    from supergf_ros.datasets.synthetic import SceneConfig, generate_scene
    from supergf_ros.mapping.build_map import build_map

    root = cache_dir / "lean_superpoint_supergf"
    scene_dir, map_path, done = root / "scene", root / "map.h5", root / "done"
    if not done.is_file():
        root.mkdir(parents=True, exist_ok=True)
        generate_scene(scene_dir, SceneConfig(**SMALL), seed=0)
        build_map(
            scene_dir,
            map_path,
            image_names=read_image_list(scene_dir / "mapping.txt"),
            extractor_conf={"weights": str(superpoint_weights)},
            global_name="supergf-dense",
            backend="onnxruntime",
            progress=False,
        )
        done.write_text("ok\n")
    queries = read_image_list(scene_dir / "queries.txt")
    return {"scene": scene_dir, "map": map_path, "queries": queries}


@pytest.fixture(scope="module")
def prepared_cache(superpoint_weights, tmp_path_factory) -> Path:
    """A cache root filled by `supergf-ros export` (what a robot image gets copied)."""
    root = tmp_path_factory.mktemp("lean_cache")
    common = ["--format", "onnx", "--cache-dir", str(root), "--no-check", "--json"]
    weights = ["--weights", str(superpoint_weights)]
    assert main(["export", "--model", "superpoint", *weights, *common]) == 0
    assert main(["export", "--model", "supergf-dense", *common]) == 0
    return root


def _python(script: str, *args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SUPERGF_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-c", script, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


LEAN_LOCALIZER = """
import sys
import numpy as np
from supergf_ros.datasets import Dataset
from supergf_ros.localization import Localizer
map_path, scene, weights, query, out = sys.argv[1:6]
loc = Localizer.from_map(map_path, {"superpoint_weights": weights, "backend": "onnxruntime",
                                    "device": "cpu"})
assert "torch" not in sys.modules, "torch imported at start-up"
ds = Dataset(scene)
r = loc.localize(ds.read_image(query), ds.camera(query))
assert r.success, r.reason
f = loc.extractor.extract(ds.read_image(query))
np.savez(out, keypoints=f.keypoints, scores=f.scores, descriptors=f.descriptors, dense=f.dense,
         global_descriptor=loc.aggregator(f))
assert "torch" not in sys.modules, "torch imported while localizing"
from supergf_ros.cli import main
queries = out + ".txt"
open(queries, "w").write(query)
code = main(["localize", map_path, scene, "--queries", queries, "--out", out + ".results.txt",
             "--superpoint-weights", weights, "--backend", "onnxruntime", "--quiet"])
assert code == 0 and "torch" not in sys.modules, "the localize command imported torch"
print("lean ok")
"""


def test_localizer_on_onnxruntime_never_imports_torch(
    scene, prepared_cache, superpoint_weights, tmp_path
):
    from supergf_ros.models.aggregators import create_aggregator

    out = tmp_path / "query.npz"
    args = [str(scene["map"]), str(scene["scene"]), str(superpoint_weights), scene["queries"][0]]
    proc = _python(LEAN_LOCALIZER, *args, str(out), cache=prepared_cache)
    assert proc.returncode == 0 and "lean ok" in proc.stdout, proc.stderr[-3000:]
    assert "loading the checkpoint with torch" not in proc.stderr
    saved = np.load(out)
    features = LocalFeatures(
        saved["keypoints"], saved["scores"], saved["descriptors"], saved["dense"], (320, 240)
    )
    torch_agg = create_aggregator("supergf-dense")  # the shipped checkpoint, on PyTorch
    assert np.abs(saved["global_descriptor"] - torch_agg(features)).max() < 1e-4


def test_cached_info_names_the_onnx_file_the_checkpoint_exports(prepared_cache):
    from supergf_ros.models.checkpoint import load_checkpoint, model_key
    from supergf_ros.models.spec import read_info
    from supergf_ros.models.weights import default_weights_path

    path = default_weights_path("dense")
    model, meta = load_checkpoint(path)
    info = read_info("supergf-dense", meta["weights_sha256"], prepared_cache / "onnx")
    assert info is not None and info.conf == json.loads(json.dumps(model.conf))
    assert info.key() == model_key(model, meta["weights_sha256"]) and info.dim == model.dim
    assert list(prepared_cache.joinpath("onnx").glob(f"supergf-dense-{info.key()[:16]}.onnx"))


NO_TORCH = """
import sys
sys.modules["torch"] = None  # as on a robot without PyTorch: `import torch` fails
from supergf_ros.localization import Localizer
try:
    Localizer.from_map(sys.argv[1], {"superpoint_weights": sys.argv[2], "backend": "onnxruntime",
                                     "device": "cpu"})
except ValueError as err:
    print("error:", err)
"""


@pytest.mark.parametrize("cached", ["nothing", "supergf"])
def test_without_torch_and_cache_the_error_names_the_export_command(
    scene, prepared_cache, superpoint_weights, tmp_path, cached
):
    missing = "supergf-dense"
    if cached == "supergf":  # SuperGF's info and export copied, SuperPoint's missing
        (tmp_path / "onnx").mkdir()
        for path in (prepared_cache / "onnx").glob("supergf-dense-*"):
            (tmp_path / "onnx" / path.name).write_bytes(path.read_bytes())
        missing = "superpoint"
    proc = _python(NO_TORCH, str(scene["map"]), str(superpoint_weights), cache=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "error:" in proc.stdout and "PyTorch is not installed" in proc.stdout, proc.stdout
    assert f"supergf-ros export --format onnx --model {missing}" in proc.stdout, proc.stdout


@pytest.mark.ros
def test_node_on_onnxruntime_never_loads_torch(scene, prepared_cache, superpoint_weights, tmp_path):
    pytest.importorskip("rclpy")
    from ros_testing import IsolatedRos, wait_until
    from test_ros_node import Harness

    from supergf_ros.datasets import Dataset
    from supergf_ros.ros.conversions import numpy_to_image_fields
    from supergf_ros.ros.replay import _peak_rss_mb, _torch_loaded, stop_node

    cmd = [sys.executable, "-m", "supergf_ros.ros.node", "--ros-args"]
    params = {
        "map_path": scene["map"],
        "superpoint_weights": superpoint_weights,
        "backend": "onnxruntime",
        "image_topic": "/test/image",
        "camera_info_topic": "/test/camera_info",
    }
    for key, value in params.items():
        cmd += ["-p", f"{key}:={value}"]
    log = tmp_path / "node.log"
    with IsolatedRos() as ros, open(log, "w") as log_file:
        env = {**ros.env, "SUPERGF_CACHE_DIR": str(prepared_cache)}
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        h = Harness(ros, proc, log, scene)
        try:
            assert wait_until(lambda: h.ready() or proc.poll() is not None, 120.0), h.tail()
            assert proc.poll() is None, f"node died at start-up:\n{h.tail()}"
            assert _torch_loaded(proc.pid) is False, "PyTorch loaded at start-up"
            ds = Dataset(scene["scene"])
            name = scene["queries"][0]
            h.send_camera_info(ds.camera(name))
            fields = numpy_to_image_fields(ds.read_image(name), "rgb8")
            statuses = [h.send(fields) for _ in range(2)]  # a first fix is confirmed by a second
            assert statuses[-1].success, [s.failure_reason for s in statuses]
            assert _torch_loaded(proc.pid) is False, "PyTorch loaded while localizing"
            print(f"node peak RSS {_peak_rss_mb(proc.pid):.0f} MB")
        finally:
            code = stop_node(proc)
        assert code == 0, h.tail()
