"""INT8 models for ONNX Runtime on CPU: static QDQ quantization of an fp32 ONNX file, cached.

`cached_int8(fp32_path, calibration, settings)` quantizes once (ONNX Runtime
`quantize_static`: QDQ format, uint8 activations, int8 weights, per-channel by default) and reuses
the file afterwards. The cache file is keyed by everything the result depends on: the fp32 file's
SHA-256, the `Int8Settings`, the calibration set's `identity` and the ONNX Runtime version. The
calibration feeds are only computed when the file is missing; quantization is deterministic for
the same feeds (min/max and histogram statistics, no sampling).

The quantized file is a runtime choice, like the backend: a map records the fp32 network's identity
and any precision localizes against it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..io_utils import atomic_output, file_sha256
from .onnx import default_cache_dir

logger = logging.getLogger(__name__)

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
FORMAT_VERSION = 1  # bump when the quantization code changes what it writes


@dataclass(frozen=True)
class Int8Settings:
    """How a model is quantized.

    Attributes:
        method: activation range calibration: "minmax", "entropy" or "percentile".
        percentile: with "percentile", the share of each activation histogram kept (in %).
        per_channel: one weight scale per output channel (else per tensor).
        op_types: operator types quantized (others stay fp32).
        exclude: names of nodes kept in fp32 (mixed precision).
    """

    method: str = "percentile"
    percentile: float = 99.99
    per_channel: bool = True
    op_types: tuple[str, ...] = ("Conv",)
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(
                f"unknown calibration method {self.method!r}; choose one of "
                f"{list(CALIBRATION_METHODS)}"
            )
        if not 50.0 < float(self.percentile) <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")


@dataclass(frozen=True)
class Calibration:
    """A calibration set: `identity` names it (for the cache key; it must change whenever the
    feeds would), `feeds()` yields {input name: array} for each sample (only called to build)."""

    identity: str
    feeds: Callable[[], Iterable[Mapping[str, np.ndarray]]]


def int8_key(fp32_path: str | Path, calibration: Calibration, settings: Int8Settings) -> str:
    """SHA-256 over what an INT8 file depends on."""
    import onnxruntime

    text = json.dumps(
        {
            "format": FORMAT_VERSION,
            "fp32_sha256": file_sha256(fp32_path),
            "settings": asdict(settings),
            "calibration": calibration.identity,
            "onnxruntime": onnxruntime.__version__,
        },
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()


def cached_int8(
    fp32_path: str | Path,
    calibration: Calibration,
    settings: Int8Settings | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """The INT8 version of `fp32_path`: `{cache_dir}/{stem}-int8-{key[:16]}.onnx`, built if missing."""
    settings = settings or Int8Settings()
    fp32_path = Path(fp32_path)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    stem = fp32_path.stem.split("-")[0] or "model"
    path = folder / f"{stem}-int8-{int8_key(fp32_path, calibration, settings)[:16]}.onnx"
    if path.exists() and path.stat().st_size > 0:
        return path
    start = time.perf_counter()
    quantize_int8(fp32_path, path, calibration, settings)
    logger.info("INT8 model %s built (%.1f s)", path, time.perf_counter() - start)
    return path


class _Reader:
    """ONNX Runtime's CalibrationDataReader over a `Calibration`."""

    def __init__(self, calibration: Calibration) -> None:
        self._feeds = iter(calibration.feeds())
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self._feeds, None)
        if feed is None:
            return None
        self.count += 1
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feed.items()}

    def rewind(self) -> None:  # pragma: no cover - ONNX Runtime reads each set once
        raise RuntimeError("calibration data is read once")


def quantize_int8(
    fp32_path: str | Path, out_path: str | Path, calibration: Calibration, settings: Int8Settings
) -> Path:
    """Static QDQ quantization of `fp32_path` into `out_path` (atomically); the path."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    reader = type("Reader", (_Reader, CalibrationDataReader), {})(calibration)
    extra = {"CalibPercentile": float(settings.percentile)}
    with (
        tempfile.TemporaryDirectory() as tmp_dir,
        atomic_output(Path(out_path), suffix=".onnx") as tmp,
    ):
        prepared = os.path.join(tmp_dir, "prepared.onnx")
        quant_pre_process(str(fp32_path), prepared)
        quantize_static(
            prepared,
            str(tmp),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=settings.per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=methods[settings.method],
            op_types_to_quantize=list(settings.op_types),
            nodes_to_exclude=list(settings.exclude),
            extra_options=extra,
        )
        if reader.count == 0:
            raise ValueError(f"calibration set {calibration.identity!r} is empty")
    return Path(out_path)
