"""SuperGF models (dense, sparse), their layers, checkpoints, and global descriptor aggregators."""

from __future__ import annotations

from typing import Any

__all__ = [
    "SuperGFBase",
    "SuperGFDense",
    "SuperGFSparse",
    "available_global_descriptors",
    "build_model",
    "create_aggregator",
    "default_weights_path",
    "load_checkpoint",
    "save_checkpoint",
]


_LAZY = {  # imported on first use: the SuperGF modules import torch; weights, spec, aggregators not
    "SuperGFBase": "supergf",
    "SuperGFDense": "supergf",
    "SuperGFSparse": "supergf",
    "build_model": "checkpoint",
    "default_weights_path": "weights",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "create_aggregator": "aggregators",
    "available_global_descriptors": "aggregators",
    "GlobalAggregator": "aggregators",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(name)
