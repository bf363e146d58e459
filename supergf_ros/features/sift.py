"""SIFT local features with OpenCV (registered as "sift"): sparse keypoints or dense SIFT on a grid.

Coordinate convention: OpenCV's SIFT upsamples the image by 2 for its first octave and, by
default, maps upsampled pixel 2x back to x although its bilinear upsampling puts that sample at
x - 0.25; detections are then biased by +0.25 px in x and y. `cv2.SIFT_create(...,
enable_precise_upscale=True)` removes the bias, so keypoints here follow the pixel-centre convention
(the centre of the top-left pixel is (0, 0)); the tests check it on synthetic blobs.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from .base import Extractor, LocalFeatures, to_grayscale


def _normalize(desc: np.ndarray, root: bool) -> np.ndarray:
    """L2-normalize rows (after RootSIFT when `root`); all-zero rows become the uniform unit row."""
    desc = desc.astype(np.float32, copy=False)
    if root:
        l1 = np.abs(desc).sum(axis=1, keepdims=True)
        desc = np.sqrt(np.abs(desc) / np.maximum(l1, 1e-12))
    norm = np.linalg.norm(desc, axis=1, keepdims=True)
    zero = norm[:, 0] < 1e-12
    desc = desc / np.maximum(norm, 1e-12)
    if zero.any():  # e.g. dense SIFT on a perfectly flat region
        desc[zero] = 1.0 / np.sqrt(desc.shape[1])
    return np.ascontiguousarray(desc, dtype=np.float32)


def dense_grid(width: int, height: int, step: int) -> tuple[np.ndarray, int, int]:
    """Grid keypoints (N, 2) (x, y) at the centres of the step x step cells fully inside the image.

    Cell (i, j) covers pixels step*j .. step*j + step - 1, so its centre is step*j + step/2 - 0.5
    (for step 8 the same layout as SuperPoint's descriptor map). Returns (keypoints, w, h), rows
    ordered row-major so that `descriptors.reshape(h, w, D)` is the map.
    """
    w, h = width // step, height // step
    if w < 1 or h < 1:
        raise ValueError(f"image {width}x{height} is smaller than one dense SIFT cell of {step} px")
    xs = step * np.arange(w, dtype=np.float32) + step / 2 - 0.5
    ys = step * np.arange(h, dtype=np.float32) + step / 2 - 0.5
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1), w, h


class SIFT(Extractor):
    """OpenCV SIFT (registered as "sift"), sparse (detector) or dense (descriptors on a grid).

    Options (`default_conf`):
        mode: "sparse" (DoG detector) or "dense" (upright SIFT on a regular grid).
        max_keypoints: sparse mode, keep the top-k by DoG response; -1 keeps all.
        root: RootSIFT (L1-normalize, square root); descriptors are L2-normalized either way.
        contrast_threshold, edge_threshold, n_octave_layers, sigma: OpenCV SIFT detector options.
        dense_step: grid spacing in pixels (dense mode).
        dense_size: OpenCV keypoint size of the grid descriptors (histogram bin width is
            1.5 * size, so the 4x4-bin window spans 6 * size pixels).
        resize_max: resize so that the longer edge is at most this (None: no resize). Keypoints
            are always returned in input-image coordinates.

    Output `LocalFeatures`: keypoints (N, 2), scores (N,) (DoG response in sparse mode, ones in
    dense mode), descriptors (N, 128); in dense mode also `dense` (128, h, w) with
    h, w = processed size // dense_step and keypoints in the same row-major order; `extra` has
    `sizes` and `angles` (OpenCV keypoint size and orientation in degrees), `processed_size` and
    `scale` (input / processed).
    """

    name = "sift"
    default_conf: dict[str, Any] = {
        "mode": "sparse",
        "max_keypoints": 4096,
        "root": True,
        "contrast_threshold": 0.04,
        "edge_threshold": 10.0,
        "n_octave_layers": 3,
        "sigma": 1.6,
        "dense_step": 8,
        "dense_size": 8.0,
        "resize_max": None,
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        c = self.conf
        if c["mode"] not in ("sparse", "dense"):
            raise ValueError(f"SIFT mode must be 'sparse' or 'dense', got {c['mode']!r}")
        if int(c["max_keypoints"]) == 0 or int(c["max_keypoints"]) < -1:
            raise ValueError(f"max_keypoints must be -1 (all) or > 0, got {c['max_keypoints']}")
        if int(c["dense_step"]) < 1:
            raise ValueError(f"dense_step must be >= 1, got {c['dense_step']}")
        if float(c["dense_size"]) <= 0:
            raise ValueError(f"dense_size must be > 0, got {c['dense_size']}")
        if c["resize_max"] is not None and int(c["resize_max"]) < 16:
            raise ValueError(f"resize_max must be None or >= 16, got {c['resize_max']}")
        k = int(c["max_keypoints"])
        self.sift = cv2.SIFT_create(
            nfeatures=k if (k > 0 and c["mode"] == "sparse") else 0,
            nOctaveLayers=int(c["n_octave_layers"]),
            contrastThreshold=float(c["contrast_threshold"]),
            edgeThreshold=float(c["edge_threshold"]),
            sigma=float(c["sigma"]),
            enable_precise_upscale=True,
        )

    @property
    def descriptor_dim(self) -> int:
        return 128

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": dict(self.conf),
            "weights_sha256": "",
            "opencv": cv2.__version__,
        }

    def _extract(self, image: np.ndarray) -> LocalFeatures:
        c = self.conf
        gray = to_grayscale(image)
        in_h, in_w = gray.shape
        resize_max = c["resize_max"]
        if resize_max is not None and max(in_h, in_w) > int(resize_max):
            s = int(resize_max) / max(in_h, in_w)
            size = (max(round(in_w * s), 1), max(round(in_h * s), 1))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        h, w = gray.shape
        scale = (in_w / w, in_h / h)

        dense = None
        if c["mode"] == "sparse":
            kps, desc = self.sift.detectAndCompute(gray, None)
            n = len(kps)
            if n == 0:
                desc = np.zeros((0, 128), np.float32)
            responses = np.array([kp.response for kp in kps], dtype=np.float32)
            order = np.argsort(-responses, kind="stable")
            k = int(c["max_keypoints"])
            if k > 0:
                order = order[:k]
            kps = [kps[i] for i in order]
            keypoints = np.array([kp.pt for kp in kps], dtype=np.float32).reshape(-1, 2)
            scores = responses[order]
            descriptors = _normalize(desc[order], bool(c["root"]))
        else:
            step = int(c["dense_step"])
            keypoints, gw, gh = dense_grid(w, h, step)
            size = float(c["dense_size"])
            grid = [cv2.KeyPoint(float(x), float(y), size, 0.0) for x, y in keypoints]
            out_kps, desc = self.sift.compute(gray, grid)
            if desc is None or len(out_kps) != len(grid):
                raise RuntimeError(
                    f"OpenCV SIFT returned {0 if desc is None else len(out_kps)} of {len(grid)} "
                    "dense descriptors"
                )
            descriptors = _normalize(desc, bool(c["root"]))
            scores = np.ones(len(keypoints), dtype=np.float32)
            dense = np.ascontiguousarray(descriptors.reshape(gh, gw, -1).transpose(2, 0, 1))
            kps = grid

        sizes = np.array([kp.size for kp in kps], dtype=np.float32)
        angles = np.array([kp.angle for kp in kps], dtype=np.float32)
        if scale != (1.0, 1.0):
            keypoints = (keypoints + 0.5) * np.array(scale, dtype=np.float32) - 0.5
            sizes = sizes * np.float32(np.sqrt(scale[0] * scale[1]))
        return LocalFeatures(
            keypoints=np.ascontiguousarray(keypoints, dtype=np.float32),
            scores=scores,
            descriptors=descriptors,
            dense=dense,
            image_size=(in_w, in_h),
            extra={"sizes": sizes, "angles": angles, "processed_size": (w, h), "scale": scale},
        )
