"""TensorRT: build engines from ONNX and run them with pycuda buffers on a CUDA stream.

Supports the TensorRT 8.6 and 10.x Python APIs:

- build: `trt.Builder` + `OnnxParser`, explicit-batch network (the only mode, and the default, in
  10.x), one optimization profile with (min, opt, max) shapes per input, FP16 flag on request,
  workspace limit via `set_memory_pool_limit(MemoryPoolType.WORKSPACE, ...)`, progress through
  `IProgressMonitor` where the installed TensorRT has it;
- run on 8.x: binding indices, `set_binding_shape` and `execute_async_v2(bindings, stream_handle)`;
- run on 10.x: tensor names, `set_input_shape`, `set_tensor_address` and
  `execute_async_v3(stream_handle)`.

No PyTorch at inference time: host <-> device copies go through pycuda page-locked buffers on the
device's primary context (shared with PyTorch or ONNX Runtime in the same process).
Engines are cached by `engine_cache.EngineCache`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .devices import parse_device
from .engine_cache import EngineCache, canonical_profile, make_engine_key
from .runners import Runner

logger = logging.getLogger(__name__)

DEFAULT_WORKSPACE_BYTES = 1 << 30  # 1 GiB: enough for SuperPoint / SuperGF, fits a Jetson


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as err:
        raise ValueError(
            "TensorRT is not installed (Python package 'tensorrt'); on a Jetson it comes with "
            "JetPack, on desktops `pip install tensorrt`. Use backend 'onnxruntime' or 'torch'."
        ) from err
    return trt


def _import_pycuda() -> Any:
    try:
        import pycuda.driver as cuda
    except ImportError as err:
        raise ValueError(
            "the TensorRT backend needs pycuda (`pip install pycuda`) for its buffers and stream"
        ) from err
    return cuda


def trt_major(version: str) -> int:
    """Major version from a TensorRT version string ("8.6.1" -> 8)."""
    try:
        return int(str(version).split(".")[0])
    except ValueError as err:
        raise ValueError(f"cannot parse TensorRT version {version!r}") from err


def check_profile(
    network_inputs: Mapping[str, Sequence[int]], profile: Mapping[str, tuple[Any, Any, Any]]
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """Check a shape profile against the network's inputs (-1 = dynamic); return it canonical.

    Every input needs a profile entry of the same rank whose static dimensions match the
    network's; extra entries are errors too.
    """
    canon = {name: (lo, opt, hi) for name, lo, opt, hi in canonical_profile(profile)}
    missing = sorted(set(network_inputs) - set(canon))
    extra = sorted(set(canon) - set(network_inputs))
    if missing or extra:
        raise ValueError(
            f"TensorRT profile must cover exactly the network inputs {sorted(network_inputs)}; "
            f"missing {missing}, unknown {extra}"
        )
    for name, dims in network_inputs.items():
        dims = tuple(int(d) for d in dims)
        for label, shape in zip(("min", "opt", "max"), canon[name]):
            if len(shape) != len(dims):
                raise ValueError(
                    f"profile {label} shape {shape} for {name!r} has rank {len(shape)}, "
                    f"the network input has shape {dims}"
                )
            for axis, (d, s) in enumerate(zip(dims, shape)):
                if d >= 0 and d != s:
                    raise ValueError(
                        f"profile {label} shape {shape} for {name!r} sets axis {axis} to {s}, "
                        f"but it is static ({d}) in the network"
                    )
    return canon


def check_shape_in_profile(
    name: str, shape: Sequence[int], bounds: tuple[Sequence[int], Sequence[int], Sequence[int]]
) -> None:
    """ValueError unless min <= shape <= max element-wise for input `name`."""
    lo, _, hi = bounds
    shape = tuple(int(d) for d in shape)
    if len(shape) != len(lo) or any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
        raise ValueError(
            f"input {name!r} has shape {shape}, outside the engine's profile "
            f"[{tuple(lo)} .. {tuple(hi)}]; rebuild the engine with a larger profile "
            "(e.g. `supergf-ros export --format tensorrt` with larger sizes)"
        )


def _make_progress_monitor(trt: Any) -> Any | None:
    """A tqdm-backed IProgressMonitor, or None when this TensorRT has no progress API."""
    if not hasattr(trt, "IProgressMonitor"):
        return None
    from tqdm import tqdm

    class TqdmProgressMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.bars: dict[str, Any] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            depth = 0 if parent_phase is None else 1 + len(self.bars)
            self.bars[phase_name] = tqdm(
                total=num_steps, desc=phase_name, position=depth, leave=depth == 0
            )

        def step_complete(self, phase_name: str, step: int) -> bool:
            bar = self.bars.get(phase_name)
            if bar is not None:
                bar.n = step + 1
                bar.refresh()
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            bar = self.bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return TqdmProgressMonitor()


def build_engine(
    onnx_path: str | Path,
    *,
    profile: Mapping[str, tuple[Any, Any, Any]],
    precision: str = "fp32",
    workspace_bytes: int | None = None,
    progress: bool = True,
    verbose: bool = False,
) -> bytes:
    """Build a serialized TensorRT engine from an ONNX file.

    Args:
        onnx_path: the exported model.
        profile: {input name: (min, opt, max) shape} covering every network input.
        precision: "fp32" or "fp16" (FP16 kernels allowed; I/O stays float32).
        workspace_bytes: builder workspace limit (default 1 GiB).
        progress: tqdm bars through IProgressMonitor when available (TensorRT >= 10).
        verbose: TensorRT's own verbose log.
    """
    trt = _import_tensorrt()
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {onnx_path}")
    workspace_bytes = int(workspace_bytes or DEFAULT_WORKSPACE_BYTES)
    trt_logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    if trt_major(trt.__version__) >= 10:
        flags = 0  # explicit batch is the only mode in TensorRT 10
    else:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ValueError(f"TensorRT cannot parse {onnx_path}: {errors}")

    inputs = {}
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        inputs[tensor.name] = tuple(tensor.shape)
    canon = check_profile(inputs, profile)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp16":
        if not getattr(builder, "platform_has_fast_fp16", True):
            logger.warning("this GPU has no fast FP16; building FP16 anyway")
        config.set_flag(trt.BuilderFlag.FP16)
    optimization_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in canon.items():
        optimization_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(optimization_profile)
    monitor = _make_progress_monitor(trt) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log)")
    engine = bytes(serialized)
    logger.info(
        "built %s TensorRT %s engine from %s in %.1f s (%.1f MB)",
        precision,
        trt.__version__,
        onnx_path.name,
        time.perf_counter() - start,
        len(engine) / 1e6,
    )
    return engine


class TensorRTRunner(Runner):
    """Run a serialized TensorRT engine with named numpy inputs (CUDA, fp32 or fp16 kernels)."""

    name = "tensorrt"

    def __init__(
        self,
        engine: bytes | Any,
        *,
        device: str = "cuda",
        precision: str = "fp32",
        profile: Mapping[str, tuple[Any, Any, Any]] | None = None,
    ) -> None:
        """`engine`: serialized bytes or an ICudaEngine deserialized on `device`."""
        self._trt = trt = _import_tensorrt()
        self._cuda = cuda = _import_pycuda()
        kind, device, index = parse_device(device)
        if kind != "cuda":
            raise ValueError(f"TensorRT runs on a CUDA device, got device {device!r}")
        self.device = device
        self.precision = precision
        cuda.init()
        if index >= cuda.Device.count():
            raise ValueError(f"device {device} does not exist ({cuda.Device.count()} CUDA devices)")
        self._context = cuda.Device(index).retain_primary_context()
        self._major = trt_major(trt.__version__)
        self._profile = (
            {n: (a, b, c) for n, a, b, c in canonical_profile(profile)} if profile else {}
        )
        with self._active():
            self._trt_logger = trt.Logger(trt.Logger.WARNING)
            if isinstance(engine, (bytes, bytearray, memoryview)):
                self._runtime = trt.Runtime(self._trt_logger)
                engine = self._runtime.deserialize_cuda_engine(bytes(engine))
                if engine is None:
                    raise ValueError(
                        "TensorRT could not deserialize the engine (wrong version/GPU?)"
                    )
            self.engine = engine
            self.execution_context = engine.create_execution_context()
            self.stream = cuda.Stream()
        self._tensors = self._list_tensors()
        self.input_names = [n for n, is_in, _, _ in self._tensors if is_in]
        self.output_names = [n for n, is_in, _, _ in self._tensors if not is_in]
        self._device_buffers: dict[str, tuple[Any, int]] = {}
        self._host_buffers: dict[str, np.ndarray] = {}

    # -- construction helpers ------------------------------------------------------------------
    @classmethod
    def from_onnx(
        cls,
        onnx_path: str | Path,
        *,
        model: str,
        profile: Mapping[str, tuple[Any, Any, Any]],
        precision: str = "fp32",
        device: str = "cuda",
        cache_dir: str | Path | None = None,
        workspace_bytes: int | None = None,
        progress: bool = True,
    ) -> TensorRTRunner:
        """Load the cached engine for this ONNX/TensorRT/GPU/precision/profile, or build it."""
        trt = _import_tensorrt()
        cuda = _import_pycuda()
        kind, device, index = parse_device(device)
        if kind != "cuda":
            raise ValueError(f"TensorRT runs on a CUDA device, got device {device!r}")
        cuda.init()
        gpu = cuda.Device(index)
        cc = "".join(str(v) for v in gpu.compute_capability())
        workspace_bytes = int(workspace_bytes or DEFAULT_WORKSPACE_BYTES)
        key = make_engine_key(
            onnx_path,
            model=model,
            tensorrt_version=trt.__version__,
            device_name=f"{gpu.name()} (sm_{cc})",
            precision=precision,
            profile=profile,
            workspace_bytes=workspace_bytes,
        )
        cache = EngineCache(cache_dir)
        context = gpu.retain_primary_context()
        context.push()
        try:
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            result = cache.get_or_build(
                key,
                build=lambda: build_engine(
                    onnx_path,
                    profile=profile,
                    precision=precision,
                    workspace_bytes=workspace_bytes,
                    progress=progress,
                ),
                load=runtime.deserialize_cuda_engine,
            )
        finally:
            context.pop()
        runner = cls(result.value, device=device, precision=precision, profile=profile)
        runner._runtime = runtime  # keep the runtime alive as long as its engine
        runner.cache_status = result.status
        runner.engine_path = result.path
        runner.engine_key = key
        return runner

    def _list_tensors(self) -> list[tuple[str, bool, np.dtype, int]]:
        """[(name, is_input, numpy dtype, binding index)] in engine order."""
        trt, engine = self._trt, self.engine
        tensors = []
        if self._major >= 10:
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
                tensors.append((name, is_input, dtype, i))
        else:
            for i in range(engine.num_bindings):
                name = engine.get_binding_name(i)
                dtype = np.dtype(trt.nptype(engine.get_binding_dtype(i)))
                tensors.append((name, bool(engine.binding_is_input(i)), dtype, i))
        return tensors

    @contextlib.contextmanager
    def _active(self) -> Iterator[None]:
        self._context.push()
        try:
            yield
        finally:
            self._context.pop()

    def _device_buffer(self, name: str, nbytes: int) -> int:
        """Device pointer with at least `nbytes` for tensor `name` (grown on demand)."""
        current = self._device_buffers.get(name)
        if current is None or current[1] < nbytes:
            allocation = self._cuda.mem_alloc(max(nbytes, 1))
            self._device_buffers[name] = (allocation, max(nbytes, 1))
        return int(self._device_buffers[name][0])

    def _host_buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """Page-locked host array of `shape` for tensor `name` (reallocated when shape changes)."""
        current = self._host_buffers.get(name)
        if current is None or current.shape != shape or current.dtype != dtype:
            current = self._cuda.pagelocked_empty(shape, dtype)
            self._host_buffers[name] = current
        return current

    # -- inference -----------------------------------------------------------------------------
    def _run(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        cuda, ctx = self._cuda, self.execution_context
        inputs = dict(zip(self.input_names, arrays))
        for name, array in inputs.items():
            if name in self._profile:
                check_shape_in_profile(name, array.shape, self._profile[name])
        with self._active():
            # 1. shapes: set inputs, then query the resulting output shapes
            for name, _, _, index in self._tensors:
                if name not in inputs:
                    continue
                shape = tuple(inputs[name].shape)
                if self._major >= 10:
                    ok = ctx.set_input_shape(name, shape)
                else:
                    ok = ctx.set_binding_shape(index, shape)
                if not ok:
                    raise ValueError(f"TensorRT rejected shape {shape} for input {name!r}")
            addresses: dict[str, int] = {}
            outputs: dict[str, np.ndarray] = {}
            # 2. inputs: host -> page-locked -> device, asynchronously on our stream
            for name, is_input, dtype, index in self._tensors:
                if is_input:
                    array = np.ascontiguousarray(inputs[name], dtype=dtype)
                    host = self._host_buffer(name, array.shape, dtype)
                    np.copyto(host, array)
                    addresses[name] = self._device_buffer(name, host.nbytes)
                    cuda.memcpy_htod_async(addresses[name], host, self.stream)
                else:
                    if self._major >= 10:
                        shape = tuple(ctx.get_tensor_shape(name))
                    else:
                        shape = tuple(ctx.get_binding_shape(index))
                    if any(d < 0 for d in shape):
                        raise RuntimeError(f"output {name!r} has unresolved shape {shape}")
                    host = self._host_buffer(name, shape, dtype)
                    outputs[name] = host
                    addresses[name] = self._device_buffer(name, host.nbytes)
            # 3. execute
            if self._major >= 10:
                for name, address in addresses.items():
                    ctx.set_tensor_address(name, address)
                ok = ctx.execute_async_v3(stream_handle=self.stream.handle)
            else:
                bindings = [0] * len(self._tensors)
                for name, _, _, index in self._tensors:
                    bindings[index] = addresses[name]
                ok = ctx.execute_async_v2(bindings=bindings, stream_handle=self.stream.handle)
            if not ok:
                raise RuntimeError("TensorRT execution failed (see the TensorRT log)")
            # 4. outputs: device -> page-locked host, then wait for the stream
            for name, host in outputs.items():
                cuda.memcpy_dtoh_async(host, addresses[name], self.stream)
            self.stream.synchronize()
        return {
            name: (host.astype(np.float32) if host.dtype == np.float16 else host.copy())
            for name, host in outputs.items()
        }

    def synchronize(self) -> None:
        with self._active():
            self.stream.synchronize()

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "tensorrt": self._trt.__version__,
            "engine": str(getattr(self, "engine_path", "")),
            "cache": getattr(self, "cache_status", ""),
        }
