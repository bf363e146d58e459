"""The localizer node's peak memory per backend, side by side, on the demo's map and bag.

    python scripts/node_memory.py [--demo demo_output] [--superpoint-weights W] [--json]

Replays the bag of `supergf-ros demo` (built into --demo first if it is not there) through the
real node once per configuration: PyTorch, ONNX Runtime fp32, ONNX Runtime with int8 SuperPoint.
Before each ONNX Runtime run the ONNX files are prepared in a separate process (exporting needs
PyTorch), so the node starts as on a robot whose cache is filled. Prints the node's peak RSS,
whether PyTorch's library was mapped into it, latency and accuracy, and the RSS ratio to PyTorch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CONFIGS = {
    "torch": {"backend": "torch"},
    "onnxruntime fp32": {"backend": "onnxruntime", "superpoint_precision": "fp32"},
    "onnxruntime int8": {"backend": "onnxruntime", "superpoint_precision": "int8"},
}
PREPARE = """
import json, sys
from supergf_ros.localization import Localizer
Localizer.from_map(sys.argv[1], json.loads(sys.argv[2]))
"""


def _demo(folder: Path, weights: Path) -> tuple[Path, Path]:
    """The demo's map and bag in `folder`, made by `supergf-ros demo` when missing."""
    map_path, bag = folder / "map_superpoint.h5", folder / "queries_bag"
    if not (map_path.is_file() and bag.is_dir()):
        cmd = [sys.executable, "-m", "supergf_ros.cli", "demo", "--output", str(folder)]
        subprocess.run([*cmd, "--superpoint-weights", str(weights)], check=True)
    return map_path, bag


def _measure(name: str, params: dict, map_path: Path, bag: Path, out: Path) -> dict:
    """One replay of `bag` through the node with `params` (node parameters); its figures."""
    from supergf_ros.ros.replay import replay_bag

    if params["backend"] != "torch":  # the ONNX files, as `supergf-ros export` leaves them
        conf = json.dumps({**params, "device": "cpu"})
        subprocess.run([sys.executable, "-c", PREPARE, str(map_path), conf], check=True)
    r = replay_bag(
        bag,
        map_path,
        as_fast_as_possible=True,
        node_params=params,
        output_dir=out / name.replace(" ", "_"),
        progress=False,
    )
    return {
        "config": name,
        "node_peak_rss_mb": r["node_peak_rss_mb"],
        "node_torch_loaded": r.get("node_torch_loaded"),
        "latency_ms_p50": r["latency_ms_p50"],
        "frames_localized": r["frames_localized"],
        "frames_processed": r["frames_processed"],
        "median_translation_m": r.get("median_translation_m"),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", type=Path, default=Path("demo_output"), help="demo folder")
    p.add_argument(
        "--superpoint-weights", type=Path, default=SHARED / "weights" / "superpoint_v1.pth"
    )
    p.add_argument("--output", type=Path, default=Path("outputs") / "node_memory")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = p.parse_args()
    if not args.superpoint_weights.is_file():
        p.error(f"SuperPoint weights not found: {args.superpoint_weights}")
    map_path, bag = _demo(args.demo, args.superpoint_weights)
    weights = str(args.superpoint_weights.resolve())
    rows = []
    for name, params in CONFIGS.items():
        params = {**params, "superpoint_weights": weights}
        rows.append(_measure(name, params, map_path, bag, args.output))
        print(f"measured {name}: {rows[-1]['node_peak_rss_mb']} MB", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    base = rows[0]["node_peak_rss_mb"]
    print(f"{'config':18s} {'peak RSS':>9s} {'vs torch':>8s} {'torch':>6s} {'p50 ms':>7s} "
          f"{'localized':>9s} {'median m':>9s}")  # fmt: skip
    for r in rows:
        ratio = r["node_peak_rss_mb"] / base if base else float("nan")
        print(
            f"{r['config']:18s} {r['node_peak_rss_mb']:6.0f} MB {ratio:7.2f}x "
            f"{ {True: 'yes', False: 'no'}.get(r['node_torch_loaded'], '?'):>6s} {r['latency_ms_p50']:7.0f} "
            f"{r['frames_localized']:>4d}/{r['frames_processed']:<4d} "
            f"{r['median_translation_m'] or float('nan'):9.4f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
