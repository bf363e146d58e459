"""The `supergf-ros` command: one entry point, one subcommand per tool.

Each subcommand lives in its own module, which defines
``add_parser(subparsers) -> argparse.ArgumentParser`` (setting ``func=run`` via
``set_defaults``) and ``run(args) -> int``. Modules keep heavy imports (torch, pycolmap, rclpy)
inside ``run`` so that ``supergf-ros --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = [
    "supergf_ros.mapping.build_map",  # build-map
    "supergf_ros.mapping.extend_map",  # extend-map
    "supergf_ros.localization.localize",  # localize
    "supergf_ros.evaluation.evaluate",  # evaluate
    "supergf_ros.evaluation.split_eval",  # split-eval
    "supergf_ros.evaluation.eval_vpr",  # eval-vpr
    "supergf_ros.training.train",  # train
    "supergf_ros.datasets.make_scene",  # make-scene
    "supergf_ros.export",  # export
    "supergf_ros.evaluation.benchmark",  # benchmark
    "supergf_ros.ros.make_bag",  # make-bag
    "supergf_ros.ros.bag_frames",  # bag-frames
    "supergf_ros.ros.replay",  # replay
    "supergf_ros.demo",  # demo
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="supergf-ros",
        description="SuperGF hierarchical visual localization: maps, localization, training, tools.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in SUBCOMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and (module_name + ".").startswith(err.name + "."):
                continue  # subcommand not part of this build

            raise
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"supergf-ros {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"supergf-ros {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
