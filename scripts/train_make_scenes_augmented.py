"""Domain-randomized copies of training scenes: robot-camera artefacts on the rendered images.

Usage: python scripts/train_make_scenes_augmented.py OUT_DIR SCENE_DIR [SCENE_DIR ...] [--seed 0]
Writes OUT_DIR/<scene>_aug: the scene's poses, depth maps and lists unchanged, every image
re-rendered with a seeded random mix of low resolution (down- and up-sampling), blur, exposure /
gamma / contrast changes, vignetting, barrel (fisheye-like) distortion, a dark fisheye image circle, sensor noise and JPEG
compression, toward real low-cost robot cameras. Labels (overlaps) stay those of the clean
renders: the photometric changes keep the geometry, the mild distortion barely moves it.
Deterministic given the seed. Never run it on evaluation data.
"""

from __future__ import annotations

import argparse
import shutil
import zlib
from pathlib import Path

import cv2
import numpy as np


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One randomized degradation of a BGR/gray uint8 image (same size out)."""
    h, w = image.shape[:2]
    x = image.astype(np.float32) / 255.0
    if rng.random() < 0.5:  # barrel distortion around the centre (fisheye-like)
        k1 = rng.uniform(-0.35, -0.05)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        f = 0.5 * max(w, h)
        u, v = (xs - w / 2) / f, (ys - h / 2) / f
        r2 = u * u + v * v
        scale = 1 + k1 * r2  # output pixel samples the input at radius r * (1 + k1 r^2)
        scale = scale / (1 + k1 * 0.5)  # keep the middle of the frame about the same size
        map_x = (u / scale * f + w / 2).astype(np.float32)
        map_y = (v / scale * f + h / 2).astype(np.float32)
        x = cv2.remap(x, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    if rng.random() < 0.7:  # low resolution
        lw = int(rng.uniform(0.3, 0.7) * w)
        lh = max(8, round(lw * h / w))
        x = cv2.resize(cv2.resize(x, (lw, lh), interpolation=cv2.INTER_AREA), (w, h))
    if rng.random() < 0.5:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.4, 1.5))
    # exposure, contrast, gamma
    x = np.clip((x - 0.5) * rng.uniform(0.6, 1.3) + 0.5 + rng.uniform(-0.15, 0.15), 0, 1)
    x = x ** rng.uniform(0.6, 1.6)
    if rng.random() < 0.4:  # vignetting
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        r2 = ((xs - w / 2) ** 2 + (ys - h / 2) ** 2) / (0.25 * (w * w + h * h))
        vig = 1 - rng.uniform(0.2, 0.6) * r2
        x = x * (vig[..., None] if x.ndim == 3 else vig)
    if rng.random() < 0.3:  # circular fisheye image circle with a dark border
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        radius = rng.uniform(0.5, 0.65) * w
        inside = ((xs - w / 2) ** 2 + (ys - h / 2) ** 2) <= radius**2
        border = rng.uniform(0.0, 0.15)
        x = np.where(inside[..., None] if x.ndim == 3 else inside, x, border)
    if rng.random() < 0.6:
        x = x + rng.normal(0, rng.uniform(0.005, 0.03), x.shape).astype(np.float32)
    out = (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)
    if rng.random() < 0.5:
        _ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 85))])
        out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out_dir", type=Path)
    p.add_argument("scenes", nargs="+", type=Path)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    for scene in args.scenes:
        out = args.out_dir / f"{scene.name}_aug"
        if (out / "images").is_dir() and (out / "sparse_gt").is_dir():
            continue
        tmp = args.out_dir / f".{scene.name}_aug.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for item in scene.iterdir():
            if item.name == "images":
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                tmp.mkdir(parents=True, exist_ok=True)
                shutil.copy2(item, tmp / item.name)
        (tmp / "images").mkdir(parents=True, exist_ok=True)
        for path in sorted((scene / "images").iterdir()):
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None:
                continue
            key = zlib.crc32(f"{scene.name}/{path.name}".encode())
            rng = np.random.default_rng([args.seed, key])
            cv2.imwrite(str(tmp / "images" / path.name), augment(image, rng))
        tmp.rename(out)
        print(out.name)


if __name__ == "__main__":
    main()
