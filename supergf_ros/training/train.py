"""`supergf-ros train`: train or fine-tune SuperGF on datasets, built maps or MSLS.

Examples:
    supergf-ros train runs/dense --data scenes/s0 scenes/s1 ../shared/data/strecha/fountain-P11 \
        --val scenes/val --model dense --latent-dim 256 --mlp-dim 512 --steps 1500
    supergf-ros train runs/finetune --data maps/office.h5 --map-images office/images \
        --init-weights supergf_ros/weights/supergf_dense_superpoint.pt --steps 200
    torchrun --nproc_per_node 4 -m supergf_ros.cli train runs/gpu --data ...   # data parallel
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="train or fine-tune SuperGF (listwise soft-label AP loss)",
        description=(
            "Train SuperGF over frozen, cached local features. Data: datasets in the project "
            "layout (images/ + COLMAP model; labels from 3D points, depth/ maps or estimated "
            "depth), maps from build-map (.h5, with --map-images), an MSLS folder, or folders "
            "of time-ordered frames without poses (with --sequence-window)."
        ),
    )
    p.add_argument("output_dir", type=Path, help="folder for checkpoints, log.csv, training.png")
    p.add_argument("--data", nargs="+", required=True, type=Path, help="training data paths")
    p.add_argument("--val", nargs="*", default=[], type=Path, help="validation data paths")
    p.add_argument("--map-images", type=Path, help="image folder of the map(s) given in --data")
    p.add_argument(
        "--sequence-window",
        type=float,
        metavar="FRAMES",
        help="treat --data/--val folders of images without a COLMAP model as one time-ordered "
        "recording (frames sorted by name, e.g. exported from a mapping rosbag): overlap "
        "1 - |i - j| / FRAMES, 0 beyond",
    )
    p.add_argument("--model", choices=["dense", "sparse"], default="dense")
    p.add_argument("--features", choices=["superpoint", "sift"], default="superpoint")
    p.add_argument("--superpoint-weights", type=Path, help="MagicLeap superpoint_v1.pth")
    p.add_argument("--max-keypoints", type=int, help="local features per image (default 512)")
    p.add_argument(
        "--image-size", nargs=2, type=int, metavar=("W", "H"), help="training image size (320 240)"
    )
    p.add_argument("--cache-dir", type=Path, help="feature cache (default OUTPUT_DIR/../.features)")
    p.add_argument("--config", type=Path, help="YAML/JSON file of training options")
    p.add_argument("--steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--lr-min", type=float)
    p.add_argument("--num-negatives", type=int)
    p.add_argument("--num-soft-negatives", type=int)
    p.add_argument("--latent-dim", type=int)
    p.add_argument("--mlp-dim", type=int)
    p.add_argument("--num-layers", type=int)
    p.add_argument("--num-heads", type=int)
    p.add_argument("--num-slots", type=int, help="sparse, or dense residual: number of slots")
    p.add_argument(
        "--aggregation",
        choices=["slots", "tokens", "residual"],
        help="sparse: 'slots' (slot attention + GeM, the paper); dense: 'tokens' (tokenizer + "
        "GeM, the paper); both: 'residual' (NetVLAD-like residual slots started from a k-means "
        "codebook of the training descriptors)",
    )
    p.add_argument("--val-every", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--init-weights", type=Path, help="start from this SuperGF checkpoint")
    p.add_argument("--resume", action="store_true", help="continue from checkpoint_last.pt")
    p.add_argument("--export", type=Path, help="copy the best model checkpoint here at the end")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
    return p


def _options(args: argparse.Namespace) -> dict:
    conf: dict = {}
    if args.config is not None:
        import yaml

        if not args.config.is_file():
            raise FileNotFoundError(f"config file not found: {args.config}")
        loaded = yaml.safe_load(args.config.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {args.config} must hold a mapping of options")
        conf.update(loaded)
    conf["model"] = f"supergf-{args.model}"
    conf["features"] = args.features
    if args.image_size is not None:
        conf["image_size"] = list(args.image_size)
    ext = dict(conf.get("extractor_conf", {"max_keypoints": 512}))
    if args.max_keypoints is not None:
        ext["max_keypoints"] = args.max_keypoints
    if args.features == "sift" and args.model == "dense":
        ext.setdefault("mode", "dense")  # a descriptor grid gives the dense map
    conf["extractor_conf"] = ext
    for key in (
        "steps",
        "batch_size",
        "lr",
        "lr_min",
        "num_negatives",
        "num_soft_negatives",
        "val_every",
        "seed",
    ):
        if getattr(args, key) is not None:
            conf[key] = getattr(args, key)
    model_conf = dict(conf.get("model_conf", {}))
    for key in ("latent_dim", "mlp_dim", "num_layers", "num_heads", "num_slots", "aggregation"):
        if getattr(args, key) is not None:
            model_conf[key] = getattr(args, key)
    if args.features == "sift":
        model_conf.setdefault("input_dim", 128)
    conf["model_conf"] = model_conf
    return conf


def run(args: argparse.Namespace) -> int:
    from ..features import create_extractor
    from .cache import FeatureCache
    from .data import load_source
    from .trainer import merge_conf, train

    conf = merge_conf(_options(args))
    ext_conf = dict(conf["extractor_conf"])
    if args.features == "superpoint" and args.superpoint_weights is not None:
        ext_conf["weights"] = str(args.superpoint_weights)
    extractor = create_extractor(args.features, **ext_conf)
    window = args.sequence_window
    train_sets = [s for d in args.data for s in load_source(d, args.map_images, window)]
    val_sets = [s for d in args.val for s in load_source(d, args.map_images, window)]
    cache_dir = args.cache_dir or (args.output_dir.parent / ".features")
    cache = FeatureCache(cache_dir, extractor, tuple(conf["image_size"]))
    is_main = os.environ.get("RANK", "0") == "0"
    if is_main:
        print(
            f"training {conf['model']} on {len(train_sets)} set(s) "
            f"({sum(len(s.paths) for s in train_sets)} images), validating on {len(val_sets)}"
        )
    summary = train(
        train_sets,
        val_sets,
        cache,
        conf,
        args.output_dir,
        resume=args.resume,
        init_weights=args.init_weights,
        progress=not args.no_progress,
    )
    summary.pop("rows", None)
    best = args.output_dir / "model_best.pt"
    if is_main and args.export is not None and best.is_file():
        args.export.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.export.with_name(f".{args.export.name}.tmp")
        shutil.copyfile(best, tmp)
        tmp.replace(args.export)
        summary["exported"] = str(args.export)
    if is_main:
        print(json.dumps(summary, indent=2, default=str))
    return 0
