"""ONNX export shared by all networks: `export_onnx` writes a file atomically, `cached_export`
once per (name, key) into a cache folder; `configure_cpu_threads` sets up ONNX Runtime sessions."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from ..io_utils import atomic_output


def default_cache_dir() -> Path:
    """ONNX cache folder: $SUPERGF_CACHE_DIR/onnx, else ~/.cache/supergf_ros/onnx (the cache
    root's layout, as `supergf-ros export --cache-dir` and the engine cache use it)."""
    env = os.environ.get("SUPERGF_CACHE_DIR")
    root = Path(env) if env else Path.home() / ".cache" / "supergf_ros"
    return root / "onnx"


def export_onnx(
    module,
    example_inputs: tuple,
    path: str | Path,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int = 17,
) -> Path:
    """Export `module` (in eval mode, fp32) to ONNX at `path`, atomically; return the path.

    Args:
        module: a torch.nn.Module whose forward takes the tensors of `example_inputs` positionally.
        example_inputs: tuple of example tensors (moved to fp32 CPU copies of the module).
        path: destination .onnx file; its folder is created if missing.
        input_names / output_names: names of the graph inputs and outputs, in order.
        dynamic_axes: {tensor name: {axis: symbolic name}} for dynamic sizes.
        opset: ONNX opset version.
    """
    import torch

    if not isinstance(example_inputs, tuple):
        raise ValueError("example_inputs must be a tuple of tensors")
    if len(input_names) != len(example_inputs):
        raise ValueError(
            f"got {len(input_names)} input_names for {len(example_inputs)} example inputs"
        )
    unknown = set(dynamic_axes) - set(input_names) - set(output_names)
    if unknown:
        raise ValueError(f"dynamic_axes names {sorted(unknown)} are not inputs or outputs")
    path = Path(path)

    was_training = module.training
    module.eval()
    # Export a float32 CPU copy of the inputs; the module itself is expected on CPU in fp32.
    inputs = tuple(
        x.detach().cpu().float() if torch.is_floating_point(x) else x.detach().cpu()
        for x in example_inputs
    )
    try:
        with atomic_output(path) as tmp, torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                inputs,
                str(tmp),
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        module.train(was_training)
    return path


def cached_export(
    module,
    name: str,
    key: str,
    example_inputs: tuple,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    cache_dir: str | Path | None = None,
    opset: int = 17,
) -> Path:
    """Export `module` once to `{cache_dir}/{name}-{key[:16]}.onnx` and reuse it afterwards.

    `key` must identify the weights and config (e.g. a SHA-256 over both): a different model must
    never map to the same file. `cache_dir` defaults to `default_cache_dir()`.
    """
    path = cached_onnx_path(name, key, cache_dir)
    if path.exists() and path.stat().st_size > 0:
        return path
    return export_onnx(
        module,
        example_inputs,
        path,
        input_names=input_names,
        output_names=output_names,
        dynamic_axes=dynamic_axes,
        opset=opset,
    )


def cached_onnx_path(name: str, key: str, cache_dir: str | Path | None = None) -> Path:
    """Where `cached_export` keeps the ONNX file of (name, key); finding it needs no torch."""
    if not key:
        raise ValueError("cached_export needs a non-empty key (hash of weights and config)")
    if not name or "/" in name or os.sep in name:
        raise ValueError(f"invalid ONNX cache name {name!r}")
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / f"{name}-{key[:16]}.onnx"


ORT_THREADS_ENV = "SUPERGF_ORT_THREADS"
ORT_SPINNING_ENV = "SUPERGF_ORT_SPINNING"


def configure_cpu_threads(options, intra_op_num_threads: int | None = None, spinning=None) -> None:
    """Thread settings of an ONNX Runtime session shared by every session of the project.

    `intra_op_num_threads`: None -> $SUPERGF_ORT_THREADS, else ONNX Runtime's choice.
    `spinning`: whether idle intra-op threads busy-wait for the next run; None ->
    $SUPERGF_ORT_SPINNING ("1" enables), else off. Off measured ~10% faster per localization
    step on a shared 2-core CPU (the threads stop stealing cycles from matching and PnP, and
    from the robot's other processes), at no cost when the CPU is idle.
    """
    if intra_op_num_threads is None and os.environ.get(ORT_THREADS_ENV):
        intra_op_num_threads = int(os.environ[ORT_THREADS_ENV])
    if intra_op_num_threads is not None:
        options.intra_op_num_threads = int(intra_op_num_threads)
    if spinning is None:
        spinning = os.environ.get(ORT_SPINNING_ENV, "0").strip() == "1"
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
