"""Where SuperGF's checkpoints are and the hash that names their ONNX export, without torch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
FEATURES = ("superpoint", "sift")


def variant_name(name: str) -> str:
    """'dense' or 'sparse' for 'supergf-dense' / 'dense' (and the sparse spellings)."""
    short = name.removeprefix("supergf-").removeprefix("supergf_")
    if short not in ("dense", "sparse"):
        raise ValueError(f"unknown SuperGF variant '{name}'; use 'dense' or 'sparse'")
    return short


def default_weights_path(variant: str, features: str = "superpoint") -> Path:
    """Shipped checkpoint location: supergf_ros/weights/supergf_{dense|sparse}_{features}.pt."""
    if features not in FEATURES:
        raise ValueError(f"unknown local features '{features}'; choose one of {list(FEATURES)}")
    return WEIGHTS_DIR / f"supergf_{variant_name(variant)}_{features}.pt"


def config_key(name: str, conf: dict[str, Any], weights_sha256: str) -> str:
    """Hash of model name + config (plain JSON data) + weights file hash: names the ONNX file."""
    digest = hashlib.sha256()
    digest.update(name.encode())
    digest.update(json.dumps(conf, sort_keys=True).encode())
    digest.update(weights_sha256.encode())
    return digest.hexdigest()
