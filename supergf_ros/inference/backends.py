"""Inference backends behind one interface: PyTorch, ONNX Runtime and TensorRT.

A `Runner` maps named numpy inputs to named numpy outputs and says what it runs on
(`name`, `device`, `precision`). `select_backend` picks a backend for a device, or checks that an
explicitly requested one is available, and says why; `create_runner` builds the runner for a
`ModelSpec` (a network plus its input/output names, dynamic axes and TensorRT shape profile).

Choice order for ``backend="auto"``: TensorRT, ONNX Runtime with CUDA, PyTorch with CUDA, then the
CPU backend that measured faster for this project's networks (`CPU_PREFERENCE`).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

BACKENDS = ("tensorrt", "onnxruntime", "torch")
PRECISIONS = ("fp32", "fp16")

# ONNX Runtime beat PyTorch on this project's networks on the 2-core development CPU
# (SuperPoint 640x480 and SuperGF dense / sparse, fp32, median of repeated runs; see the report of
# issue 6 and `supergf-ros benchmark`). Override per call with `cpu_preference=`.
CPU_PREFERENCE = "onnxruntime"


# --------------------------------------------------------------------------------------------
# What this machine offers
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Capabilities:
    """What the machine offers for inference (probed once, see `probe_capabilities`).

    Attributes:
        cuda_devices: number of CUDA devices the driver reports (0 without driver or GPU).
        gpu_names: their names, e.g. ("NVIDIA H200",).
        tensorrt: TensorRT version string, or None when `import tensorrt` is not possible.
        pycuda: whether pycuda is importable (the TensorRT runner's buffers and stream).
        ort_providers: ONNX Runtime execution providers compiled into the installed wheel.
        torch: PyTorch version, or None.
        torch_cuda: whether `torch.cuda.is_available()`.
        notes: why something is missing, {component: message}.
    """

    cuda_devices: int = 0
    gpu_names: tuple[str, ...] = ()
    tensorrt: str | None = None
    pycuda: bool = False
    ort_providers: tuple[str, ...] = ()
    torch: str | None = None
    torch_cuda: bool = False
    notes: dict[str, str] = field(default_factory=dict, compare=False)


def _cuda_driver_devices() -> tuple[int, tuple[str, ...], str]:
    """Count CUDA devices through the driver library (no torch, no pycuda needed)."""
    for lib_name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(lib_name)
            break
        except OSError:
            continue
    else:
        return 0, (), "no CUDA driver library (libcuda) found"
    if lib.cuInit(0) != 0:
        return 0, (), "CUDA driver present but cuInit failed (no usable GPU)"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0, (), "cuDeviceGetCount failed"
    names = []
    for index in range(count.value):
        device = ctypes.c_int(0)
        buffer = ctypes.create_string_buffer(256)
        if lib.cuDeviceGet(ctypes.byref(device), index) == 0 and (
            lib.cuDeviceGetName(buffer, 256, device) == 0
        ):
            names.append(buffer.value.decode(errors="replace"))
        else:
            names.append(f"cuda:{index}")
    return count.value, tuple(names), ""


@functools.lru_cache(maxsize=1)
def probe_capabilities() -> Capabilities:
    """Probe CUDA devices, TensorRT, pycuda, ONNX Runtime providers and PyTorch (cached)."""
    notes: dict[str, str] = {}
    cuda_devices, gpu_names, note = _cuda_driver_devices()
    if note:
        notes["cuda"] = note

    trt_version = None
    if importlib.util.find_spec("tensorrt") is None:
        notes["tensorrt"] = "Python package 'tensorrt' is not installed"
    else:
        try:
            import tensorrt

            trt_version = str(tensorrt.__version__)
        except Exception as err:  # a broken TensorRT install raises anything
            notes["tensorrt"] = f"import tensorrt failed: {err}"
    has_pycuda = importlib.util.find_spec("pycuda") is not None
    if not has_pycuda:
        notes["pycuda"] = "Python package 'pycuda' is not installed"

    ort_providers: tuple[str, ...] = ()
    try:
        import onnxruntime

        ort_providers = tuple(onnxruntime.get_available_providers())
    except ImportError as err:
        notes["onnxruntime"] = f"import onnxruntime failed: {err}"

    torch_version, torch_cuda = None, False
    try:
        import torch

        torch_version = str(torch.__version__)
        torch_cuda = bool(torch.cuda.is_available())
        if not torch_cuda:
            notes["torch_cuda"] = f"torch {torch_version} reports no CUDA device"
    except ImportError as err:
        notes["torch"] = f"import torch failed: {err}"
    return Capabilities(
        cuda_devices=cuda_devices,
        gpu_names=gpu_names,
        tensorrt=trt_version,
        pycuda=has_pycuda,
        ort_providers=ort_providers,
        torch=torch_version,
        torch_cuda=torch_cuda,
        notes=notes,
    )


def available_backends(capabilities: Capabilities | None = None) -> dict[str, str]:
    """{"backend:device": "available" or why not} for every backend and device kind."""
    caps = capabilities or probe_capabilities()
    gpu = caps.cuda_devices > 0
    no_gpu = caps.notes.get("cuda", "no CUDA device")
    status: dict[str, str] = {}
    if caps.tensorrt is None:
        status["tensorrt:cuda"] = caps.notes.get("tensorrt", "tensorrt not importable")
    elif not caps.pycuda:
        status["tensorrt:cuda"] = caps.notes.get("pycuda", "pycuda not installed")
    elif not gpu:
        status["tensorrt:cuda"] = no_gpu
    else:
        status["tensorrt:cuda"] = "available"
    if "CUDAExecutionProvider" not in caps.ort_providers:
        status["onnxruntime:cuda"] = (
            f"onnxruntime has no CUDAExecutionProvider (providers: {list(caps.ort_providers)}); "
            "install onnxruntime-gpu"
        )
    elif not gpu:
        status["onnxruntime:cuda"] = no_gpu
    else:
        status["onnxruntime:cuda"] = "available"
    if caps.torch is None:
        status["torch:cuda"] = caps.notes.get("torch", "torch not installed")
    elif not caps.torch_cuda:
        status["torch:cuda"] = caps.notes.get("torch_cuda", "torch has no CUDA")
    else:
        status["torch:cuda"] = "available"
    status["onnxruntime:cpu"] = (
        "available"
        if "CPUExecutionProvider" in caps.ort_providers
        else caps.notes.get("onnxruntime", "onnxruntime not installed")
    )
    status["torch:cpu"] = (
        "available" if caps.torch is not None else caps.notes.get("torch", "not installed")
    )
    return status


# --------------------------------------------------------------------------------------------
# Choosing a backend
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackendChoice:
    """The backend to run and why: `backend` in BACKENDS, `device` "cpu" or "cuda[:N]"."""

    backend: str
    device: str
    precision: str
    reason: str

    @property
    def device_kind(self) -> str:
        return "cuda" if self.device.startswith("cuda") else "cpu"

    @property
    def device_index(self) -> int:
        return int(self.device.split(":", 1)[1]) if ":" in self.device else 0


def _parse_device(device: str) -> tuple[str, str]:
    """("auto"|"cpu"|"cuda", canonical device string) or ValueError."""
    if not isinstance(device, str):
        raise ValueError(
            f"device must be a string ('auto', 'cpu', 'cuda', 'cuda:N'), got {device!r}"
        )
    device = device.strip().lower()
    if device in ("auto", "cpu", "cuda"):
        return device, device
    if device.startswith("cuda:") and device[5:].isdigit():
        return "cuda", device
    raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")


def resolve_backend(backend: str, device: str) -> tuple[str, str, BackendChoice | None]:
    """Validate a model's `backend`/`device` options and resolve them.

    "auto", "tensorrt" and device "auto" go through `select_backend` (which logs the choice and
    why); explicit "torch"/"onnxruntime" on an explicit device are taken as given.
    Returns (backend, device, the BackendChoice or None).
    """
    if backend not in ("auto", *BACKENDS):
        raise ValueError(
            f"backend must be 'auto', 'torch', 'onnxruntime' or 'tensorrt', got {backend!r}"
        )
    if backend in ("auto", "tensorrt") or device == "auto":
        choice = select_backend(backend, device)
        return choice.backend, choice.device, choice
    return backend, device, None


def select_backend(
    backend: str = "auto",
    device: str = "auto",
    precision: str = "fp32",
    *,
    capabilities: Capabilities | None = None,
    cpu_preference: str | None = None,
) -> BackendChoice:
    """Pick a backend and device, or validate an explicit request; log the choice and why.

    Args:
        backend: "auto", "tensorrt", "onnxruntime" or "torch".
        device: "auto", "cpu", "cuda" or "cuda:N".
        precision: "fp32" or "fp16" (fp16 needs a CUDA device).
        capabilities: what the machine offers; probed when None.
        cpu_preference: CPU backend for "auto" ("onnxruntime" or "torch"); `CPU_PREFERENCE` if None.
    Raises:
        ValueError: unknown names, or the requested backend/device is unavailable; the message
            lists what is available.
    """
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown backend {backend!r}; choose 'auto' or one of {list(BACKENDS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
    cpu_preference = cpu_preference or CPU_PREFERENCE
    if cpu_preference not in ("onnxruntime", "torch"):
        raise ValueError(f"cpu_preference must be 'onnxruntime' or 'torch', got {cpu_preference!r}")
    kind, device_str = _parse_device(device)
    caps = capabilities or probe_capabilities()
    status = available_backends(caps)
    ok = {key for key, value in status.items() if value == "available"}

    def unavailable(what: str) -> ValueError:
        lines = "; ".join(f"{key}: {value}" for key, value in status.items())
        return ValueError(
            f"{what} is not available here. Available: {sorted(ok) or 'nothing'}. Details: {lines}"
        )

    if caps.cuda_devices and kind == "cuda" and ":" in device_str:
        index = int(device_str.split(":")[1])
        if index >= caps.cuda_devices:
            raise ValueError(
                f"device {device_str} does not exist ({caps.cuda_devices} CUDA devices)"
            )

    # Candidates in priority order, filtered by the request.
    order = [
        ("tensorrt", "cuda", "TensorRT engine: fastest on NVIDIA GPUs and Jetsons"),
        ("onnxruntime", "cuda", "ONNX Runtime with the CUDA execution provider"),
        ("torch", "cuda", "PyTorch on CUDA"),
    ]
    cpu_other = "torch" if cpu_preference == "onnxruntime" else "onnxruntime"
    order += [
        (cpu_preference, "cpu", f"{cpu_preference} measured faster on CPU for these networks"),
        (cpu_other, "cpu", f"{cpu_other} on CPU ({cpu_preference} is not available)"),
    ]
    wanted = [
        (name, dev, why)
        for name, dev, why in order
        if (backend == "auto" or name == backend) and (kind == "auto" or dev == kind)
    ]
    if precision == "fp16":
        if kind == "cpu":
            raise ValueError("precision 'fp16' needs a CUDA device; use fp32 on CPU")
        wanted = [w for w in wanted if w[1] == "cuda"]
    if not wanted:  # e.g. tensorrt on cpu
        raise ValueError(
            f"backend {backend!r} cannot run on device {device_str!r}"
            + (
                " (TensorRT needs a CUDA device: use device 'cuda')"
                if backend == "tensorrt"
                else ""
            )
        )
    skipped = []
    for name, dev, why in wanted:
        key = f"{name}:{dev}"
        if key in ok:
            chosen_device = device_str if kind == "cuda" and dev == "cuda" else dev
            reason = why
            if backend == "auto":
                reason = f"auto: {why}"
                if skipped:
                    reason += "; skipped " + ", ".join(skipped)
            else:
                reason = f"requested {backend}: {why}"
            choice = BackendChoice(name, chosen_device, precision, reason)
            logger.info(
                "inference backend %s on %s (%s): %s", name, chosen_device, precision, reason
            )
            return choice
        skipped.append(f"{key} ({status[key]})")
    what = f"backend {backend!r}" if backend != "auto" else "no backend"
    if kind != "auto":
        what += f" on device {device_str!r}"
    if precision == "fp16":
        what += " with fp16"
    raise unavailable(what)


# --------------------------------------------------------------------------------------------
# Runners
# --------------------------------------------------------------------------------------------
class Runner:
    """One network on one backend: `outputs = runner({input name: array})`.

    Attributes:
        name: backend name ("torch", "onnxruntime", "tensorrt").
        device: "cpu" or "cuda[:N]".
        precision: "fp32" or "fp16" (inputs and outputs are float32 either way).
        input_names / output_names: tensor names, in the network's order.
    """

    name: str = ""
    device: str = "cpu"
    precision: str = "fp32"
    input_names: list[str]
    output_names: list[str]
    choice: BackendChoice | None = None  # set by create_runner: what was selected and why

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on named numpy inputs; return {output name: numpy array (float32 for floats)}."""
        arrays = self._check_inputs(inputs)
        return self._run(arrays)

    def run(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        """Positional convenience: inputs and outputs in `input_names`/`output_names` order."""
        if len(inputs) != len(self.input_names):
            raise ValueError(
                f"expected {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}"
            )
        out = self(dict(zip(self.input_names, inputs)))
        return tuple(out[n] for n in self.output_names)

    def describe(self) -> dict[str, Any]:
        """{"backend", "device", "precision", ...} for logs, benchmarks and diagnostics."""
        return {"backend": self.name, "device": self.device, "precision": self.precision}

    def synchronize(self) -> None:
        """Wait for queued device work (for timing); outputs are already synchronized."""

    def _check_inputs(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if not isinstance(inputs, Mapping):
            raise ValueError(f"inputs must be a dict {{name: array}}, got {type(inputs).__name__}")
        missing = [n for n in self.input_names if n not in inputs]
        extra = sorted(set(inputs) - set(self.input_names))
        if missing or extra:
            raise ValueError(
                f"{self.name} runner expects inputs {self.input_names}; "
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
    """PyTorch: CPU or CUDA, fp32, or fp16 on CUDA (weights and float inputs in half)."""

    name = "torch"

    def __init__(
        self,
        module: Any,
        input_names: Sequence[str],
        output_names: Sequence[str],
        *,
        device: str = "cpu",
        precision: str = "fp32",
    ) -> None:
        import torch

        kind, device = _parse_device(device)
        if kind == "auto":
            raise ValueError("TorchRunner needs an explicit device ('cpu' or 'cuda[:N]')")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
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

    def run_torch(self, inputs: Sequence[Any]) -> dict[str, Any]:
        """Run on torch tensors already on `device`; return torch tensors (no host copy).

        Lets GPU-side post-processing (NMS, sampling, matching) use the outputs where they are.
        """
        torch = self._torch
        with torch.inference_mode():
            cast = [x.to(self._dtype) if torch.is_floating_point(x) else x for x in inputs]
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
    kind, device = _parse_device(device)
    if kind != "cuda":
        return ["CPUExecutionProvider"]
    index = int(device.split(":")[1]) if ":" in device else 0
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
        kind, device = _parse_device(device)
        if kind == "auto":
            raise ValueError("OrtRunner needs an explicit device ('cpu' or 'cuda[:N]')")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {list(PRECISIONS)}")
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
        from .onnx import configure_cpu_threads

        configure_cpu_threads(options, intra_op_num_threads)
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


# --------------------------------------------------------------------------------------------
# Model specs and the runner factory
# --------------------------------------------------------------------------------------------
Shape = tuple[int, ...]


@dataclass
class ModelSpec:
    """A network as every backend needs it.

    Attributes:
        name: file-name friendly model name, e.g. "superpoint".
        build_module: returns the fp32 eval torch module; forward takes tensors positionally in
            `input_names` order and returns a tuple (or a single tensor) in `output_names` order.
        example_inputs: returns numpy example inputs (positional) for ONNX export and checks.
        input_names / output_names: tensor names.
        dynamic_axes: {tensor name: {axis: symbolic name}} for ONNX export.
        key: identifies weights and config (e.g. SHA-256 of weights + config JSON); names the
            exported ONNX file, so a different model must have a different key.
        profile: TensorRT optimization profile {input name: (min, opt, max) shapes}.
    """

    name: str
    build_module: Callable[[], Any]
    example_inputs: Callable[[], tuple[np.ndarray, ...]]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    key: str
    profile: dict[str, tuple[Shape, Shape, Shape]] = field(default_factory=dict)
    _module: Any = field(default=None, repr=False)

    def module(self) -> Any:
        """The torch module, built once."""
        if self._module is None:
            self._module = self.build_module()
        return self._module

    def export_onnx(self, cache_dir: str | Path | None = None) -> Path:
        """Export (once, cached by name and key) to ONNX; return the file."""
        import torch

        from .onnx import cached_export

        examples = tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in self.example_inputs())
        return cached_export(
            self.module(),
            self.name,
            self.key,
            examples,
            input_names=self.input_names,
            output_names=self.output_names,
            dynamic_axes=self.dynamic_axes,
            cache_dir=cache_dir,
        )


def create_runner(
    spec: ModelSpec,
    backend: str | BackendChoice = "auto",
    device: str = "auto",
    precision: str = "fp32",
    *,
    onnx_cache_dir: str | Path | None = None,
    engine_cache_dir: str | Path | None = None,
    workspace_bytes: int | None = None,
    capabilities: Capabilities | None = None,
) -> Runner:
    """Build a runner for `spec` on the selected (or given) backend; log what was chosen.

    Args:
        spec: the network (see `ModelSpec`).
        backend: "auto", "tensorrt", "onnxruntime", "torch", or a `BackendChoice`.
        device / precision: see `select_backend`.
        onnx_cache_dir: where exported ONNX files go (default: the ONNX helper's cache).
        engine_cache_dir: where TensorRT engines go (default: `engine_cache.default_engine_dir()`).
        workspace_bytes: TensorRT builder workspace limit (default 1 GiB).
    """
    if isinstance(backend, BackendChoice):
        choice = backend
    else:
        choice = select_backend(backend, device, precision, capabilities=capabilities)
    start = time.perf_counter()
    if choice.backend == "torch":
        runner: Runner = TorchRunner(
            spec.module(),
            spec.input_names,
            spec.output_names,
            device=choice.device,
            precision=choice.precision,
        )
    elif choice.backend == "onnxruntime":
        onnx_path = spec.export_onnx(onnx_cache_dir)
        trt_cache = None
        if choice.device_kind == "cuda":
            from .engine_cache import default_engine_dir

            trt_cache = Path(engine_cache_dir) if engine_cache_dir else default_engine_dir()
            trt_cache = trt_cache / "ort-trt"
            trt_cache.mkdir(parents=True, exist_ok=True)
        runner = OrtRunner(
            onnx_path, device=choice.device, precision=choice.precision, cache_dir=trt_cache
        )
    elif choice.backend == "tensorrt":
        from .tensorrt import TensorRTRunner

        onnx_path = spec.export_onnx(onnx_cache_dir)
        if not spec.profile:
            raise ValueError(f"model {spec.name!r} has no TensorRT shape profile")
        runner = TensorRTRunner.from_onnx(
            onnx_path,
            model=spec.name,
            profile=spec.profile,
            precision=choice.precision,
            device=choice.device,
            cache_dir=engine_cache_dir,
            workspace_bytes=workspace_bytes,
        )
    else:  # pragma: no cover - select_backend only returns known names
        raise ValueError(f"unknown backend {choice.backend!r}")
    runner.choice = choice
    logger.info(
        "%s runner ready: %s (%.2f s)", spec.name, runner.describe(), time.perf_counter() - start
    )
    return runner


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
