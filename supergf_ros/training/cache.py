"""On-disk cache of frozen local features (HDF5), keyed by extractor identity and image size.

The local feature network is frozen during training, so its outputs are computed once and read
back in every later epoch. One HDF5 file per (extractor identity, image size):
``<cache_dir>/<extractor name>-<16 hex of sha256(identity, image_size)>.h5``; inside, one group
per image keyed by the sha256 of its absolute path, size and modification time (a changed image
is re-extracted). Each group holds ``keypoints`` (N, 2) float32, ``scores`` (N,) float32,
``descriptors`` (N, D) float16, ``dense`` (D, h, w) float16 if the extractor gives one, and the
attribute ``image_size`` (w, h).

Images are resized to exactly `image_size` (w, h) before extraction so that dense maps of all
images share one shape and batch without padding.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..features.base import Extractor, LocalFeatures


def _image_key(path: Path) -> str:
    st = path.stat()
    text = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(text.encode()).hexdigest()


def load_image(path: str | Path, image_size: tuple[int, int] | None) -> np.ndarray:
    """Read an image as HxWx3 uint8 RGB, resized (INTER_AREA) to (w, h) = `image_size` if given."""
    import cv2

    path = Path(path)
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read image {path} (missing or not an image)")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image_size is not None and (image.shape[1], image.shape[0]) != tuple(image_size):
        image = cv2.resize(image, tuple(int(s) for s in image_size), interpolation=cv2.INTER_AREA)
    return image


class FeatureCache:
    """Frozen local features for training, computed once and stored in HDF5.

    Args:
        cache_dir: folder for the HDF5 files (created).
        extractor: the frozen local feature extractor.
        image_size: (w, h) every image is resized to before extraction.
    """

    def __init__(
        self, cache_dir: str | Path, extractor: Extractor, image_size: tuple[int, int]
    ) -> None:
        if len(image_size) != 2 or min(int(s) for s in image_size) < 16:
            raise ValueError(f"image_size must be (w, h) with both >= 16, got {image_size}")
        self.extractor = extractor
        self.image_size = (int(image_size[0]), int(image_size[1]))
        identity = {"extractor": extractor.identity(), "image_size": list(self.image_size)}
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
        self.path = Path(cache_dir) / f"{extractor.name}-{digest.hexdigest()[:16]}.h5"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.identity = identity
        self._memory: dict[str, LocalFeatures] = {}

    def prepare(self, paths: Sequence[str | Path], progress: bool = True) -> int:
        """Extract and store the features of every image not cached yet; returns how many."""
        import h5py
        from tqdm import tqdm

        keys = {str(p): _image_key(Path(p)) for p in paths}
        if self.path.exists():  # nothing to write: stay read-only (other readers may hold it)
            with h5py.File(self.path, "r") as f:
                if all(k in f for k in keys.values()):
                    return 0
        with h5py.File(self.path, "a") as f:
            if "identity" not in f.attrs:
                f.attrs["identity"] = json.dumps(self.identity, default=str)
            todo = [p for p in dict.fromkeys(keys) if keys[p] not in f]
            bar = tqdm(
                todo, desc=f"features ({self.extractor.name})", disable=not (progress and todo)
            )
            for p in bar:
                feats = self.extractor.extract(load_image(p, self.image_size))
                g = f.create_group(keys[p] + ".tmp")
                g.create_dataset("keypoints", data=feats.keypoints.astype(np.float32))
                g.create_dataset("scores", data=feats.scores.astype(np.float32))
                g.create_dataset("descriptors", data=feats.descriptors.astype(np.float16))
                if feats.dense is not None:
                    g.create_dataset("dense", data=feats.dense.astype(np.float16))
                g.attrs["image_size"] = np.asarray(feats.image_size, np.int64)
                g.attrs["source"] = str(p)
                f.move(keys[p] + ".tmp", keys[p])  # a crash never leaves a half-written entry
                f.flush()
        return len(todo)

    def load(self, paths: Sequence[str | Path]) -> list[LocalFeatures]:
        """Cached features of `paths` (extracting the missing ones first); kept in memory."""
        missing = [p for p in paths if str(p) not in self._memory]
        if missing:
            import h5py

            stored = set()
            if self.path.exists():  # read-only first: other processes may read concurrently
                with h5py.File(self.path, "r") as f:
                    stored = {str(p) for p in missing if _image_key(Path(p)) in f}
            if len(stored) < len(missing):
                self.prepare([p for p in missing if str(p) not in stored], len(missing) > 8)
            with h5py.File(self.path, "r") as f:
                for p in missing:
                    g = f[_image_key(Path(p))]
                    self._memory[str(p)] = LocalFeatures(
                        keypoints=g["keypoints"][()],
                        scores=g["scores"][()],
                        descriptors=g["descriptors"][()].astype(np.float32),
                        dense=g["dense"][()] if "dense" in g else None,  # float16 kept
                        image_size=tuple(int(v) for v in g.attrs["image_size"]),
                    )
        return [self._memory[str(p)] for p in paths]
