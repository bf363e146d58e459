"""`supergf-ros make-scene OUT_DIR`: render a synthetic textured room as a dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "make-scene",
        help="render a synthetic textured room with exact poses and depth (a dataset)",
        description=(
            "Render a synthetic room (textured walls, floor, ceiling, boxes and pillars) along a "
            "mapping and an offset query trajectory. Writes images/, depth/ (float16 metres), "
            "sparse_gt/ (COLMAP text model with exact poses), mapping.txt and queries.txt."
        ),
    )
    parser.add_argument("out_dir", type=Path, help="output folder (new, empty or a previous scene)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--num-map", type=int, default=40, help="mapping frames (default: 40)")
    parser.add_argument("--num-queries", type=int, default=20, help="query frames (default: 20)")
    parser.add_argument(
        "--textures", type=Path, default=None, help="folder of photos to use as textures"
    )
    parser.add_argument("--width", type=int, default=640, help="image width (default: 640)")
    parser.add_argument("--height", type=int, default=480, help="image height (default: 480)")
    parser.add_argument(
        "--room",
        type=float,
        nargs=3,
        metavar=("X", "Y", "Z"),
        default=None,
        help="room size in metres (default: 10 7 3)",
    )
    parser.add_argument(
        "--format", choices=("png", "jpg"), default="png", help="image format (default: png)"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from .synthetic import SceneConfig, generate_scene

    conf = {
        "num_map": args.num_map,
        "num_queries": args.num_queries,
        "texture_dir": args.textures,
        "width": args.width,
        "height": args.height,
        "image_format": args.format,
    }
    if args.room is not None:
        conf["room_size"] = tuple(args.room)
    if args.textures is not None and not args.textures.is_dir():
        raise ValueError(f"--textures {args.textures} is not a directory")
    summary = generate_scene(args.out_dir, SceneConfig.from_dict(conf), seed=args.seed)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"make-scene: wrote {summary['num_images']} images ({summary['num_map']} map, "
            f"{summary['num_queries']} queries, {summary['camera']['width']}x"
            f"{summary['camera']['height']}), {summary['num_planes']} planes "
            f"({summary['num_boxes']} boxes, {summary['num_pillars']} pillars), "
            f"{summary['num_points3D']} 3D points, depth {summary['depth_range'][0]:.2f}-"
            f"{summary['depth_range'][1]:.2f} m to {summary['out_dir']} "
            f"in {summary['time_s']:.1f} s"
        )
    return 0
