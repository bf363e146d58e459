"""`supergf-ros export`: prebuild ONNX files or TensorRT engines for SuperPoint and SuperGF.

Also the model specs (`model_spec`, `superpoint_spec`, `supergf_spec`) that tell every backend how
to run a network: input/output names, dynamic axes for ONNX, and the TensorRT shape profile
derived from the image sizes and keypoint counts the config allows.

Examples:
    supergf-ros export --format onnx --model superpoint --weights superpoint_v1.pth
    supergf-ros export --format tensorrt --model supergf-sparse --precision fp16 \
        --max-keypoints 2048
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..io_utils import atomic_output, atomic_write_bytes
from .backends import ModelSpec

MODELS = ("superpoint", "supergf-dense", "supergf-sparse")
STRIDE = 8  # SuperPoint's cell size: image sides are multiples of 8


def _round8(value: int) -> int:
    return max(STRIDE, int(np.ceil(int(value) / STRIDE)) * STRIDE)


def superpoint_profile(
    max_image_size: int = 1024, opt_size: tuple[int, int] = (640, 480), max_batch: int = 1
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """TensorRT profile for SuperPointNet's "image" (B, 1, H, W); sizes padded to multiples of 8.

    `max_image_size` is the longest side the extractor feeds (its `resize_max`), `opt_size` the
    typical (width, height).
    """
    if max_image_size < 16:
        raise ValueError(f"max_image_size must be >= 16, got {max_image_size}")
    side = _round8(max_image_size)
    ow, oh = (min(_round8(v), side) for v in opt_size)
    return {"image": ((1, 1, 16, 16), (1, 1, oh, ow), (int(max_batch), 1, side, side))}


def supergf_profile(
    model: Any,
    *,
    max_image_size: int = 1024,
    opt_size: tuple[int, int] = (640, 480),
    max_keypoints: int = 4096,
    opt_keypoints: int = 1024,
    max_batch: int = 1,
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """TensorRT profile for a SuperGF model (dense: map size from the image size; sparse: N)."""
    dim = int(model.conf["input_dim"])
    b = int(max_batch)
    if model.name == "supergf-dense":
        side = _round8(max_image_size) // STRIDE
        ow, oh = (min(_round8(v) // STRIDE, side) for v in opt_size)
        return {"dense": ((1, dim, 2, 2), (1, dim, oh, ow), (b, dim, side, side))}
    if max_keypoints < 1:
        raise ValueError(f"max_keypoints must be >= 1, got {max_keypoints}")
    n_opt = max(1, min(int(opt_keypoints), int(max_keypoints)))
    n_max = int(max_keypoints)

    def shapes(*tail: int) -> tuple[tuple[int, ...], ...]:
        def sized(n: int, batch: int) -> tuple[int, ...]:
            return (batch, *(n if t == -1 else t for t in tail))

        return sized(1, 1), sized(n_opt, 1), sized(n_max, b)

    return {
        "keypoints": shapes(-1, 2),
        "descriptors": shapes(-1, dim),
        "scores": shapes(-1),
        "image_size": ((1, 2), (1, 2), (b, 2)),
        "mask": shapes(-1),
    }


def superpoint_spec(
    net: Any, weights_sha256: str, *, profile: dict[str, Any] | None = None
) -> ModelSpec:
    """ModelSpec for a SuperPointNet; same ONNX name/key as the SuperPoint extractor's cache."""
    return ModelSpec(
        name="superpoint",
        build_module=lambda: net,
        example_inputs=lambda: (np.zeros((1, 1, 64, 96), np.float32),),
        input_names=["image"],
        output_names=["scores", "descriptors"],
        dynamic_axes={
            "image": {0: "batch", 2: "height", 3: "width"},
            "scores": {0: "batch", 1: "height", 2: "width"},
            "descriptors": {0: "batch", 2: "height_8", 3: "width_8"},
        },
        key=f"{weights_sha256}-superpointnet-v1",
        profile=profile if profile is not None else superpoint_profile(),
    )


def supergf_spec(
    model: Any, weights_sha256: str = "", *, profile: dict[str, Any] | None = None
) -> ModelSpec:
    """ModelSpec for a SuperGF dense or sparse model (positional view, as the ONNX cache uses)."""
    from ..models.checkpoint import _Positional, model_key

    wrapped = _Positional(model).eval()
    return ModelSpec(
        name=model.name,
        build_module=lambda: wrapped,
        example_inputs=lambda: tuple(t.numpy() for t in model.example_inputs()),
        input_names=list(model.input_names),
        output_names=list(model.output_names),
        dynamic_axes=dict(model.dynamic_axes),
        key=model_key(model, weights_sha256),
        profile=profile if profile is not None else supergf_profile(model),
    )


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
) -> ModelSpec:
    """Load a model by name and describe it for the backends.

    superpoint: `weights` or $SUPERGF_SUPERPOINT_WEIGHTS (MagicLeap superpoint_v1.pth).
    supergf-*: `weights` (checkpoint), else the shipped default; `random_init` builds the paper
    configuration with random weights (for latency tests and engine prebuilding only).
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {list(MODELS)}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    if model == "superpoint":
        from ..features.base import file_sha256
        from ..features.superpoint import SuperPointNet, load_superpoint_net, resolve_weights

        profile = superpoint_profile(max_image_size, opt_size, max_batch)
        if random_init:
            with _seeded():
                net = SuperPointNet().eval()
            return superpoint_spec(net, "random-init-seed0", profile=profile)
        path = resolve_weights(weights)
        return superpoint_spec(load_superpoint_net(path), file_sha256(path), profile=profile)

    from ..models.checkpoint import build_model, default_weights_path, load_checkpoint

    if random_init:
        with _seeded():
            net, sha = build_model(model).eval(), ""
    else:
        path = Path(weights) if weights else default_weights_path(model, features)
        if not path.is_file():
            raise FileNotFoundError(
                f"SuperGF checkpoint not found: {path}. Train one with `supergf-ros train`, pass "
                "--weights PATH, or use --random-init to export untrained weights (latency only)."
            )
        net, info = load_checkpoint(path)
        if net.name != model:
            raise ValueError(f"{path} holds a {net.name} model, not {model}")
        sha = info["weights_sha256"]
    profile = supergf_profile(
        net,
        max_image_size=max_image_size,
        opt_size=opt_size,
        max_keypoints=max_keypoints,
        opt_keypoints=opt_keypoints,
        max_batch=max_batch,
    )
    return supergf_spec(net, sha, profile=profile)


def example_feed(spec: ModelSpec) -> dict[str, np.ndarray]:
    """Inputs at the profile's optimum shape (random but seeded), for checks and warm-up."""
    rng = np.random.default_rng(0)
    examples = dict(zip(spec.input_names, spec.example_inputs()))
    feed = {}
    for name in spec.input_names:
        shape = spec.profile[name][1] if name in spec.profile else examples[name].shape
        dtype = examples[name].dtype
        if dtype == np.bool_:
            feed[name] = np.ones(shape, dtype=bool)
        elif name == "image_size":
            feed[name] = np.tile(np.array([[640.0, 480.0]], np.float32), (shape[0], 1))
        elif name == "keypoints":
            feed[name] = (rng.random(shape) * np.array([640.0, 480.0])).astype(np.float32)
        else:
            feed[name] = rng.random(shape, dtype=np.float32)
    return feed


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


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .backends import OrtRunner, TorchRunner

    if args.max_keypoints < 1 or args.opt_keypoints < 1:
        raise ValueError("--max-keypoints and --opt-keypoints must be >= 1")
    if args.format == "onnx" and args.precision != "fp32":
        raise ValueError("ONNX files are exported in fp32; fp16 applies to --format tensorrt")
    choice = None
    if args.format == "tensorrt":  # fail fast, before loading and exporting
        from .backends import select_backend

        choice = select_backend("tensorrt", args.device, args.precision)
    onnx_dir = args.cache_dir / "onnx" if args.cache_dir else None
    engine_dir = args.cache_dir / "engines" if args.cache_dir else None
    steps = ["load model", "export ONNX"]
    if not args.no_check:
        steps.append("check ONNX Runtime vs PyTorch")
    if args.format == "tensorrt":
        steps.append("build/load TensorRT engine")
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {"model": args.model, "format": args.format}
    with tqdm(total=len(steps), desc=f"export {args.model}", unit="step") as bar:

        def step(name: str) -> None:
            bar.set_postfix_str(name)

        step(steps[0])
        t = time.perf_counter()
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
        )
        spec.module()
        timings["load_s"] = time.perf_counter() - t
        bar.update()

        step("export ONNX")
        t = time.perf_counter()
        onnx_path = spec.export_onnx(onnx_dir)
        timings["onnx_export_s"] = time.perf_counter() - t
        summary["onnx"] = str(onnx_path)
        summary["onnx_sha256"] = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
        bar.update()

        if not args.no_check:
            step("check ONNX Runtime vs PyTorch")
            t = time.perf_counter()
            feed = example_feed(spec)
            reference = TorchRunner(spec.module(), spec.input_names, spec.output_names)(feed)
            ort_out = OrtRunner(onnx_path)(feed)
            diff = max(float(np.max(np.abs(reference[k] - ort_out[k]))) for k in reference)
            summary["onnxruntime_max_abs_diff"] = diff
            if diff > 1e-3:
                raise ValueError(f"ONNX Runtime output differs from PyTorch by {diff:.3g} (> 1e-3)")
            timings["check_s"] = time.perf_counter() - t
            bar.update()

        if args.format == "tensorrt":
            from .tensorrt import TensorRTRunner

            step("build/load TensorRT engine")
            t = time.perf_counter()
            runner = TensorRTRunner.from_onnx(
                onnx_path,
                model=spec.name,
                profile=spec.profile,
                precision=args.precision,
                device=choice.device,
                cache_dir=engine_dir,
                workspace_bytes=args.workspace_mb << 20,
            )
            timings["engine_s"] = time.perf_counter() - t
            summary["engine"] = str(runner.engine_path)
            summary["engine_cache"] = runner.cache_status
            feed = example_feed(spec)
            trt_out = runner(feed)
            reference = TorchRunner(spec.module(), spec.input_names, spec.output_names)(feed)
            summary["tensorrt_max_abs_diff"] = max(
                float(np.max(np.abs(reference[k] - trt_out[k]))) for k in reference
            )
            bar.update()
    summary["profile"] = {k: [list(s) for s in v] for k, v in spec.profile.items()}
    summary["timings_s"] = {k: round(v, 3) for k, v in timings.items()}

    if args.output:
        if args.format == "onnx":
            with atomic_output(args.output) as tmp:
                shutil.copyfile(onnx_path, tmp)
        else:
            from .engine_cache import EngineCache

            # the raw serialized engine (loadable by trtexec and other tools), no cache header
            engine_bytes = EngineCache(engine_dir).read(runner.engine_key)
            if engine_bytes is None:
                raise ValueError(f"engine cache entry {summary['engine']} vanished")
            atomic_write_bytes(args.output, engine_bytes)
        summary["output"] = str(args.output)

    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"exported {args.model} -> {summary.get('engine', summary['onnx'])}")
        for key, value in summary.items():
            if key not in ("model",):
                print(f"  {key}: {value}")
    return 0
