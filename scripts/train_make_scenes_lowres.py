"""Second batch of synthetic training scenes: low-resolution cameras (160x120, upsampled to the
training size like any low-res robot camera) in rooms of varied shape, from long corridors to
halls, half of them textured with photos. Usage: python scripts/train_make_scenes_lowres.py
OUT_DIR [--num 24] [--textures PHOTO_DIR]. Writes OUT_DIR/lowres_XX (seeds 100 + i)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from supergf_ros.datasets.synthetic import SceneConfig, generate_scene


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--num", type=int, default=24)
    p.add_argument("--textures", type=Path, default=None)
    args = p.parse_args()
    for i in range(args.num):
        out = args.out_dir / f"lowres_{i:02d}"
        if (out / "sparse_gt" / "images.txt").exists():
            continue
        rng = np.random.default_rng(100 + i)
        if i % 2 == 0:  # corridor-like
            room = (float(rng.uniform(14, 24)), float(rng.uniform(3.0, 4.0)), 2.8)
        else:
            room = (float(rng.uniform(6, 14)), float(rng.uniform(5, 10)), 3.0)
        conf = SceneConfig(
            width=160,
            height=120,
            room_size=room,
            num_boxes=int(rng.integers(0, 4)),
            num_pillars=int(rng.integers(0, 3)),
            num_map=20,
            num_queries=10,
            texture_dir=args.textures if i % 4 in (1, 2) else None,
        )
        try:
            s = generate_scene(out, conf, seed=100 + i, progress=False)
            print(out.name, room, s["textures"], s["time_s"])
        except ValueError as err:  # a layout that does not fit: skip it
            print(out.name, "skipped:", err)


if __name__ == "__main__":
    main()
