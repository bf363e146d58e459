"""Which matching and extraction settings pay under light change: Strecha scenes, a map of the
even images as taken, the odd images as queries, clear and at dusk (`supergf_ros.datasets.dusk`).

    python scripts/dusk_matching_sweep.py --out outputs/dusk_sweep.json [--scenes A,B]
        [--seeds 0,1] [--extraction NAME,...] [--matching NAME,...]

Each knob is measured on its own against the base (mutual NN, the map's extraction): the
extraction settings with mutual NN, the matching settings with the base extraction; queries are
extracted once per extraction setting and localized with top_k 1 and 5 (`--cross`: every
matching setting with every extraction setting). Prints one line per
(scene, light, setting, top_k) with the ratio of the median position error to the clear base;
writes every figure to --out. Maps and dusk images are cached as `split-eval` caches them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"

from supergf_ros.evaluation.split_eval import (  # noqa: E402
    prepare_split,
    split_metrics,
)
from supergf_ros.localization.config import OPTIONS  # noqa: E402

EXTRACTION = {
    "base": {},
    "det_0.002": {"detection_threshold": 0.002},
    "det_0.001": {"detection_threshold": 0.001},
    "det_0.0005": {"detection_threshold": 0.0005},
    "kp_2048": {"max_keypoints": 2048},
    "kp_4096": {"max_keypoints": 4096},
    "clahe": {"contrast_normalization": "clahe"},
    "equalize": {"contrast_normalization": "equalize"},
    "gamma": {"contrast_normalization": "gamma"},
    "auto": {"contrast_normalization": "auto"},
    "equalize_kp_2048": {"contrast_normalization": "equalize", "max_keypoints": 2048},
}
MATCHING = {
    "mnn": {},
    "ratio_0.95": {"ratio_threshold": 0.95},
    "ratio_0.9": {"ratio_threshold": 0.9},
    "ratio_0.85": {"ratio_threshold": 0.85},
    "ratio_0.8": {"ratio_threshold": 0.8},
    "ratio_0.7": {"ratio_threshold": 0.7},
    "dist_1.0": {"distance_threshold": 1.0},
    "dist_0.9": {"distance_threshold": 0.9},
    "dist_0.8": {"distance_threshold": 0.8},
    "dist_0.7": {"distance_threshold": 0.7},
    "ransac_8px": {"ransac_max_error_px": 8.0},
    "ransac_4px": {"ransac_max_error_px": 4.0},
    "ransac_2px": {"ransac_max_error_px": 2.0},
}
RESET = {
    k: OPTIONS[k].default for k in ("ratio_threshold", "distance_threshold", "ransac_max_error_px")
}
TOP_KS = (1, 5)


def measure(split, extraction: dict, matchings: dict) -> dict:
    """{matching name: {top_k: split_metrics}} of one extraction setting."""
    from supergf_ros.localization.localizer import Localizer

    conf = {**extraction, "superpoint_weights": str(split.weights)}
    localizer = Localizer.from_map(split.map_path, conf)
    features = {}
    for name in split.queries:
        image, camera = split.query_source.read_image(name), split.dataset.camera(name)
        features[name] = localizer.extract(image, camera)
    out = {}
    for mname, mconf in matchings.items():
        localizer.update(**{**RESET, **mconf})
        out[mname] = {}
        for k in TOP_KS:
            results = {
                n: localizer.localize_features(f, c, top_k=k) for n, (f, c) in features.items()
            }
            out[mname][k] = split_metrics(results, split.dataset)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "dusk_sweep.json")
    p.add_argument("--scenes", default="Herz-Jesus-P25,fountain-P11")
    p.add_argument("--seeds", default="0", help="dusk seeds (comma-separated)")
    p.add_argument("--extraction", default=",".join(EXTRACTION), help="extraction settings")
    p.add_argument("--matching", default=",".join(MATCHING), help="matching settings")
    p.add_argument("--cross", action="store_true", help="every matching with every extraction")
    p.add_argument("--no-clear", action="store_true", help="dusk queries only")
    p.add_argument(
        "--superpoint-weights", type=Path, default=SHARED / "weights" / "superpoint_v1.pth"
    )
    p.add_argument("--work-dir", type=Path, default=REPO / "outputs" / "split_eval")
    args = p.parse_args()
    extraction = {n: EXTRACTION[n] for n in args.extraction.split(",")}
    matching = {n: MATCHING[n] for n in args.matching.split(",")}
    lights = [None] * (not args.no_clear) + [int(s) for s in args.seeds.split(",") if s]
    report: dict = {}
    for scene in args.scenes.split(","):
        base_median = {}
        for seed in lights:
            light = "clear" if seed is None else f"dusk{seed}"
            split = prepare_split(
                SHARED / "data" / "strecha" / scene,
                dusk_seed=seed,
                superpoint_weights=args.superpoint_weights,
                work_dir=args.work_dir,
                progress=False,
            )
            for ename, econf in extraction.items():
                ms = matching if ename == "base" or args.cross else {"mnn": {}}
                res = measure(split, econf, ms)
                for mname, per_k in res.items():
                    setting = (
                        ename
                        if mname == "mnn"
                        else mname
                        if ename == "base"
                        else f"{ename}+{mname}"
                    )
                    for k, m in per_k.items():
                        if light == "clear" and setting == "base":
                            base_median[k] = m["median_translation_m"]
                        report.setdefault(scene, {}).setdefault(light, {}).setdefault(setting, {})[
                            k
                        ] = m
                        print_line(scene, light, setting, k, m, base_median.get(k))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1))
    return 0


def print_line(scene: str, light: str, setting: str, k: int, m: dict, base: float | None) -> None:
    med = m["median_translation_m"]
    ratio = "" if med is None or not base else f"  x{med / base:.2f} of clear base"
    print(
        f"{scene:15s} {light:6s} {setting:11s} top{k}: {m['num_localized']:2d}/{m['num_queries']:2d} "
        f"recall {m['recall']['0.25m_2deg']:.3f}  median "
        + ("n/a" if med is None else f"{med * 1e3:6.2f} mm {m['median_rotation_deg']:.3f} deg")
        + f"  inliers {m['median_inliers']}{ratio}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
