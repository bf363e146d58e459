"""`supergf-ros split-eval DATASET [--map-every N] [--map-offset K] [--map-prefix P]
[--query-prefix P] [--dusk SEED] [--top-k 1,5] [--set NAME=VALUE ...] [--json] [--work-dir DIR]`: one command
for a map/query split.

The map is every Nth image from the Kth on (of those whose name starts with `--map-prefix`; N = 2
is the Strecha even/odd split; another K is the same density in another phase), built once per split and settings and cached in the work dir. The queries are
the other images of that prefix, or every image of `--query-prefix` (e.g. KITTI: map
`image_0/`, queries `image_1/`); `--dusk SEED` darkens them (`datasets.dusk`, written to the
work dir, deterministic per seed). Each query is extracted once and localized with each top_k;
the report has recall at (0.25 m, 2 deg) and the other thresholds, median position and
rotation errors and the median NEES of the fixes under their published covariance.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_WORK_DIR = Path("outputs") / "split_eval"


def split_names(
    names: list[str],
    map_every: int = 2,
    map_prefix: str = "",
    query_prefix: str | None = None,
    map_offset: int = 0,
) -> tuple[list[str], list[str]]:
    """(map names, query names): every `map_every`th name with `map_prefix` from the
    `map_offset`th on, and the rest of them or, with `query_prefix`, every name with that
    prefix. ValueError for an empty side or an offset outside [0, map_every)."""
    if map_every < 1:
        raise ValueError(f"--map-every must be >= 1, got {map_every}")
    if not 0 <= map_offset < map_every:
        raise ValueError(f"--map-offset must be in [0, --map-every), got {map_offset}")
    pool = sorted(n for n in names if n.startswith(map_prefix))
    map_names = pool[map_offset::map_every]
    if query_prefix is None:
        taken = set(map_names)
        queries = [n for n in pool if n not in taken]
    else:
        queries = sorted(n for n in names if n.startswith(query_prefix))
    if not map_names:
        raise ValueError(f"no image name starts with the map prefix '{map_prefix}'")
    if not queries:
        raise ValueError(
            "no query images: give --query-prefix, or --map-every > 1 to leave images out of the map"
        )
    return map_names, queries


def map_key(dataset_dir: Path, map_names: list[str], map_conf: dict[str, Any]) -> str:
    """The cache key of a map: the dataset, its keyframes and how the map is built."""
    from .. import __version__

    src = {"dataset": str(dataset_dir.resolve()), "names": map_names, "version": __version__}
    src.update(map_conf)
    return hashlib.sha256(json.dumps(src, sort_keys=True).encode()).hexdigest()[:16]


def cached_map(
    dataset_dir: Path,
    map_names: list[str],
    weights: Path,
    work_dir: Path,
    progress: bool,
    extractor_conf: dict[str, Any] | None = None,
) -> Path:
    """The map of `map_names` (build-map's defaults, SuperPoint `weights` with
    `extractor_conf`, e.g. resize_max), built on first use."""
    from ..io_utils import file_sha256
    from ..mapping.build_map import build_map

    extractor_conf = dict(extractor_conf or {})
    map_conf = {"features": "superpoint", "weights_sha256": file_sha256(weights), **extractor_conf}
    path = (
        work_dir
        / f"map_{dataset_dir.resolve().name}_{map_key(dataset_dir, map_names, map_conf)}.h5"
    )
    if not path.is_file():
        work_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".part.h5")
        build_map(
            dataset_dir,
            tmp,
            image_names=map_names,
            extractor_conf={**extractor_conf, "weights": str(weights)},
            progress=progress,
        )
        tmp.replace(path)  # a cached map is always a whole one
    return path


def query_dataset(dataset, names: list[str], dusk_seed: int | None, work_dir: Path):
    """The dataset the queries are read from: `dataset`, or its dusk copy in the work dir."""
    if dusk_seed is None:
        return dataset
    from ..datasets import Dataset
    from ..datasets.dusk import write_dusk_dataset

    root = dataset.root.resolve()
    tag = hashlib.sha256(str(root).encode()).hexdigest()[:8]  # datasets of the same name
    out_dir = work_dir / f"dusk_{root.name}_{tag}_{dusk_seed}"
    return Dataset(write_dusk_dataset(dataset, names, dusk_seed, out_dir))


def localize_queries(
    localizer, dataset, names: list[str], top_ks: list[int], progress: bool
) -> dict[int, dict[str, Any]]:
    """{top_k: {name: LocalizationResult}}; each query's features extracted once."""
    out: dict[int, dict[str, Any]] = {k: {} for k in top_ks}
    iterator = names
    if progress:
        from tqdm import tqdm

        iterator = tqdm(names, desc="split-eval", unit="query")
    for name in iterator:
        image, camera = dataset.read_image(name), dataset.camera(name)
        h, w = image.shape[:2]
        if (camera.width, camera.height) != (w, h):
            camera = camera.scaled(w / camera.width, h / camera.height)
        query = localizer.prepare(image, camera)  # features and global descriptor once
        for k in top_ks:
            out[k][name] = localizer.localize_prepared(query, top_k=k)
    return out


def split_metrics(results: dict[str, Any], dataset) -> dict[str, Any]:
    """`metrics.pose_metrics` of the results plus, from `metrics.covariance_consistency`, the
    median NEES of the fixes with a positive definite covariance and the fraction inside their
    99% ellipsoid (None when none has one), the median PnP inliers and the median absolute
    position error per axis of the true camera (`median_error_camera_m`: lateral, vertical,
    axial)."""
    from .metrics import camera_frame_medians, covariance_consistency, pose_errors, pose_metrics

    poses = {n: r.cam_from_world for n, r in results.items() if r.success}
    metrics = pose_metrics(pose_errors(poses, dataset.poses, list(results)))
    metrics["median_error_camera_m"] = camera_frame_medians(poses, dataset.poses)
    fixes = {n: (r.cam_from_world, r.map_covariance) for n, r in results.items()
             if r.success and _positive_definite(r.map_covariance)}  # fmt: skip
    consistency = covariance_consistency(fixes, dataset.poses)
    inliers = [r.num_inliers for r in results.values() if r.success]
    metrics["nees_median"] = consistency["nees_median"]
    # the fixes whose true pose lies inside their published 99% ellipsoid (6-dof chi-square)
    metrics["fraction_inside_99"] = consistency["fraction_inside_99"]
    metrics["median_inliers"] = float(np.median(inliers)) if inliers else None
    return metrics


def _positive_definite(covariance) -> bool:
    """A finite, symmetric, positive definite 6x6 covariance (others give no NEES)."""
    from ..tracking.gate import check_covariance

    if covariance is None:
        return False
    try:
        np.linalg.cholesky(check_covariance(covariance))
    except (ValueError, np.linalg.LinAlgError):
        return False
    return True


@dataclass
class Split:
    """A prepared split: the dataset with poses, the cached map, the query names and the
    dataset the queries are read from (the dusk copy with `dusk_seed`)."""

    dataset: Any
    map_path: Path
    map_names: list[str]
    queries: list[str]
    query_source: Any
    weights: Path


def prepare_split(
    dataset_dir: str | Path,
    *,
    map_every: int = 2,
    map_offset: int = 0,
    map_prefix: str = "",
    query_prefix: str | None = None,
    dusk_seed: int | None = None,
    superpoint_weights: str | Path | None = None,
    map_extractor_conf: dict[str, Any] | None = None,
    work_dir: str | Path = DEFAULT_WORK_DIR,
    progress: bool = True,
) -> Split:
    """The split's map (built on first use, SuperPoint with `map_extractor_conf`) and queries
    (darkened with `dusk_seed`)."""
    from ..datasets import Dataset
    from ..features.superpoint_common import resolve_weights

    dataset_dir, work_dir = Path(dataset_dir), Path(work_dir)
    dataset = Dataset(dataset_dir)
    if not dataset.poses:
        raise ValueError(f"dataset {dataset_dir} has no poses (sparse_gt/) to evaluate against")
    map_names, queries = split_names(dataset.names, map_every, map_prefix, query_prefix, map_offset)
    weights = resolve_weights(superpoint_weights)
    map_path = cached_map(dataset_dir, map_names, weights, work_dir, progress, map_extractor_conf)
    source = query_dataset(dataset, queries, dusk_seed, work_dir)
    return Split(dataset, map_path, map_names, queries, source, weights)


def evaluate_split(
    dataset_dir: str | Path,
    *,
    map_every: int = 2,
    map_offset: int = 0,
    map_prefix: str = "",
    query_prefix: str | None = None,
    dusk_seed: int | None = None,
    top_ks: list[int] = (1, 5),
    localizer_conf: dict[str, Any] | None = None,
    map_extractor_conf: dict[str, Any] | None = None,
    work_dir: str | Path = DEFAULT_WORK_DIR,
    progress: bool = True,
) -> dict[str, Any]:
    """Build (or reuse) the split's map, localize its queries, and report per top_k
    (`split_metrics`), with the split, the map file and the localizer options used."""
    from ..localization.localizer import Localizer

    conf = dict(localizer_conf or {})
    split = prepare_split(
        dataset_dir,
        map_every=map_every,
        map_offset=map_offset,
        map_prefix=map_prefix,
        query_prefix=query_prefix,
        dusk_seed=dusk_seed,
        superpoint_weights=conf.get("superpoint_weights"),
        map_extractor_conf=map_extractor_conf,
        work_dir=work_dir,
        progress=progress,
    )
    localizer = Localizer.from_map(
        split.map_path, {**conf, "superpoint_weights": str(split.weights)}
    )
    per_k = localize_queries(localizer, split.query_source, split.queries, list(top_ks), progress)
    options = {k: v for k, v in localizer.conf.items() if k != "superpoint_weights"}
    return {
        "dataset": str(dataset_dir),
        "split": {
            "map_every": map_every,
            "map_offset": map_offset,
            "map_prefix": map_prefix,
            "query_prefix": query_prefix,
            "dusk_seed": dusk_seed,
            "num_map": len(split.map_names),
            "num_queries": len(split.queries),
        },
        "map": str(split.map_path),
        "options": options,
        "top_k": {str(k): split_metrics(per_k[k], split.dataset) for k in top_ks},
    }


def format_report(report: dict[str, Any]) -> str:
    """One line per top_k: recall (0.25 m, 2 deg), median errors, NEES."""
    s = report["split"]
    light = "clear" if s["dusk_seed"] is None else f"dusk seed {s['dusk_seed']}"
    lines = [
        f"{report['dataset']}: map {s['num_map']} images (every {s['map_every']} from "
        f"{s.get('map_offset', 0)}), "
        f"{s['num_queries']} queries, {light}"
    ]
    for k, m in report["top_k"].items():
        med_t, med_r, nees = m["median_translation_m"], m["median_rotation_deg"], m["nees_median"]
        lines.append(
            f"top_k {k}: localized {m['num_localized']}/{m['num_queries']}, within (0.25 m, 2 deg) "
            f"{m['recall']['0.25m_2deg']:.3f}, median error "
            + ("n/a" if med_t is None else f"{med_t * 1e3:.1f} mm, {med_r:.3f} deg")
            + (
                ""
                if nees is None
                else f", NEES median {nees:.2f}, inside the 99% ellipsoid "
                f"{m['fraction_inside_99']:.3f}"
            )
            + _axes_text(m.get("median_error_camera_m"))
        )
    return "\n".join(lines)


def _axes_text(axes: dict[str, float] | None) -> str:
    if axes is None:
        return ""
    lat, ver, ax = (axes[k] * 1e3 for k in ("lateral", "vertical", "axial"))
    return f"; per camera axis (lateral, vertical, axial) {lat:.1f} / {ver:.1f} / {ax:.1f} mm"


def parse_option(text: str) -> tuple[str, Any]:
    """`NAME=VALUE` of a Localizer option (VALUE as JSON where it parses: 0.8, true, null)."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--set takes NAME=VALUE (a Localizer option), got '{text}'")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return name.strip(), value


def parse_top_ks(text: str) -> list[int]:
    try:
        ks = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(
            f"--top-k takes comma-separated integers, e.g. 1,5; got '{text}'"
        ) from None
    if not ks or min(ks) < 1:
        raise ValueError(f"--top-k needs positive integers, got '{text}'")
    return ks


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ..mapping.build_map import parse_scales

    p = subparsers.add_parser(
        "split-eval",
        help="build a split's map, localize its queries (optionally at dusk), report accuracy",
        description=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("dataset", type=Path, help="dataset folder (images/ + sparse_gt/ poses)")
    p.add_argument("--map-every", type=int, default=2, help="map = every Nth image (default 2)")
    p.add_argument(
        "--map-offset", type=int, default=0, help="map = images K, K + N, ... (default 0)"
    )
    p.add_argument("--map-prefix", default="", help="map images: names starting with this")
    p.add_argument("--query-prefix", help="queries: every name starting with this")
    p.add_argument("--dusk", type=int, metavar="SEED", help="darken the queries (seeded)")
    p.add_argument("--top-k", default="1,5", help="comma-separated top_k values (default 1,5)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a Localizer option (localization/config.py), e.g. ratio_threshold=0.9; repeatable",
    )
    p.add_argument("--superpoint-weights", type=Path, help="default: $SUPERGF_SUPERPOINT_WEIGHTS")
    p.add_argument("--resize-max", type=int, help="map images: longer side in px (default: as is)")
    p.add_argument("--max-keypoints", type=int, help="map keypoints per image (default 1024)")
    p.add_argument(
        "--map-scales", type=parse_scales, help="map images: SuperPoint scales, e.g. 1,0.5"
    )
    p.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="maps, dusk images")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..localization.config import check_conf

    conf = check_conf(dict(parse_option(s) for s in args.set))
    if args.superpoint_weights is not None:
        conf["superpoint_weights"] = str(args.superpoint_weights)
    report = evaluate_split(
        args.dataset,
        map_every=args.map_every,
        map_offset=args.map_offset,
        map_prefix=args.map_prefix,
        query_prefix=args.query_prefix,
        dusk_seed=args.dusk,
        top_ks=parse_top_ks(args.top_k),
        localizer_conf=conf,
        map_extractor_conf={
            k: v
            for k, v in (
                ("resize_max", args.resize_max),
                ("max_keypoints", args.max_keypoints),
                ("scales", args.map_scales),
            )
            if v is not None
        },
        work_dir=args.work_dir,
        progress=not args.quiet,
    )
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
