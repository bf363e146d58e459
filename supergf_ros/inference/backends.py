"""Backend capability detection and selection, and the runner factory.

`select_backend` picks a backend for a device (or checks an explicit request) and says why;
`resolve_backend` turns component options into one `BackendChoice`; `create_runner` builds the
runner (`runners`, `tensorrt`) for a `spec.ModelSpec` and a choice.

Choice order for ``backend="auto"``: TensorRT, ONNX Runtime with CUDA, PyTorch with CUDA, then the
CPU backend that measured faster for this project's networks (`CPU_PREFERENCE`).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .devices import Device, parse_device
from .runners import OrtRunner, Runner, TorchRunner, check_precision
from .spec import ModelSpec

logger = logging.getLogger(__name__)

BACKENDS = ("tensorrt", "onnxruntime", "torch")
BACKEND_OPTIONS = ("auto", "torch", "onnxruntime", "tensorrt")  # what users may ask for
DEVICE_OPTIONS = ("auto", "cpu", "cuda")  # or "cuda:N"
AUTO_BACKEND_ORDER = "TensorRT > ONNX Runtime CUDA > PyTorch CUDA > ONNX Runtime CPU > PyTorch CPU"

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
        return parse_device(self.device).kind

    @property
    def device_index(self) -> int:
        return parse_device(self.device).index


def resolve_backend(backend: str | BackendChoice, device: str = "auto") -> BackendChoice:
    """One `BackendChoice` for a component's `backend` / `device` options.

    A `BackendChoice` is taken as it is (unless `device` names another device); "auto",
    "tensorrt" or device "auto" go through `select_backend`; explicit "torch" / "onnxruntime" on
    an explicit device are taken as given, without probing.
    """
    if isinstance(backend, BackendChoice):
        if device in ("auto", backend.device):
            return backend
        backend = backend.backend
    if backend not in ("auto", *BACKENDS):
        raise ValueError(
            f"backend must be 'auto', 'torch', 'onnxruntime' or 'tensorrt', got {backend!r}"
        )
    dev = parse_device(device)
    if backend in ("auto", "tensorrt") or dev.kind == "auto":
        return select_backend(backend, dev.name)
    return BackendChoice(backend, dev.name, "fp32", f"requested {backend} on {dev.name}")


def select_backend(
    backend: str = "auto",
    device: str = "auto",
    precision: str = "fp32",
    *,
    capabilities: Capabilities | None = None,
    cpu_preference: str | None = None,
) -> BackendChoice:
    """Pick a backend and device, or validate an explicit request; log the choice and why.

    `backend` "auto" or one of BACKENDS; `device` "auto", "cpu", "cuda" or "cuda:N"; `precision`
    "fp32" or "fp16" (CUDA only); `capabilities` probed when None; `cpu_preference` the CPU backend
    for "auto" (`CPU_PREFERENCE` if None). ValueError for unknown names or an unavailable request,
    listing what is available.
    """
    cpu_preference = _check_request(backend, precision, cpu_preference)
    dev = parse_device(device)
    caps = capabilities or probe_capabilities()
    if caps.cuda_devices and ":" in dev.name and dev.index >= caps.cuda_devices:
        raise ValueError(f"device {dev.name} does not exist ({caps.cuda_devices} CUDA devices)")
    wanted = _candidates(backend, dev, precision, cpu_preference)
    choice = _first_available(wanted, available_backends(caps), backend, dev, precision)
    logger.info(
        "inference backend %s on %s (%s): %s",
        choice.backend,
        choice.device,
        precision,
        choice.reason,
    )
    return choice


def _check_request(backend: str, precision: str, cpu_preference: str | None) -> str:
    """Validate the names of a request; return the CPU preference."""
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown backend {backend!r}; choose 'auto' or one of {list(BACKENDS)}")
    check_precision(precision)
    cpu_preference = cpu_preference or CPU_PREFERENCE
    if cpu_preference not in ("onnxruntime", "torch"):
        raise ValueError(f"cpu_preference must be 'onnxruntime' or 'torch', got {cpu_preference!r}")
    return cpu_preference


def _candidates(
    backend: str, dev: Device, precision: str, cpu_preference: str
) -> list[tuple[str, str, str]]:
    """[(backend, device kind, why)] in priority order, filtered by the request."""
    cpu_other = "torch" if cpu_preference == "onnxruntime" else "onnxruntime"
    order = [
        ("tensorrt", "cuda", "TensorRT engine: fastest on NVIDIA GPUs and Jetsons"),
        ("onnxruntime", "cuda", "ONNX Runtime with the CUDA execution provider"),
        ("torch", "cuda", "PyTorch on CUDA"),
        (cpu_preference, "cpu", f"{cpu_preference} measured faster on CPU for these networks"),
        (cpu_other, "cpu", f"{cpu_other} on CPU ({cpu_preference} is not available)"),
    ]
    wanted = [
        (name, kind, why)
        for name, kind, why in order
        if backend in ("auto", name) and dev.kind in ("auto", kind)
    ]
    if precision == "fp16":
        if dev.kind == "cpu":
            raise ValueError("precision 'fp16' needs a CUDA device; use fp32 on CPU")
        wanted = [w for w in wanted if w[1] == "cuda"]
    if not wanted:  # e.g. tensorrt on cpu
        hint = " (TensorRT needs a CUDA device: use device 'cuda')" if backend == "tensorrt" else ""
        raise ValueError(f"backend {backend!r} cannot run on device {dev.name!r}{hint}")
    return wanted


def _first_available(
    wanted: list[tuple[str, str, str]],
    status: dict[str, str],
    backend: str,
    dev: Device,
    precision: str,
) -> BackendChoice:
    """The first available candidate, or ValueError listing what is available and why not."""
    skipped = []
    for name, kind, why in wanted:
        key = f"{name}:{kind}"
        if status[key] != "available":
            skipped.append(f"{key} ({status[key]})")
            continue
        device = dev.name if dev.kind == "cuda" and kind == "cuda" else kind
        if backend != "auto":
            reason = f"requested {backend}: {why}"
        else:
            reason = f"auto: {why}" + ("; skipped " + ", ".join(skipped) if skipped else "")
        return BackendChoice(name, device, precision, reason)
    what = f"backend {backend!r}" if backend != "auto" else "a backend"
    if dev.kind != "auto":
        what += f" on device {dev.name!r}"
    if precision == "fp16":
        what += " with fp16"
    ok = sorted(key for key, value in status.items() if value == "available")
    details = "; ".join(f"{key}: {value}" for key, value in status.items())
    raise ValueError(
        f"{what} is not available here. Available: {ok or 'nothing'}. Details: {details}"
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
    """The runner for `spec` on `backend` (a `BackendChoice`, used as is, or names for
    `select_backend`); exported ONNX files go to `onnx_cache_dir`, TensorRT engines to
    `engine_cache_dir` (default `engine_cache.default_engine_dir()`)."""
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
            channels_last=spec.channels_last,
        )
    elif choice.backend == "onnxruntime":
        runner = OrtRunner(
            spec.export_onnx(onnx_cache_dir),
            device=choice.device,
            precision=choice.precision,
            cache_dir=_ort_trt_cache(choice, engine_cache_dir),
        )
    elif choice.backend == "tensorrt":
        from .tensorrt import TensorRTRunner

        if not spec.profile:
            raise ValueError(f"model {spec.name!r} has no TensorRT shape profile")
        runner = TensorRTRunner.from_onnx(
            spec.export_onnx(onnx_cache_dir),
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


def _ort_trt_cache(choice: BackendChoice, engine_cache_dir: str | Path | None) -> Path | None:
    """Engine cache of ONNX Runtime's TensorRT provider (CUDA only)."""
    if choice.device_kind != "cuda":
        return None
    from .engine_cache import default_engine_dir

    root = Path(engine_cache_dir) if engine_cache_dir else default_engine_dir()
    (root / "ort-trt").mkdir(parents=True, exist_ok=True)
    return root / "ort-trt"
