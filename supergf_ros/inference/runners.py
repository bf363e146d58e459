"""Runners: one network on one backend, numpy in / numpy out (PyTorch, ONNX Runtime; TensorRT in
`tensorrt`). Built by `backends.create_runner` from a `spec.ModelSpec` and a `BackendChoice`."""

from __future__ import annotations

import copy
import ctypes
import functools
import importlib.util
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .devices import parse_device
from .onnx import configure_cpu_threads

PRECISIONS = ("fp32", "fp16")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    return precision


def _explicit_device(device: str, who: str) -> tuple[str, str]:
    """(kind, canonical name) of a device a runner is built on ("auto" is refused)."""
    kind, name, _ = parse_device(device)
    if kind == "auto":
        raise ValueError(f"{who} needs an explicit device ('cpu' or 'cuda[:N]')")
    return kind, name


class Runner:
    """One network on one backend.

    `runner({input name: array})` -> {output name: array}; `runner(*arrays)` or
    `runner.run(*arrays)` -> the outputs in `output_names` order. Float outputs are float32.
    `name` is the backend, `device` "cpu" or "cuda[:N]", `precision` "fp32" or "fp16";
    `choice` is the `BackendChoice` it was built for (set by `create_runner`).
    """

    name: str = ""
    device: str = "cpu"
    precision: str = "fp32"
    input_names: list[str]
    output_names: list[str]
    choice: Any = None

    @property
    def label(self) -> str:
        return f"{self.name} runner"

    def __call__(self, *inputs: Any) -> Any:
        if len(inputs) == 1 and isinstance(inputs[0], Mapping):
            return self.run_dict(inputs[0])
        if inputs and all(isinstance(x, np.ndarray) for x in inputs):
            return self.run(*inputs)
        kinds = [type(x).__name__ for x in inputs]
        raise ValueError(f"inputs must be a dict {{name: array}} or numpy arrays, got {kinds}")

    def run_dict(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{output name: array} for {input name: array}."""
        return self._run(self._check_inputs(inputs))

    def run(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        """Positional: inputs and outputs in `input_names` / `output_names` order."""
        n = len(self.input_names)
        if len(inputs) != n:
            raise ValueError(
                f"{self.label}: expected {n} inputs {self.input_names}, got {len(inputs)} "
                f"(the model expects {n} inputs, in that order)"
            )
        outputs = self.run_dict(dict(zip(self.input_names, inputs)))
        return tuple(outputs[k] for k in self.output_names)

    def describe(self) -> dict[str, Any]:
        """{"backend", "device", "precision", ...} for logs, benchmarks and diagnostics."""
        return {"backend": self.name, "device": self.device, "precision": self.precision}

    def synchronize(self) -> None:
        """Wait for queued device work (for timing); outputs are already synchronized."""

    def _check_inputs(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.input_names if n not in inputs]
        extra = sorted(set(inputs) - set(self.input_names))
        if missing or extra:
            raise ValueError(
                f"{self.label} expects inputs {self.input_names}; "
                f"missing {missing}, unexpected {extra}"
            )
        arrays = []
        for name in self.input_names:
            array = np.asarray(inputs[name])
            if array.dtype == np.float64 or array.dtype == np.float16:
                array = array.astype(np.float32)
            arrays.append(np.ascontiguousarray(array))
        return arrays

    def _run(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError


class TorchRunner(Runner):
    """PyTorch: CPU or CUDA, fp32, or fp16 on CUDA (weights and float inputs in half).

    `channels_last` runs a channels_last copy of the module on 4-D inputs; `module` itself is
    moved to `device` in place.
    """

    name = "torch"

    def __init__(
        self,
        module: Any,
        input_names: Sequence[str],
        output_names: Sequence[str],
        *,
        device: str = "cpu",
        precision: str = "fp32",
        channels_last: bool = False,
    ) -> None:
        import torch

        kind, device = _explicit_device(device, "TorchRunner")
        check_precision(precision)
        if precision == "fp16" and kind != "cuda":
            raise ValueError("fp16 with PyTorch needs a CUDA device; use fp32 on CPU")
        if kind == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but torch has no CUDA")
        self.device = device
        self.precision = precision
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self._torch = torch
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        self.module = module.eval().to(device=device, dtype=self._dtype)
        self._channels_last = channels_last
        if channels_last:
            self.module = copy.deepcopy(self.module).to(memory_format=torch.channels_last)

    def run_torch(self, inputs: Sequence[Any]) -> dict[str, Any]:
        """Run on torch tensors already on `device`; return torch tensors (no host copy).

        Lets GPU-side post-processing (NMS, sampling, matching) use the outputs where they are.
        """
        torch = self._torch
        with torch.inference_mode():
            cast = [x.to(self._dtype) if torch.is_floating_point(x) else x for x in inputs]
            if self._channels_last:
                cast = [
                    x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x
                    for x in cast
                ]
            outputs = self.module(*cast)
        if isinstance(outputs, Mapping):
            outputs = tuple(outputs[n] for n in self.output_names)
        elif not isinstance(outputs, (tuple, list)):
            outputs = (outputs,)
        if len(outputs) != len(self.output_names):
            raise ValueError(
                f"module returned {len(outputs)} outputs, expected {self.output_names}"
            )
        return dict(zip(self.output_names, outputs))

    def _run(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        tensors = [torch.from_numpy(a).to(self.device, non_blocking=True) for a in arrays]
        outputs = self.run_torch(tensors)
        result = {}
        for key, value in outputs.items():
            if torch.is_floating_point(value):
                value = value.float()
            result[key] = value.cpu().numpy()
        return result

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            self._torch.cuda.synchronize(self.device)


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
    "tensor(uint8)": np.uint8,
}


@functools.lru_cache(maxsize=1)
def _has_libnvinfer() -> bool:
    """Whether TensorRT's runtime library loads (ORT's TensorRT EP needs it at session time)."""
    for name in ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so", "nvinfer_10.dll"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return importlib.util.find_spec("tensorrt_libs") is not None


def ort_providers_for(
    device: str,
    precision: str = "fp32",
    *,
    use_tensorrt: bool = True,
    cache_dir: Path | None = None,
    available: Sequence[str] | None = None,
) -> list[Any]:
    """ONNX Runtime providers (with options) for a device, best first.

    On CUDA: TensorRT EP (when compiled in and `use_tensorrt`; engine cache under `cache_dir`,
    fp16 when asked), then CUDA EP, then CPU. On CPU: the CPU EP only.
    """
    import onnxruntime as ort

    available = list(available if available is not None else ort.get_available_providers())
    kind, _, index = parse_device(device)
    if kind != "cuda":
        return ["CPUExecutionProvider"]
    providers: list[Any] = []
    if use_tensorrt and "TensorrtExecutionProvider" in available and _has_libnvinfer():
        options: dict[str, Any] = {"device_id": index, "trt_fp16_enable": precision == "fp16"}
        if cache_dir is not None:
            options["trt_engine_cache_enable"] = True
            options["trt_engine_cache_path"] = str(cache_dir)
        providers.append(("TensorrtExecutionProvider", options))
    if "CUDAExecutionProvider" in available:
        providers.append(("CUDAExecutionProvider", {"device_id": index}))
    providers.append("CPUExecutionProvider")
    return providers


class OrtRunner(Runner):
    """ONNX Runtime with the CPU, CUDA or TensorRT execution providers."""

    name = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | Path,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        providers: Sequence[Any] | None = None,
        use_tensorrt: bool = True,
        cache_dir: str | Path | None = None,
        intra_op_num_threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
        kind, device = _explicit_device(device, "OrtRunner")
        check_precision(precision)
        if providers is None:
            providers = ort_providers_for(
                device,
                precision,
                use_tensorrt=use_tensorrt,
                cache_dir=Path(cache_dir) if cache_dir else None,
            )
        available = ort.get_available_providers()
        names = [p[0] if isinstance(p, tuple) else p for p in providers]
        missing = [n for n in names if n not in available]
        if missing:
            raise ValueError(f"ONNX Runtime providers {missing} not available; have {available}")
        if kind == "cuda" and not any(
            n in ("CUDAExecutionProvider", "TensorrtExecutionProvider") for n in names
        ):
            raise ValueError(
                f"device {device!r} needs onnxruntime-gpu (CUDAExecutionProvider); have {available}"
            )
        uses_fp16 = precision == "fp16" and "TensorrtExecutionProvider" in names
        if precision == "fp16" and not uses_fp16:
            raise ValueError(
                "fp16 with ONNX Runtime needs the TensorRT execution provider; "
                f"available providers: {available}"
            )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        configure_cpu_threads(options, intra_op_num_threads)
        if kind == "cpu":  # the pattern's preplanned block stays held: 160 MB for SuperPoint
            options.enable_mem_pattern = False  # at 640x480, at no measured speed cost
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=list(providers))
        except Exception as err:  # onnxruntime raises its own exception types
            raise ValueError(f"cannot load ONNX model {onnx_path}: {err}") from err
        self.onnx_path = onnx_path
        self.device = device
        self.precision = precision
        self.providers = list(self.session.get_providers())
        if kind == "cuda" and self.providers[0] == "CPUExecutionProvider":
            raise ValueError(
                f"ONNX Runtime fell back to CPU for {device!r} (CUDA libraries missing?)"
            )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._input_types = {i.name: _ORT_TYPES.get(i.type) for i in self.session.get_inputs()}

    @property
    def label(self) -> str:
        return self.onnx_path.name

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "providers": self.providers}

    def _run(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        feed = {}
        for name, array in zip(self.input_names, arrays):
            dtype = self._input_types[name]
            feed[name] = array if dtype is None or array.dtype == dtype else array.astype(dtype)
        outputs = self.session.run(self.output_names, feed)
        return {
            n: (o.astype(np.float32) if o.dtype == np.float16 else o)
            for n, o in zip(self.output_names, outputs)
        }


def time_runner(
    runner: Runner, feed: Mapping[str, np.ndarray], *, warmup: int = 3, repeats: int = 20
) -> dict[str, float]:
    """Latency of `runner(feed)` in ms (host in, host out, device synchronized).

    Returns {"median_ms", "min_ms", "p90_ms"} over `repeats` runs after `warmup` runs.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        runner(feed)
    runner.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner(feed)
        runner.synchronize()
        times.append((time.perf_counter() - start) * 1000.0)
    return {
        "median_ms": float(np.median(times)),
        "min_ms": float(np.min(times)),
        "p90_ms": float(np.percentile(times, 90)),
    }
