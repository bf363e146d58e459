"""KITTI 01 on a simulated robot: a map from the left camera, the right camera replayed at its true
10 Hz with drifting odometry, through the real node; with odometry, without, and camera-only as
the node behaved before tracking (every global fix published at once).

    python scripts/kitti_robot_replay.py --out outputs/kitti_robot [--every 5] [--seconds S]

Writes <out>/map.h5 (unless --map), the bags, each replay's folder and <out>/summary.json; prints
one line per configuration. Data: ../shared/data/sequences/kitti01 and the SuperPoint weights
../shared/weights/superpoint_v1.pth (or --dataset / --superpoint-weights).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "supergf_ros.cli"]
SHARED = REPO.parent / "shared"
KEYS = (
    "time_to_first_fix_s",
    "base_pose_recall",
    "fix_rate_hz",
    "fixes_rejected",
    "jumps",
    "wrong_fixes_1m",
    "nees_mean",
    "latency_ms_p50",
    "frames_processed",
    "fixes",
)
CONFIGS = {
    "odometry": {"bag": "odometry", "params": []},
    "no_odometry": {"bag": "camera", "params": []},
    "before": {
        "bag": "camera",
        "params": ["confirm_fixes:=1", "strong_inliers:=0", "max_speed_mps:=1000.0"],
    },
}


def build_map(dataset: Path, out: Path, weights: Path, every: int) -> float:
    """Build the left-camera map (every `every`-th image_0 frame); seconds it took."""
    names = sorted(p.name for p in (dataset / "images" / "image_0").iterdir())
    listing = out.with_suffix(".txt")
    listing.write_text("".join(f"image_0/{n}\n" for n in names[::every]))
    t0 = time.perf_counter()
    _run(
        [
            *CLI,
            "build-map",
            str(dataset),
            "--out",
            str(out),
            "--images-list",
            str(listing),
            "--superpoint-weights",
            str(weights),
            "--quiet",
        ]
    )
    return time.perf_counter() - t0


def make_bags(dataset: Path, out: Path, seconds: float | None, drift: float) -> dict[str, Path]:
    """The right camera at its timestamps: with odometry, and camera-only."""
    names = sorted(p.name for p in (dataset / "images" / "image_1").iterdir())
    if seconds is not None:
        names = names[: round(seconds * 10) + 1]
    queries = out / "right.txt"
    queries.write_text("".join(f"image_1/{n}\n" for n in names))
    bags = {"odometry": out / "bag_odometry", "camera": out / "bag_camera"}
    common = [*CLI, "make-bag", str(dataset), "--queries", str(queries), "--overwrite"]
    _run([*common, "--out", str(bags["odometry"]), "--odometry-drift", str(drift)])
    _run([*common, "--out", str(bags["camera"]), "--no-odometry"])
    return bags


def replay(bag: Path, map_path: Path, weights: Path, out: Path, params: list[str]) -> dict:
    cmd = [*CLI, "replay", str(bag), "--map", str(map_path), "--json", "--output", str(out)]
    cmd += ["--superpoint-weights", str(weights)]
    for p in params:
        cmd += ["--node-param", p]
    return json.loads(_run(cmd))


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "kitti_robot")
    p.add_argument("--dataset", type=Path, default=SHARED / "data" / "sequences" / "kitti01")
    p.add_argument(
        "--superpoint-weights", type=Path, default=SHARED / "weights" / "superpoint_v1.pth"
    )
    p.add_argument("--map", type=Path, help="an existing left-camera map (skips building)")
    p.add_argument("--every", type=int, default=5, help="map keyframe: every N-th left frame")
    p.add_argument("--seconds", type=float, help="replay only the first S seconds")
    p.add_argument("--drift", type=float, default=0.01, help="odometry drift (default 0.01)")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict = {}
    map_path = args.map or args.out / "map.h5"
    if args.map is None:
        summary["map_build_s"] = round(
            build_map(args.dataset, map_path, args.superpoint_weights, args.every), 1
        )
    bags = make_bags(args.dataset, args.out, args.seconds, args.drift)
    for name in args.configs:
        cfg = CONFIGS[name]
        r = replay(
            bags[cfg["bag"]], map_path, args.superpoint_weights, args.out / name, cfg["params"]
        )
        summary[name] = {k: r.get(k) for k in KEYS}
        print(name, json.dumps(summary[name]), flush=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
