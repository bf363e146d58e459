"""`supergf-ros benchmark`: latency of the networks and of whole localization steps.

Measures, at 640x480 by default, with warm-up and medians over repeated runs:
- SuperPoint (the "superpoint" extractor: network forward + NMS/top-k/descriptor sampling);
- SuperGF-dense over the SuperPoint dense map; SuperGF-sparse over 1024 keypoints;
- NetVLAD (VGG16 conv5_3 + NetVLAD, 64 clusters), the separate global network a two-network
  system would run instead of SuperGF;
each with every requested backend (PyTorch and ONNX Runtime on a CPU; TensorRT where available).
Weights do not change the cost: missing weights are replaced by seeded random initializations
(reported in the output).

Then, with SuperPoint weights, the end-to-end "pipeline" benchmark (see
`supergf_ros.evaluation.pipeline_benchmark`): maps built on the fly from `--dataset` (even images
as keyframes, odd ones as queries) or from a synthetic scene; a full `Localizer.localize` step per
backend; and ours (defaults) against a two-network hloc-style baseline (NetVLAD + SuperPoint 4096
keypoints at 1024 px + mutual-NN against every keypoint + PnP) measured in the same run, with
per-stage times, accuracy and the end-to-end speedup.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..io_utils import atomic_write_text

BACKENDS = ("torch", "onnxruntime")  # timed by default (the CPU backends)
ALL_BACKENDS = ("torch", "onnxruntime", "tensorrt")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "benchmark",
        help="latency of SuperPoint, SuperGF and NetVLAD per backend, and end-to-end localization "
        "vs a two-network baseline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per model (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before timing")
    parser.add_argument(
        "--netvlad-repeats", type=int, default=3, help="timed runs for the (slow) NetVLAD baseline"
    )
    parser.add_argument("--size", default="640x480", help="image size WIDTHxHEIGHT")
    parser.add_argument("--num-keypoints", type=int, default=1024, help="SuperGF-sparse keypoints")
    parser.add_argument(
        "--superpoint-weights",
        type=Path,
        default=None,
        help="MagicLeap superpoint_v1.pth (default: $SUPERGF_SUPERPOINT_WEIGHTS; random init if unset)",
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="comma-separated: torch,onnxruntime,tensorrt (default torch,onnxruntime)",
    )
    parser.add_argument(
        "--device", default="cpu", help="device of the network timings: cpu | cuda (default cpu)"
    )
    pipe = parser.add_argument_group("end-to-end pipeline (needs SuperPoint weights)")
    pipe.add_argument("--no-pipeline", action="store_true", help="skip the pipeline benchmark")
    pipe.add_argument(
        "--dataset",
        type=Path,
        help="images/ + sparse_gt/ with poses, e.g. strecha/fountain-P11 (default: a synthetic "
        "scene at --pipeline-size)",
    )
    pipe.add_argument("--top-k", type=int, default=5, help="keyframes retrieved per query")
    pipe.add_argument("--pipeline-queries", type=int, help="at most this many queries")
    pipe.add_argument("--pipeline-repeats", type=int, default=1, help="timed runs per query")
    pipe.add_argument("--pipeline-size", default="640x480", help="synthetic scene image size")
    pipe.add_argument(
        "--map-keypoints", type=int, default=1024, help="our SuperPoint keypoints (default 1024)"
    )
    pipe.add_argument("--map-resize", type=int, help="our resize_max (default: none)")
    pipe.add_argument(
        "--baseline-keypoints", type=int, default=4096, help="baseline SuperPoint keypoints"
    )
    pipe.add_argument(
        "--baseline-resize", type=int, default=1024, help="baseline resize_max (NetVLAD too)"
    )
    pipe.add_argument(
        "--baseline-backend",
        default="torch",
        choices=["torch", "onnxruntime"],
        help="backend of the baseline's networks (default torch, as hloc)",
    )
    pipe.add_argument(
        "--work-dir", type=Path, help="keep the pipeline's maps here (default: a temp folder)"
    )
    parser.add_argument("--no-netvlad", action="store_true", help="skip the NetVLAD baseline")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch and ONNX Runtime"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    scale = parser.add_argument_group("map scale (--map-scale: only this benchmark runs)")
    scale.add_argument(
        "--map-scale",
        help="keyframe counts, e.g. 100,1000,10000,50000: synthesize maps of that size from "
        "fountain-P11 (temporary folder) and measure file size, open time, RSS and per-query cost",
    )
    scale.add_argument("--scale-data", type=Path, help="data folder with strecha/fountain-P11")
    scale.add_argument("--scale-queries", type=int, default=20, help="queries per map size")
    scale.add_argument("--scale-cache", type=int, default=128, help="keyframe_cache_size")
    scale.add_argument("--plot", type=Path, help="PNG plot (cost vs keyframes; --realtime: rates)")
    _add_realtime_arguments(parser)
    parser.set_defaults(func=run)
    return parser


def _add_realtime_arguments(parser: argparse.ArgumentParser) -> None:
    rt = parser.add_argument_group(
        "realtime node (--realtime: only this benchmark runs; --work-dir keeps its data)"
    )
    rt.add_argument(
        "--realtime",
        action="store_true",
        help="replay a bag at its real rate through the node: fp32/int8 x pipelined/serial",
    )
    rt.add_argument("--bag", type=Path, help="rosbag2 to replay (default: the demo scene's)")
    rt.add_argument("--map", type=Path, help="map of --bag (required with --bag)")
    rt.add_argument("--realtime-queries", type=int, default=200, help="demo bag frames")
    rt.add_argument("--camera-rate", type=float, default=10.0, help="demo bag frame rate (Hz)")
    rt.add_argument("--realtime-size", default="640x480", help="demo scene image size")
    rt.add_argument(
        "--precisions", default="fp32,int8", help="SuperPoint precisions (default fp32,int8)"
    )
    rt.add_argument(
        "--modes", default="serial,pipelined", help="node modes (default serial,pipelined)"
    )
    rt.add_argument(
        "--inference-threads",
        default="0",
        help="the node's inference_threads, e.g. 0,1 (0: default)",
    )
    rt.add_argument("--rounds", type=int, default=1, help="runs of every configuration, in turn")


def _realtime_configs(args: argparse.Namespace) -> tuple:
    """The `realtime_benchmark.Config`s of --precisions x --modes x --inference-threads."""
    from .realtime_benchmark import Config

    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [p for p in precisions if p not in ("fp32", "int8")]
    bad += [m for m in modes if m not in ("serial", "pipelined")]
    if bad or not precisions or not modes:
        raise ValueError(
            f"unknown --precisions/--modes {bad}: precisions are fp32,int8 and modes "
            "serial,pipelined"
        )
    try:
        threads = [int(t) for t in args.inference_threads.split(",") if t.strip()]
    except ValueError as err:
        raise ValueError(f"--inference-threads must be integers like 0,1: {err}") from err
    if not threads or not all(0 <= t <= 256 for t in threads):
        raise ValueError(f"--inference-threads must be in [0, 256], got {args.inference_threads}")
    return tuple(Config(p, m == "pipelined", t) for t in threads for p in precisions for m in modes)


def _run_realtime(args: argparse.Namespace) -> int:
    from . import realtime_benchmark as rt

    configs = _realtime_configs(args)
    if (args.bag is None) != (args.map is None):
        raise ValueError("--bag and --map go together (the map the bag localizes against)")
    weights = rt.default_weights(args.superpoint_weights)
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    work = args.work_dir or Path("outputs") / "realtime_benchmark"
    if args.bag is None:
        size = _parse_size(args.realtime_size)
        bag, map_path = rt.demo_bag(work, weights, num_queries=args.realtime_queries,
                                    camera_rate_hz=args.camera_rate, size=size,
                                    progress=not args.json)  # fmt: skip
    else:
        bag, map_path = args.bag, args.map
    result = rt.run_realtime_benchmark(bag, map_path, weights, work / "runs", configs=configs,
                                       rounds=args.rounds,
                                       progress=not args.json, log=log)  # fmt: skip
    if args.plot is not None:
        result["plot"] = str(rt.plot_runs(result, args.plot))
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(result, indent=2))
    log(rt.format_table(result))
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def _run_map_scale(args: argparse.Namespace) -> int:
    from .scale_benchmark import default_data_dir, format_table, parse_scales, run_scale_benchmark

    scales = parse_scales(args.map_scale)
    weights = args.superpoint_weights or os.environ.get("SUPERGF_SUPERPOINT_WEIGHTS")
    data = args.scale_data or default_data_dir()
    if weights is None:
        weights = data.parent / "weights" / "superpoint_v1.pth"
    if not Path(weights).is_file() or not (data / "strecha" / "fountain-P11").is_dir():
        raise FileNotFoundError(f"--map-scale needs SuperPoint weights ({weights}) and "
                                f"{data}/strecha/fountain-P11 (--scale-data)")  # fmt: skip
    log = (lambda line: print(line, file=sys.stderr)) if args.json else print
    result = run_scale_benchmark(scales, data, Path(weights), num_queries=args.scale_queries,
                                 cache_size=args.scale_cache, plot=args.plot, log=log)  # fmt: skip
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(result, indent=2))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must look like 640x480, got {text!r}") from None
    if w < 32 or h < 32:
        raise ValueError(f"--size must be at least 32x32, got {text!r}")
    return w, h


def time_ms(fn: Callable[[], Any], repeats: int, warmup: int) -> dict[str, float]:
    """Run `fn` `warmup` times untimed, then `repeats` times; return median/min/max in ms."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def _test_image(width: int, height: int):
    """A deterministic textured RGB image (multi-scale blurred noise), uint8 HxWx3."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    image = np.zeros((height, width), np.float32)
    for scale in (2, 5, 11, 23):
        noise = rng.random((height, width), dtype=np.float32)
        image += cv2.GaussianBlur(noise, (0, 0), scale) * scale
    image = (image - image.min()) / max(float(np.ptp(image)), 1e-6) * 255
    return np.repeat(image.astype(np.uint8)[..., None], 3, axis=2)


@dataclass
class _Bench:
    """What every timing step of `run_benchmark` shares."""

    choices: dict[str, Any]  # backend name -> BackendChoice, resolved once
    image: Any
    tmp: Path
    repeats: int
    warmup: int
    bar: Any
    timings: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def time(self, name: str, backend: str, fn: Callable[[], Any], repeats=None, warmup=None):
        self.timings.setdefault(name, {})[backend] = time_ms(
            fn, repeats or self.repeats, self.warmup if warmup is None else warmup
        )
        self.bar.update()


def run_benchmark(
    size: tuple[int, int] = (640, 480),
    repeats: int = 10,
    warmup: int = 2,
    netvlad_repeats: int = 3,
    num_keypoints: int = 1024,
    superpoint_weights: str | Path | None = None,
    backends: tuple[str, ...] = BACKENDS,
    netvlad: bool = True,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Measure the networks and return the results dict (see the module docstring)."""
    from tqdm import tqdm

    choices = _resolve_backends(backends, device)
    if repeats < 1 or warmup < 0 or netvlad_repeats < 1:
        raise ValueError("repeats and netvlad-repeats must be >= 1 and warmup >= 0")
    if num_keypoints < 1:
        raise ValueError(f"num-keypoints must be >= 1, got {num_keypoints}")
    width, height = size
    notes: list[str] = []
    models = ["superpoint", "supergf_dense", "supergf_sparse"] + (["netvlad"] * netvlad)
    bar = tqdm(
        total=len(models) * len(backends), desc="benchmark", unit="model", disable=not progress
    )
    with tempfile.TemporaryDirectory(prefix="supergf-bench-") as tmp_dir:
        bench = _Bench(choices, _test_image(width, height), Path(tmp_dir), repeats, warmup, bar)
        sp_path, sp_source = _superpoint_weights(superpoint_weights, bench.tmp, notes)
        dense_features = _time_superpoint(bench, sp_path, num_keypoints)
        sparse_features = _random_sparse_features(num_keypoints, width, height)
        supergf_sources, supergf_configs = _time_supergf(bench, dense_features, sparse_features)
        if netvlad:
            _time_netvlad(bench, netvlad_repeats)
    bar.close()
    result = _ratios(bench.timings, backends, netvlad)
    weights = {
        "superpoint_weights": sp_source,
        "superpoint_keypoints": len(dense_features),
        "supergf_sparse_keypoints": num_keypoints,
        "supergf_weights": supergf_sources,
        "supergf_configs": supergf_configs,
    }
    netvlad_repeats = netvlad_repeats if netvlad else 0
    result["setup"] = _setup(size, device, backends, repeats, warmup, netvlad_repeats, weights)
    notes.append(
        f"medians in ms on {device}; timings include numpy<->tensor conversions and, for SuperPoint, "
        "the post-processing (NMS, top-k, descriptor sampling); a shared CPU makes them noisy"
    )
    result["notes"] = notes
    return result


def _resolve_backends(backends: tuple[str, ...], device: str) -> dict[str, Any]:
    """{backend: BackendChoice}; an unavailable one raises, listing what is available."""
    from ..inference.backends import select_backend

    unknown = set(backends) - set(ALL_BACKENDS)
    if unknown or not backends:
        raise ValueError(f"unknown backend(s) {sorted(unknown)}; choose from {list(ALL_BACKENDS)}")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return {backend: select_backend(backend, device) for backend in backends}


def _superpoint_weights(weights: str | Path | None, tmp: Path, notes: list[str]):
    """(weights path, source): given, from the environment, or a seeded random init."""
    import torch

    from ..features.superpoint import WEIGHTS_ENV, SuperPointNet, resolve_weights

    if weights is not None or os.environ.get(WEIGHTS_ENV):
        path = resolve_weights(weights)
        return path, str(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(SuperPointNet().state_dict(), tmp / "superpoint_random.pth")
    notes.append(
        "SuperPoint: no weights given (--superpoint-weights / $SUPERGF_SUPERPOINT_WEIGHTS); "
        "timed a randomly initialized SuperPointNet"
    )
    return tmp / "superpoint_random.pth", "random-init"


def _time_superpoint(bench: _Bench, weights: Path, num_keypoints: int) -> Any:
    """Time the extractor per backend; the features of the last one (with the dense map)."""
    from ..features import create_extractor

    features = None
    for backend, choice in bench.choices.items():
        extractor = create_extractor(
            "superpoint",
            weights=weights,
            max_keypoints=num_keypoints,
            backend=choice,
            device=choice.device,
            onnx_cache_dir=bench.tmp,
        )
        features = extractor.extract(bench.image)
        bench.time("superpoint", backend, lambda ex=extractor: ex.extract(bench.image))
    return features


def _random_sparse_features(num_keypoints: int, width: int, height: int) -> Any:
    import numpy as np

    from ..features import LocalFeatures

    rng = np.random.default_rng(0)
    kpts = (rng.random((num_keypoints, 2)) * [width - 1, height - 1]).astype(np.float32)
    desc = rng.standard_normal((num_keypoints, 256)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    scores = rng.random(num_keypoints).astype(np.float32)
    return LocalFeatures(kpts, scores, desc, None, (width, height))


def _time_supergf(bench: _Bench, dense_features: Any, sparse_features: Any):
    """Time both variants per backend: shipped weights when present, else a seeded paper config.
    Returns ({variant: weights source}, {variant: config})."""
    import torch

    from ..models import build_model, default_weights_path, load_checkpoint
    from ..models.aggregators import create_aggregator

    sources: dict[str, str] = {}
    configs: dict[str, dict[str, Any]] = {}
    for variant in ("dense", "sparse"):
        path = default_weights_path(variant, "superpoint")
        if path.is_file():
            model, _ = load_checkpoint(path)
            sources[variant] = str(path.name)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = build_model(variant).eval()
            sources[variant] = "random-init (paper config)"
        features = dense_features if variant == "dense" else sparse_features
        for backend, choice in bench.choices.items():
            agg = create_aggregator(
                f"supergf-{variant}",
                model=model,
                backend=choice,
                device=choice.device,
                onnx_cache_dir=bench.tmp,
            )
            bench.time(f"supergf_{variant}", backend, lambda a=agg, f=features: a(f))
        configs[variant] = dict(model.conf)
    return sources, configs


def _time_netvlad(bench: _Bench, repeats: int) -> None:
    """NetVLAD (random weights: cost only) per backend; no TensorRT engine (the same network)."""
    import torch

    from ..inference.backends import create_runner
    from ..models.netvlad import NetVLAD, netvlad_spec

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        spec = netvlad_spec(NetVLAD().eval())
    x = torch.from_numpy(bench.image).permute(2, 0, 1)[None].float().div(255).numpy()
    for backend, choice in bench.choices.items():
        if backend == "tensorrt":
            continue
        runner = create_runner(spec, choice, onnx_cache_dir=bench.tmp)
        bench.time("netvlad", backend, lambda r=runner: r(x), repeats, min(bench.warmup, 1))


def _ratios(timings: dict, backends: tuple[str, ...], netvlad: bool) -> dict[str, Any]:
    """Medians per model and backend, and the ratios between them."""

    def ratio(a: str, b: str, digits: int = 4) -> dict[str, float]:
        return {
            k: round(timings[a][k]["median"] / timings[b][k]["median"], digits)
            for k in backends
            if k in timings[b]
        }

    result: dict[str, Any] = {
        f"{name}_ms": {b: round(t["median"], 2) for b, t in per.items()}
        for name, per in timings.items()
    }
    ratios = ratio("supergf_sparse", "superpoint")
    result["ratio_supergf_sparse_over_superpoint"] = ratios[backends[0]]
    if {"torch", "onnxruntime"} <= set(backends):  # measured in this run
        result["ratio_torch_over_onnxruntime"] = {
            name: round(per["torch"]["median"] / per["onnxruntime"]["median"], 3)
            for name, per in timings.items()
            if {"torch", "onnxruntime"} <= set(per)
        }
    result["ratio_supergf_sparse_over_superpoint_by_backend"] = ratios
    result["ratio_supergf_dense_over_superpoint_by_backend"] = ratio("supergf_dense", "superpoint")
    if netvlad:
        result["ratio_supergf_sparse_over_netvlad_by_backend"] = ratio("supergf_sparse", "netvlad")
    result["details_ms"] = {
        name: {b: {k: round(v, 2) for k, v in t.items()} for b, t in per.items()}
        for name, per in timings.items()
    }
    return result


def _setup(size, device, backends, repeats, warmup, netvlad_repeats, weights) -> dict[str, Any]:
    import torch

    return {
        "image_size": list(size),
        "device": device,
        "backends": list(backends),
        "repeats": repeats,
        "warmup": warmup,
        "netvlad_repeats": netvlad_repeats,
        **weights,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime_threads": os.environ.get("SUPERGF_ORT_THREADS", "default"),
        "torch_version": torch.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
    }


def format_table(result: dict[str, Any]) -> str:
    """A readable table of the medians (ms) per model and backend."""
    backends = result["setup"].get("backends", list(BACKENDS))
    rows = [("model", *backends)]
    for name, label in (
        ("superpoint_ms", "SuperPoint (extract)"),
        ("supergf_dense_ms", "SuperGF-dense"),
        ("supergf_sparse_ms", f"SuperGF-sparse ({result['setup']['supergf_sparse_keypoints']} kp)"),
        ("netvlad_ms", "NetVLAD (VGG16, 64 cl.)"),
    ):
        if name in result:
            rows.append((label, *(f"{result[name].get(b, float('nan')):.1f}" for b in backends)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    w, h = result["setup"]["image_size"]
    lines.insert(
        0,
        f"median latency in ms, {w}x{h}, {result['setup'].get('device', 'cpu')}, "
        f"{result['setup']['torch_threads']} torch threads",
    )
    for variant in ("dense", "sparse"):
        ratio = result.get(f"ratio_supergf_{variant}_over_superpoint_by_backend", {})
        lines.append(
            f"SuperGF-{variant} / SuperPoint:".ljust(29)
            + ", ".join(f"{b} {v:.3f}" for b, v in ratio.items())
        )
    if "ratio_supergf_sparse_over_netvlad_by_backend" in result:
        r = result["ratio_supergf_sparse_over_netvlad_by_backend"]
        lines.append(
            "SuperGF-sparse / NetVLAD:    " + ", ".join(f"{b} {v:.4f}" for b, v in r.items())
        )
    if "ratio_torch_over_onnxruntime" in result:
        r = result["ratio_torch_over_onnxruntime"]
        lines.append(
            "PyTorch / ONNX Runtime:      " + ", ".join(f"{k} {v:.2f}" for k, v in r.items())
        )
    lines += [f"note: {n}" for n in result["notes"]]
    if result.get("pipeline"):
        from .pipeline_benchmark import format_pipeline

        lines += ["", format_pipeline(result["pipeline"])]
    return "\n".join(lines)


def _run_pipeline(args: argparse.Namespace, backends: tuple[str, ...], result: dict) -> Any:
    """The end-to-end benchmark (None, with a note, without real SuperPoint weights)."""
    from ..features.superpoint import WEIGHTS_ENV, resolve_weights
    from .pipeline_benchmark import run_pipeline_benchmark

    if args.superpoint_weights is None and not os.environ.get(WEIGHTS_ENV):
        result["notes"].append(
            "pipeline skipped: it needs real SuperPoint weights (--superpoint-weights or "
            f"${WEIGHTS_ENV}) to localize"
        )
        return None
    weights = resolve_weights(args.superpoint_weights)
    conf = {
        "top_k": args.top_k,
        "num_queries": args.pipeline_queries,
        "repeats": args.pipeline_repeats,
        "ours_max_keypoints": args.map_keypoints,
        "ours_resize_max": args.map_resize,
        "baseline_max_keypoints": args.baseline_keypoints,
        "baseline_resize_max": args.baseline_resize,
        "baseline_backend": args.baseline_backend,
        "synthetic_size": _parse_size(args.pipeline_size),
    }
    kwargs = {
        "dataset": args.dataset,
        "backends": tuple(b for b in backends if b != "tensorrt" or args.device == "cuda"),
        "conf": conf,
        "progress": not args.json,
    }
    if args.work_dir is not None:
        return run_pipeline_benchmark(weights, args.work_dir, **kwargs)
    with tempfile.TemporaryDirectory(prefix="supergf-pipeline-") as tmp:
        return run_pipeline_benchmark(weights, tmp, **kwargs)


def run(args: argparse.Namespace) -> int:
    if args.map_scale:
        return _run_map_scale(args)
    if args.realtime:
        return _run_realtime(args)
    size = _parse_size(args.size)
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
        os.environ["SUPERGF_ORT_THREADS"] = str(args.threads)  # read by every ORT session
    if not args.no_pipeline:  # check the pipeline's options before the long network timings
        _parse_size(args.pipeline_size)
        if args.dataset is not None and not args.dataset.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {args.dataset}")
        if args.top_k < 1 or args.pipeline_repeats < 1:
            raise ValueError("--top-k and --pipeline-repeats must be >= 1")
    result = run_benchmark(
        size=size,
        repeats=args.repeats,
        warmup=args.warmup,
        netvlad_repeats=args.netvlad_repeats,
        num_keypoints=args.num_keypoints,
        superpoint_weights=args.superpoint_weights,
        backends=backends,
        netvlad=not args.no_netvlad,
        device=args.device,
        progress=not args.json,
    )
    if not args.no_pipeline:
        result["pipeline"] = _run_pipeline(args, backends, result)
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(result, indent=2))
    if args.json:
        print(format_table(result), file=sys.stderr)
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0
