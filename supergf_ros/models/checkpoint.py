"""Build SuperGF models from a config; self-describing checkpoints (config beside the weights).

Checkpoint layout (a plain dict, loadable with `torch.load(weights_only=True)`):
    {"format_version": 1, "model": "supergf-dense" | "supergf-sparse", "config": {...},
     "state_dict": {...}, "extra": {...}}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ..io_utils import atomic_output, file_sha256
from .supergf import MODELS, SuperGFBase
from .weights import config_key, default_weights_path, variant_name

__all__ = ["build_model", "default_weights_path", "load_checkpoint", "model_key", "save_checkpoint"]

FORMAT_VERSION = 1


def build_model(name: str, config: dict[str, Any] | None = None) -> SuperGFBase:
    """A freshly initialized model by name ('supergf-dense' or 'supergf-sparse'; 'dense'/'sparse')."""
    key = f"supergf-{variant_name(name)}"
    return MODELS[key](config)


def _plain(value: Any) -> Any:
    """Config values as types the weights-only unpickler accepts (tuples -> lists)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    raise ValueError(f"checkpoint values must be plain Python data or tensors, got {type(value)}")


def save_checkpoint(
    path: str | Path, model: SuperGFBase, extra: dict[str, Any] | None = None
) -> Path:
    """Write `model` (config + fp32 state dict + `extra`) atomically to `path`; return the path.

    `extra` may hold plain data and tensors (e.g. training step, metrics, optimizer state dicts).
    """
    if not isinstance(model, SuperGFBase):
        raise ValueError(f"save_checkpoint expects a SuperGF model, got {type(model).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {
        "format_version": FORMAT_VERSION,
        "model": model.name,
        "config": _plain(model.conf),
        "state_dict": state,
        "extra": _plain(extra or {}),
    }
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(
    path: str | Path, expected_model: str | None = None, map_location: str = "cpu"
) -> tuple[SuperGFBase, dict[str, Any]]:
    """Load a checkpoint written by `save_checkpoint`; return (model in eval mode, info).

    info: {"model", "config", "extra", "format_version", "path", "weights_sha256"}.
    Raises FileNotFoundError for a missing file, ValueError for corrupt, foreign or mismatched
    files (e.g. a dense checkpoint where `expected_model='supergf-sparse'`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"SuperGF checkpoint not found: {path}. Train one with `supergf-ros train` "
            "or pass the path of an existing checkpoint."
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, pickle with forbidden globals, ...
        raise ValueError(
            f"cannot read SuperGF checkpoint {path} (corrupt or not a checkpoint): {err}"
        ) from err
    if not isinstance(ckpt, dict) or not {"model", "config", "state_dict"} <= set(ckpt):
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(
            f"{path} is not a SuperGF checkpoint (expected keys model, config, state_dict; got {keys})"
        )
    version = ckpt.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format_version {version}; this version reads {FORMAT_VERSION}"
        )
    name = ckpt["model"]
    if name not in MODELS:
        raise ValueError(f"{path} holds unknown model '{name}'; known: {sorted(MODELS)}")
    if expected_model is not None and name != f"supergf-{variant_name(expected_model)}":
        raise ValueError(f"{path} holds a '{name}' model, but '{expected_model}' was requested")
    model = MODELS[name](ckpt["config"])
    missing, unexpected = model.load_state_dict(ckpt["state_dict"], strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: state dict does not match the '{name}' config (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    model.eval()
    info = {
        "model": name,
        "config": dict(model.conf),
        "extra": ckpt.get("extra", {}),
        "format_version": version,
        "path": str(path),
        "weights_sha256": file_sha256(path),
    }
    return model, info


def model_key(model: torch.nn.Module, weights_sha256: str = "") -> str:
    """Hash of model name + config + weights (file hash if given, else the parameters)."""
    if weights_sha256:  # the same hash a cached SuperGF info gives without torch
        return config_key(model.name, _plain(model.conf), weights_sha256)
    digest = hashlib.sha256()
    digest.update(model.name.encode())
    digest.update(json.dumps(_plain(model.conf), sort_keys=True).encode())
    for k, v in sorted(model.state_dict().items()):
        digest.update(k.encode())
        digest.update(v.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
