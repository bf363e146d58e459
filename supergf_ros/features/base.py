"""The one result type and base class shared by all local feature extractors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..io_utils import file_sha256 as file_sha256  # re-exported: extractors and tests use it


@dataclass
class LocalFeatures:
    """Local features of one image.

    Attributes:
        keypoints: (N, 2) float32 pixel coordinates (x, y) in the *input* image, pixel-centre
            convention (the centre of the top-left pixel is (0, 0)).
        scores: (N,) float32 detection scores, higher is better.
        descriptors: (N, D) float32, each row L2-normalized.
        dense: (D, h, w) float32 dense descriptor map (channels L2-normalized) or None.
        image_size: (width, height) of the input image.
        extra: extractor-specific details (e.g. SuperPoint's processed size and scale).
        descriptors_device: the descriptors as an (N, D) torch tensor on the networks' device
            when the extractor post-processed them there, else None (matching uses it as is).
    """

    keypoints: np.ndarray
    scores: np.ndarray
    descriptors: np.ndarray
    dense: np.ndarray | None = None
    image_size: tuple[int, int] = (0, 0)
    extra: dict[str, Any] = field(default_factory=dict)
    descriptors_device: Any | None = None

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    def validate(self) -> LocalFeatures:
        """Check shapes, dtypes and finiteness; raise ValueError with a specific message."""
        n = self.keypoints.shape[0] if self.keypoints.ndim == 2 else -1
        if self.keypoints.ndim != 2 or self.keypoints.shape[1] != 2:
            raise ValueError(f"keypoints must have shape (N, 2), got {self.keypoints.shape}")
        if self.scores.shape != (n,):
            raise ValueError(f"scores must have shape ({n},), got {self.scores.shape}")
        if self.descriptors.ndim != 2 or self.descriptors.shape[0] != n:
            raise ValueError(f"descriptors must have shape ({n}, D), got {self.descriptors.shape}")
        for name in ("keypoints", "scores", "descriptors"):
            if not np.isfinite(getattr(self, name)).all():
                raise ValueError(f"{name} contain NaN or infinite values")
        if self.dense is not None:
            if self.dense.ndim != 3:
                raise ValueError(f"dense must have shape (D, h, w), got {self.dense.shape}")
            if not np.isfinite(self.dense).all():
                raise ValueError("dense descriptor map contains NaN or infinite values")
        return self


def validate_image(image: Any) -> np.ndarray:
    """Return `image` as an HxW or HxWx3 uint8 array or raise an actionable ValueError."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must have dtype uint8 (HxW gray or HxWx3 RGB), got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"image must be HxW (gray) or HxWx3 (RGB), got shape {image.shape}")
    if image.size == 0:
        raise ValueError("image is empty")
    if min(image.shape[:2]) < 16:
        raise ValueError(
            f"image is too small ({image.shape[1]}x{image.shape[0]} px); need >= 16 px"
        )
    return image


def to_grayscale(image: np.ndarray) -> np.ndarray:
    """HxW uint8 grayscale from an HxW or HxWx3 RGB uint8 image (ITU-R 601 weights)."""
    image = validate_image(image)
    if image.ndim == 2:
        return image
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(image.astype(np.float32) @ weights + 0.5, 0, 255).astype(np.uint8)


class Extractor:
    """Base class: subclasses set `name`, `default_conf` and implement `_extract`."""

    name: str = ""
    default_conf: dict[str, Any] = {}

    def __init__(self, **conf: Any) -> None:
        unknown = set(conf) - set(self.default_conf)
        if unknown:
            raise ValueError(
                f"unknown option(s) for extractor '{self.name}': {sorted(unknown)}; "
                f"valid: {sorted(self.default_conf)}"
            )
        self.conf = {**self.default_conf, **conf}

    @property
    def descriptor_dim(self) -> int:
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """What produced the features: name, config and weights hash (stored in maps)."""
        return {"name": self.name, "config": dict(self.conf), "weights_sha256": ""}

    def extract(self, image: np.ndarray) -> LocalFeatures:
        """Extract local features from an HxW uint8 gray or HxWx3 uint8 RGB image of any size."""
        image = validate_image(image)
        return self._extract(image).validate()

    def _extract(self, image: np.ndarray) -> LocalFeatures:
        raise NotImplementedError
