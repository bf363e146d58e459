"""ROS message <-> numpy/library conversions without importing rclpy (messages are duck-typed).

Everything here works on any object with the fields of the ROS message (rclpy messages, rosbags
dataclasses, simple namespaces), so it is tested with plain pytest and shared by the node, the
bag writer and the replay tool.

Conventions:
- Images become what the Localizer takes: HxW uint8 (gray) or HxWx3 uint8 (RGB).
- Intrinsics: ROS `CameraInfo.k` and the project's `Camera` share the pixel-centre convention
  (the centre of the top-left pixel is (0, 0)), so they map one to one.
- Poses: the library's `cam_from_world` becomes the ROS pose of the camera in the map frame,
  `world_from_cam`, with an x-y-z-w quaternion.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from supergf_ros.geometry import Camera, Pose

# encoding -> (numpy dtype, channels); the layout of each pixel in memory.
IMAGE_ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
}
SUPPORTED_ENCODINGS = tuple(IMAGE_ENCODINGS)


def image_to_numpy(msg: Any) -> np.ndarray:
    """Decode a `sensor_msgs/Image` into HxW uint8 gray or HxWx3 uint8 RGB.

    Handles row padding (`step` > width * pixel size), `is_bigendian` for 16-bit data and the
    encodings in `SUPPORTED_ENCODINGS`. 16-bit gray is scaled to 8 bits by the smallest power of
    two covering the frame's maximum, so 10/12-bit data in 16-bit words keeps its contrast.

    Raises:
        ValueError: unsupported encoding, empty image, inconsistent step or truncated data.
    """
    encoding = str(msg.encoding)
    if encoding not in IMAGE_ENCODINGS:
        raise ValueError(
            f"unsupported image encoding '{encoding}'; supported: {', '.join(SUPPORTED_ENCODINGS)}"
        )
    dtype, channels = IMAGE_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ValueError(f"empty image ({width}x{height})")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ValueError(
            f"image step {step} is smaller than a row of {width} {encoding} pixels ({row_bytes} B)"
        )
    data = msg.data
    buf = data if isinstance(data, (bytes, bytearray, memoryview)) else _as_bytes(data)
    needed = step * (height - 1) + row_bytes
    if len(buf) < needed:
        raise ValueError(
            f"image data truncated: {len(buf)} B for {width}x{height} {encoding} "
            f"with step {step} (need {needed} B)"
        )
    flat = np.frombuffer(buf, dtype=np.uint8, count=needed)
    if step * height <= len(buf):
        rows = np.frombuffer(buf, dtype=np.uint8, count=step * height).reshape(height, step)
    else:  # last row without padding: pad a copy
        rows = np.zeros((height, step), np.uint8)
        rows.reshape(-1)[:needed] = flat
    pixels = rows[:, :row_bytes]
    if dtype.itemsize > 1:
        order = ">" if bool(msg.is_bigendian) else "<"
        pixels = np.ascontiguousarray(pixels).view(dtype.newbyteorder(order))
        pixels = pixels.astype(dtype.newbyteorder("="), copy=False)
    image = pixels.reshape(height, width, channels)

    if dtype == np.uint16:
        image = _scale_to_uint8(image[..., 0])
        return image
    if channels == 1:
        return np.ascontiguousarray(image[..., 0])
    if encoding.startswith("bgr"):
        return np.ascontiguousarray(image[..., 2::-1])
    return np.ascontiguousarray(image[..., :3])


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, np.ndarray):
        return data.astype(np.uint8, copy=False).tobytes()
    try:
        return bytes(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"image data of type {type(data).__name__} is not a byte buffer") from err


def _scale_to_uint8(image16: np.ndarray) -> np.ndarray:
    peak = int(image16.max()) if image16.size else 0
    bits = max(8, peak.bit_length())
    return (image16 >> (bits - 8)).astype(np.uint8)


def numpy_to_image_fields(
    image: np.ndarray, encoding: str = "rgb8", *, padding: int = 0, bigendian: bool = False
) -> dict[str, Any]:
    """The fields of a `sensor_msgs/Image` (height, width, encoding, is_bigendian, step, data).

    `image` is HxW (mono) or HxWx3 RGB uint8, or HxW uint16 for mono16/16UC1. RGB input is
    reordered for bgr8/bgra8; rgba8/bgra8 get an opaque alpha. `padding` adds bytes to each row.
    """
    if encoding not in IMAGE_ENCODINGS:
        raise ValueError(
            f"unsupported image encoding '{encoding}'; supported: {', '.join(SUPPORTED_ENCODINGS)}"
        )
    dtype, channels = IMAGE_ENCODINGS[encoding]
    image = np.asarray(image)
    if channels == 1:
        if image.ndim == 3 and image.shape[2] == 3:
            gray = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
            image = np.clip(gray + 0.5, 0, 255).astype(np.uint8)
        if image.ndim != 2:
            raise ValueError(f"{encoding} needs an HxW image, got shape {image.shape}")
        if dtype == np.uint16 and image.dtype == np.uint8:
            image = image.astype(np.uint16) << 8
        pixels = image.astype(dtype, copy=False)[..., None]
    else:
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"{encoding} needs an HxWx3 uint8 RGB image, got {image.shape}")
        pixels = image[..., ::-1] if encoding.startswith("bgr") else image
        if channels == 4:
            alpha = np.full((*image.shape[:2], 1), 255, np.uint8)
            pixels = np.concatenate([pixels, alpha], axis=2)
    height, width = pixels.shape[:2]
    pixels = np.ascontiguousarray(pixels)
    if dtype.itemsize > 1:
        pixels = pixels.astype(dtype.newbyteorder(">" if bigendian else "<"))
    row = pixels.view(np.uint8).reshape(height, -1)
    if padding:
        row = np.concatenate([row, np.zeros((height, padding), np.uint8)], axis=1)
    return {
        "height": int(height),
        "width": int(width),
        "encoding": encoding,
        "is_bigendian": int(bool(bigendian and dtype.itemsize > 1)),
        "step": int(row.shape[1]),
        "data": np.ascontiguousarray(row).tobytes(),
    }


def camera_info_to_camera(msg: Any) -> Camera:
    """A `Camera` from a `sensor_msgs/CameraInfo` (K, distortion model, D, binning, ROI).

    plumb_bob / rational_polynomial with all-zero (or no) coefficients -> PINHOLE; with
    k3..k6 zero -> OPENCV (k1, k2, p1, p2); otherwise FULL_OPENCV.

    Raises:
        ValueError: uncalibrated (K all zeros), invalid size or an unsupported distortion model.
    """
    width, height = int(msg.width), int(msg.height)
    K = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    if K.size != 9 or not np.isfinite(K).all():
        raise ValueError(f"CameraInfo.k must have 9 finite values, got {K.tolist()}")
    fx, fy, cx, cy = K[0], K[4], K[2], K[5]
    if fx <= 0 or fy <= 0:
        raise ValueError(
            "CameraInfo is uncalibrated (K has non-positive focal lengths); "
            "calibrate the camera or set a fallback intrinsics parameter"
        )
    if width <= 0 or height <= 0:
        raise ValueError(f"CameraInfo has an invalid image size {width}x{height}")
    D = np.asarray(msg.d, dtype=np.float64).reshape(-1)
    model = str(msg.distortion_model or "")
    if D.size and np.any(D != 0) and model not in ("plumb_bob", "rational_polynomial"):
        raise ValueError(
            f"unsupported distortion model '{model}'; supported: plumb_bob, rational_polynomial "
            "(or rectified images with zero distortion)"
        )
    # ROI and binning: intrinsics refer to the full-resolution sensor.
    roi = getattr(msg, "roi", None)
    if roi is not None and int(roi.width) > 0 and int(roi.height) > 0:
        cx -= float(roi.x_offset)
        cy -= float(roi.y_offset)
        width, height = int(roi.width), int(roi.height)
    bx = max(1, int(getattr(msg, "binning_x", 0) or 0))
    by = max(1, int(getattr(msg, "binning_y", 0) or 0))
    fx, cx = fx / bx, (cx + 0.5) / bx - 0.5
    fy, cy = fy / by, (cy + 0.5) / by - 0.5
    width, height = width // bx, height // by

    coeffs = np.zeros(8)
    coeffs[: min(8, D.size)] = D[:8]
    if not np.any(coeffs):
        return Camera.pinhole(fx, fy, cx, cy, width, height)
    k1, k2, p1, p2, k3, k4, k5, k6 = coeffs
    if not np.any(coeffs[4:]):
        return Camera("OPENCV", width, height, (fx, fy, cx, cy, k1, k2, p1, p2))
    return Camera("FULL_OPENCV", width, height, (fx, fy, cx, cy, k1, k2, p1, p2, k3, k4, k5, k6))


def camera_to_camera_info_fields(camera: Camera) -> dict[str, Any]:
    """The fields of a `sensor_msgs/CameraInfo` for `camera` (pinhole/OpenCV models)."""
    p = camera.params
    if camera.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        fx = fy = p[0]
        cx, cy = p[1], p[2]
        d = list(p[3:])  # k or k1, k2: the leading plumb_bob coefficients
    else:
        fx, fy, cx, cy = p[:4]
        d = list(p[4:])  # OPENCV: k1 k2 p1 p2; FULL_OPENCV: k1 k2 p1 p2 k3 k4 k5 k6
    if len(d) > 5:
        model = "rational_polynomial"
    else:
        model = "plumb_bob"
        d = (d + [0.0] * 5)[:5]
    k = [fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0]
    return {
        "width": camera.width,
        "height": camera.height,
        "distortion_model": model,
        "d": np.asarray(d, np.float64),
        "k": np.asarray(k, np.float64),
        "r": np.eye(3).reshape(-1),
        "p": np.asarray([fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0], np.float64),
    }


def pose_to_ros(cam_from_world: Pose) -> tuple[np.ndarray, np.ndarray]:
    """(position xyz, orientation xyzw) of the camera in the world/map frame (world_from_cam)."""
    world_from_cam = cam_from_world.inverse()
    qw, qx, qy, qz = world_from_cam.qvec
    return world_from_cam.tvec.copy(), np.array([qx, qy, qz, qw])


def ros_to_pose(position: Any, orientation: Any) -> Pose:
    """The library's `cam_from_world` from a ROS camera pose (world_from_cam, xyzw quaternion)."""
    q = np.array([orientation.w, orientation.x, orientation.y, orientation.z], np.float64)
    t = np.array([position.x, position.y, position.z], np.float64)
    return Pose(q, t).inverse()


def stamp_to_ns(stamp: Any) -> int:
    """Nanoseconds from a `builtin_interfaces/Time`."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
