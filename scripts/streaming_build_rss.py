"""Peak memory of the streaming map builder for a small and a large synthetic map, and their ratio.

Renders one synthetic room per size (`datasets.synthetic`, small images, exact poses), builds
each map in its own process (`build_map`, known poses) and prints that process's peak RSS
(`ru_maxrss`), the build's step timings and the ratio large / small. The builder streams
features, matches and keyframes through its work files, so the ratio should stay near 1 (the
issue's acceptance: 2,000 images within 1.2x of 200).

Usage: python scripts/streaming_build_rss.py [--sizes 200 2000] [--width 160 --height 120]
       [--global NAME] [--superpoint-weights PATH] [--work-root DIR] [--json]
(--work-root keeps the scenes, maps and the builds' work folders: a second run skips rendering
and extraction.)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = ROOT.parent / "shared" / "weights" / "superpoint_v1.pth"


def build_child(scene: Path, out: Path, weights: Path, global_name: str | None, work) -> dict:
    """Build the map of `scene` in this process; its summary and this process's peak RSS."""
    from supergf_ros.datasets import read_image_list
    from supergf_ros.mapping.build_map import build_map

    summary = build_map(
        scene,
        out,
        image_names=read_image_list(scene / "mapping.txt"),
        extractor_conf={"weights": str(weights)},
        global_name=global_name,
        progress=False,
        work_dir=work,
    )
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        **summary,
        "peak_rss_mb": peak_kib / 1024,
        "peak_rss_mb_after_step": summary["peak_rss_mb"],
    }


def measure(size: int, args: argparse.Namespace, root: Path) -> dict:
    """Render a scene of `size` mapping images and build its map in a child process."""
    from supergf_ros.datasets.synthetic import generate_scene

    scene = root / f"scene_{size}"
    if not (scene / "mapping.txt").is_file():
        conf = {"num_map": size, "num_queries": 1, "width": args.width, "height": args.height}
        generate_scene(scene, conf, seed=0, progress=not args.json)
    cmd = [sys.executable, __file__, "--child", str(scene), str(root / f"map_{size}.h5"),
           "--superpoint-weights", str(args.superpoint_weights)]  # fmt: skip
    if args.work_root:  # kept: a rerun skips the extraction (resumes)
        cmd += ["--child-work", str(root / f"work_{size}")]
    if args.global_name:
        cmd += ["--global", args.global_name]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[200, 2000])
    p.add_argument("--width", type=int, default=160)
    p.add_argument("--height", type=int, default=120)
    p.add_argument("--global", dest="global_name", help="global descriptor (default: best)")
    p.add_argument("--superpoint-weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--work-root", type=Path, help="keep scenes and maps here (default: temp)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--child", nargs=2, type=Path, metavar=("SCENE", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--child-work", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        weights, name = args.superpoint_weights, args.global_name
        print(json.dumps(build_child(*args.child, weights, name, args.child_work)))
        return 0
    with tempfile.TemporaryDirectory(prefix="stream-rss-") as tmp:
        root = args.work_root or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        rows = [{"images": n, **measure(n, args, root)} for n in args.sizes]
    report = {
        "sizes": [
            {
                k: r[k]
                for k in (
                    "images",
                    "peak_rss_mb",
                    "num_points3D",
                    "num_pairs",
                    "timings_s",
                    "peak_rss_mb_after_step",
                )
            }
            for r in rows
        ],
        "rss_ratio_largest_to_smallest": rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for r in rows:
        print(f"{r['images']:6d} images: peak RSS {r['peak_rss_mb']:7.1f} MB, "
              f"{r['num_points3D']} points, {r['num_pairs']} pairs, "
              f"{r['timings_s']['total']:.0f} s ({r['timings_s']}), peak RSS after each step "
              f"{r['peak_rss_mb_after_step']}")  # fmt: skip
    print(f"peak RSS ratio {rows[-1]['images']} / {rows[0]['images']} images: "
          f"{report['rss_ratio_largest_to_smallest']:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
