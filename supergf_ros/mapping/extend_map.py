"""Add a new recording to a map without rebuilding it.

`supergf-ros extend-map MAP DATASET --images-list NEW.txt --out MAP2.h5 [--superpoint-weights
PATH] [--supergf-weights PATH] [--work-dir DIR] [--ray-address ADDR]`

The new images are keyframes at their poses in DATASET's model. Their features come from the
networks the map was built with (checked against its identity; VLAD keeps the map's codebook);
pairs join each new image to its pose and retrieval neighbours among all keyframes, old and
new; pycolmap triangulates from the new matches with the map's points kept: new observations
extend old tracks, new points are triangulated. MAP is only read; MAP2 is written atomically.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


def _network_confs(old, superpoint_weights, supergf_weights) -> tuple[dict, dict]:
    """The extractor and aggregator confs of the map's identity (weights given here)."""
    from .map_format import RUNTIME_OPTIONS

    ext = {k: v for k, v in old.extractor["config"].items() if k not in RUNTIME_OPTIONS}
    if old.extractor["name"] == "superpoint" and superpoint_weights is not None:
        ext["weights"] = str(superpoint_weights)
    agg = {
        k: v
        for k, v in old.aggregator["config"].items()
        if k != "model" and k not in RUNTIME_OPTIONS
    }
    if str(old.aggregator["name"]).startswith("supergf") and supergf_weights is not None:
        agg["weights"] = str(supergf_weights)
    return ext, agg


def _check_identity(nets: dict, old) -> None:
    from .map_format import strip_runtime_options

    for what, net, ident in (("local features", nets["extractor"], old.extractor),
                             ("global descriptor", nets["aggregator"], old.aggregator)):  # fmt: skip
        if strip_runtime_options(net.identity()) != ident:
            raise ValueError(
                f"the {what} '{ident['name']}' of the map differ from the networks loaded here "
                "(other weights or options): pass the weights the map was built with"
            )


def _job(old, dataset_dir, names, work: Path, weights: tuple, backend: str, device: str,
         progress: bool, ray_address):  # fmt: skip
    """The BuildJob of the new images, with the map's networks, and the networks' task key."""
    from ..datasets import Dataset
    from .build_map import _networks
    from .distributed import create_executor
    from .streaming import BuildJob

    dataset = Dataset(dataset_dir)
    if not dataset.has_model:
        raise ValueError(
            f"extend-map places the new keyframes at their poses: dataset {dataset_dir} needs a "
            "COLMAP model (sparse_gt/) with them"
        )
    names = dataset.check_names(names, need_pose=True)
    again = sorted(set(names) & set(old.keyframe_names))
    if again:
        raise ValueError(f"{len(again)} image(s) already keyframes of the map: {again[:5]}")
    features, global_name = old.build_conf["features"], old.build_conf["global"]
    ext, agg = _network_confs(old, *weights)
    nets = _networks(features, ext, global_name, agg, backend, device)
    if old.aggregator_state:
        nets["aggregator"].load_state(dict(old.aggregator_state))
    _check_identity(nets, old)
    work.mkdir(parents=True, exist_ok=True)
    spec = {"dataset_dir": str(Path(dataset_dir).resolve()), **nets["spec"]}
    job = BuildJob(dataset, names, work, spec, nets["extractor"], nets["aggregator"],
                   create_executor(ray_address), progress)  # fmt: skip
    return job, nets["key"]


class ExtendedKeyframes:
    """Old keyframes (from the map) then new ones (from the feature file), as one list."""

    def __init__(self, old, job, ff, rows) -> None:
        self.old, self.job, self.ff, self.rows = old, job, ff, rows
        self.k = old.num_keyframes
        self.names = list(old.keyframe_names) + list(job.names)
        self.poses = list(old.cam_from_world) + [job.dataset.cam_from_world(n) for n in job.names]
        self.cameras = list(old.cameras)
        for name in job.names:
            cam, (w, h) = job.dataset.camera(name), ff.image_size(name)
            if (cam.width, cam.height) != (w, h):
                cam = cam.scaled(w / cam.width, h / cam.height)
            self.cameras.append(cam)
        self.point3D_ids_: list[np.ndarray] = []

    @property
    def num_keyframes(self) -> int:
        return len(self.names)

    def _span(self, i: int) -> slice:
        return slice(int(self.old.keypoint_offsets[i]), int(self.old.keypoint_offsets[i + 1]))

    def keypoints(self, i: int) -> np.ndarray:
        return self.old.keypoints[self._span(i)] if i < self.k else self.ff.keypoints(self.names[i])

    def descriptors(self, i: int, rows=None) -> np.ndarray:
        if i >= self.k:
            return self.ff.descriptors(self.names[i], rows)
        d = np.asarray(self.old.descriptors[self._span(i)], np.float32)
        return d if rows is None else d[rows]

    def global_descriptors(self) -> np.ndarray:
        new = self.rows.read_rows(0, len(self.job.names))
        return np.concatenate([np.asarray(self.old.global_descriptors, np.float32), new])

    def point3D_ids(self, i: int) -> np.ndarray:
        return self.point3D_ids_[i]

    def keyframe(self, i: int) -> tuple:
        if i < self.k:
            scores = self.old.scores[self._span(i)]
            g = np.asarray(self.old.global_descriptors[i], np.float32)
        else:
            scores = self.ff.scores(self.names[i])
            g = self.rows.read_rows(i - self.k, i - self.k + 1)[0]
        return self.names[i], self.cameras[i], self.poses[i], self.keypoints(i), scores, g


def _match_new(frames: ExtendedKeyframes, pairs: list, work: Path, ratio) -> Any:
    """Matches of the pairs (each with a new image) into the matches file, in order."""
    from ..matching import match_mutual_nn
    from .feature_store import MatchesFile

    shas = [frames.ff.image_sha256(n) for n in frames.job.names]
    key = json.dumps([pairs, frames.names, shas, ratio, frames.job.identity], default=str)
    mf = MatchesFile(work / "matches.h5", pairs, hashlib.sha256(key.encode()).hexdigest())
    cache: dict[int, np.ndarray] = {}
    chunk: list[np.ndarray] = []
    for i, j in pairs[mf.num_done :]:
        for k in (i, j):
            if k not in cache:
                cache.pop(next(iter(cache))) if len(cache) >= 64 else None
                cache[k] = frames.descriptors(k)
        chunk.append(match_mutual_nn(cache[i], cache[j], ratio_threshold=ratio)[0])
        if len(chunk) == 256:
            mf.append(chunk)
            chunk = []
    mf.append(chunk)
    return mf


class _Reordered:
    """A matches source with image indices renumbered by `position` ({old index: new})."""

    def __init__(self, source, position: dict[int, int]) -> None:
        self.source, self.position = source, position

    def items(self):
        for (i, j), m in self.source.items():
            yield (self.position[i], self.position[j]), m


def _triangulate(frames: ExtendedKeyframes, mf, conf: dict, work: Path) -> dict:
    """Points of old and new keyframes: the map's kept, new observations continuing them.

    The new keyframes go to pycolmap first: COLMAP's triangulator continues existing tracks
    from the image it triangulates, while from an old keyframe it founds new points among the
    new observations of its keypoints (on a synthetic room, 20 + 20 images: 388 old points
    continued and 228 new ones this way, 360 and 248 with the old keyframes first)."""
    from .triangulation import triangulate_known_poses

    old, n, k = frames.old, len(frames.names), frames.k
    order = list(range(k, n)) + list(range(k))
    position = {i: r for r, i in enumerate(order)}
    old_ids = [old.point3D_ids[frames._span(i)] for i in range(k)]
    tri = triangulate_known_poses(
        [frames.cameras[i] for i in order], [frames.poses[i] for i in order],
        [frames.names[i] for i in order], [frames.keypoints(i) for i in order],
        _Reordered(mf, position), conf, work_dir=work,
        existing_points=(old.points3D, [np.full(0, -1)] * (n - k) + old_ids),
    )  # fmt: skip
    frames.point3D_ids_ = [tri["point3D_ids"][position[i]] for i in range(n)]
    return tri


def extend_map(
    map_path: str | Path,
    dataset_dir: str | Path,
    out_path: str | Path,
    *,
    image_names: list[str],
    superpoint_weights: str | Path | None = None,
    supergf_weights: str | Path | None = None,
    backend: str = "auto",
    device: str = "auto",
    progress: bool = True,
    work_dir: str | Path | None = None,
    ray_address: str | None = None,
) -> dict:
    """Write `out_path`: the map at `map_path` plus the keyframes `image_names` of
    `dataset_dir` (at its poses) and their points (see the module doc); its summary."""
    from .build_map import default_work_dir, map_summary, merge_build_conf
    from .distributed import networks_registered
    from .feature_store import FeatureFile
    from .map_format import read_map
    from .map_store import MapWriter, write_v3_streamed
    from .pairs import select_pairs
    from .point_quality import keyframes_point_quality, quality_summary
    from .streaming import extract_step, globals_step

    map_path, out_path = Path(map_path), Path(out_path)
    if out_path.resolve() == map_path.resolve():
        raise ValueError("extend-map writes a new map: --out must differ from MAP")
    if out_path.suffix.lower() not in (".h5", ".hdf5"):
        raise ValueError(f"map path should end with .h5 or .hdf5, got {out_path}")
    old = read_map(map_path)
    conf = merge_build_conf({k: v for k, v in old.build_conf.items()
                             if k not in ("features", "global", "source")})  # fmt: skip
    work = Path(work_dir) if work_dir is not None else default_work_dir(out_path)
    job, key = _job(old, dataset_dir, image_names, work, (superpoint_weights, supergf_weights),
                    backend, device, progress, ray_address)  # fmt: skip
    with networks_registered(key, job.extractor, job.aggregator):
        extract_step(job)
    ff = FeatureFile(job.feature_path, job.identity, mode="r")
    try:
        rows = globals_step(job, ff, fit=False)
        frames = ExtendedKeyframes(old, job, ff, rows)
        pairs = select_pairs(frames.poses, frames.global_descriptors(),
                             conf["num_pose_neighbors"], conf["max_pair_angle_deg"],
                             conf["num_retrieval_neighbors"])  # fmt: skip
        pairs = [(i, j) for i, j in pairs if j >= frames.k]  # old pairs are in the map already
        mf = _match_new(frames, pairs, work, conf["ratio_threshold"])
        tri = _triangulate(frames, mf, conf["triangulation"], work)
        mf.close()
        counts = [len(frames.keypoints(i)) for i in range(frames.num_keyframes)]
        build_conf = dict(old.build_conf)
        summary = map_summary(range(frames.num_keyframes), tri, len(pairs), counts, build_conf)
        quality = keyframes_point_quality(frames, tri["points3D"])
        summary.update(quality_summary(*quality), extended_from_keyframes=frames.k)
        store = {k: conf[k] for k in ("global_dim", "keep_full_global", "index", "index_params")}
        writer = MapWriter(out_path, extractor=old.extractor, aggregator=old.aggregator,
                           descriptor_dim=old.descriptors.shape[1],
                           aggregator_state=old.aggregator_state, build_conf=build_conf,
                           summary=summary, store=store)  # fmt: skip
        size = write_v3_streamed(writer, frames, tri["points3D"], tri["track_lengths"],
                                 tri["errors"], quality)  # fmt: skip
        rows.close()
    finally:
        ff.close()
    if work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return {**summary, "new_keyframes": len(job.names), "file_size_bytes": int(size)}


def add_parser(subparsers) -> argparse.ArgumentParser:
    from .build_map import add_backend_arguments, add_streaming_arguments

    p = subparsers.add_parser(
        "extend-map",
        help="add a new recording (keyframes with known poses) to a map without rebuilding it",
        description="Add the images of --images-list (posed in DATASET's COLMAP model) to MAP "
        "as keyframes, triangulating new points with the map's; MAP is left untouched.",
    )
    p.add_argument("map", type=Path, help="the map to extend (.h5, read only)")
    p.add_argument(
        "dataset", type=Path, help="dataset folder of the new images (images/ + sparse_gt/)"
    )
    p.add_argument("--images-list", type=Path, required=True, help="new image names, one a line")
    p.add_argument("--out", type=Path, required=True, help="the extended map (.h5)")
    p.add_argument(
        "--superpoint-weights", type=Path, help="superpoint_v1.pth the map was built with"
    )
    p.add_argument("--supergf-weights", type=Path, help="SuperGF checkpoint (default: shipped)")
    add_backend_arguments(p)
    add_streaming_arguments(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..datasets import read_image_list

    summary = extend_map(
        args.map, args.dataset, args.out, image_names=read_image_list(args.images_list),
        superpoint_weights=args.superpoint_weights, supergf_weights=args.supergf_weights,
        backend=args.backend, device=args.device, progress=not args.quiet,
        work_dir=args.work_dir, ray_address=args.ray_address,
    )  # fmt: skip
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"map {args.out}: {summary['num_keyframes']} keyframes ({summary['new_keyframes']} "
            f"new), {summary['num_points3D']} 3D points, {summary['num_pairs']} new pairs, "
            f"{summary['file_size_bytes'] / 1e6:.2f} MB"
        )
    return 0
