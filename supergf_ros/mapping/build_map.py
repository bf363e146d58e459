"""Build a localization map from a dataset: features, pairs, matching, triangulation, file.

`supergf-ros build-map DATASET --out MAP.h5 [--images-list FILE] [--features superpoint|sift]
[--superpoint-weights PATH] [--global NAME] [--supergf-weights PATH] [options]`
"""

from __future__ import annotations

import argparse
import json
import logging
import time
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
    return conf


@contextmanager
def _timed(timings: dict[str, float], key: str):
    t = time.perf_counter()
    yield
    timings[key] = time.perf_counter() - t


def extract_features(dataset, names, extractor, aggregator, progress: bool) -> tuple[list, list]:
    """(local features, global descriptors, [] when the aggregator must be fitted first)."""
    feats, globals_ = [], []
    for name in _progress(names, progress, desc="features", unit="img"):
        f = extractor.extract(dataset.read_image(name))
        if not aggregator.needs_fit:
            globals_.append(np.asarray(aggregator(f), dtype=np.float32))
            f.dense = None  # free memory; only sparse features go into the map
        feats.append(f)
    return feats, globals_


def global_descriptors(aggregator, feats: list, globals_: list) -> np.ndarray:
    """(N, E) global descriptors, fitting the aggregator on `feats` where it needs it."""
    if aggregator.needs_fit:
        aggregator.fit(feats)
        globals_ = [np.asarray(g, dtype=np.float32) for g in aggregator.batch(feats)]
        for f in feats:
            f.dense = None
    return np.stack(globals_).astype(np.float32)


def match_pairs(poses, feats: list, global_desc: np.ndarray, conf: dict, progress: bool):
    """(pairs, {pair: matches}): pose and retrieval neighbours, mutual-NN matched."""
    from ..matching import match_mutual_nn
    from .pairs import select_pairs

    pairs = select_pairs(
        poses,
        global_desc,
        num_pose_neighbors=conf["num_pose_neighbors"],
        max_angle_deg=conf["max_pair_angle_deg"],
        num_retrieval_neighbors=conf["num_retrieval_neighbors"],
    )
    pair_matches = {}
    for i, j in _progress(pairs, progress, desc="matching", unit="pair"):
        m, _ = match_mutual_nn(
            feats[i].descriptors, feats[j].descriptors, ratio_threshold=conf["ratio_threshold"]
        )
        pair_matches[(i, j)] = m
    return pairs, pair_matches


def reconstruct(dataset, names, feats, poses, pair_matches, conf: dict):
    """(kept image indices, cameras, cam_from_world, triangulation result): 3D points from the
    dataset's poses, or incremental SfM where it has none (unregistered images left out)."""
    from .triangulation import incremental_sfm, triangulate_known_poses

    keypoints = [f.keypoints for f in feats]
    if not dataset.has_model:
        tri = incremental_sfm(None, names, [f.image_size for f in feats], keypoints, pair_matches)
        keep = [i for i, p in enumerate(tri["cam_from_world"]) if p is not None]
        if len(keep) < len(names):
            logger.warning("SfM registered %d of %d images", len(keep), len(names))
        return keep, tri["cameras"], tri["cam_from_world"], tri
    cameras = []
    for name, f in zip(names, feats):
        cam = dataset.camera(name)
        w, h = f.image_size
        if (cam.width, cam.height) != (w, h):  # images stored at another resolution
            cam = cam.scaled(w / cam.width, h / cam.height)
        cameras.append(cam)
    tri = triangulate_known_poses(
        cameras, poses, names, keypoints, pair_matches, conf["triangulation"]
    )
    return list(range(len(names))), cameras, poses, tri


def map_data(names, keep, cameras, poses, feats, tri, global_desc, extractor, aggregator):
    """The MapData of the kept keyframes (build_conf and summary: `write_map_file`), with each
    point's triangulation angle and position covariance (`point_quality`)."""
    from .map_format import MapData, strip_runtime_options
    from .point_quality import point_quality

    point3D_ids = tri["point3D_ids"]
    angles, covariances = point_quality(
        tri["points3D"], [point3D_ids[i] for i in keep], [cameras[i] for i in keep],
        [poses[i] for i in keep],
    )  # fmt: skip
    counts = [len(feats[i]) for i in keep]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return MapData(
        keyframe_names=[names[i] for i in keep],
        cameras=[cameras[i] for i in keep],
        cam_from_world=[poses[i] for i in keep],
        keypoint_offsets=offsets,
        keypoints=np.concatenate([feats[i].keypoints for i in keep]).astype(np.float32),
        scores=np.concatenate([feats[i].scores for i in keep]).astype(np.float32),
        descriptors=np.concatenate([feats[i].descriptors for i in keep]).astype(np.float32),
        point3D_ids=np.concatenate([point3D_ids[i] for i in keep]),
        points3D=tri["points3D"],
        track_lengths=tri["track_lengths"],
        point_errors=tri["errors"],
        point_tri_angles=angles,
        point_covariances=covariances,
        global_descriptors=global_desc[keep],
        extractor=strip_runtime_options(extractor.identity()),
        aggregator=strip_runtime_options(aggregator.identity()),
        aggregator_state={k: np.asarray(v) for k, v in aggregator.state().items()},
    )


def write_map_file(out_path: Path, data, build_conf: dict, num_pairs: int) -> tuple[dict, int]:
    """Write `data` with its build options and summary; (summary, file size in bytes)."""
    from .map_format import write_map

    data.build_conf = build_conf
    num_points = len(data.points3D)
    summary = {
        "num_keyframes": data.num_keyframes,
        "num_points3D": num_points,
        "mean_track_length": float(data.track_lengths.mean()) if num_points else 0.0,
        "mean_reproj_error_px": float(data.point_errors.mean()) if num_points else 0.0,
        **_quality_summary(data),
        "num_pairs": num_pairs,
        "mean_keypoints_per_keyframe": float(np.mean(np.diff(data.keypoint_offsets))),
        "global": build_conf["global"],
        "features": build_conf["features"],
    }
    data.summary = dict(summary)
    store = {k: build_conf[k] for k in ("global_dim", "keep_full_global", "index", "index_params")}
    size = write_map(
        out_path,
        data,
        descriptor_dtype=build_conf["descriptor_dtype"],
        format_version=build_conf["format_version"],
        store=store,
    )
    return summary, size


def _quality_summary(data) -> dict[str, float]:
    """Median triangulation angle and depth sigma (1 px) of the map's points, when stored."""
    from .point_quality import depth_sigma

    if data.point_covariances is None or not len(data.points3D):
        return {}
    return {
        "median_tri_angle_deg": float(np.median(data.point_tri_angles)),
        "median_depth_sigma_m": float(np.median(depth_sigma(data.point_covariances))),
    }


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
) -> dict:
    """Build a map file from `dataset_dir` (images/ + COLMAP model with poses, or images only).

    Features -> pairs -> mutual-NN matching -> triangulation from the known poses (or incremental
    SfM without a model) -> map file. `backend` / `device` run SuperPoint and SuperGF (see
    `apply_backend`); they are not part of the map's identity. Returns the summary of
    `write_map_file` plus file_size_bytes, bytes_per_keyframe and timings_s.
    """
    from ..datasets import Dataset
    from ..features import create_extractor
    from ..models.aggregators import create_aggregator

    conf = merge_build_conf(conf)
    out_path = Path(out_path)
    if out_path.suffix.lower() not in (".h5", ".hdf5"):
        raise ValueError(f"map path should end with .h5 or .hdf5, got {out_path}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    dataset = Dataset(dataset_dir)
    names = dataset.check_names(
        image_names if image_names is not None else dataset.names, need_pose=dataset.has_model
    )
    global_name = global_name or default_global_name(features)
    extractor_conf, global_conf = dict(extractor_conf or {}), dict(global_conf or {})
    choice = apply_backend(features, global_name, extractor_conf, global_conf, backend, device)
    if choice is not None:
        logger.info(
            "map builder inference: %s on %s (%s)", choice.backend, choice.device, choice.reason
        )
    extractor = create_extractor(features, **extractor_conf)
    aggregator = create_aggregator(global_name, **{"features": features, **global_conf})

    with _timed(timings, "features"):
        feats, globals_ = extract_features(dataset, names, extractor, aggregator, progress)
    with _timed(timings, "global"):
        global_desc = global_descriptors(aggregator, feats, globals_)
    with _timed(timings, "matching"):
        poses = [dataset.cam_from_world(n) for n in names] if dataset.has_model else None
        pairs, pair_matches = match_pairs(poses, feats, global_desc, conf, progress)
    with _timed(timings, "triangulation"):
        keep, cameras, poses, tri = reconstruct(dataset, names, feats, poses, pair_matches, conf)
    with _timed(timings, "write"):
        data = map_data(names, keep, cameras, poses, feats, tri, global_desc, extractor, aggregator)
        source = "triangulation" if dataset.has_model else "incremental_sfm"
        build_conf = {**conf, "features": features, "global": global_name, "source": source}
        summary, size = write_map_file(out_path, data, build_conf, len(pairs))
    timings["total"] = time.perf_counter() - t0
    summary.update(
        file_size_bytes=int(size),
        bytes_per_keyframe=float(size / data.num_keyframes),
        timings_s={k: round(v, 3) for k, v in timings.items()},
    )
    if summary["num_points3D"] == 0:
        logger.warning("map %s has no 3D points: queries cannot be localized against it", out_path)
    return summary


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
    add_backend_arguments(p)
    p.add_argument("--num-neighbors", type=int, help="pose-based pairs per keyframe (default 10)")
    p.add_argument("--ratio-threshold", type=float, help="Lowe ratio test for map matching")
    add_store_arguments(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


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


def extractor_conf_from_args(args: argparse.Namespace) -> dict:
    conf: dict[str, Any] = {}
    if args.features == "superpoint":
        if args.superpoint_weights is not None:
            conf["weights"] = str(args.superpoint_weights)
        if args.resize_max is not None:
            conf["resize_max"] = args.resize_max
    elif args.resize_max is not None:
        raise ValueError("--resize-max applies to --features superpoint only")
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
    )
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary, args.out))
    return 0
