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

Messages come from the network: every decoder here raises only ValueError on bad input, with a
message of bounded length (`bounded_text` quotes attacker-controlled strings).

Plausible intrinsics (`camera_info_to_camera` rejects the rest, see `check_intrinsics`):
- focal lengths fx, fy in [MIN_FOCAL_FACTOR, MAX_FOCAL_FACTOR] x max(width, height): 0.05 is a
  169 degree field of view across the long side (more than a pinhole/OpenCV model can describe),
  100 is 0.6 degrees (a long telephoto); fx/fy within [1/MAX_PIXEL_ASPECT, MAX_PIXEL_ASPECT]
  (anamorphic lenses and 2x1 binning stay well inside 4);
- principal point within [-0.5, 1.5] x the image size (off-centre crops keep it near the image);
- distortion: radial k1..k6 within +-MAX_RADIAL_COEFF (100; rational-polynomial fits of
  wide-angle lenses reach a few tens, plumb_bob lenses stay within +-2) and tangential p1, p2
  within +-MAX_TANGENTIAL_COEFF (1; real decentering is ~1e-3); all finite;
- image size at most MAX_IMAGE_SIDE (65536) pixels a side.
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

MIN_FOCAL_FACTOR = 0.05
MAX_FOCAL_FACTOR = 100.0
MAX_PIXEL_ASPECT = 4.0
MAX_RADIAL_COEFF = 100.0
MAX_TANGENTIAL_COEFF = 1.0
MAX_IMAGE_SIDE = 1 << 16
MAX_BINNING = 64
# camera_for_image: the image may differ from the CameraInfo size only by a uniform resize.
ASPECT_TOLERANCE = 0.01
MAX_RESIZE = 8.0


def bounded_text(text: Any, limit: int = 200) -> str:
    """`text` made safe to echo in logs and status messages: printable, at most ~`limit` chars.

    Non-printable characters (control codes, terminal escapes, NUL, newlines) are shown as
    Python escapes (``\\x1b``); bytes are decoded as UTF-8 with replacement characters. Longer
    text is cut to `limit` characters and ends with ``... (N chars)`` (N bytes for bytes), N being
    the original length; the result is never longer than `limit` + 25 characters.
    """
    limit = max(1, int(limit))
    unit = "chars"
    if isinstance(text, (bytes, bytearray, memoryview)):
        raw = bytes(text)
        n, unit = len(raw), "bytes"
        text = raw[: limit * 4].decode("utf-8", "replace")
        truncated = n > limit * 4
    else:
        try:
            text = str(text)
        except Exception:  # a hostile __str__
            text = f"<{type(text).__name__}>"
        n, truncated = len(text), False
    out: list[str] = []
    size = 0
    for ch in text:
        piece = ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
        if size + len(piece) > limit:
            truncated = True
            break
        out.append(piece)
        size += len(piece)
    shown = "".join(out)
    return f"{shown}... ({n} {unit})" if truncated else shown


def _int_field(msg: Any, name: str, what: str = "image") -> int:
    """An integer message field; ValueError (not TypeError) for a missing or non-integer one."""
    value = getattr(msg, name, None)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return int(value)
        raise ValueError(f"{what} field '{name}' must be an integer, got {bounded_text(value, 40)}")
    return int(value)


def image_to_numpy(msg: Any) -> np.ndarray:
    """Decode a `sensor_msgs/Image` into HxW uint8 gray or HxWx3 uint8 RGB.

    Handles row padding (`step` > width * pixel size), `is_bigendian` for 16-bit data and the
    encodings in `SUPPORTED_ENCODINGS`. 16-bit gray is scaled to 8 bits by the smallest power of
    two covering the frame's maximum, so 10/12-bit data in 16-bit words keeps its contrast.

    Raises:
        ValueError: unsupported encoding, empty image, inconsistent step or truncated data.
    """
    encoding = getattr(msg, "encoding", None)
    if not isinstance(encoding, str) or encoding not in IMAGE_ENCODINGS:
        raise ValueError(
            f"unsupported image encoding '{bounded_text(encoding, 64)}'; "
            f"supported: {', '.join(SUPPORTED_ENCODINGS)}"
        )
    dtype, channels = IMAGE_ENCODINGS[encoding]
    height, width, step = (_int_field(msg, k) for k in ("height", "width", "step"))
    if height <= 0 or width <= 0:
        raise ValueError(f"empty image ({width}x{height})")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ValueError(
            f"image step {step} is smaller than a row of {width} {encoding} pixels ({row_bytes} B)"
        )
    data = getattr(msg, "data", None)
    buf = data if isinstance(data, (bytes, bytearray)) else _as_bytes(data)
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
        order = ">" if _is_bigendian(msg) else "<"
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


def _is_bigendian(msg: Any) -> bool:
    value = getattr(msg, "is_bigendian", 0)
    if isinstance(value, (bool, np.bool_, int, np.integer)) and int(value) in (0, 1):
        return bool(value)
    raise ValueError(f"image field 'is_bigendian' must be 0 or 1, got {bounded_text(value, 40)}")


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ValueError(f"image data must be uint8 bytes, got a {data.dtype} array")
        return data.tobytes()
    if isinstance(data, (str, int, float)) or data is None:
        raise ValueError(f"image data of type {type(data).__name__} is not a byte buffer")
    try:
        return memoryview(data).cast("B").tobytes()  # array.array('B'), memoryview, ...
    except (TypeError, ValueError):
        pass
    try:
        return bytes(data)
    except (TypeError, ValueError, OverflowError) as err:
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


def _float_array(value: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise ValueError(f"CameraInfo.{what} is not a list of numbers ({err})") from None
    if value is None or arr.size > 1000:
        raise ValueError(f"CameraInfo.{what} must be a short list of numbers, got {arr.size}")
    return arr


def check_intrinsics(
    fx: float, fy: float, cx: float, cy: float, width: int, height: int, what: str = "CameraInfo"
) -> None:
    """Raise ValueError unless the pinhole part is plausible (bounds in the module doc)."""
    side = max(width, height)
    for name, f in (("fx", fx), ("fy", fy)):
        if not MIN_FOCAL_FACTOR * side <= f <= MAX_FOCAL_FACTOR * side:
            raise ValueError(
                f"{what} focal length {name}={f:.6g} px is implausible for a {width}x{height} "
                f"image (expected {MIN_FOCAL_FACTOR:g}..{MAX_FOCAL_FACTOR:g} x {side} px)"
            )
    if not 1 / MAX_PIXEL_ASPECT <= fx / fy <= MAX_PIXEL_ASPECT:
        raise ValueError(
            f"{what} focal lengths fx={fx:.6g}, fy={fy:.6g} px are implausible (pixel aspect "
            f"{fx / fy:.3g}, expected 1/{MAX_PIXEL_ASPECT:g}..{MAX_PIXEL_ASPECT:g})"
        )
    for name, c, size in (("cx", cx, width), ("cy", cy, height)):
        if not -0.5 * size <= c <= 1.5 * size:
            raise ValueError(
                f"{what} principal point {name}={c:.6g} px is far outside the {width}x{height} "
                f"image (expected {-0.5 * size:g}..{1.5 * size:g})"
            )


def _check_distortion(coeffs: np.ndarray, model: str) -> None:
    names = ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")
    for i, (name, v) in enumerate(zip(names, coeffs, strict=False)):
        bound = MAX_TANGENTIAL_COEFF if name.startswith("p") else MAX_RADIAL_COEFF
        if not np.isfinite(v) or abs(v) > bound:
            raise ValueError(
                f"CameraInfo {model} distortion {name}={v:.6g} is implausible for a real lens "
                f"(expected finite, within +-{bound:g}; D[{i}])"
            )


def camera_info_to_camera(msg: Any) -> Camera:
    """A `Camera` from a `sensor_msgs/CameraInfo` (K, distortion model, D, binning, ROI).

    plumb_bob / rational_polynomial with all-zero (or no) coefficients -> PINHOLE; with
    k3..k6 zero -> OPENCV (k1, k2, p1, p2); otherwise FULL_OPENCV.

    Raises:
        ValueError: uncalibrated (K all zeros), invalid size, ROI or binning, implausible
            intrinsics or distortion (bounds in the module doc), non-finite values or an
            unsupported distortion model. Never another exception type.
    """
    width, height, (fx, fy, cx, cy) = _camera_info_intrinsics(msg)
    coeffs = _camera_info_distortion(msg)
    # ROI and binning: intrinsics refer to the full-resolution sensor.
    cx, cy, width, height = _apply_roi(msg, cx, cy, width, height)
    fx, fy, cx, cy, width, height = _apply_binning(msg, fx, fy, cx, cy, width, height)
    return _camera_from_coeffs(coeffs, fx, fy, cx, cy, width, height)


def _camera_info_intrinsics(msg: Any) -> tuple[int, int, tuple[float, float, float, float]]:
    """Image size and (fx, fy, cx, cy) of a CameraInfo, checked (ValueError otherwise)."""
    width, height = _int_field(msg, "width", "CameraInfo"), _int_field(msg, "height", "CameraInfo")
    K = _float_array(getattr(msg, "k", None), "k")
    if K.size != 9 or not np.isfinite(K).all():
        raise ValueError(
            f"CameraInfo.k must have 9 finite values, got {bounded_text(K.tolist(), 120)}"
        )
    fx, fy, cx, cy = (float(v) for v in (K[0], K[4], K[2], K[5]))
    if fx <= 0 or fy <= 0:
        raise ValueError(
            "CameraInfo is uncalibrated (K has non-positive focal lengths); "
            "calibrate the camera or set a fallback intrinsics parameter"
        )
    if not (0 < width <= MAX_IMAGE_SIDE and 0 < height <= MAX_IMAGE_SIDE):
        raise ValueError(
            f"CameraInfo has an invalid image size {width}x{height} "
            f"(expected 1..{MAX_IMAGE_SIDE} px a side)"
        )
    if K[6] != 0 or K[7] != 0 or K[8] != 1:
        raise ValueError(
            f"CameraInfo.k is not an intrinsics matrix (last row {K[6:].tolist()}, need [0, 0, 1])"
        )
    check_intrinsics(fx, fy, cx, cy, width, height)
    return width, height, (fx, fy, cx, cy)


def _camera_info_distortion(msg: Any) -> np.ndarray:
    """The 8 coefficients (k1 k2 p1 p2 k3 k4 k5 k6) of a CameraInfo's distortion, checked."""
    D = _float_array(getattr(msg, "d", None), "d")
    raw_model = getattr(msg, "distortion_model", "") or ""
    model = raw_model if isinstance(raw_model, str) else ""
    if not isinstance(raw_model, str) or (
        D.size and np.any(D != 0) and model not in ("plumb_bob", "rational_polynomial")
    ):
        raise ValueError(
            f"unsupported distortion model '{bounded_text(raw_model, 64)}'; supported: plumb_bob, "
            "rational_polynomial (or rectified images with zero distortion)"
        )
    if D.size > 8 and np.any(D[8:] != 0):
        raise ValueError(
            f"CameraInfo.d has {D.size} coefficients; {model} uses at most 8 "
            "(k1 k2 p1 p2 k3 k4 k5 k6) and the rest must be zero"
        )
    coeffs = np.zeros(8)
    coeffs[: min(8, D.size)] = D[:8]
    _check_distortion(coeffs, model or "(no model)")
    return coeffs


def _apply_roi(
    msg: Any, cx: float, cy: float, width: int, height: int
) -> tuple[float, float, int, int]:
    """(cx, cy, width, height) for the CameraInfo's ROI, if it sets one."""
    roi = getattr(msg, "roi", None)
    if roi is not None:
        rx, ry, rw, rh = (_int_field(roi, k, "CameraInfo.roi") for k in (
            "x_offset", "y_offset", "width", "height"))  # fmt: skip
        if rw > 0 and rh > 0:
            if rx < 0 or ry < 0 or rx + rw > width or ry + rh > height:
                raise ValueError(
                    f"CameraInfo ROI {rw}x{rh} at ({rx}, {ry}) is not inside the "
                    f"{width}x{height} image"
                )
            cx -= float(rx)
            cy -= float(ry)
            width, height = rw, rh
    return cx, cy, width, height


def _apply_binning(
    msg: Any, fx: float, fy: float, cx: float, cy: float, width: int, height: int
) -> tuple[float, float, float, float, int, int]:
    """(fx, fy, cx, cy, width, height) for the CameraInfo's binning (none: unchanged)."""
    bx = _int_field(msg, "binning_x", "CameraInfo") if getattr(msg, "binning_x", 0) else 0
    by = _int_field(msg, "binning_y", "CameraInfo") if getattr(msg, "binning_y", 0) else 0
    bx, by = max(1, bx), max(1, by)
    if bx > MAX_BINNING or by > MAX_BINNING or width // bx == 0 or height // by == 0:
        raise ValueError(
            f"CameraInfo binning {bx}x{by} is implausible for a {width}x{height} image "
            f"(expected 1..{MAX_BINNING}, leaving at least one pixel)"
        )
    fx, cx = fx / bx, (cx + 0.5) / bx - 0.5
    fy, cy = fy / by, (cy + 0.5) / by - 0.5
    return fx, fy, cx, cy, width // bx, height // by


def _camera_from_coeffs(
    coeffs: np.ndarray, fx: float, fy: float, cx: float, cy: float, width: int, height: int
) -> Camera:
    """PINHOLE with no distortion, OPENCV with k3..k6 zero, else FULL_OPENCV."""
    if not np.any(coeffs):
        return Camera.pinhole(fx, fy, cx, cy, width, height)
    k1, k2, p1, p2, k3, k4, k5, k6 = coeffs
    if not np.any(coeffs[4:]):
        return Camera("OPENCV", width, height, (fx, fy, cx, cy, k1, k2, p1, p2))
    return Camera("FULL_OPENCV", width, height, (fx, fy, cx, cy, k1, k2, p1, p2, k3, k4, k5, k6))


def camera_for_image(camera: Camera, width: int, height: int) -> Camera:
    """`camera` (from a CameraInfo) for a `width` x `height` image: itself if the sizes agree,
    else scaled to the image when it is a uniform resize of the CameraInfo's size.

    A resize must keep the aspect ratio within ASPECT_TOLERANCE (1%, relative: rounding a
    resized side to whole pixels stays far inside it for images of 100 px and up) and scale by
    1/MAX_RESIZE..MAX_RESIZE (8); anything else (a 1x1 CameraInfo for a 1024x683 image, a 4:3
    CameraInfo for a 3:2 stream) means the CameraInfo belongs to another stream.

    Raises:
        ValueError: "CameraInfo is WxH but the image is wxh (...)", saying which check failed.
    """
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise ValueError(f"invalid image size {width}x{height}")
    cw, ch = int(camera.width), int(camera.height)
    if (cw, ch) == (width, height):
        return camera
    head = f"CameraInfo is {cw}x{ch} but the image is {width}x{height}"
    aspect = (width / height) / (cw / ch)
    if abs(aspect - 1.0) > ASPECT_TOLERANCE:
        raise ValueError(
            f"{head}: aspect ratios differ by {abs(aspect - 1.0):.1%} "
            f"(more than {ASPECT_TOLERANCE:.0%}); the CameraInfo is for another stream"
        )
    scale = width / cw
    if not 1 / MAX_RESIZE <= scale <= MAX_RESIZE:
        raise ValueError(
            f"{head}: a resize by {scale:.3g} is implausible "
            f"(expected 1/{MAX_RESIZE:g}..{MAX_RESIZE:g})"
        )
    return camera.scaled(width / cw, height / ch)


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


def pose_from_ros(position: Any, orientation: Any) -> Pose:
    """The transform a ROS pose or transform carries (`parent_from_child`: position or
    translation, xyzw quaternion), as a `Pose`."""
    q = np.array([orientation.w, orientation.x, orientation.y, orientation.z], np.float64)
    t = np.array([position.x, position.y, position.z], np.float64)
    return Pose(q, t)


def ros_to_pose(position: Any, orientation: Any) -> Pose:
    """The library's `cam_from_world` from a ROS camera pose (world_from_cam, xyzw quaternion)."""
    return pose_from_ros(position, orientation).inverse()


def stamp_to_ns(stamp: Any) -> int:
    """Nanoseconds from a `builtin_interfaces/Time`."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


COMPRESSED_FORMATS = ("jpeg", "png")


def compressed_to_numpy(msg: Any) -> np.ndarray:
    """Decode a `sensor_msgs/CompressedImage` (JPEG or PNG) into HxW gray or HxWx3 RGB uint8.

    `format` follows image_transport ("jpeg", "png", "bgr8; jpeg compressed bgr8", ...); the
    payload's own signature decides. 16-bit PNG is scaled as `image_to_numpy` scales mono16.

    Raises:
        ValueError: an unknown format, or truncated or corrupt data.
    """
    from ..io_utils import decode_image_bytes

    fmt = bounded_text(getattr(msg, "format", ""), 64)
    image = decode_image_bytes(_as_bytes(getattr(msg, "data", None)), f"compressed image ({fmt})")
    if image.dtype == np.uint16:
        image = _scale_to_uint8(image if image.ndim == 2 else image[..., 0])
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 3:  # OpenCV decodes to BGR(A)
        image = np.ascontiguousarray(image[..., 2::-1])
    return image


def numpy_to_compressed_fields(
    image: np.ndarray, fmt: str = "jpeg", quality: int = 90
) -> dict[str, Any]:
    """The fields of a `sensor_msgs/CompressedImage` (format, data) for HxW or HxWx3 RGB uint8."""
    import cv2

    if fmt not in COMPRESSED_FORMATS:
        raise ValueError(f"compressed format must be one of {COMPRESSED_FORMATS}, got {fmt!r}")
    bgr = image[..., ::-1] if image.ndim == 3 else image
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    ok, data = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", bgr, params)
    if not ok:
        raise ValueError(f"cannot encode a {image.shape} image as {fmt}")
    return {"format": fmt, "data": data.tobytes()}
