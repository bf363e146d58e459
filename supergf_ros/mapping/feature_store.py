"""The map builder's work files: per-image features and the streamed matches (HDF5).

`FeatureFile` (`features.h5` in the build's work folder)::

    /  attrs: kind, version, identity (JSON: the extractor's and, when it needs no fit, the
              global descriptor's identity)
    /images/<sha1 of the name>/keypoints (N, 2) f4, scores (N,) f4, descriptors (N, D) f4,
              global (G,) f4 (absent when the aggregator is fitted on the map's features)
              attrs name, width, height, image_sha256 (written last: the image is complete)

Each image is flushed to disk when it is stored, so an interrupted build keeps every image it
finished; a restart skips those whose name and image bytes (SHA-256) match. `MatchesFile`
(`matches.h5`) holds the pairs, then their matches appended in pair order (flushed per chunk):
a restart with the same pairs and features continues after the last chunk written.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..features.base import LocalFeatures

logger = logging.getLogger(__name__)

FEATURE_FILE_KIND = "supergf_ros map-build features"
MATCHES_FILE_KIND = "supergf_ros map-build matches"
WORK_FILE_VERSION = 1


def _key(name: str) -> str:
    return hashlib.sha1(name.encode("utf-8")).hexdigest()


def _open_work_file(path: Path, mode: str, kind: str):
    """h5py File of a work file; one left unreadable by a kill is moved aside and restarted."""
    import h5py

    try:
        f = h5py.File(path, mode)
    except OSError as err:
        if "lock" in str(err).lower():
            raise ValueError(
                f"{path} is open in another process (another build in this work folder?): wait "
                "for it or build in another --work-dir"
            ) from None
        if mode == "r" or not path.exists():
            raise
        aside = path.with_name(path.name + ".unreadable")
        logger.warning(
            "work file %s is unreadable (%s): moved to %s, starting over", path, err, aside
        )
        path.replace(aside)
        f = h5py.File(path, mode)
    if "kind" not in f.attrs:
        f.attrs["kind"], f.attrs["version"] = kind, WORK_FILE_VERSION
    elif f.attrs["kind"] != kind or int(f.attrs["version"]) != WORK_FILE_VERSION:
        f.close()
        raise ValueError(f"{path} is not a version-{WORK_FILE_VERSION} {kind} file: remove it")
    return f


class FeatureFile:
    """Per-image local features (and global descriptors) of a map build; see the module doc.

    `identity` (extractor and global descriptor identities) must match the file's: features of
    another network are never reused (ValueError naming the fix)."""

    def __init__(self, path: str | Path, identity: dict[str, Any], mode: str = "a") -> None:
        self.path = Path(path)
        self.f = _open_work_file(self.path, mode, FEATURE_FILE_KIND)
        text = json.dumps(identity, sort_keys=True, default=str)
        stored = self.f.attrs.get("identity")
        if stored is None and mode != "r":
            self.f.attrs["identity"] = text
        elif stored != text:
            self.f.close()
            raise ValueError(
                f"feature file {self.path} holds features of another extractor or global "
                "descriptor: remove it or build in another --work-dir"
            )
        self.images = self.f.require_group("images") if mode != "r" else self.f["images"]

    def close(self) -> None:
        self.f.close()

    def done(self, name: str, image_sha256: str) -> bool:
        """Whether `name` is stored, complete, from the same image bytes."""
        g = self.images.get(_key(name))
        return g is not None and g.attrs.get("image_sha256") == image_sha256

    def put(self, name: str, image_sha256: str, feats: LocalFeatures, global_desc=None) -> None:
        """Store one image's features (replacing a partial or stale entry) and flush."""
        key = _key(name)
        if key in self.images:
            del self.images[key]
        g = self.images.create_group(key)
        g.create_dataset("keypoints", data=np.asarray(feats.keypoints, np.float32))
        g.create_dataset("scores", data=np.asarray(feats.scores, np.float32))
        g.create_dataset("descriptors", data=np.asarray(feats.descriptors, np.float32))
        if global_desc is not None:
            g.create_dataset("global", data=np.asarray(global_desc, np.float32))
        g.attrs["name"] = name
        g.attrs["width"], g.attrs["height"] = (int(v) for v in feats.image_size)
        g.attrs["image_sha256"] = image_sha256  # last: the entry is complete
        self.f.flush()

    def _group(self, name: str):
        g = self.images.get(_key(name))
        if g is None or "image_sha256" not in g.attrs:
            raise ValueError(f"feature file {self.path} has no features of image '{name}'")
        return g

    def features(self, name: str) -> LocalFeatures:
        g = self._group(name)
        return LocalFeatures(
            keypoints=g["keypoints"][()],
            scores=g["scores"][()],
            descriptors=g["descriptors"][()],
            image_size=(int(g.attrs["width"]), int(g.attrs["height"])),
        )

    def keypoints(self, name: str) -> np.ndarray:
        return self._group(name)["keypoints"][()]

    def descriptors(self, name: str, rows=None) -> np.ndarray:
        ds = self._group(name)["descriptors"]
        return ds[()] if rows is None else ds[()][rows]

    def scores(self, name: str) -> np.ndarray:
        return self._group(name)["scores"][()]

    def image_size(self, name: str) -> tuple[int, int]:
        g = self._group(name)
        return int(g.attrs["width"]), int(g.attrs["height"])

    def num_keypoints(self, name: str) -> int:
        return int(self._group(name)["keypoints"].shape[0])

    def global_descriptor(self, name: str) -> np.ndarray:
        return self._group(name)["global"][()]

    def image_sha256(self, name: str) -> str:
        return str(self._group(name).attrs["image_sha256"])


class MatchesFile:
    """The pairs of a build and their matches, appended chunk by chunk in pair order.

    `identity`: what the matches depend on (pairs, features, matcher options); a file made for
    another identity is started over."""

    def __init__(self, path: str | Path, pairs: list[tuple[int, int]], identity: str) -> None:
        self.path = Path(path)
        f = _open_work_file(self.path, "a", MATCHES_FILE_KIND)
        if f.attrs.get("identity") != identity:
            for key in list(f):
                del f[key]
            f.create_dataset("pairs", data=np.asarray(pairs, np.int64).reshape(-1, 2))
            f.create_dataset("offsets", data=np.zeros(1, np.int64), maxshape=(None,), chunks=True)
            f.create_dataset("matches", (0, 2), np.uint32, maxshape=(None, 2), chunks=(4096, 2))
            f.attrs["identity"] = identity
        self.f = f
        self.pairs = [tuple(int(v) for v in p) for p in f["pairs"][()]]

    @property
    def num_done(self) -> int:
        return int(self.f["offsets"].shape[0]) - 1

    def append(self, chunk: list[np.ndarray]) -> None:
        """The matches of the next `len(chunk)` pairs, (K, 2) each; flushed."""
        offsets, matches = self.f["offsets"], self.f["matches"]
        base, n = int(offsets[-1]), offsets.shape[0]
        counts = np.cumsum([len(m) for m in chunk]).astype(np.int64)
        if len(counts) and counts[-1]:
            matches.resize((base + int(counts[-1]), 2))
            matches[base:] = np.concatenate([np.asarray(m).reshape(-1, 2) for m in chunk])
        offsets.resize((n + len(chunk),))
        offsets[n:] = base + counts
        self.f.flush()

    def items(self, chunk_pairs: int = 4096):
        """((i, j), (K, 2) uint32 matches) in pair order, read chunk by chunk."""
        return self.items_at(np.arange(self.num_done), chunk_pairs)

    def items_at(self, indices, chunk_pairs: int = 4096):
        """((i, j), matches) of the pairs at increasing positions `indices` (all matched), in
        that order; read as `items` does, chunk by chunk, skipping chunks without one."""
        indices = np.asarray(indices, np.int64)
        if len(indices) and (indices[-1] >= self.num_done or np.any(np.diff(indices) <= 0)):
            raise ValueError("items_at: indices must be increasing positions of matched pairs")
        offsets, matches = self.f["offsets"], self.f["matches"]
        for a in np.unique(indices // chunk_pairs) * chunk_pairs:
            b = min(self.num_done, a + chunk_pairs)
            off = offsets[a : b + 1]
            block = matches[int(off[0]) : int(off[-1])]
            first, last = np.searchsorted(indices, [a, b])
            for k in indices[first:last]:
                lo, hi = int(off[k - a] - off[0]), int(off[k - a + 1] - off[0])
                yield self.pairs[int(k)], block[lo:hi]

    def close(self) -> None:
        self.f.close()
