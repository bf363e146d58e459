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
from pathlib import Path

import numpy as np
from train_finetune_map import describe, finetune, write_results  # scripts/ is on sys.path

from supergf_ros.evaluation.eval_vpr import read_ground_truth
from supergf_ros.features import create_extractor
from supergf_ros.training.cache import FeatureCache
from supergf_ros.training.trainer import recall_at_n

SHIPPED = {
    "sparse": Path("supergf_ros/weights/supergf_sparse_superpoint.pt"),
    "dense": Path("supergf_ros/weights/supergf_dense_superpoint.pt"),
}


def evaluate(method: str, fq, fdb, positives) -> dict[str, float]:
    """Recall@1/5/10 with a SuperGF checkpoint (path) or a training-free aggregator name."""
    dq, ddb = describe(method, fq, fdb)
    return recall_at_n(dq @ ddb.T, positives)


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
    q_paths = sorted((root / "query").glob("*.jpg"))
    db_paths = sorted((root / "ref").glob("*.jpg"))
    gt = read_ground_truth(root / "ground_truth_new.npy", len(q_paths), len(db_paths))
    positives = [np.asarray(refs) for refs in gt]  # read without unpickling code
    extractor = create_extractor("superpoint", weights=str(sp), max_keypoints=512)
    cache = FeatureCache(args.work_dir / "features", extractor, (320, 240))
    fq, fdb = cache.load(q_paths), cache.load(db_paths)

    results: dict = {"data": str(root), "window": args.window, "runs": []}
    results["before"] = {m: evaluate(m, fq, fdb, positives) for m in ("gem", "vlad", "vlad-dense")}
    results["before"]["supergf"] = evaluate(str(weights), fq, fdb, positives)
    print(json.dumps(results["before"]))
    for lr in args.lrs:
        for seed in args.train_seeds:
            run_dir = args.work_dir / f"run_corridor_{args.model}_w{args.window:g}_lr{lr:g}_s{seed}"
            data_args = ["--data", str(root / "ref"), "--sequence-window", str(args.window)]
            model = finetune(run_dir, data_args, args, lr, seed, weights, sp)
            after = evaluate(str(model), fq, fdb, positives)
            run = {"lr": lr, "seed": seed, "steps": args.steps, "after": after}
            results["runs"].append(run)
            print(json.dumps(run))
    tag = f"corridor_{args.model}_w{args.window:g}"
    write_results(results, len(q_paths), f"SuperGF-{args.model}", args.work_dir, tag)


if __name__ == "__main__":
    main()
