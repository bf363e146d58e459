#!/usr/bin/env bash
# One-shot GPU check for the inference backends (issue 6), for a CUDA machine without the repo's
# .venv: uses the machine's Python (PyTorch with CUDA; onnxruntime; TensorRT optional).
#   1. makes the working tree importable (pip install --no-deps -e ., else PYTHONPATH),
#      installing missing small dependencies when a package index is reachable;
#   2. runs the gpu-marked tests;
#   3. measures SuperPoint (640x480), SuperGF-dense and SuperGF-sparse (1024 keypoints; paper
#      config with random weights, and the shipped weights) per available backend: median ms
#      after warm-up, synchronized;
#   4. measures the GPU-side post-processing: SuperPoint extraction 640x480 with post-processing
#      on the GPU (torch) vs on the host (numpy), and mutual-NN matching of 1024 query descriptors
#      against 5 keyframes of 2000 on the GPU (DeviceMatcher, one host copy) vs numpy;
#   5. prints one JSON object (also written to $OUT/gpu_check.json when $OUT is set).
# Usage: bash scripts/gpu_check.sh    (about 3-5 minutes; PYTHON=python3.12 to pick a Python)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT:-$(mktemp -d)}
mkdir -p "$OUT_DIR"
export SUPERGF_CACHE_DIR="$OUT_DIR/cache"

log() { echo "[gpu_check] $*" >&2; }

# 1. make the package importable
for spec in ${SKIP_INSTALL:+none:none} cv2:opencv-python-headless==5.0.0.93 onnx:onnx==1.23.2 onnxruntime:onnxruntime==1.32.0 \
    tqdm:tqdm==4.70.1 pytest:pytest==9.2.0 yaml:PyYAML==6.0.4 scipy:scipy==1.17.1; do
    mod=${spec%%:*}
    [ "$mod" = none ] && break
    if ! "$PY" -c "import $mod" 2>/dev/null; then
        log "installing ${spec#*:}"
        "$PY" -m pip install --quiet "${spec#*:}" >&2 || log "could not install ${spec#*:}"
    fi
done
if [ -n "${SKIP_INSTALL:-}" ]; then
    log "SKIP_INSTALL set: using PYTHONPATH only"
elif ! "$PY" -m pip install --quiet --no-deps --no-build-isolation -e . >&2; then
    log "editable install failed; using PYTHONPATH"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >&2 || true

# 2. gpu tests (and the CPU backend tests, to be sure nothing regressed on this machine)
"$PY" -m pytest -q -rs -p no:cacheprovider --junitxml="$OUT_DIR/gpu_tests.xml" \
    test/test_inference_tensorrt.py test/test_inference_backends.py \
    test/test_features_torch_postprocess.py test/test_matching_device.py \
    test/test_localization_backends.py >"$OUT_DIR/pytest.log" 2>&1
PYTEST_RC=$?
tail -n 25 "$OUT_DIR/pytest.log" >&2

# 3. - 5. latency per backend, GPU-side post-processing and matching, summary JSON
PYTEST_RC=$PYTEST_RC OUT_DIR=$OUT_DIR "$PY" - <<'EOF'
import json, os, platform, time, xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch

from supergf_ros.export import model_spec
from supergf_ros.inference.backends import (
    available_backends, create_runner, probe_capabilities, select_backend,
)
from supergf_ros.inference.runners import time_runner
from supergf_ros.inference.spec import example_feed

out_dir = Path(os.environ["OUT_DIR"])
caps = probe_capabilities()
weights = Path("../shared/weights/superpoint_v1.pth")
result = {
    "gpu": list(caps.gpu_names),
    "torch": caps.torch,
    "torch_cuda": caps.torch_cuda,
    "cuda_runtime": torch.version.cuda,
    "tensorrt": caps.tensorrt,
    "ort_providers": list(caps.ort_providers),
    "python": platform.python_version(),
    "backends": available_backends(caps),
    "auto_choice": None,
    "latency_ms": {},
    "errors": {},
}
try:
    choice = select_backend("auto")
    result["auto_choice"] = {"backend": choice.backend, "device": choice.device, "reason": choice.reason}
except ValueError as err:
    result["errors"]["auto"] = str(err)

try:
    suite = ET.parse(out_dir / "gpu_tests.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    result["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
except Exception as err:  # noqa: BLE001
    result["tests"] = {"unreadable": str(err)}
result["tests"]["pytest_rc"] = int(os.environ["PYTEST_RC"])

configs = [("torch", "cpu", "fp32"), ("onnxruntime", "cpu", "fp32")]
for backend, device, precision in [("torch", "cuda", "fp32"), ("torch", "cuda", "fp16"),
                                   ("onnxruntime", "cuda", "fp32"), ("tensorrt", "cuda", "fp32"),
                                   ("tensorrt", "cuda", "fp16")]:
    if result["backends"][f"{backend}:cuda"] == "available":
        configs.append((backend, device, precision))

models = {
    "superpoint": dict(weights=weights if weights.is_file() else None, random_init=not weights.is_file(),
                       max_image_size=640, opt_size=(640, 480)),
    "supergf-dense": dict(random_init=True, max_image_size=640, opt_size=(640, 480)),
    "supergf-sparse": dict(random_init=True, max_keypoints=2048, opt_keypoints=1024),
    # the shipped CPU-sized weights (residual slots), as the node runs them by default
    "supergf-dense:shipped": dict(max_image_size=640, opt_size=(640, 480)),
    "supergf-sparse:shipped": dict(max_keypoints=2048, opt_keypoints=1024),
}
for name, kwargs in models.items():
    spec = model_spec(name.split(":")[0], **kwargs)
    feed = example_feed(spec)
    reference = None
    for backend, device, precision in configs:
        label = f"{backend}:{device}:{precision}"
        try:
            t0 = time.perf_counter()
            runner = create_runner(spec, backend, device, precision)
            setup_s = time.perf_counter() - t0
            repeats = 5 if device == "cpu" else 50
            stats = time_runner(runner, feed, warmup=3, repeats=repeats)
            outputs = runner(feed)
            if reference is None:
                reference = outputs
            diff = max(float(np.max(np.abs(outputs[k] - reference[k]))) for k in reference)
            result["latency_ms"].setdefault(name, {})[label] = {
                "median": round(stats["median_ms"], 3), "min": round(stats["min_ms"], 3),
                "setup_s": round(setup_s, 2), "max_abs_diff_vs_torch_cpu": diff,
            }
        except Exception as err:  # noqa: BLE001 - report and go on
            result["errors"][f"{name}/{label}"] = f"{type(err).__name__}: {err}"[:500]
        finally:
            print(f"[gpu_check] {name} {label} done", flush=True, file=__import__("sys").stderr)

# 4. GPU-side post-processing and matching vs the host path (real SuperPoint weights needed)
def median_ms(fn, warmup=3, repeats=30):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000.0)
    return round(float(np.median(times)), 3)

if caps.torch_cuda and weights.is_file():
    try:
        import cv2

        from supergf_ros.features import create_extractor
        from supergf_ros.matching import DeviceMatcher, match_mutual_nn

        photo = sorted(Path("../shared/data/photos/sacre_coeur/mapping").glob("*.jpg"))[0]
        image = cv2.resize(cv2.imread(str(photo), cv2.IMREAD_GRAYSCALE), (640, 480))
        post = {}
        for name, conf in {
            "cuda_torch_post_sparse": dict(postprocess="torch", return_dense=False),
            "cuda_torch_post_dense": dict(postprocess="torch", return_dense=True),
            "cuda_numpy_post_dense": dict(postprocess="numpy", return_dense=True),
            "cpu_numpy_post_dense": dict(device="cpu", postprocess="numpy"),
        }.items():
            device = conf.pop("device", "cuda")
            ex = create_extractor("superpoint", weights=str(weights), backend="torch",
                                  device=device, max_keypoints=1024, **conf)
            repeats = 5 if device == "cpu" else 30
            post[name] = median_ms(lambda: ex.extract(image), repeats=repeats)
            if name == "cuda_torch_post_sparse":
                query = ex.extract(image)
        result["superpoint_extract_640x480_ms"] = post
        rng = np.random.default_rng(0)
        groups = [rng.normal(size=(2000, 256)).astype(np.float32) for _ in range(5)]
        groups = [g / np.linalg.norm(g, axis=1, keepdims=True) for g in groups]
        matcher = DeviceMatcher(groups, device="cuda")
        q_host, q_dev = query.descriptors, query.descriptors_device
        result["match_1024_vs_5x2000_ms"] = {
            "cuda_device_matcher": median_ms(lambda: matcher.match(q_dev, range(5))),
            "cuda_device_matcher_ratio0.8": median_ms(
                lambda: matcher.match(q_dev, range(5), ratio_threshold=0.8)),
            "cpu_numpy": median_ms(lambda: [match_mutual_nn(q_host, g) for g in groups], repeats=5),
        }
    except Exception as err:  # noqa: BLE001 - report and go on
        result["errors"]["gpu_postprocess"] = f"{type(err).__name__}: {err}"[:500]

lat = result["latency_ms"]
result["cpu_ratio_torch_over_onnxruntime"] = {
    n: round(v["torch:cpu:fp32"]["median"] / v["onnxruntime:cpu:fp32"]["median"], 2)
    for n, v in lat.items() if "torch:cpu:fp32" in v and "onnxruntime:cpu:fp32" in v
}
text = json.dumps(result, indent=2)
(out_dir / "gpu_check.json").write_text(text)
print(text)
EOF
