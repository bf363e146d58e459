"""`supergf-ros localize MAP.h5 DATASET --queries FILE --out RESULTS.txt [--log LOG.json]
[--top-k K] [options]`: localize a list of query images against a map.

Query intrinsics come from DATASET's COLMAP model. RESULTS.txt gets one line per localized query
(``name qw qx qy qz tx ty tz``, cam_from_world); LOG.json a list of per-query objects (name,
success, reason, num_inliers, num_matches, retrieved, timings_ms, pose, covariance).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from .config import OPTIONS, check_conf


def localize_dataset(
    localizer,
    dataset_dir: str | Path,
    query_names: list[str],
    progress: bool = True,
) -> list[tuple[str, Any]]:
    """Localize `query_names` of a dataset; returns [(name, LocalizationResult)] in order."""
    from ..datasets import Dataset

    dataset = Dataset(dataset_dir)
    dataset.check_names(query_names)
    if not dataset.has_model:
        raise ValueError(
            f"dataset {dataset_dir} has no COLMAP model: query intrinsics are read from it"
        )
    iterator = query_names
    if progress:
        from tqdm import tqdm

        iterator = tqdm(query_names, desc="localize", unit="query")
    out = []
    for name in iterator:
        image = dataset.read_image(name)
        camera = dataset.camera(name)
        h, w = image.shape[:2]
        if (camera.width, camera.height) != (w, h):
            camera = camera.scaled(w / camera.width, h / camera.height)
        out.append((name, localizer.localize(image, camera)))
    return out


def summarize(results: list[tuple[str, Any]]) -> dict:
    """Counts and per-stage median timings (ms) of localization results."""
    stages: dict[str, list[float]] = {}
    for _, r in results:
        for k, v in r.timings_ms.items():
            stages.setdefault(k, []).append(v)
    return {
        "num_queries": len(results),
        "num_localized": sum(bool(r.success) for _, r in results),
        "median_timings_ms": {k: float(np.median(v)) for k, v in stages.items()},
    }


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "localize",
        help="localize query images of a dataset against a map",
        description="Hierarchical localization: global retrieval, local matching, PnP-RANSAC.",
    )
    p.add_argument("map", type=Path, help="map file from build-map (.h5)")
    p.add_argument("dataset", type=Path, help="dataset folder (images/ + model with intrinsics)")
    p.add_argument("--queries", type=Path, required=True, help="query image names, one a line")
    p.add_argument("--out", type=Path, required=True, help="RESULTS.txt to write")
    p.add_argument("--log", type=Path, help="LOG.json with per-query details")
    opt = OPTIONS
    p.add_argument("--top-k", type=int, default=opt["top_k"].default, help=opt["top_k"].description)
    p.add_argument("--rerank", action="store_true", help=opt["rerank"].description)
    p.add_argument("--rerank-keep", type=int, help=opt["rerank_keep"].description)
    p.add_argument("--ratio-threshold", type=float, help=opt["ratio_threshold"].description)
    p.add_argument("--min-inliers", type=int, default=opt["min_inliers"].default)
    p.add_argument(
        "--ransac-max-error",
        type=float,
        default=opt["ransac_max_error_px"].default,
        help=opt["ransac_max_error_px"].description,
    )
    p.add_argument("--superpoint-weights", type=Path, help=opt["superpoint_weights"].description)
    p.add_argument("--supergf-weights", type=Path, help=opt["supergf_weights"].description)
    p.add_argument(
        "--superpoint-precision",
        choices=opt["superpoint_precision"].choices,
        default=opt["superpoint_precision"].default,
        help=opt["superpoint_precision"].description,
    )
    p.add_argument(
        "--superpoint-int8-calibration",
        type=Path,
        help=opt["superpoint_int8_calibration"].description,
    )
    from ..mapping.build_map import add_backend_arguments

    add_backend_arguments(p)
    p.add_argument(
        "--match-all-keypoints",
        action="store_true",
        help="match against every keyframe keypoint, not only those with a 3D point (slower)",
    )
    p.add_argument("--max-keypoints", type=int, help="query keypoints (default: as the map)")
    p.add_argument("--resize-max", type=int, help="query resize (default: as the map)")
    p.add_argument("--detection-threshold", type=float, help=opt["detection_threshold"].description)
    p.add_argument(
        "--contrast-normalization",
        choices=opt["contrast_normalization"].choices,
        default=opt["contrast_normalization"].default,
        help=opt["contrast_normalization"].description,
    )
    p.add_argument("--index", choices=opt["index"].choices, default=opt["index"].default)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def localizer_conf_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Localizer options from the command line (unset optional ones keep their defaults)."""
    conf = {
        "top_k": args.top_k,
        "rerank": args.rerank,
        "rerank_keep": args.rerank_keep,
        "ratio_threshold": args.ratio_threshold,
        "min_inliers": args.min_inliers,
        "ransac_max_error_px": args.ransac_max_error,
        "superpoint_weights": args.superpoint_weights and str(args.superpoint_weights),
        "supergf_weights": args.supergf_weights and str(args.supergf_weights),
        "superpoint_precision": args.superpoint_precision,
        "superpoint_int8_calibration": args.superpoint_int8_calibration
        and str(args.superpoint_int8_calibration),
        "backend": args.backend,
        "device": args.device,
        "match_3d_only": not args.match_all_keypoints,
        "max_keypoints": args.max_keypoints,
        "resize_max": args.resize_max,
        "detection_threshold": args.detection_threshold,
        "contrast_normalization": args.contrast_normalization,
        "index": args.index,
    }
    return check_conf(conf)


def run(args: argparse.Namespace) -> int:
    from ..datasets import atomic_write_text, read_image_list, write_results
    from .localizer import Localizer

    names = read_image_list(args.queries)
    conf = localizer_conf_from_args(args)
    localizer = Localizer.from_map(args.map, conf)
    info = localizer.backend_info
    if not args.quiet:
        print(f"inference: {info['backend']} on {info['device']} ({info['reason']})")
    results = localize_dataset(localizer, args.dataset, names, progress=not args.quiet)
    poses = {n: r.cam_from_world for n, r in results if r.success}
    write_results(args.out, poses)
    if args.log:
        log = [{"name": n, **r.to_dict()} for n, r in results]
        atomic_write_text(args.log, json.dumps(log, indent=1) + "\n")
    s = summarize(results)
    timing = ", ".join(f"{k} {v:.0f}" for k, v in s["median_timings_ms"].items())
    print(
        f"localized {s['num_localized']}/{s['num_queries']} queries -> {args.out}; "
        f"median ms: {timing}"
    )
    return 0
