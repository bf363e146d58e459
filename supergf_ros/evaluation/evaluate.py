"""`supergf-ros evaluate RESULTS.txt DATASET [--queries FILE] [--log LOG.json] [--json]`: pose
accuracy.

Compares a results file (``name qw qx qy qz tx ty tz``, cam_from_world) with DATASET's poses;
queries missing from the results count as failures. With the localize log, whose fixes carry
their published covariance (`map_covariance`), also how well it covers the real error (NEES).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def evaluate_results(
    results_path: str | Path,
    dataset_dir: str | Path,
    query_names: list[str] | str | Path | None = None,
    log_path: str | Path | None = None,
) -> dict:
    """Pose metrics of a results file against a dataset's model (see `metrics.pose_metrics`).

    Queries default to every name in the results file; `query_names` is a list or the path of a
    query list. Extra keys: "errors" ({name: [position m, rotation deg] or None}) and, with
    `log_path` (the localize command's LOG.json), "covariance" (`metrics.covariance_consistency`
    of its successful fixes of these queries that have a covariance).

    Raises ValueError (naming the file and line) for a duplicate name or a name without a
    ground-truth pose in the dataset, in the results or the query list, and for binary input.
    """
    from ..datasets import Dataset, read_image_list, read_results
    from .metrics import pose_errors, pose_metrics

    dataset = Dataset(dataset_dir)
    if not dataset.poses:
        raise ValueError(f"dataset {dataset_dir} has no poses to evaluate against")
    known_in = f"dataset {dataset.root} (no ground-truth pose in {dataset.model_dir})"
    estimates = read_results(results_path, dataset.poses, known_in)
    if isinstance(query_names, (str, Path)):
        query_names = read_image_list(query_names, dataset.poses, known_in)
    names = list(query_names) if query_names is not None else list(estimates)
    if not names:
        raise ValueError(f"no queries: {results_path} is empty and no --queries list was given")
    missing_gt = [n for n in names if n not in dataset.poses]
    if missing_gt:
        raise ValueError(
            f"{len(missing_gt)} quer(ies) have no ground-truth pose in {dataset.model_dir}: "
            f"{missing_gt[:5]}"
        )
    errors = pose_errors(estimates, dataset.poses, names)
    metrics = pose_metrics(errors)
    metrics["errors"] = {n: (None if e is None else [e[0], e[1]]) for n, e in errors.items()}
    if log_path is not None:
        from .metrics import covariance_consistency

        fixes = read_log_fixes(log_path)
        fixes = {n: fixes[n] for n in names if n in fixes}
        metrics["covariance"] = covariance_consistency(fixes, dataset.poses)
    return metrics


def read_log_fixes(log_path: str | Path) -> dict:
    """{name: (cam_from_world, map_covariance)} of the successful fixes in a localize log that
    carry a covariance; ValueError naming the file for anything that is not such a log."""
    import numpy as np

    from ..geometry import Pose

    try:
        entries = json.loads(Path(log_path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read the localize log {log_path}: {err}") from None
    if not isinstance(entries, list):
        raise ValueError(f"{log_path} is not a localize log (a JSON list of per-query objects)")
    fixes = {}
    for i, entry in enumerate(entries):
        try:
            if not entry["success"] or entry.get("map_covariance") is None:
                continue
            pose = entry["cam_from_world"]
            cov = np.asarray(entry["map_covariance"], np.float64)
            if cov.shape != (6, 6) or not np.isfinite(cov).all():
                raise ValueError(f"map_covariance of shape {cov.shape} (6x6 finite expected)")
            fixes[str(entry["name"])] = (Pose(pose["qvec"], pose["tvec"]), cov)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{log_path}: entry {i} is not a localize log entry: {err}") from None
    return fixes


def format_metrics(metrics: dict) -> str:
    lines = [f"queries: {metrics['num_queries']}, localized: {metrics['num_localized']}"]
    for key, value in metrics["recall"].items():
        lines.append(f"recall @ {key.replace('m_', ' m, ').replace('deg', ' deg')}: {value:.4f}")
    if metrics["median_translation_m"] is None:
        lines.append("median errors: n/a (nothing localized)")
    else:
        lines.append(
            f"median translation error: {metrics['median_translation_m']:.4f} m, "
            f"median rotation error: {metrics['median_rotation_deg']:.4f} deg"
        )
    cov = metrics.get("covariance")
    if cov is not None and cov["num_fixes"]:
        lines.append(
            f"published covariance: {cov['num_fixes']} fixes, NEES median "
            f"{cov['nees_median']:.2f} (6 is ideal), {cov['fraction_inside_99']:.1%} inside the "
            "99% ellipsoid"
        )
    return "\n".join(lines)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "evaluate",
        help="pose accuracy of a results file against a dataset's poses",
        description="Recall at (0.25 m, 2 deg), (0.5 m, 5 deg), (5 m, 10 deg) and median errors.",
    )
    p.add_argument("results", type=Path, help="RESULTS.txt (name qw qx qy qz tx ty tz)")
    p.add_argument("dataset", type=Path, help="dataset folder with poses in sparse_gt/")
    p.add_argument(
        "--queries", type=Path, help="query names (missing from RESULTS count as failures)"
    )
    p.add_argument(
        "--log",
        type=Path,
        help="the localize command's LOG.json: also NEES of the published covariances",
    )
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.add_argument("--per-query", action="store_true", help="with --json: include per-query errors")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    metrics = evaluate_results(args.results, args.dataset, args.queries, args.log)
    if args.json:
        if not args.per_query:
            metrics.pop("errors")
        print(json.dumps(metrics, indent=2))
    else:
        print(format_metrics(metrics))
    return 0
