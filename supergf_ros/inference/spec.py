"""`ModelSpec`: a network as every backend needs it (names, dynamic axes, ONNX export, TensorRT
profile). The specs of the project's networks live beside them (features/, models/)."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .onnx import cached_export, cached_onnx_path, export_onnx
from .quantize import Calibration, Int8Settings, cached_int8

logger = logging.getLogger(__name__)

Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]


def round_up(value: int, step: int) -> int:
    """`value` rounded up to a multiple of `step`, at least `step` (profile sizes)."""
    return max(step, int(np.ceil(int(value) / step)) * step)


@dataclass
class ModelSpec:
    """A network for every backend.

    Attributes:
        name: file-name friendly model name, e.g. "superpoint".
        build_module: returns the fp32 eval torch module; forward takes tensors positionally in
            `input_names` order and returns a tuple (or one tensor) in `output_names` order.
        example_inputs: numpy example inputs (positional) for ONNX export and checks.
        input_names / output_names: tensor names.
        dynamic_axes: {tensor name: {axis: symbolic name}} for ONNX export.
        key: identifies weights and config; names the cached ONNX file.
        profile: TensorRT optimization profile {input name: (min, opt, max) shapes}.
        channels_last: PyTorch runs a channels_last copy (faster oneDNN convolutions on CPU).
        calibration / int8_settings: the calibration set and quantization settings of the INT8
            ONNX Runtime model (`export_int8`); None: the network has no INT8 version.
    """

    name: str
    build_module: Callable[[], Any]
    example_inputs: Callable[[], tuple[np.ndarray, ...]]
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    key: str
    profile: Profile = field(default_factory=dict)
    channels_last: bool = False
    calibration: Calibration | None = None
    int8_settings: Int8Settings | None = None
    _module: Any = field(default=None, repr=False)

    def module(self) -> Any:
        """The torch module, built once."""
        if self._module is None:
            self._module = self.build_module()
        return self._module

    def export_onnx(self, cache_dir: str | Path | None = None) -> Path:
        """Export once per (name, key) into `cache_dir` (default: the ONNX cache); the file.

        A cached file is found without building the module (no torch import, no weights read);
        exporting needs torch (ValueError naming `supergf-ros export` without it).
        """
        path = cached_onnx_path(self.name, self.key, cache_dir)
        if path.exists() and path.stat().st_size > 0:
            return path
        if importlib.util.find_spec("torch") is None:
            raise ValueError(
                f"no cached ONNX file {path} of {self.name}, and PyTorch is not installed to "
                f"export it: run `supergf-ros export --format onnx --model {self.name}` (with "
                "its --weights) once where PyTorch is installed, with the same $SUPERGF_CACHE_DIR, "
                f"and copy {path.parent} here"
            )
        logger.info("%s: exporting to ONNX %s (imports torch, once)", self.name, path)
        return cached_export(
            self.module(), self.name, self.key, self._examples(), cache_dir=cache_dir, **self._io()
        )

    def export_int8(self, cache_dir: str | Path | None = None) -> Path:
        """The INT8 (QDQ) model for ONNX Runtime on CPU, quantized once from `export_onnx`."""
        if self.calibration is None:
            raise ValueError(f"model {self.name!r} has no INT8 version (no calibration set)")
        return cached_int8(
            self.export_onnx(cache_dir), self.calibration, self.int8_settings, cache_dir
        )

    def write_onnx(self, path: str | Path) -> Path:
        """Export to `path` (no cache); the file."""
        return export_onnx(self.module(), self._examples(), path, **self._io())

    def _examples(self) -> tuple[Any, ...]:
        import torch

        return tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in self.example_inputs())

    def _io(self) -> dict[str, Any]:
        return {
            "input_names": self.input_names,
            "output_names": self.output_names,
            "dynamic_axes": self.dynamic_axes,
        }


def example_feed(spec: ModelSpec) -> dict[str, np.ndarray]:
    """Seeded random inputs at the profile's optimum shape, for checks and warm-up."""
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
