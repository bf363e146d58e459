"""Generate the synthetic training/validation scenes used for the shipped SuperGF weights.

Usage: python scripts/train_make_scenes.py OUT_DIR [--num-train 12] [--textures PHOTO_DIR]
Writes OUT_DIR/train_XX (seeds 0..N-1, every other one textured with the photos if given) and
OUT_DIR/val_00 (seed 1000). Deterministic given the seeds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from supergf_ros.datasets.synthetic import SceneConfig, generate_scene


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--num-train", type=int, default=12)
    p.add_argument("--textures", type=Path, default=None)
    p.add_argument("--size", nargs=2, type=int, default=[320, 240])
    args = p.parse_args()
    jobs = [(f"train_{i:02d}", i) for i in range(args.num_train)] + [("val_00", 1000)]
    for name, seed in jobs:
        out = args.out_dir / name
        if (out / "sparse_gt" / "images.txt").exists():
            continue
        textured = args.textures is not None and seed % 2 == 1
        conf = SceneConfig(
            width=args.size[0],
            height=args.size[1],
            num_map=40,
            num_queries=20,
            texture_dir=args.textures if textured else None,
        )
        summary = generate_scene(out, conf, seed=seed, progress=False)
        print(name, summary["textures"], summary["time_s"], "s")


if __name__ == "__main__":
    main()
