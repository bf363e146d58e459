"""A dusk proxy of daylight images: darker, a gamma tone curve, a blue cast, blur, sensor noise.

`dusk_image(image, rng)` applies, in the order light reaches a sensor: the tone curve
(`gamma` 1.8 on [0, 1]) and exposure (x`brightness` 0.3), a blue white balance (`cast`, RGB
only), a slight Gaussian blur (`blur_sigma` px), then shot + read noise in 8-bit units, and
rounds to uint8. `write_dusk_dataset` writes a dataset's images so transformed (one generator
per (seed, image name): the same seed gives the same files in any order or subset) with a copy
of its COLMAP model, so the dusk folder is a dataset of its own.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class DuskParams:
    """How daylight becomes dusk (see the module docstring)."""

    brightness: float = 0.3
    gamma: float = 1.8
    cast: tuple[float, float, float] = (0.8, 0.9, 1.25)  # R, G, B gains
    blur_sigma: float = 0.8
    read_noise: float = 2.0  # 8-bit units
    shot_gain: float = 0.5  # noise variance per unit of signal (8-bit units)


DUSK = DuskParams()


def dusk_rng(seed: int, name: str) -> np.random.Generator:
    """The generator of image `name` under `seed` (independent of the other images)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"dusk seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def dusk_image(
    image: np.ndarray, rng: np.random.Generator, params: DuskParams = DUSK
) -> np.ndarray:
    """`image` (HxW gray or HxWx3 RGB uint8) as taken at dusk, same shape and dtype."""
    import cv2

    from ..features.base import validate_image

    image = validate_image(image)
    x = (image.astype(np.float32) / 255.0) ** params.gamma * params.brightness
    if x.ndim == 3:
        x = x * np.asarray(params.cast, dtype=np.float32)
    x = np.clip(x, 0.0, 1.0) * 255.0
    if params.blur_sigma > 0:
        x = cv2.GaussianBlur(x, (0, 0), params.blur_sigma)
    sigma = np.sqrt(params.read_noise**2 + params.shot_gain * x)
    x = x + sigma * rng.standard_normal(x.shape, dtype=np.float32)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def write_dusk_dataset(
    dataset, names: Iterable[str], seed: int, out_dir: str | Path, params: DuskParams = DUSK
) -> Path:
    """Write `names` of `dataset` (a `Dataset`) at dusk to `out_dir/images/<name>` (PNG bytes
    under the same name, written atomically; existing files are kept: each is a function of
    seed and name) and copy its model to `out_dir/sparse_gt`. Returns `out_dir`."""
    import shutil

    import cv2

    from ..io_utils import atomic_write_bytes

    out_dir = Path(out_dir)
    if dataset.model_dir is not None and not (out_dir / "sparse_gt").is_dir():
        tmp = out_dir / "sparse_gt.part"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(dataset.model_dir, tmp)
        tmp.replace(out_dir / "sparse_gt")
    for name in names:
        path = out_dir / "images" / name
        if path.is_file():
            continue
        rgb = dusk_image(dataset.read_image(name), dusk_rng(seed, name), params)
        bgr = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        ok, png = cv2.imencode(".png", bgr)
        if not ok:
            raise ValueError(f"cannot encode the dusk image of {name}")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, png.tobytes())
    return out_dir
