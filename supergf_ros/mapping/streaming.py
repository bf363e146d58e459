"""The map builder's steps, streamed through work files so memory does not grow with the map.

1. `extract_step`: local features (and global descriptors) per image into the feature file
   (`feature_store.FeatureFile`), flushed per image; images already there are skipped.
2. `globals_step`: the (N, G) global descriptors into `globals.h5` (fitting VLAD's codebook on
   a sample read from the feature file first), read back by blocks (`GlobalRows`).
3. pairs (`pairs.select_pairs`, by blocks), then `match_step`: matches appended to the matches
   file (`feature_store.MatchesFile`) chunk by chunk.
4. `triangulate_step`: pycolmap from a database filled from the two files (by spatial submaps
   above `submap_images` posed images, `submaps.triangulate_submaps`).
5. `write_step`: the version-3 map keyframe by keyframe (`map_store.write_v3_streamed`).

Extraction and matching run as tasks on an executor (`distributed`): this process or Ray.
What is held in memory: keypoints and poses per image, one submap's pycolmap reconstruction
and a few images' descriptors; never every image's descriptors.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..features.base import LocalFeatures
from .distributed import extract_task, match_task
from .feature_store import FeatureFile, MatchesFile

logger = logging.getLogger(__name__)

MATCH_CHUNK_PAIRS = 256


@dataclass
class BuildJob:
    """What every step of one build needs."""

    dataset: Any  # datasets.Dataset
    names: list[str]
    work_dir: Path
    spec: dict  # for the tasks: dataset_dir, features, extractor_conf, global_name, global_conf
    extractor: Any
    aggregator: Any
    executor: Any
    progress: bool

    @property
    def feature_path(self) -> Path:
        return self.work_dir / "features.h5"

    @property
    def identity(self) -> dict:
        """What the stored features depend on (the aggregator's where it has no fit)."""
        agg = None if self.aggregator.needs_fit else self.aggregator.identity()
        return {"extractor": self.extractor.identity(), "aggregator": agg}


def _bar(progress: bool, **kw):
    from tqdm import tqdm

    return tqdm(disable=not progress, **kw)


def image_sha256(dataset, name: str) -> str:
    return hashlib.sha256(dataset.image_path(name).read_bytes()).hexdigest()


def extract_step(job: BuildJob, on_image: Callable[[int, str], None] | None = None) -> int:
    """Extract the images not yet in the feature file; the number extracted now.

    `on_image(index, name)` is called after each image is stored (an exception raised there
    stops the build like an interruption: the stored images are kept for the restart)."""
    ff = FeatureFile(job.feature_path, job.identity)
    try:
        index = {n: i for i, n in enumerate(job.names)}
        todo = [n for n in job.names if not ff.done(n, image_sha256(job.dataset, n))]
        if len(todo) < len(job.names):
            logger.info("features: %d of %d images already extracted", len(job.names) - len(todo),
                        len(job.names))  # fmt: skip
        step = job.executor.shard_images
        shards = [todo[a : a + step] for a in range(0, len(todo), step)]
        with _bar(job.progress, total=len(job.names), initial=len(job.names) - len(todo),
                  desc="features", unit="img") as bar:  # fmt: skip
            for results in job.executor.map(extract_task, [(job.spec, s) for s in shards]):
                for r in results:
                    feats = LocalFeatures(r["keypoints"], r["scores"], r["descriptors"],
                                          image_size=tuple(r["image_size"]))  # fmt: skip
                    ff.put(r["name"], r["image_sha256"], feats, r["global"])
                    bar.update(1)
                    if on_image is not None:
                        on_image(index[r["name"]], r["name"])
    finally:
        ff.close()
    return len(todo)


class GlobalRows:
    """The build's (N, G) global descriptors in `globals.h5`, read by row blocks."""

    def __init__(self, path: Path) -> None:
        import h5py

        self.f = h5py.File(path, "r")
        self.ds = self.f["global_descriptors"]
        self.shape = self.ds.shape

    def read_rows(self, a: int, b: int) -> np.ndarray:
        return self.ds[a:b]

    def close(self) -> None:
        self.f.close()


def globals_step(job: BuildJob, ff: FeatureFile, fit: bool = True) -> GlobalRows:
    """Write the global descriptors of every image to `globals.h5` (fitting the aggregator on
    the feature file first where it needs a fit, unless `fit` is False: its state is loaded);
    open them for reading."""
    import h5py

    agg, names = job.aggregator, job.names
    if agg.needs_fit and fit:
        if agg.needs_dense:
            raise ValueError(
                f"global descriptor '{agg.name}' with source='dense' needs every image's dense "
                "map to fit: the map builder streams sparse features only (use source='sparse')"
            )
        counts = [ff.num_keypoints(n) for n in names]
        agg.fit_streamed(counts, lambda i: ff.descriptors(names[i]))
    path = job.work_dir / "globals.h5"
    with h5py.File(path, "w") as f:
        ds = None
        for i, name in enumerate(_bar(job.progress, iterable=names, desc="global", unit="img")):
            if agg.needs_fit:
                g = np.asarray(agg(ff.features(name)), dtype=np.float32)
            else:
                g = ff.global_descriptor(name)
            if ds is None:
                ds = f.create_dataset("global_descriptors", (len(names), len(g)), np.float32)
            ds[i] = g
    return GlobalRows(path)


def match_step(job: BuildJob, shas: list[str], pairs: list, ratio: float | None) -> MatchesFile:
    """Match the pairs not yet in the matches file (chunks of MATCH_CHUNK_PAIRS, in order);
    `shas`: the images' SHA-256 (the matches of changed images are not reused)."""
    key = json.dumps([pairs, job.names, shas, ratio, job.identity], default=str)
    mf = MatchesFile(job.work_dir / "matches.h5", pairs, hashlib.sha256(key.encode()).hexdigest())
    start = mf.num_done
    chunks = [pairs[a : a + MATCH_CHUNK_PAIRS] for a in range(start, len(pairs), MATCH_CHUNK_PAIRS)]
    tasks = [(str(job.feature_path), job.identity, job.names, c, ratio) for c in chunks]
    with _bar(job.progress, total=len(pairs), initial=start, desc="matching", unit="pair") as bar:
        for matches in job.executor.map(match_task, tasks):
            mf.append(matches)
            bar.update(len(matches))
    return mf


def triangulate_step(job: BuildJob, ff: FeatureFile, poses, mf: MatchesFile, conf: dict):
    """(kept image indices, cameras, cam_from_world, triangulation result): 3D points from the
    dataset's poses, or incremental SfM where it has none (unregistered images left out)."""
    from .triangulation import incremental_sfm, triangulate_known_poses

    names, dataset = job.names, job.dataset
    sizes = [ff.image_size(n) for n in names]
    if not dataset.has_model:
        keypoints = [ff.keypoints(n) for n in names]
        tri = incremental_sfm(None, names, sizes, keypoints, mf, work_dir=job.work_dir)
        keep = [i for i, p in enumerate(tri["cam_from_world"]) if p is not None]
        if len(keep) < len(names):
            logger.warning("SfM registered %d of %d images", len(keep), len(names))
        return keep, tri["cameras"], tri["cam_from_world"], tri
    cameras = []
    for name, (w, h) in zip(names, sizes):
        cam = dataset.camera(name)
        if (cam.width, cam.height) != (w, h):  # images stored at another resolution
            cam = cam.scaled(w / cam.width, h / cam.height)
        cameras.append(cam)
    if len(names) > conf["submap_images"]:
        from .submaps import triangulate_submaps

        tri = triangulate_submaps(
            cameras, poses, names, [ff.num_keypoints(n) for n in names],
            lambda i: ff.keypoints(names[i]), mf, conf["triangulation"], conf["submap_images"],
            work_dir=job.work_dir, progress=job.progress,
        )  # fmt: skip
    else:
        keypoints = [ff.keypoints(n) for n in names]
        tri = triangulate_known_poses(
            cameras, poses, names, keypoints, mf, conf["triangulation"], work_dir=job.work_dir
        )
    release_freed_memory()  # pycolmap's freed heap, kept resident by malloc, back to the OS
    return list(range(len(names))), cameras, poses, tri


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20


def _libc():
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return None


def bound_heap_growth() -> None:
    """Blocks of 1 MiB and more mapped and unmapped on their own (glibc's mallopt; a no-op
    elsewhere). glibc otherwise raises that threshold after each large free, and the build's
    many 16 MB arrays then stay resident in a fragmented heap (2,000 images: 395 MB peak
    against 373 MB)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def release_freed_memory() -> None:
    """Hand the heap pages malloc keeps after frees back to the OS (glibc's malloc_trim; a
    no-op elsewhere), so the next step's peak does not stack on the last one's."""
    import gc

    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


class StoredKeyframes:
    """The kept keyframes of a build, read from the work files (`write_v3_streamed`'s source)."""

    def __init__(self, job: BuildJob, ff: FeatureFile, rows: GlobalRows, keep, cameras, poses,
                 point3D_ids) -> None:  # fmt: skip
        self.ff, self.rows, self.keep = ff, rows, list(keep)
        self.names = [job.names[i] for i in self.keep]
        self.cameras = [cameras[i] for i in self.keep]
        self.poses = [poses[i] for i in self.keep]
        self.ids = [point3D_ids[i] for i in self.keep]

    @property
    def num_keyframes(self) -> int:
        return len(self.keep)

    def point3D_ids(self, i: int) -> np.ndarray:
        return self.ids[i]

    def keyframe(self, i: int) -> tuple:
        name = self.names[i]
        g = self.rows.read_rows(self.keep[i], self.keep[i] + 1)[0]
        kp, scores = self.ff.keypoints(name), self.ff.scores(name)
        return name, self.cameras[i], self.poses[i], kp, scores, g

    def descriptors(self, i: int, rows) -> np.ndarray:
        return self.ff.descriptors(self.names[i], rows)
