"""Build a localization map from a dataset: features, pairs, matching, triangulation, file.

`supergf-ros build-map DATASET --out MAP.h5 [--images-list FILE] [--features superpoint|sift]
[--superpoint-weights PATH] [--global NAME] [--supergf-weights PATH] [options]`
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

default_build_conf: dict[str, Any] = {
    "num_pose_neighbors": 10,  # pose-based pairs: nearest cameras by centre distance ...
    "max_pair_angle_deg": 60.0,  # ... whose viewing directions differ by at most this
    "num_retrieval_neighbors": 5,  # retrieval-based pairs (global descriptors)
    "ratio_threshold": None,  # Lowe ratio test for map matching (None: mutual NN only)
    "descriptor_dtype": "float16",  # storage of local descriptors (format version 2)
    "format_version": 3,  # 3: compact, read lazily (map_store); 2: every keypoint
    # format 3: projected global descriptor size, full one kept too, the saved retrieval index
    # (auto: exact up to 100,000 keyframes, else HNSW with efSearch measured for recall@5 >=
    # 0.99; hnsw | ivf: efSearch / nprobe measured the same way unless given) and its params
    "global_dim": 256,
    "keep_full_global": False,
    "index": "auto",
    "index_params": {},  # hnsw_m, ef_search, nlist, nprobe, target_recall
    "triangulation": {},  # overrides of triangulation.default_triangulation_conf
    # posed maps with more images are triangulated by spatial submaps of at most this many
    # (`submaps`): pycolmap's memory then stays that of one submap
    "submap_images": 256,
}


def default_global_name(features: str) -> str:
    """The best available global descriptor for `features` (SuperGF when weights are shipped)."""
    try:
        from ..models.aggregators import available_global_descriptors

        names = available_global_descriptors(features)
    except ImportError:
        names = []
    return names[0] if names else "vlad"


def apply_backend(
    features: str,
    global_name: str,
    extractor_conf: dict,
    global_conf: dict,
    backend: str = "auto",
    device: str = "auto",
):
    """Resolve `backend`/`device` once and set them (in place) in the confs of the networks.

    SuperPoint (`features == "superpoint"`) and SuperGF (`global_name` "supergf-*") get the
    chosen backend unless their conf already names one (then that backend and its device win).
    Returns the `BackendChoice`, or None when neither runs a network (e.g. SIFT + VLAD).
    """
    targets = []
    if features == "superpoint":
        targets.append(extractor_conf)
    if global_name.startswith("supergf"):
        targets.append(global_conf)
    if not targets:
        return None
    from ..inference.backends import select_backend

    choice = select_backend(backend, device)
    for conf in targets:
        if "backend" not in conf:
            conf["backend"] = choice  # resolved once: the networks do not select again
            conf.setdefault("device", choice.device)
    return choice


def _progress(iterable, progress: bool, **kw):
    if not progress:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, **kw)


def merge_build_conf(conf: dict | None) -> dict:
    """`default_build_conf` updated with `conf`; unknown keys raise ValueError."""
    conf = {**default_build_conf, **(conf or {})}
    unknown = set(conf) - set(default_build_conf)
    if unknown:
        raise ValueError(
            f"unknown build option(s): {sorted(unknown)}; valid: {sorted(default_build_conf)}"
        )
    if not isinstance(conf["submap_images"], int) or conf["submap_images"] < 2:
        raise ValueError(f"submap_images must be an integer >= 2, got {conf['submap_images']!r}")
    return conf


@contextmanager
def _timed(timings: dict[str, float], key: str, peaks: dict[str, float] | None = None):
    """Time the step `key`; with `peaks`, also the process's peak RSS (MB) at its end."""
    t = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t
    if peaks is not None:
        import resource

        peaks[key] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def map_summary(keep, tri, num_pairs: int, num_keypoints: list[int], build_conf: dict) -> dict:
    """The summary stored in the map (and returned, with sizes and timings, by `build_map`)."""
    errors, tracks = tri["errors"], tri["track_lengths"]
    num_points = len(tri["points3D"])
    return {
        "num_keyframes": len(keep),
        "num_points3D": num_points,
        "mean_track_length": float(tracks.mean()) if num_points else 0.0,
        "mean_reproj_error_px": float(errors.mean()) if num_points else 0.0,
        "num_pairs": num_pairs,
        "mean_keypoints_per_keyframe": float(np.mean(np.asarray(num_keypoints, np.int64))),
        "global": build_conf["global"],
        "features": build_conf["features"],
    }


def write_step(out_path: Path, job, ff, rows, reconstruction, build_conf: dict, summary: dict):
    """Write the map, with each point's triangulation angle and position covariance
    (`point_quality`, their medians added to `summary`): version 3 keyframe by keyframe from the
    work files; version 2 (every keypoint) through an in-memory `MapData`. The size in bytes."""
    from .map_format import strip_runtime_options
    from .map_store import MapWriter, write_v3_streamed
    from .point_quality import keyframes_point_quality, quality_summary
    from .streaming import StoredKeyframes

    keep, cameras, poses, tri = reconstruction
    source = StoredKeyframes(job, ff, rows, keep, cameras, poses, tri["point3D_ids"])
    quality = keyframes_point_quality(source, tri["points3D"])
    summary.update(quality_summary(*quality))
    identities = {
        "extractor": strip_runtime_options(job.extractor.identity()),
        "aggregator": strip_runtime_options(job.aggregator.identity()),
        "aggregator_state": {k: np.asarray(v) for k, v in job.aggregator.state().items()},
        "build_conf": build_conf,
        "summary": summary,
    }
    if build_conf["format_version"] != 3:
        return _write_v2(out_path, source, tri, quality, identities, build_conf)
    store = {k: build_conf[k] for k in ("global_dim", "keep_full_global", "index", "index_params")}
    writer = MapWriter(
        out_path, descriptor_dim=job.extractor.descriptor_dim, store=store, **identities
    )
    return write_v3_streamed(
        writer, source, tri["points3D"], tri["track_lengths"], tri["errors"], quality
    )


def _write_v2(out_path: Path, source, tri, quality, identities: dict, build_conf: dict) -> int:
    from .map_format import MapData, write_map

    k = source.num_keyframes
    frames = [source.keyframe(i) for i in range(k)]
    counts = [len(f[3]) for f in frames]
    data = MapData(
        keyframe_names=[f[0] for f in frames],
        cameras=[f[1] for f in frames],
        cam_from_world=[f[2] for f in frames],
        keypoint_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        keypoints=np.concatenate([f[3] for f in frames]).astype(np.float32),
        scores=np.concatenate([f[4] for f in frames]).astype(np.float32),
        descriptors=np.concatenate([source.descriptors(i, None) for i in range(k)]),
        point3D_ids=np.concatenate([source.point3D_ids(i) for i in range(k)]),
        points3D=tri["points3D"],
        track_lengths=tri["track_lengths"],
        point_errors=tri["errors"],
        point_tri_angles=quality[0],
        point_covariances=quality[1],
        global_descriptors=np.stack([f[5] for f in frames]).astype(np.float32),
        **identities,
    )
    return write_map(
        out_path, data, descriptor_dtype=build_conf["descriptor_dtype"], format_version=2
    )


def _networks(features, extractor_conf, global_name, global_conf, backend, device) -> dict:
    """The build's extractor and aggregator (the backend chosen once) and the tasks' spec."""
    from ..features import create_extractor
    from ..models.aggregators import create_aggregator
    from .distributed import network_key

    extractor_conf, global_conf = dict(extractor_conf or {}), dict(global_conf or {})
    choice = apply_backend(features, global_name, extractor_conf, global_conf, backend, device)
    if choice is not None:
        logger.info(
            "map builder inference: %s on %s (%s)", choice.backend, choice.device, choice.reason
        )
    extractor = create_extractor(features, **extractor_conf)
    aggregator = create_aggregator(global_name, **{"features": features, **global_conf})
    key = network_key(features, extractor_conf, global_name, global_conf)
    spec = {"features": features, "extractor_conf": extractor_conf, "global_name": global_name,
            "global_conf": global_conf}  # fmt: skip
    return {"extractor": extractor, "aggregator": aggregator, "spec": spec, "key": key}


def default_work_dir(out_path: Path) -> Path:
    """Where a build keeps its work files unless told (removed once the map is written)."""
    return out_path.with_name(f".{out_path.name}.build")


def build_map(
    dataset_dir: str | Path,
    out_path: str | Path,
    *,
    image_names: list[str] | None = None,
    features: str = "superpoint",
    extractor_conf: dict | None = None,
    global_name: str | None = None,
    global_conf: dict | None = None,
    conf: dict | None = None,
    backend: str = "auto",
    device: str = "auto",
    progress: bool = True,
    work_dir: str | Path | None = None,
    ray_address: str | None = None,
    on_image: Callable[[int, str], None] | None = None,
) -> dict:
    """Build a map file from `dataset_dir` (images/ + COLMAP model with poses, or images only).

    Features -> pairs -> mutual-NN matching -> triangulation from the known poses (or incremental
    SfM without a model) -> map file, streamed through work files in `work_dir` (default: a
    hidden folder beside `out_path`, removed once the map is written; a given one is kept). A
    build run again after an interruption skips the images already extracted (and the pairs
    already matched). `ray_address` (auto, local, HOST:PORT) runs extraction and matching on
    Ray; the map is the same. `on_image(index, name)`: called after each image is extracted.
    `backend` / `device` run SuperPoint and SuperGF (`apply_backend`); not part of the map's
    identity. Returns the summary stored in the map plus file_size_bytes, bytes_per_keyframe,
    timings_s, peak_rss_mb (the process's peak
    RSS at the end of each step), work_dir and executor.
    """
    from ..datasets import Dataset
    from .distributed import create_executor, networks_registered
    from .streaming import BuildJob

    conf = merge_build_conf(conf)
    out_path = Path(out_path)
    if out_path.suffix.lower() not in (".h5", ".hdf5"):
        raise ValueError(f"map path should end with .h5 or .hdf5, got {out_path}")
    dataset = Dataset(dataset_dir)
    names = dataset.check_names(
        image_names if image_names is not None else dataset.names, need_pose=dataset.has_model
    )
    global_name = global_name or default_global_name(features)
    nets = _networks(features, extractor_conf, global_name, global_conf, backend, device)
    executor = create_executor(ray_address)
    keep_work = work_dir is not None
    work = Path(work_dir) if keep_work else default_work_dir(out_path)
    work.mkdir(parents=True, exist_ok=True)
    spec = {"dataset_dir": str(Path(dataset_dir).resolve()), **nets["spec"]}
    job = BuildJob(dataset, names, work, spec, nets["extractor"], nets["aggregator"], executor,
                   progress)  # fmt: skip
    source = "triangulation" if dataset.has_model else "incremental_sfm"
    build_conf = {**conf, "features": features, "global": global_name, "source": source}
    with networks_registered(nets["key"], job.extractor, job.aggregator):
        summary, timings = _run_steps(job, out_path, build_conf, on_image)
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    size = out_path.stat().st_size
    summary = dict(summary)
    summary.update(
        file_size_bytes=int(size),
        bytes_per_keyframe=float(size / summary["num_keyframes"]),
        timings_s={k: round(v, 3) for k, v in timings.items() if k != "peak_rss_mb"},
        peak_rss_mb={k: round(v, 1) for k, v in timings["peak_rss_mb"].items()},
        work_dir=str(work) if keep_work else None,
        executor=executor.name,
    )
    if summary["num_points3D"] == 0:
        logger.warning("map %s has no 3D points: queries cannot be localized against it", out_path)
    return summary


def _run_steps(job, out_path: Path, build_conf: dict, on_image) -> tuple[dict, dict]:
    """The build's steps on `job` (see `streaming`); (summary, timings in s)."""
    from .feature_store import FeatureFile
    from .pairs import select_pairs
    from .streaming import (
        bound_heap_growth,
        extract_step,
        globals_step,
        match_step,
        triangulate_step,
    )

    bound_heap_growth()
    timings: dict[str, float] = {}
    peaks: dict[str, float] = {}
    t0 = time.perf_counter()
    with _timed(timings, "features", peaks):
        extract_step(job, on_image)
    ff = FeatureFile(job.feature_path, job.identity, mode="r")
    try:
        with _timed(timings, "global", peaks):
            rows = globals_step(job, ff)
        with _timed(timings, "matching", peaks):
            has_model = job.dataset.has_model
            poses = [job.dataset.cam_from_world(n) for n in job.names] if has_model else None
            pairs = select_pairs(
                poses, None, build_conf["num_pose_neighbors"], build_conf["max_pair_angle_deg"],
                build_conf["num_retrieval_neighbors"], read_rows=rows.read_rows,
                num_images=len(job.names),
            )  # fmt: skip
            shas = [ff.image_sha256(n) for n in job.names]
            ff.close()  # the matching tasks open it themselves
            mf = match_step(job, shas, pairs, build_conf["ratio_threshold"])
            ff = FeatureFile(job.feature_path, job.identity, mode="r")
        with _timed(timings, "triangulation", peaks):
            reconstruction = triangulate_step(job, ff, poses, mf, build_conf)
            mf.close()
        with _timed(timings, "write", peaks):
            keep, tri = reconstruction[0], reconstruction[3]
            counts = [ff.num_keypoints(job.names[i]) for i in keep]
            summary = map_summary(keep, tri, len(pairs), counts, build_conf)
            write_step(out_path, job, ff, rows, reconstruction, build_conf, summary)
            rows.close()
    finally:
        ff.close()
    timings["total"] = time.perf_counter() - t0
    return summary, {**timings, "peak_rss_mb": peaks}


def format_summary(summary: dict, out_path: Path) -> str:
    return (
        f"map {out_path}: {summary['num_keyframes']} keyframes, {summary['num_points3D']} 3D points, "
        f"mean track length {summary['mean_track_length']:.2f}, mean reprojection error "
        f"{summary['mean_reproj_error_px']:.2f} px, {summary['num_pairs']} pairs, global "
        f"'{summary['global']}', {summary['file_size_bytes'] / 1e6:.2f} MB "
        f"({summary['bytes_per_keyframe'] / 1e3:.1f} kB per keyframe), "
        f"{summary['timings_s']['total']:.1f} s"
    )


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "build-map",
        help="build a localization map (HDF5) from a dataset",
        description="Build a map from DATASET (images/ + COLMAP model with poses in sparse_gt/; "
        "without a model, incremental SfM recovers the poses).",
    )
    p.add_argument("dataset", type=Path, help="dataset folder (images/ + sparse_gt/)")
    p.add_argument("--out", type=Path, required=True, help="output map file (.h5)")
    p.add_argument("--images-list", type=Path, help="file with keyframe image names, one a line")
    p.add_argument("--features", default="superpoint", choices=["superpoint", "sift"])
    p.add_argument(
        "--superpoint-weights",
        type=Path,
        help="superpoint_v1.pth (default: $SUPERGF_SUPERPOINT_WEIGHTS)",
    )
    p.add_argument(
        "--global",
        dest="global_name",
        help="global descriptor: supergf-sparse, supergf-dense, vlad, gem (default: best available)",
    )
    p.add_argument("--supergf-weights", type=Path, help="SuperGF checkpoint (default: shipped)")
    p.add_argument("--max-keypoints", type=int, help="local features per image")
    p.add_argument(
        "--resize-max", type=int, help="resize images so the longer edge is at most this"
    )
    p.add_argument(
        "--scales",
        type=parse_scales,
        help="SuperPoint image scales per keyframe, e.g. 1,0.5: keyframes far apart (a sparse "
        "map) then share near structure seen at twice the size (default 1)",
    )
    add_backend_arguments(p)
    p.add_argument("--num-neighbors", type=int, help="pose-based pairs per keyframe (default 10)")
    p.add_argument("--ratio-threshold", type=float, help="Lowe ratio test for map matching")
    add_store_arguments(p)
    add_streaming_arguments(p)
    p.add_argument(
        "--submap-images",
        type=int,
        help="triangulate posed maps by spatial submaps of at most this many images "
        "(default 256; memory stays that of one submap)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def add_streaming_arguments(p: argparse.ArgumentParser) -> None:
    """Where the build keeps its work files, and where its tasks run."""
    p.add_argument(
        "--work-dir",
        type=Path,
        help="folder of the work files (features.h5, matches.h5, ...), kept for a restart to "
        "resume (default: a hidden folder beside --out, removed once the map is written)",
    )
    p.add_argument(
        "--ray-address",
        help="run extraction and matching on Ray: auto (the running cluster), HOST:PORT, or "
        "local (a new local instance); the map is the same as without (needs `pip install ray`)",
    )


def add_store_arguments(p: argparse.ArgumentParser) -> None:
    """How the map is stored: format version, global descriptor size, retrieval index."""
    g = p.add_argument_group("map storage (format 3)")
    g.add_argument("--format-version", type=int, choices=(2, 3), help="map format (default 3)")
    g.add_argument("--global-dim", type=int, help="projected global descriptor size (default 256)")
    g.add_argument(
        "--keep-full-global", action="store_true", help="also store the full global descriptors"
    )
    g.add_argument(
        "--index",
        choices=("auto", "flat", "hnsw", "ivf"),
        help="saved retrieval index (default auto: exact up to 100,000 keyframes, else HNSW "
        "tuned to recall@5 >= 0.99)",
    )
    g.add_argument("--hnsw-m", type=int, help="HNSW graph degree (default 32)")
    g.add_argument("--ef-search", type=int, help="HNSW efSearch (default: measured for recall)")
    g.add_argument("--nlist", type=int, help="IVF lists (default 4 sqrt(keyframes))")
    g.add_argument("--nprobe", type=int, help="IVF lists searched (default: measured for recall)")


def store_conf_from_args(args: argparse.Namespace) -> dict[str, Any]:
    conf: dict[str, Any] = {}
    for key in ("format_version", "global_dim", "index"):
        if getattr(args, key, None) is not None:
            conf[key] = getattr(args, key)
    if getattr(args, "keep_full_global", False):
        conf["keep_full_global"] = True
    params = {k: getattr(args, k) for k in ("hnsw_m", "ef_search", "nlist", "nprobe")}
    params = {k: v for k, v in params.items() if v is not None}
    if params:
        conf["index_params"] = params
    return conf


def add_backend_arguments(p: argparse.ArgumentParser, device: bool = True) -> None:
    """`--backend` (and `--device`) for the networks (SuperPoint, SuperGF), shared by the CLIs."""
    from ..inference.backends import AUTO_BACKEND_ORDER, BACKEND_OPTIONS, DEVICE_OPTIONS

    p.add_argument(
        "--backend",
        default="auto",
        choices=BACKEND_OPTIONS,
        help=f"inference backend for SuperPoint and SuperGF (default auto: {AUTO_BACKEND_ORDER}, "
        "the first available)",
    )
    if device:
        p.add_argument(
            "--device",
            default="auto",
            choices=DEVICE_OPTIONS,
            help="compute device for the networks (default auto)",
        )


def parse_scales(text: str) -> list[float]:
    """'1,0.5' -> [1.0, 0.5] (argparse type; SuperPoint's `check_scales` rules)."""
    from ..features.superpoint import check_scales

    try:
        return check_scales(text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def extractor_conf_from_args(args: argparse.Namespace) -> dict:
    conf: dict[str, Any] = {}
    if args.features == "superpoint":
        if args.superpoint_weights is not None:
            conf["weights"] = str(args.superpoint_weights)
        if args.resize_max is not None:
            conf["resize_max"] = args.resize_max
        if getattr(args, "scales", None) is not None:
            conf["scales"] = args.scales
    elif args.resize_max is not None or getattr(args, "scales", None) is not None:
        raise ValueError("--resize-max and --scales apply to --features superpoint only")
    if args.max_keypoints is not None:
        conf["max_keypoints"] = args.max_keypoints
    return conf


def run(args: argparse.Namespace) -> int:
    from ..datasets import read_image_list

    names = read_image_list(args.images_list) if args.images_list else None
    global_conf = {}
    if args.supergf_weights is not None:
        global_conf["weights"] = str(args.supergf_weights)
    conf: dict[str, Any] = store_conf_from_args(args)
    if args.num_neighbors is not None:
        conf["num_pose_neighbors"] = args.num_neighbors
    if args.ratio_threshold is not None:
        conf["ratio_threshold"] = args.ratio_threshold
    if args.submap_images is not None:
        conf["submap_images"] = args.submap_images
    summary = build_map(
        args.dataset,
        args.out,
        image_names=names,
        features=args.features,
        extractor_conf=extractor_conf_from_args(args),
        global_name=args.global_name,
        global_conf=global_conf,
        conf=conf,
        backend=args.backend,
        device=args.device,
        progress=not args.quiet,
        work_dir=args.work_dir,
        ray_address=args.ray_address,
    )
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary, args.out))
    return 0
