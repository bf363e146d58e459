"""SuperGF as every backend needs it: `supergf_spec` (ONNX names, dynamic axes, cache key) and
`supergf_profile` (the TensorRT shapes the config allows)."""

from __future__ import annotations

from typing import Any

import torch

from ..inference.spec import ModelSpec, Profile, round_up
from .checkpoint import model_key
from .supergf import SuperGFBase

STRIDE = 8  # SuperPoint's cell size: a dense map cell per 8x8 pixels


class _Positional(torch.nn.Module):
    """Positional-argument view of a dict-in/dict-out model (ONNX export, runners)."""

    def __init__(self, model: SuperGFBase) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.forward_positional(*inputs)


def supergf_profile(
    model: Any,
    *,
    max_image_size: int = 1024,
    opt_size: tuple[int, int] = (640, 480),
    max_keypoints: int = 4096,
    opt_keypoints: int = 1024,
    max_batch: int = 1,
) -> Profile:
    """TensorRT profile for a SuperGF model (dense: map size from the image size; sparse: N)."""
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


def supergf_spec(
    model: Any, weights_sha256: str = "", *, profile: Profile | None = None
) -> ModelSpec:
    """ModelSpec for a SuperGF dense or sparse model (its positional view)."""
    wrapped = _Positional(model).eval()
    return ModelSpec(
        name=model.name,
        build_module=lambda: wrapped,
        example_inputs=lambda: tuple(t.numpy() for t in model.example_inputs()),
        input_names=list(model.input_names),
        output_names=list(model.output_names),
        dynamic_axes=dict(model.dynamic_axes),
        key=model_key(model, weights_sha256),
        profile=profile if profile is not None else supergf_profile(model),
    )
