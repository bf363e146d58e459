"""Fine-tune SuperGF on a built map (self-supervised from co-visibility) and measure Recall@N on
the map's held-out queries before and after (see MODEL_CARD.md).

Usage: python scripts/train_finetune_map.py WORK_DIR --weights CKPT [--model dense|sparse]
       [--seed 2000] [--steps 80] [--shared ../shared]

1. a synthetic scene (not used for training) with a mapping and an offset query trajectory;
2. `supergf-ros build-map` on the mapping images (training-free GeM global descriptors);
3. Recall@1/5/10 of the queries against the map keyframes with CKPT (positives: exact depth
   overlap >= 0.5);
4. `supergf-ros train --data MAP.h5 --init-weights CKPT` (labels: the map's co-visibility only);
5. Recall@N again with the fine-tuned weights.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from supergf_ros.datasets import read_image_list
from supergf_ros.datasets.synthetic import SceneConfig, generate_scene
from supergf_ros.features import create_extractor
from supergf_ros.models.aggregators import create_aggregator
from supergf_ros.training.cache import FeatureCache
from supergf_ros.training.data import load_project_dataset
from supergf_ros.training.trainer import recall_at_n


def recall(weights: Path, model: str, cache: FeatureCache, scene, q_names, m_names) -> dict:
    names = scene.info["names"]
    idx = {n: i for i, n in enumerate(names)}
    qi, mi = [idx[n] for n in q_names], [idx[n] for n in m_names]
    agg = create_aggregator(f"supergf-{model}", weights=str(weights))
    dq = agg.batch(cache.load([scene.paths[i] for i in qi]))
    dm = agg.batch(cache.load([scene.paths[i] for i in mi]))
    positives = [np.flatnonzero(scene.overlap[q, mi] >= 0.5) for q in qi]
    return recall_at_n(dq @ dm.T, positives)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("work_dir", type=Path)
    p.add_argument("--weights", type=Path, required=True)
    p.add_argument("--model", choices=["dense", "sparse"], default="dense")
    p.add_argument("--seed", type=int, default=2000)
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--shared", type=Path, default=Path("../shared"))
    args = p.parse_args()
    sp = args.shared / "weights" / "superpoint_v1.pth"
    scene_dir = args.work_dir / "scene"
    if not (scene_dir / "sparse_gt" / "images.txt").exists():
        generate_scene(
            scene_dir,
            SceneConfig(width=320, height=240, num_map=40, num_queries=20),
            seed=args.seed,
            progress=False,
        )
    map_path = args.work_dir / "map.h5"
    cli = [sys.executable, "-m", "supergf_ros.cli"]
    if not map_path.exists():
        subprocess.run(
            [
                *cli,
                "build-map",
                str(scene_dir),
                "--out",
                str(map_path),
                "--images-list",
                str(scene_dir / "mapping.txt"),
                "--superpoint-weights",
                str(sp),
                "--global",
                "gem",
                "--max-keypoints",
                "512",
                "--quiet",
            ],
            check=True,
        )
    scene = load_project_dataset(scene_dir)
    q_names = read_image_list(scene_dir / "queries.txt")
    m_names = read_image_list(scene_dir / "mapping.txt")
    extractor = create_extractor("superpoint", weights=str(sp), max_keypoints=512)
    cache = FeatureCache(args.work_dir / "features", extractor, (320, 240))
    before = recall(args.weights, args.model, cache, scene, q_names, m_names)
    run_dir = args.work_dir / f"run_{args.model}"
    subprocess.run(
        [
            *cli,
            "train",
            str(run_dir),
            "--data",
            str(map_path),
            "--map-images",
            str(scene_dir / "images"),
            "--init-weights",
            str(args.weights),
            "--model",
            args.model,
            "--superpoint-weights",
            str(sp),
            "--cache-dir",
            str(args.work_dir / "features"),
            "--config",
            "scripts/train_cpu_config.yaml",
            "--steps",
            str(args.steps),
            "--lr",
            str(args.lr),
            "--val-every",
            str(args.steps),
            "--no-progress",
        ],
        check=True,
    )
    after = recall(run_dir / "model_last.pt", args.model, cache, scene, q_names, m_names)
    result = {"before": before, "after": after, "steps": args.steps, "map": str(map_path)}
    print(json.dumps(result, indent=2))
    (args.work_dir / f"finetune_{args.model}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
