"""Where the map builder's extraction and matching tasks run: this process, or a Ray cluster.

The builder cuts its work into tasks (a few images, a chunk of pairs) of module-level functions
and takes their results back in submission order, so the files it writes (and the map) are the
same whichever executor ran them. `create_executor(None)` runs them here; with a Ray address
(`auto`, `HOST:PORT`, or `local` for a new local instance) they run on Ray's workers, at most
`max_in_flight` at a time (the driver's memory stays bounded). Ray workers read the dataset
and the work files by path: the cluster's nodes must see the same file system.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class LocalExecutor:
    """Runs each task in this process, in order."""

    name = "local"
    num_workers = 1
    shard_images = 1  # each image stored (and flushed) as soon as it is extracted

    def map(self, fn: Callable, tasks: Iterable[tuple]) -> Iterator[Any]:
        for task in tasks:
            yield fn(*task)


class RayExecutor:
    """Runs tasks as Ray remote functions; results in submission order."""

    name = "ray"
    shard_images = 8  # images per extraction task: fewer round trips, the results in order

    def __init__(self, address: str, max_in_flight: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ValueError(
                "--ray-address needs Ray: install it (pip install ray) or build without "
                "--ray-address (one process)"
            ) from None
        self.ray = ray
        if not ray.is_initialized():
            ray.init(
                address=None if address == "local" else address,
                include_dashboard=False,
                log_to_driver=False,
            )
        self.num_workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.max_in_flight = max_in_flight or 2 * self.num_workers
        logger.info("map builder on Ray (%s): %d CPUs", address, self.num_workers)

    def map(self, fn: Callable, tasks: Iterable[tuple]) -> Iterator[Any]:
        remote = self.ray.remote(fn)
        pending: deque = deque()
        for task in tasks:
            pending.append(remote.remote(*task))
            if len(pending) >= self.max_in_flight:
                yield self.ray.get(pending.popleft())
        while pending:
            yield self.ray.get(pending.popleft())


def create_executor(ray_address: str | None) -> LocalExecutor | RayExecutor:
    """This process (`ray_address` None) or the Ray cluster at `ray_address`."""
    if ray_address is None:
        return LocalExecutor()
    if not str(ray_address).strip():
        raise ValueError("--ray-address must be auto, local or HOST:PORT, got an empty string")
    return RayExecutor(str(ray_address))


# -- the tasks (module level: Ray ships them by reference) -----------------------------------
_NETWORKS: dict[str, tuple] = {}  # per process: the networks of a build, built once


def network_key(features: str, extractor_conf: dict, global_name: str, global_conf: dict) -> str:
    return json.dumps([features, extractor_conf, global_name, global_conf], default=str)


@contextmanager
def networks_registered(key: str, extractor, aggregator) -> Iterator[None]:
    """Hand this process's networks to the tasks while inside (a local build does not load
    them twice); forgotten on exit, so a long-lived process does not keep every build's."""
    _NETWORKS[key] = (extractor, aggregator)
    try:
        yield
    finally:
        _NETWORKS.pop(key, None)


def _networks(spec: dict) -> tuple:
    key = network_key(
        spec["features"], spec["extractor_conf"], spec["global_name"], spec["global_conf"]
    )
    if key not in _NETWORKS:
        from ..features import create_extractor
        from ..models.aggregators import create_aggregator

        extractor = create_extractor(spec["features"], **spec["extractor_conf"])
        aggregator = create_aggregator(
            spec["global_name"], **{"features": spec["features"], **spec["global_conf"]}
        )
        _NETWORKS[key] = (extractor, aggregator)
    return _NETWORKS[key]


def extract_task(spec: dict, names: list[str]) -> list[dict]:
    """Local features (and global descriptors unless the aggregator needs a fit) of `names`:
    per image {name, image_sha256, keypoints, scores, descriptors, image_size, global}."""
    import hashlib

    import numpy as np

    from ..datasets import Dataset

    extractor, aggregator = _networks(spec)
    dataset = Dataset(spec["dataset_dir"])
    out = []
    for name in names:
        sha = hashlib.sha256(dataset.image_path(name).read_bytes()).hexdigest()
        f = extractor.extract(dataset.read_image(name))
        g = None if aggregator.needs_fit else np.asarray(aggregator(f), dtype=np.float32)
        out.append(
            {"name": name, "image_sha256": sha, "keypoints": f.keypoints, "scores": f.scores,
             "descriptors": f.descriptors, "image_size": f.image_size, "global": g}
        )  # fmt: skip
    return out


def match_task(
    feature_path: str, identity: dict, names: list[str], pairs: list, ratio: float | None
) -> list:
    """Mutual-NN matches (K, 2) uint32 of `pairs` (indices into `names`), features read from
    the feature file at `feature_path`."""
    import numpy as np

    from ..matching import match_mutual_nn
    from .feature_store import FeatureFile

    ff = FeatureFile(Path(feature_path), identity, mode="r")
    cache: dict[int, np.ndarray] = {}
    out = []
    try:
        for i, j in pairs:
            for k in (i, j):
                if k not in cache:
                    if len(cache) >= 64:
                        cache.pop(next(iter(cache)))
                    cache[k] = ff.descriptors(names[k])
            m, _ = match_mutual_nn(cache[i], cache[j], ratio_threshold=ratio)
            out.append(np.asarray(m, np.int64).astype(np.uint32))
    finally:
        ff.close()
    return out
