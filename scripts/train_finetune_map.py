"""Fine-tune SuperGF on a built map (self-supervised from co-visibility) and measure Recall@N on
the map's held-out queries before and after (see supergf_ros/weights/MODEL_CARD.md).

Usage: python scripts/train_finetune_map.py WORK_DIR [--weights CKPT] [--model sparse|dense]
       [--scene two-traversal|hard|easy] [--seed N] [--lrs 1e-5 3e-5] [--steps 200]
       [--train-seeds 0 1 2] [--config scripts/train_finetune_map.yaml] [--shared ../shared]

1. a synthetic scene that no training run has seen: "hard" is a 30 m x 6 m corridor
   whose walls repeat the 10 Sacre-Coeur photos (perceptual aliasing), 30 mapping frames and 60
   query frames with strong offsets (0.6 m sideways, 40 deg yaw, 8 deg tilt) and degradation
   (exposure +-50 %, noise 10, blur 2 px, JPEG 70); "two-traversal" (default) maps the same corridor
   twice (the clean loop + a degraded loop at -40 deg yaw) and keeps the same held-out
   queries; "easy" is the earlier 10 m x 7 m room;
2. `supergf-ros build-map` on the mapping images (training-free GeM global descriptors);
3. Recall@1/5/10 of the queries against the map keyframes with CKPT, GeM, VLAD and dense VLAD (positives:
   exact depth overlap >= 0.5, known only to the renderer, never used for training);
4. for every (lr, training seed): `supergf-ros train --data MAP.h5 --init-weights CKPT`
   (labels: the map's co-visibility only; no query image is seen by training);
5. Recall@N again with every fine-tuned model; a JSON and a Markdown table in WORK_DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from supergf_ros.datasets import read_image_list
from supergf_ros.datasets.synthetic import SceneConfig, generate_scene
from supergf_ros.features import create_extractor
from supergf_ros.io_utils import atomic_write_text
from supergf_ros.models.aggregators import create_aggregator
from supergf_ros.training.cache import FeatureCache
from supergf_ros.training.data import load_project_dataset
from supergf_ros.training.trainer import recall_at_n

SHIPPED = {
    "sparse": Path("supergf_ros/weights/supergf_sparse_superpoint.pt"),
    "dense": Path("supergf_ros/weights/supergf_dense_superpoint.pt"),
}


def scene_config(kind: str, textures: Path) -> SceneConfig:
    """The held-out scene: "hard" (aliased corridor, strong query offsets) or "easy"."""
    if kind == "easy":
        return SceneConfig(width=320, height=240, num_map=40, num_queries=20)
    return SceneConfig(
        width=320,
        height=240,
        room_size=(30.0, 6.0, 3.0),
        num_map=30,
        num_queries=60,
        num_boxes=2,
        num_pillars=4,
        texture_dir=textures,
        query_offset=0.6,
        query_yaw_offset_deg=40.0,
        query_tilt_deg=8.0,
        query_exposure=0.5,
        query_noise_std=10.0,
        query_blur_sigma=2.0,
        image_format="jpg",
        jpeg_quality=70,
    )


def make_two_traversal_scene(out_dir: Path, seed: int, textures: Path) -> None:
    """The "hard" corridor mapped twice: the clean mapping loop plus a second, degraded loop
    (0.3 m outwards, -40 deg yaw) as keyframes; the hard scene's queries (0.6 m outwards,
    +40 deg yaw) stay held out. Renders the scene twice with the same seed (same room) and
    merges images, depth maps and poses into one dataset in the project layout."""
    import dataclasses
    import shutil

    work = out_dir.parent / f".{out_dir.name}_parts"
    base = scene_config("hard", textures)
    parts = {
        "a": base,
        "b": dataclasses.replace(base, query_offset=0.3, query_yaw_offset_deg=-40.0),
    }
    for key, conf in parts.items():
        if not (work / key / "sparse_gt" / "images.txt").exists():
            generate_scene(work / key, conf, seed=seed, progress=False)
    map_a = read_image_list(work / "a" / "mapping.txt")
    for name in map_a:
        if (work / "a" / "images" / name).read_bytes() != (
            work / "b" / "images" / name
        ).read_bytes():
            raise ValueError(f"the two renders of seed {seed} differ in mapping image {name}")
    tmp = out_dir.parent / f".{out_dir.name}_tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("images", "depth", "sparse_gt"):
        (tmp / sub).mkdir(parents=True)
    lines, names = [], {"map": list(map_a), "b": [], "query": []}
    image_id = 0
    for key, prefix in (("a", ""), ("b", "b")):
        src = work / key
        rows = [r for r in (src / "sparse_gt" / "images.txt").read_text().splitlines()]
        rows = [r for r in rows if r and not r.startswith("#")][0::2]  # pose lines
        wanted = read_image_list(src / "mapping.txt") if key == "a" else []
        wanted += read_image_list(src / "queries.txt")
        for row in rows:
            f = row.split()
            if f[9] not in wanted:
                continue
            name = prefix + f[9]
            image_id += 1
            lines += [" ".join([str(image_id), *f[1:9], name]), ""]
            shutil.copy(src / "images" / f[9], tmp / "images" / name)
            stem = Path(f[9]).stem
            shutil.copy(src / "depth" / f"{stem}.npy", tmp / "depth" / f"{prefix}{stem}.npy")
            if key == "b":
                names["b"].append(name)
            elif f[9] not in map_a:
                names["query"].append(name)
    shutil.copy(work / "a" / "sparse_gt" / "cameras.txt", tmp / "sparse_gt" / "cameras.txt")
    (tmp / "sparse_gt" / "images.txt").write_text("\n".join(lines) + "\n")
    (tmp / "sparse_gt" / "points3D.txt").write_text("")
    (tmp / "mapping.txt").write_text("\n".join(names["map"] + names["b"]) + "\n")
    (tmp / "queries.txt").write_text("\n".join(names["query"]) + "\n")
    os.replace(tmp, out_dir)


def describe(method: str, feats_q, feats_db) -> tuple[np.ndarray, np.ndarray]:
    """Global descriptors of queries and database with a SuperGF checkpoint (a path) or a
    training-free aggregator name (gem, vlad, vlad-dense; VLAD's codebook is fitted on the
    database images, as build-map does)."""
    if method.endswith(".pt"):
        from supergf_ros.models import load_checkpoint

        _, info = load_checkpoint(method)
        agg = create_aggregator(info["model"], weights=method)
    else:
        conf = {"source": "dense"} if method == "vlad-dense" else {}
        agg = create_aggregator(method.removesuffix("-dense"), **conf)
        agg.fit(list(feats_db))
    return agg.batch(feats_q), agg.batch(feats_db)


def evaluate(method: str, cache: FeatureCache, scene, q_names, m_names) -> dict[str, float]:
    """Recall@1/5/10 of the queries against the mapping images (positives: overlap >= 0.5)."""
    idx = {n: i for i, n in enumerate(scene.info["names"])}
    qi, mi = [idx[n] for n in q_names], [idx[n] for n in m_names]
    dq, dm = describe(
        method, cache.load([scene.paths[i] for i in qi]), cache.load([scene.paths[i] for i in mi])
    )
    positives = [np.flatnonzero(scene.overlap[q, mi] >= 0.5) for q in qi]
    out = recall_at_n(dq @ dm.T, positives)
    out["queries"] = int(sum(len(p) > 0 for p in positives))
    return out


def finetune(
    run_dir: Path,
    data_args: list[str],
    args: argparse.Namespace,
    lr: float,
    seed: int,
    weights: Path,
    superpoint_weights: Path,
) -> Path:
    """`supergf-ros train` from `weights` on `data_args` (skipped if already done); the model."""
    if not (run_dir / "model_last.pt").exists():
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        subprocess.run(
            [
                *(sys.executable, "-m", "supergf_ros.cli", "train", str(run_dir), *data_args),
                *("--init-weights", str(weights), "--model", args.model),
                *("--superpoint-weights", str(superpoint_weights)),
                *("--cache-dir", str(args.work_dir / "features")),
                *("--config", str(args.config), "--steps", str(args.steps)),
                *("--lr", str(lr), "--seed", str(seed)),
                *("--val-every", str(args.steps), "--no-progress"),
            ],
            check=True,
            env=env,
        )
    return run_dir / "model_last.pt"


def write_results(results: dict, num_queries: int, label: str, work_dir: Path, tag: str) -> None:
    """Print and write the before/after Recall@N table (Markdown) and the results (JSON)."""
    b = results["before"]
    lines = [f"| model | R@1 | R@5 | R@10 |  ({num_queries} queries)", "|---|---|---|---|"]
    rows = [("GeM", b["gem"]), ("VLAD", b["vlad"]), ("VLAD (dense map)", b["vlad-dense"])]
    rows.append((f"{label} before", b["supergf"]))
    for run in results["runs"]:
        rows.append(
            (
                f"{label} after (lr {run['lr']:g}, seed {run['seed']}, {run['steps']} steps)",
                run["after"],
            )
        )
    lines += [f"| {name} | {r['r@1']:.3f} | {r['r@5']:.3f} | {r['r@10']:.3f} |" for name, r in rows]
    table = "\n".join(lines)
    print(table)
    atomic_write_text(work_dir / f"finetune_{tag}.json", json.dumps(results, indent=2))
    atomic_write_text(work_dir / f"finetune_{tag}.md", table + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("work_dir", type=Path)
    p.add_argument("--weights", type=Path, help="initial SuperGF checkpoint (default: shipped)")
    p.add_argument("--model", choices=["dense", "sparse"], default="sparse")
    p.add_argument("--scene", choices=["two-traversal", "hard", "easy"], default="two-traversal")
    p.add_argument("--seed", type=int, help="scene seed (default: hard 3001, easy 2000)")
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-5, 3e-5])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--config", type=Path, default=Path("scripts/train_finetune_map.yaml"))
    p.add_argument("--shared", type=Path, default=Path("../shared"))
    args = p.parse_args()
    if args.seed is None:
        args.seed = 2000 if args.scene == "easy" else 3001
    weights = args.weights or SHIPPED[args.model]
    sp = args.shared / "weights" / "superpoint_v1.pth"
    for path in (weights, sp, args.config):
        if not path.is_file():
            raise ValueError(f"{path} not found (run from the repository root)")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    scene_dir = args.work_dir / f"scene_{args.scene}_{args.seed}"
    if not (scene_dir / "sparse_gt" / "images.txt").exists():
        textures = args.shared / "data" / "photos" / "sacre_coeur"
        if args.scene == "two-traversal":
            make_two_traversal_scene(scene_dir, args.seed, textures)
        else:
            generate_scene(
                scene_dir, scene_config(args.scene, textures), seed=args.seed, progress=False
            )
    map_path = args.work_dir / f"map_{args.scene}_{args.seed}.h5"
    cli = [sys.executable, "-m", "supergf_ros.cli"]
    if not map_path.exists():
        subprocess.run(
            [
                *cli,
                *("build-map", str(scene_dir), "--out", str(map_path)),
                *("--images-list", str(scene_dir / "mapping.txt")),
                *("--superpoint-weights", str(sp), "--global", "gem"),
                *("--max-keypoints", "512", "--quiet"),
            ],
            check=True,
            env=env,
        )
    scene = load_project_dataset(scene_dir)
    q_names = read_image_list(scene_dir / "queries.txt")
    m_names = read_image_list(scene_dir / "mapping.txt")
    extractor = create_extractor("superpoint", weights=str(sp), max_keypoints=512)
    cache = FeatureCache(args.work_dir / "features", extractor, (320, 240))
    results = {"scene": args.scene, "scene_seed": args.seed, "map": str(map_path), "runs": []}
    results["before"] = {
        m: evaluate(m, cache, scene, q_names, m_names) for m in ("gem", "vlad", "vlad-dense")
    }
    results["before"]["supergf"] = evaluate(str(weights), cache, scene, q_names, m_names)
    print(json.dumps(results["before"]))
    for lr in args.lrs:
        for seed in args.train_seeds:
            run_dir = args.work_dir / f"run_{args.scene}{args.seed}_{args.model}_lr{lr:g}_s{seed}"
            data_args = ["--data", str(map_path), "--map-images", str(scene_dir / "images")]
            model = finetune(run_dir, data_args, args, lr, seed, weights, sp)
            after = evaluate(str(model), cache, scene, q_names, m_names)
            run = {"lr": lr, "seed": seed, "steps": args.steps, "after": after}
            results["runs"].append(run)
            print(json.dumps(run))
    tag = f"{args.scene}{args.seed}_{args.model}"
    write_results(results, results["before"]["supergf"]["queries"], "SuperGF", args.work_dir, tag)


if __name__ == "__main__":
    main()
