"""`supergf-ros export`: prebuild ONNX files or TensorRT engines for SuperPoint and SuperGF,
from the models' specs (`superpoint_spec`, `supergf_spec`) with the profile the flags allow.

Examples:
    supergf-ros export --format onnx --model superpoint --weights superpoint_v1.pth
    supergf-ros export --format tensorrt --model supergf-sparse --precision fp16 \
        --max-keypoints 2048
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .inference.spec import ModelSpec, example_feed
from .io_utils import atomic_output, atomic_write_bytes

MODELS = ("superpoint", "supergf-dense", "supergf-sparse")


@contextlib.contextmanager
def _seeded(seed: int = 0) -> Iterator[None]:
    """Deterministic random init without touching the caller's global RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def model_spec(
    model: str,
    *,
    weights: str | Path | None = None,
    features: str = "superpoint",
    random_init: bool = False,
    max_image_size: int = 1024,
    opt_size: tuple[int, int] = (640, 480),
    max_keypoints: int = 4096,
    opt_keypoints: int = 1024,
    max_batch: int = 1,
    cache_dir: str | Path | None = None,
) -> ModelSpec:
    """Load a model by name and describe it for the backends.

    superpoint: `weights` or $SUPERGF_SUPERPOINT_WEIGHTS (MagicLeap superpoint_v1.pth).
    supergf-*: `weights` (checkpoint), else the shipped default; `random_init` builds the paper
    configuration with random weights (for latency tests and engine prebuilding only);
    `cache_dir`: the ONNX cache folder that keeps a checkpoint's info (`checkpoint_spec`).
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {list(MODELS)}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if model == "superpoint":
        from .features.base import file_sha256
        from .features.superpoint import (
            SuperPointNet,
            load_superpoint_net,
            resolve_weights,
            superpoint_profile,
            superpoint_spec,
        )

        profile = superpoint_profile(max_image_size, opt_size, max_batch)
        if random_init:
            with _seeded():
                net = SuperPointNet().eval()
            return superpoint_spec(net, "random-init-seed0", profile=profile)
        path = resolve_weights(weights)
        return superpoint_spec(load_superpoint_net(path), file_sha256(path), profile=profile)

    from .models.spec import checkpoint_spec, supergf_profile, supergf_spec
    from .models.weights import default_weights_path

    def profile_of(net: Any) -> Any:
        return supergf_profile(
            net,
            max_image_size=max_image_size,
            opt_size=opt_size,
            max_keypoints=max_keypoints,
            opt_keypoints=opt_keypoints,
            max_batch=max_batch,
        )

    if random_init:
        from .models.checkpoint import build_model

        with _seeded():
            net = build_model(model).eval()
        return supergf_spec(net, "", profile=profile_of(net))
    path = Path(weights) if weights else default_weights_path(model, features)
    if not path.is_file():
        raise FileNotFoundError(
            f"SuperGF checkpoint not found: {path}. Train one with `supergf-ros train`, pass "
            "--weights PATH, or use --random-init to export untrained weights (latency only)."
        )
    # with the checkpoint's info in the ONNX cache, so that ONNX Runtime and TensorRT processes
    # find its export without torch
    spec, info = checkpoint_spec(path, model, cache_dir=cache_dir)
    return dataclasses.replace(spec, profile=profile_of(info))


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------
def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from err
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"image size must be at least 16x16, got {text!r}")
    return w, h


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        help="export SuperPoint / SuperGF to ONNX or prebuild TensorRT engines",
        description=(
            "Export a network to ONNX, or build its TensorRT engine for this GPU into the engine "
            "cache (engine builds on a Jetson take minutes; progress and timing are printed)."
        ),
    )
    parser.add_argument("--format", choices=("onnx", "tensorrt"), required=True)
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument(
        "--weights",
        "--superpoint-weights",
        dest="weights",
        type=Path,
        help="SuperPoint .pth or SuperGF checkpoint (default: $SUPERGF_SUPERPOINT_WEIGHTS or the "
        "shipped SuperGF weights)",
    )
    parser.add_argument("--features", choices=("superpoint", "sift"), default="superpoint")
    parser.add_argument(
        "--random-init", action="store_true", help="random weights (latency tests only)"
    )
    parser.add_argument("--output", type=Path, help="also write the .onnx / raw .engine here")
    parser.add_argument("--precision", choices=("fp32", "fp16"), default="fp32")
    parser.add_argument("--device", default="cuda", help="CUDA device for TensorRT (cuda[:N])")
    parser.add_argument("--max-image-size", type=int, default=1024, help="longest image side")
    parser.add_argument("--opt-image-size", type=_size, default=(640, 480), help="WxH")
    parser.add_argument("--max-keypoints", type=int, default=4096)
    parser.add_argument("--opt-keypoints", type=int, default=1024)
    parser.add_argument("--max-batch", type=int, default=1)
    parser.add_argument("--workspace-mb", type=int, default=1024)
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="cache root (default: $SUPERGF_CACHE_DIR or ~/.cache/supergf_ros)",
    )
    parser.add_argument(
        "--no-check", action="store_true", help="skip the ONNX Runtime vs PyTorch check"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)
    return parser


def _max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def _torch_reference(spec: ModelSpec, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The fp32 PyTorch outputs the exported files are checked against."""
    from .inference.runners import TorchRunner

    return TorchRunner(spec.module(), spec.input_names, spec.output_names)(feed)


def _load_spec(args: argparse.Namespace, onnx_dir: Path | None) -> ModelSpec:
    spec = model_spec(
        args.model,
        weights=args.weights,
        features=args.features,
        random_init=args.random_init,
        max_image_size=args.max_image_size,
        opt_size=args.opt_image_size,
        max_keypoints=args.max_keypoints,
        opt_keypoints=args.opt_keypoints,
        max_batch=args.max_batch,
        cache_dir=onnx_dir,
    )
    spec.module()
    return spec


def _check_onnx(spec: ModelSpec, onnx_path: Path, summary: dict[str, Any]) -> None:
    """ONNX Runtime against PyTorch on the example feed; ValueError beyond 1e-3."""
    from .inference.runners import OrtRunner

    feed = example_feed(spec)
    diff = _max_abs_diff(_torch_reference(spec, feed), OrtRunner(onnx_path)(feed))
    summary["onnxruntime_max_abs_diff"] = diff
    if diff > 1e-3:
        raise ValueError(f"ONNX Runtime output differs from PyTorch by {diff:.3g} (> 1e-3)")


def _build_engine(args, spec, onnx_path, choice, engine_dir, summary) -> Any:
    """Build or load the TensorRT engine; the runner."""
    from .inference.tensorrt import TensorRTRunner

    runner = TensorRTRunner.from_onnx(
        onnx_path,
        model=spec.name,
        profile=spec.profile,
        precision=args.precision,
        device=choice.device,
        cache_dir=engine_dir,
        workspace_bytes=args.workspace_mb << 20,
    )
    summary["engine"] = str(runner.engine_path)
    summary["engine_cache"] = runner.cache_status
    return runner


def _write_output(args, onnx_path: Path, runner: Any, engine_dir, summary) -> None:
    """Copy the .onnx, or the raw serialized engine (no cache header), to --output."""
    if args.format == "onnx":
        with atomic_output(args.output) as tmp:
            shutil.copyfile(onnx_path, tmp)
    else:
        from .inference.engine_cache import EngineCache

        engine_bytes = EngineCache(engine_dir).read(runner.engine_key)
        if engine_bytes is None:
            raise ValueError(f"engine cache entry {summary['engine']} vanished")
        atomic_write_bytes(args.output, engine_bytes)
    summary["output"] = str(args.output)


def _check_args(args: argparse.Namespace) -> Any:
    """Fail fast, before loading and exporting; the TensorRT BackendChoice or None."""
    if args.max_keypoints < 1 or args.opt_keypoints < 1:
        raise ValueError("--max-keypoints and --opt-keypoints must be >= 1")
    if args.format == "onnx" and args.precision != "fp32":
        raise ValueError("ONNX files are exported in fp32; fp16 applies to --format tensorrt")
    if args.format != "tensorrt":
        return None
    from .inference.backends import select_backend

    return select_backend("tensorrt", args.device, args.precision)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    choice = _check_args(args)
    onnx_dir = args.cache_dir / "onnx" if args.cache_dir else None
    engine_dir = args.cache_dir / "engines" if args.cache_dir else None
    steps = ["load model", "export ONNX"]
    steps += [] if args.no_check else ["check ONNX Runtime vs PyTorch"]
    steps += ["build/load TensorRT engine"] if choice is not None else []
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {"model": args.model, "format": args.format}
    runner = None
    with tqdm(total=len(steps), desc=f"export {args.model}", unit="step") as bar:

        def step(name: str, key: str, fn: Any) -> Any:
            bar.set_postfix_str(name)
            t = time.perf_counter()
            value = fn()
            timings[key] = time.perf_counter() - t
            bar.update()
            return value

        spec = step(steps[0], "load_s", lambda: _load_spec(args, onnx_dir))
        onnx_path = step("export ONNX", "onnx_export_s", lambda: spec.export_onnx(onnx_dir))
        summary["onnx"] = str(onnx_path)
        summary["onnx_sha256"] = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
        if not args.no_check:
            step(steps[2], "check_s", lambda: _check_onnx(spec, onnx_path, summary))
        if choice is not None:
            runner = step(
                steps[-1],
                "engine_s",
                lambda: _build_engine(args, spec, onnx_path, choice, engine_dir, summary),
            )
            feed = example_feed(spec)
            summary["tensorrt_max_abs_diff"] = _max_abs_diff(
                _torch_reference(spec, feed), runner(feed)
            )
    summary["profile"] = {k: [list(s) for s in v] for k, v in spec.profile.items()}
    summary["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    if args.output:
        _write_output(args, onnx_path, runner, engine_dir, summary)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"exported {args.model} -> {summary.get('engine', summary['onnx'])}")
        for key, value in summary.items():
            if key not in ("model",):
                print(f"  {key}: {value}")
    return 0
