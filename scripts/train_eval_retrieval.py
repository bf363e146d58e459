"""Retrieval benchmark of the trained SuperGF weights on held-out data (see MODEL_CARD.md).

Usage: python scripts/train_eval_retrieval.py [--shared ../shared] [--features superpoint|sift]
       [--dense CKPT] [--sparse CKPT] [--cache-dir .cache/h5train/eval_features] [--json OUT.json]

Data (never used for training): vpr/corridor (111 queries vs 111 references; ground truth from
ground_truth_new.npy) and strecha/Herz-Jesus-P25 (odd images as queries, even images as the
database). Positives, five ways:
- "covis>=0.5": co-visibility overlap >= 0.5 in a map of all 25 images built with the
  ground-truth poses (`supergf-ros build-map`, 4096 SuperPoint keypoints at 1024 px; shared
  triangulated points, the label `load_built_map` gives; built once into the cache folder);
- "top2-covis": the two database images of highest co-visibility;
- "overlap>=0.5": frustum overlap with an estimated scene depth (`load_project_dataset`; nearly
  every pair of this facade passes);
- "top2-overlap": the two database images of highest estimated overlap;
- "top2-nearest": the two database images with the nearest camera centres among those looking
  within 45 degrees of the query's direction.

Methods over the same local features (SuperPoint, or RootSIFT with --features sift; images
resized to the training size): SuperGF
dense/sparse, the training-free aggregators GeM (over the dense map), VLAD (keypoint
descriptors) and dense VLAD (dense-map cells), VLAD codebooks fitted on the database, and the
raw-pixel baseline (32x24 grayscale, cosine).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from supergf_ros.evaluation.eval_vpr import read_ground_truth
from supergf_ros.features import create_extractor
from supergf_ros.models.aggregators import create_aggregator
from supergf_ros.training.cache import FeatureCache
from supergf_ros.training.data import load_project_dataset
from supergf_ros.training.trainer import recall_at_n


def raw_pixels(paths: list[Path]) -> np.ndarray:
    out = []
    for p in paths:
        im = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        v = cv2.resize(im, (32, 24), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
        out.append(v / (np.linalg.norm(v) + 1e-8))
    return np.stack(out)


def nearest_views(root: Path, q_ids, db_ids, max_angle_deg: float = 45.0) -> list[np.ndarray]:
    """Per query, the two database images with the nearest camera centres among those whose
    optical axes are within `max_angle_deg` of the query's (a pose-only ground truth)."""
    from supergf_ros.datasets import Dataset

    ds = Dataset(root)
    poses = [ds.cam_from_world(n) for n in ds.names]
    centers = np.array([p.center for p in poses])
    axes = np.array([p.R[2] for p in poses])  # optical axis in world coordinates
    out = []
    for q in q_ids:
        dist = np.linalg.norm(centers[db_ids] - centers[q], axis=1)
        angle = np.degrees(np.arccos(np.clip(axes[db_ids] @ axes[q], -1, 1)))
        dist[angle > max_angle_deg] = np.inf
        out.append(np.argsort(dist)[:2])
    return out


def covisibility_overlap(root: Path, cache_dir: Path, superpoint_weights: Path) -> np.ndarray:
    """(N, N) co-visibility overlap of all images of dataset `root` (map built once, cached)."""
    from supergf_ros.mapping.build_map import build_map
    from supergf_ros.training.data import load_built_map

    map_path = cache_dir / "gt" / f"{root.name}.h5"
    if not map_path.is_file():
        map_path.parent.mkdir(parents=True, exist_ok=True)
        build_map(
            root,
            map_path,
            extractor_conf={"weights": str(superpoint_weights), "max_keypoints": 4096},
            global_name="gem",
            conf={"num_pose_neighbors": 24},
        )
    images = load_built_map(map_path, root / "images")
    order = [images.info["names"].index(p.name) for p in sorted((root / "images").glob("*.jpg"))]
    return images.overlap[np.ix_(order, order)]


def describe(
    method: str, feats_q, feats_db, weights: dict[str, Path], features: str
) -> tuple[np.ndarray, ...]:
    if method.startswith("supergf"):
        agg = create_aggregator(method, weights=str(weights[method]), features=features)
    elif method == "vlad-dense":
        agg = create_aggregator("vlad", source="dense", features=features)
    else:
        agg = create_aggregator(method, features=features)
    if agg.needs_fit:
        agg.fit(list(feats_db))
    return agg.batch(list(feats_q)), agg.batch(list(feats_db))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shared", type=Path, default=Path("../shared"))
    p.add_argument(
        "--features",
        choices=["superpoint", "sift"],
        default="superpoint",
        help="local features (sift: RootSIFT keypoints, no dense map)",
    )
    p.add_argument("--dense", type=Path, help="default: the shipped supergf_dense_FEATURES.pt")
    p.add_argument("--sparse", type=Path, help="default: the shipped supergf_sparse_FEATURES.pt")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/h5train/eval_features"))
    p.add_argument("--image-size", nargs=2, type=int, default=[320, 240])
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    data = args.shared / "data"
    if args.features == "superpoint":
        weights_file = args.shared / "weights" / "superpoint_v1.pth"
        extractor = create_extractor("superpoint", weights=str(weights_file), max_keypoints=512)
    else:
        extractor = create_extractor("sift", max_keypoints=512)
    cache = FeatureCache(args.cache_dir, extractor, tuple(args.image_size))
    shipped = Path("supergf_ros/weights")
    weights = {
        "supergf-dense": args.dense or shipped / f"supergf_dense_{args.features}.pt",
        "supergf-sparse": args.sparse or shipped / f"supergf_sparse_{args.features}.pt",
    }
    methods = [m for m in ("supergf-dense", "supergf-sparse") if weights[m].is_file()]
    methods += ["gem", "vlad"] + (["vlad-dense"] if args.features == "superpoint" else [])

    benchmarks = {}
    # corridor
    root = data / "vpr" / "corridor"
    q_paths = sorted((root / "query").glob("*.jpg"))
    db_paths = sorted((root / "ref").glob("*.jpg"))
    gt = read_ground_truth(root / "ground_truth_new.npy", len(q_paths), len(db_paths))
    positives = [np.asarray(refs) for refs in gt]  # read without unpickling code
    benchmarks["corridor"] = (q_paths, db_paths, {"gt": positives})
    # Herz-Jesus-P25
    s = load_project_dataset(data / "strecha" / "Herz-Jesus-P25")
    q_ids, db_ids = np.arange(1, len(s.paths), 2), np.arange(0, len(s.paths), 2)
    covis = covisibility_overlap(
        data / "strecha" / "Herz-Jesus-P25",
        args.cache_dir,
        args.shared / "weights" / "superpoint_v1.pth",
    )[np.ix_(q_ids, db_ids)]
    ov = s.overlap[np.ix_(q_ids, db_ids)]
    pos_05 = [np.flatnonzero(r >= 0.5) for r in ov]
    pos_top2 = [np.argsort(-r)[:2] for r in ov]
    benchmarks["herz-jesus-p25"] = (
        [s.paths[i] for i in q_ids],
        [s.paths[i] for i in db_ids],
        {
            "covis>=0.5": [np.flatnonzero(r >= 0.5) for r in covis],
            "top2-covis": [np.argsort(-r, kind="stable")[:2] for r in covis],
            "overlap>=0.5": pos_05,
            "top2-overlap": pos_top2,
            "top2-nearest": nearest_views(data / "strecha" / "Herz-Jesus-P25", q_ids, db_ids),
        },
    )

    results: dict = {}
    for name, (qp, dbp, gts) in benchmarks.items():
        fq, fdb = cache.load(qp), cache.load(dbp)
        descs = {m: describe(m, fq, fdb, weights, args.features) for m in methods}
        descs["raw-pixels"] = (raw_pixels(qp), raw_pixels(dbp))
        for gt_name, pos in gts.items():
            for m, (dq, ddb) in descs.items():
                r = recall_at_n(dq @ ddb.T, pos)
                results[f"{name}/{gt_name}/{m}"] = r
                print(
                    f"{name:16s} {gt_name:13s} {m:15s} "
                    + " ".join(f"{k}={v:.3f}" for k, v in r.items())
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
