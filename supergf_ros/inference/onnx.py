"""ONNX export and ONNX Runtime execution shared by all networks of the project.

`export_onnx` writes a model atomically; `cached_export` exports once per (name, key) into a cache
folder; `OrtModule` runs an exported file with numpy inputs in the order of its `input_names`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io_utils import atomic_output


def default_cache_dir() -> Path:
    """ONNX cache folder: $SUPERGF_CACHE_DIR, else ~/.cache/supergf_ros/onnx."""
    env = os.environ.get("SUPERGF_CACHE_DIR")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "supergf_ros" / "onnx"


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
    if not key:
        raise ValueError("cached_export needs a non-empty key (hash of weights and config)")
    if not name or "/" in name or os.sep in name:
        raise ValueError(f"invalid ONNX cache name {name!r}")
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"{name}-{key[:16]}.onnx"
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


class OrtModule:
    """Run an ONNX file with ONNX Runtime: `outputs = ort_module(*numpy_inputs)`.

    `intra_op_num_threads` (default: $SUPERGF_ORT_THREADS, else ONNX Runtime's choice) bounds the
    CPU threads of one session, e.g. to leave cores to other nodes on a robot; idle threads do
    not spin unless $SUPERGF_ORT_SPINNING=1 (see `configure_cpu_threads`).
    """

    def __init__(
        self,
        path: str | Path,
        providers: list[str] | None = None,
        *,
        intra_op_num_threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {path}")
        available = ort.get_available_providers()
        providers = list(providers) if providers else ["CPUExecutionProvider"]
        missing = [p for p in providers if p not in available]
        if missing:
            raise ValueError(
                f"ONNX Runtime providers {missing} are not available here; available: {available}"
            )
        options = ort.SessionOptions()
        configure_cpu_threads(options, intra_op_num_threads)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise ValueError(f"cannot load ONNX model {path}: {err}") from err
        self.path = path
        self.providers: list[str] = self.session.get_providers()
        self.input_names: list[str] = [i.name for i in self.session.get_inputs()]
        self.output_names: list[str] = [o.name for o in self.session.get_outputs()]
        self._input_types = {i.name: i.type for i in self.session.get_inputs()}

    _DTYPES = {
        "tensor(float)": np.float32,
        "tensor(double)": np.float64,
        "tensor(int64)": np.int64,
        "tensor(int32)": np.int32,
        "tensor(bool)": np.bool_,
        "tensor(uint8)": np.uint8,
    }

    def __call__(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        """Run on positional numpy inputs (in `input_names` order); return all outputs."""
        if len(inputs) != len(self.input_names):
            raise ValueError(
                f"{self.path.name} expects {len(self.input_names)} inputs "
                f"{self.input_names}, got {len(inputs)}"
            )
        feed = {}
        for name, value in zip(self.input_names, inputs):
            dtype = self._DTYPES.get(self._input_types[name])
            array = np.asarray(value)
            feed[name] = np.ascontiguousarray(array, dtype=dtype) if dtype else array
        return tuple(self.session.run(self.output_names, feed))

    def run_dict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run with named inputs; return {output name: array}."""
        missing = set(self.input_names) - set(inputs)
        if missing:
            raise ValueError(f"missing ONNX inputs {sorted(missing)}")
        outputs = self(*(inputs[n] for n in self.input_names))
        return dict(zip(self.output_names, outputs))


def max_abs_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Largest absolute difference over pairs of arrays (for backend parity checks)."""
    return max(
        float(np.max(np.abs(np.asarray(x) - np.asarray(y)), initial=0.0)) for x, y in zip(a, b)
    )
