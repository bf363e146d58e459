"""Inference backends behind one interface: PyTorch, ONNX Runtime (and TensorRT where present).

`supergf_ros.inference.onnx` holds the shared ONNX export and ONNX Runtime helpers.
"""

from __future__ import annotations

from .onnx import OrtModule, cached_export, default_cache_dir, export_onnx

__all__ = ["OrtModule", "cached_export", "default_cache_dir", "export_onnx"]
