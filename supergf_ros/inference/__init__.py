"""Inference: capability detection and backend selection (`backends`), runners (`runners`,
`tensorrt`), model specs (`spec`), ONNX export (`onnx`) and the TensorRT engine cache."""

from __future__ import annotations

from .onnx import cached_export, default_cache_dir, export_onnx

__all__ = ["cached_export", "default_cache_dir", "export_onnx"]
