"""Local feature extractors behind one interface: `create_extractor(name, **conf)`."""

from __future__ import annotations

from typing import Any

from .base import Extractor, LocalFeatures, to_grayscale, validate_image

EXTRACTORS = {
    "superpoint": "supergf_ros.features.superpoint:SuperPoint",
    "sift": "supergf_ros.features.sift:SIFT",
}


def create_extractor(name: str, **conf: Any) -> Extractor:
    """Build a local feature extractor by name ('superpoint' or 'sift') with options `conf`."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown extractor '{name}'; choose one of {sorted(EXTRACTORS)}")
    import importlib

    module_name, class_name = EXTRACTORS[name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**conf)


__all__ = ["Extractor", "LocalFeatures", "create_extractor", "to_grayscale", "validate_image"]
