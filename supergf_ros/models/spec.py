"""SuperGF as every backend needs it, without torch: `SuperGFInfo` (what a SuperGF model is: name, config, names, axes, cache key), `supergf_profile`
(the TensorRT shapes the config allows) and the `ModelSpec`s of a model or a checkpoint file.

With ONNX Runtime or TensorRT a checkpoint's network runs from its cached ONNX export; the cache
keeps beside it an info file keyed by the checkpoint's SHA-256 (`checkpoint_spec`), so a process
whose ONNX file is cached never imports torch. Exporting (no cached file) loads the checkpoint
with torch once.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..inference.onnx import cached_onnx_path
from ..inference.spec import ModelSpec, Profile, round_up
from ..io_utils import atomic_write_text, file_sha256
from .weights import config_key

logger = logging.getLogger(__name__)

STRIDE = 8  # SuperPoint's cell size: a dense map cell per 8x8 pixels
INFO_VERSION = 1


@dataclass(frozen=True)
class SuperGFInfo:
    """What the backends and a map's identity need of a SuperGF model (no torch, no weights).

    `conf` is the model's full config as plain JSON data; `weights_sha256` the checkpoint file's
    hash (or `checkpoint.model_key` of an in-memory model).
    """

    name: str
    conf: dict[str, Any]
    dim: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    weights_sha256: str

    @classmethod
    def of_model(cls, model: Any, weights_sha256: str) -> SuperGFInfo:
        """The info of a SuperGF model (`supergf.SuperGFBase`)."""
        return cls(
            name=model.name,
            conf=json.loads(json.dumps(model.conf)),  # tuples -> lists, as in a checkpoint
            dim=int(model.dim),
            input_names=tuple(model.input_names),
            output_names=tuple(model.output_names),
            dynamic_axes={k: dict(v) for k, v in model.dynamic_axes.items()},
            weights_sha256=weights_sha256,
        )

    def key(self) -> str:
        """The ONNX cache key (`config_key`; equals `checkpoint.model_key` of the model)."""
        return config_key(self.name, self.conf, self.weights_sha256)

    def to_json(self) -> dict[str, Any]:
        return {"version": INFO_VERSION, **asdict(self), "onnx_key": self.key()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SuperGFInfo:
        """Inverse of `to_json`; ValueError for another version or an inconsistent key."""
        if data.get("version") != INFO_VERSION:
            raise ValueError(f"SuperGF info version {data.get('version')}, expected {INFO_VERSION}")
        info = cls(
            name=str(data["name"]),
            conf=dict(data["conf"]),
            dim=int(data["dim"]),
            input_names=tuple(data["input_names"]),
            output_names=tuple(data["output_names"]),
            dynamic_axes={
                k: {int(a): s for a, s in v.items()} for k, v in data["dynamic_axes"].items()
            },
            weights_sha256=str(data["weights_sha256"]),
        )
        if info.key() != data.get("onnx_key"):
            raise ValueError("SuperGF info's onnx_key does not match its name, config and weights")
        return info


def info_path(name: str, weights_sha256: str, cache_dir: str | Path | None = None) -> Path:
    """Where the ONNX cache keeps the `SuperGFInfo` of the checkpoint with hash `weights_sha256`."""
    onnx = cached_onnx_path(f"{name}-weights", weights_sha256, cache_dir)
    return onnx.with_suffix(".json")


def read_info(name: str, weights_sha256: str, cache_dir: str | Path | None = None):
    """The cached `SuperGFInfo` of a checkpoint, or None (missing, unreadable or stale)."""
    path = info_path(name, weights_sha256, cache_dir)
    try:
        info = SuperGFInfo.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        logger.warning("ignoring the SuperGF info file %s: %s", path, err)
        return None
    if info.name != name or info.weights_sha256 != weights_sha256:
        return None
    return info


def write_info(info: SuperGFInfo, cache_dir: str | Path | None = None) -> Path:
    """Store `info` in the ONNX cache (atomically); the file."""
    path = info_path(info.name, info.weights_sha256, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(info.to_json(), indent=1, sort_keys=True) + "\n")
    return path


def supergf_profile(
    model: Any,
    *,
    max_image_size: int = 1024,
    opt_size: tuple[int, int] = (640, 480),
    max_keypoints: int = 4096,
    opt_keypoints: int = 1024,
    max_batch: int = 1,
) -> Profile:
    """TensorRT profile for a SuperGF model or `SuperGFInfo` (dense: map size from the image
    size; sparse: N)."""
    dim = int(model.conf["input_dim"])
    b = int(max_batch)
    if model.name == "supergf-dense":
        side = round_up(max_image_size, STRIDE) // STRIDE
        ow, oh = (min(round_up(v, STRIDE) // STRIDE, side) for v in opt_size)
        return {"dense": ((1, dim, 2, 2), (1, dim, oh, ow), (b, dim, side, side))}
    if max_keypoints < 1:
        raise ValueError(f"max_keypoints must be >= 1, got {max_keypoints}")
    n_opt = max(1, min(int(opt_keypoints), int(max_keypoints)))
    n_max = int(max_keypoints)

    def shapes(*tail: int) -> tuple[tuple[int, ...], ...]:
        def sized(n: int, batch: int) -> tuple[int, ...]:
            return (batch, *(n if t == -1 else t for t in tail))

        return sized(1, 1), sized(n_opt, 1), sized(n_max, b)

    return {
        "keypoints": shapes(-1, 2),
        "descriptors": shapes(-1, dim),
        "scores": shapes(-1),
        "image_size": ((1, 2), (1, 2), (b, 2)),
        "mask": shapes(-1),
    }


def _info_spec(
    info: SuperGFInfo, load_model: Callable[[], Any], key: str, profile: Profile | None
) -> ModelSpec:
    """The ModelSpec of `info`; `load_model` (torch) runs only when a backend needs the module."""

    def build() -> Any:
        from .supergf import PositionalSuperGF

        return PositionalSuperGF(load_model()).eval()

    return ModelSpec(
        name=info.name,
        build_module=build,
        example_inputs=lambda: tuple(t.numpy() for t in load_model().example_inputs()),
        input_names=list(info.input_names),
        output_names=list(info.output_names),
        dynamic_axes=dict(info.dynamic_axes),
        key=key,
        profile=profile if profile is not None else supergf_profile(info),
    )


def supergf_spec(
    model: Any, weights_sha256: str = "", *, profile: Profile | None = None
) -> ModelSpec:
    """ModelSpec for an in-memory SuperGF dense or sparse model (its positional view); with
    `weights_sha256` the hash of the checkpoint it was loaded from."""
    from .checkpoint import model_key

    info = SuperGFInfo.of_model(model, weights_sha256)
    return _info_spec(info, lambda: model, model_key(model, weights_sha256), profile)


def checkpoint_spec(
    path: Path,
    expected_model: str,
    *,
    cache_dir: str | Path | None = None,
) -> tuple[ModelSpec, SuperGFInfo]:
    """(ModelSpec, info) of the checkpoint at `path` for the ONNX backends.

    Found in the ONNX cache (info file and ONNX export of this checkpoint's hash), nothing here
    imports torch or reads the weights; otherwise the checkpoint is loaded with torch (said in a
    log line), its info stored in the cache and the spec exports it on first use. ValueError
    naming `supergf-ros export` when torch is not installed and nothing is cached.
    """
    sha = file_sha256(path)
    info = read_info(expected_model, sha, cache_dir)
    if info is not None and _cached(info, cache_dir):
        return _info_spec(info, _lazy_checkpoint(path, expected_model), info.key(), None), info
    folder = info_path(expected_model, sha, cache_dir).parent
    if importlib.util.find_spec("torch") is None:
        raise ValueError(
            f"no cached ONNX export of the {expected_model} weights {path} (sha256 {sha[:12]}...) "
            f"in {folder}, and PyTorch is not installed to make one: run `supergf-ros export "
            f"--format onnx --model {expected_model} --weights {path}` once where PyTorch is "
            f"installed (same $SUPERGF_CACHE_DIR) and copy that folder here"
        )
    logger.info(
        "%s: no cached ONNX export of %s in %s: loading the checkpoint with torch to export it "
        "(once)",
        expected_model,
        path.name,
        folder,
    )
    from .checkpoint import load_checkpoint

    model, _ = load_checkpoint(path, expected_model=expected_model)
    spec = supergf_spec(model, sha)
    info = SuperGFInfo.of_model(model, sha)
    write_info(info, cache_dir)
    return spec, info


def _cached(info: SuperGFInfo, cache_dir: str | Path | None) -> bool:
    path = cached_onnx_path(info.name, info.key(), cache_dir)
    return path.is_file() and path.stat().st_size > 0


def _lazy_checkpoint(path: Path, expected_model: str) -> Callable[[], Any]:
    """Loads the checkpoint (torch) on the first call, then returns the same model."""

    @functools.cache
    def load() -> Any:
        from .checkpoint import load_checkpoint

        return load_checkpoint(path, expected_model=expected_model)[0]

    return load
