"""SuperGF models (dense, sparse), their layers, checkpoints, and global descriptor aggregators."""

from __future__ import annotations

from .checkpoint import (
    build_model,
    default_weights_path,
    load_checkpoint,
    save_checkpoint,
)
from .supergf import SuperGFBase, SuperGFDense, SuperGFSparse

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


def __getattr__(name: str):
    if name in ("create_aggregator", "available_global_descriptors", "GlobalAggregator"):
        from . import aggregators

        return getattr(aggregators, name)
    raise AttributeError(name)
