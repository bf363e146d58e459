"""Fine-tune SuperGF on a robot's mapping run without any poses (labels from frame order) and
measure Recall@N of a later run's queries before and after (see supergf_ros/weights/MODEL_CARD.md).

Usage: python scripts/train_finetune_sequence.py WORK_DIR [--model dense|sparse] [--weights CKPT]
       [--window 4] [--lrs 1e-5 3e-5] [--train-seeds 0 1 2] [--steps 200]
       [--config scripts/train_finetune_sequence.yaml] [--shared ../shared]

Data: `vpr/corridor`, whose reference images are one traversal of an indoor corridor in time
order and whose query images a second traversal (never seen by the shipped weights' training).
1. Recall@1/5/10 of the queries against the references with CKPT, GeM, VLAD and dense VLAD
   (codebooks fitted on the references); positives from the dataset's ground truth;
2. for every (lr, training seed): `supergf-ros train --data corridor/ref --sequence-window W
   --init-weights CKPT` (labels: frame distance among the references only; no query image, and no
   ground truth, is seen by training);
3. Recall@N again with every fine-tuned model; a JSON and a Markdown table in WORK_DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from supergf_ros.features import create_extractor
from supergf_ros.io_utils import atomic_write_text
from supergf_ros.models.aggregators import create_aggregator
from supergf_ros.training.cache import FeatureCache
from supergf_ros.training.trainer import recall_at_n

SHIPPED = {
    "sparse": Path("supergf_ros/weights/supergf_sparse_superpoint.pt"),
    "dense": Path("supergf_ros/weights/supergf_dense_superpoint.pt"),
}


def evaluate(method: str, fq, fdb, positives) -> dict[str, float]:
    """Recall@1/5/10 with a SuperGF checkpoint (path) or a training-free aggregator name."""
    if method.endswith(".pt"):
        from supergf_ros.models import load_checkpoint

        _, info = load_checkpoint(method)
        agg = create_aggregator(info["model"], weights=method)
    else:
        conf = {"source": "dense"} if method == "vlad-dense" else {}
        agg = create_aggregator(method.removesuffix("-dense"), **conf)
        agg.fit(list(fdb))
    return recall_at_n(agg.batch(fq) @ agg.batch(fdb).T, positives)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("work_dir", type=Path)
    p.add_argument("--weights", type=Path, help="initial SuperGF checkpoint (default: shipped)")
    p.add_argument("--model", choices=["dense", "sparse"], default="dense")
    p.add_argument("--window", type=float, default=4.0, help="--sequence-window (frames)")
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-5, 3e-5])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--config", type=Path, default=Path("scripts/train_finetune_sequence.yaml"))
    p.add_argument("--shared", type=Path, default=Path("../shared"))
    args = p.parse_args()
    weights = args.weights or SHIPPED[args.model]
    sp = args.shared / "weights" / "superpoint_v1.pth"
    root = args.shared / "data" / "vpr" / "corridor"
    for path in (weights, sp, args.config, root / "ground_truth_new.npy"):
        if not path.is_file():
            raise ValueError(f"{path} not found (run from the repository root)")
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    q_paths = sorted((root / "query").glob("*.jpg"))
    db_paths = sorted((root / "ref").glob("*.jpg"))
    gt = np.load(root / "ground_truth_new.npy", allow_pickle=True)
    positives = [np.asarray(gt[i][1]) for i in range(len(q_paths))]
    extractor = create_extractor("superpoint", weights=str(sp), max_keypoints=512)
    cache = FeatureCache(args.work_dir / "features", extractor, (320, 240))
    fq, fdb = cache.load(q_paths), cache.load(db_paths)

    results: dict = {"data": str(root), "window": args.window, "runs": []}
    results["before"] = {m: evaluate(m, fq, fdb, positives) for m in ("gem", "vlad", "vlad-dense")}
    results["before"]["supergf"] = evaluate(str(weights), fq, fdb, positives)
    print(json.dumps(results["before"]))
    cli = [sys.executable, "-m", "supergf_ros.cli"]
    for lr in args.lrs:
        for seed in args.train_seeds:
            run_dir = args.work_dir / f"run_corridor_{args.model}_w{args.window:g}_lr{lr:g}_s{seed}"
            if not (run_dir / "model_last.pt").exists():
                subprocess.run(
                    [
                        *cli,
                        *("train", str(run_dir), "--data", str(root / "ref")),
                        *("--sequence-window", str(args.window)),
                        *("--init-weights", str(weights), "--model", args.model),
                        *("--superpoint-weights", str(sp)),
                        *("--cache-dir", str(args.work_dir / "features")),
                        *("--config", str(args.config), "--steps", str(args.steps)),
                        *("--lr", str(lr), "--seed", str(seed)),
                        *("--val-every", str(args.steps), "--no-progress"),
                    ],
                    check=True,
                    env=env,
                )
            after = evaluate(str(run_dir / "model_last.pt"), fq, fdb, positives)
            run = {"lr": lr, "seed": seed, "steps": args.steps, "after": after}
            results["runs"].append(run)
            print(json.dumps(run))
    b = results["before"]
    lines = [f"| model | R@1 | R@5 | R@10 |  ({len(q_paths)} queries)", "|---|---|---|---|"]
    for name, r in [
        ("GeM", b["gem"]),
        ("VLAD", b["vlad"]),
        ("VLAD (dense map)", b["vlad-dense"]),
        (f"SuperGF-{args.model} before", b["supergf"]),
    ]:
        lines.append(f"| {name} | {r['r@1']:.3f} | {r['r@5']:.3f} | {r['r@10']:.3f} |")
    for run in results["runs"]:
        r = run["after"]
        name = f"SuperGF-{args.model} after (lr {run['lr']:g}, seed {run['seed']}, {run['steps']} steps)"
        lines.append(f"| {name} | {r['r@1']:.3f} | {r['r@5']:.3f} | {r['r@10']:.3f} |")
    table = "\n".join(lines)
    print(table)
    tag = f"corridor_{args.model}_w{args.window:g}"
    atomic_write_text(args.work_dir / f"finetune_{tag}.json", json.dumps(results, indent=2))
    atomic_write_text(args.work_dir / f"finetune_{tag}.md", table + "\n")


if __name__ == "__main__":
    main()
