"""Contrast normalization of an image before local feature extraction (dark or flat images).

`normalize_contrast(image, method)` returns the HxW uint8 grayscale image the extractors see
(SuperPoint and SIFT read grayscale), normalized by `method`:
- "none": the grayscale image as is;
- "clahe": contrast-limited adaptive histogram equalization (8x8 tiles, clip limit 2);
- "equalize": global histogram equalization;
- "gamma": the gamma that brings the median intensity to mid-gray (dark images brighten);
- "auto": "equalize" for a dark image (mean gray level below `DARK_MEAN_LEVEL`), else "none";
  daylight images (Strecha, KITTI, the corridor: mean 77-148) stay as they are.
"""

from __future__ import annotations

import numpy as np

from .base import to_grayscale

CONTRAST_METHODS = ("none", "auto", "clahe", "equalize", "gamma")
DARK_MEAN_LEVEL = 32.0  # dusk proxies: mean 12-18; daylight photos, synthetic rooms: >= 58


def normalize_contrast(image: np.ndarray, method: str) -> np.ndarray:
    """`image` (HxW or HxWx3 uint8) as normalized grayscale (see the module docstring)."""
    import cv2

    if method not in CONTRAST_METHODS:
        raise ValueError(
            f"unknown contrast normalization '{method}'; use one of {CONTRAST_METHODS}"
        )
    gray = to_grayscale(image)
    if method == "auto":
        method = "equalize" if gray.mean() < DARK_MEAN_LEVEL else "none"
    if method == "none":
        return gray
    if method == "clahe":
        return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(gray)
    if method == "equalize":
        return cv2.equalizeHist(gray)
    median = float(np.clip(np.median(gray), 1.0, 254.0)) / 255.0
    gamma = np.log(0.5) / np.log(median)
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(gray, lut)
