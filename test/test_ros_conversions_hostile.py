"""ROS-free conversions on hostile and careless messages (real sensor_msgs classes): implausible
intrinsics, CameraInfo/image size mismatches, attacker-controlled text in errors, and a seeded
fuzz of the image and CameraInfo decoders that may only ever raise ValueError."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from supergf_ros.geometry import Camera
from supergf_ros.ros import conversions as conv
from supergf_ros.ros.conversions import (
    SUPPORTED_ENCODINGS,
    camera_info_to_camera,
    camera_to_camera_info_fields,
    image_to_numpy,
    numpy_to_image_fields,
)

sensor_msgs = pytest.importorskip("sensor_msgs.msg")
Image, CameraInfo = sensor_msgs.Image, sensor_msgs.CameraInfo

STRECHA = Camera.pinhole(1523.6, 1523.6, 511.5, 341.0, 1024, 683)  # fountain-P11 at 1024 px


def _info(camera: Camera = STRECHA, **changes) -> CameraInfo:
    fields = {**camera_to_camera_info_fields(camera), **changes}
    msg = CameraInfo()
    msg.width, msg.height = int(fields["width"]), int(fields["height"])
    msg.distortion_model = fields["distortion_model"]
    msg.d = [float(v) for v in fields["d"]]
    msg.k = np.asarray(fields["k"], np.float64)
    msg.r = np.asarray(fields["r"], np.float64)
    msg.p = np.asarray(fields["p"], np.float64)
    return msg


def _k(fx, fy, cx, cy):
    return np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1], np.float64)


def test_plausible_real_cameras_still_convert():
    assert camera_info_to_camera(_info()) == STRECHA
    wide = Camera("OPENCV", 640, 480, (200.0, 200.0, 319.5, 239.5, -0.35, 0.12, 1e-3, -2e-3))
    assert camera_info_to_camera(_info(wide)) == wide
    fisheye_like = Camera(
        "FULL_OPENCV", 1280, 960,
        (450.0, 450.0, 640.0, 480.0, 12.0, 8.0, 1e-4, 1e-4, 0.5, 12.3, 11.0, 2.0),
    )  # fmt: skip
    assert camera_info_to_camera(_info(fisheye_like)).model == "FULL_OPENCV"


@pytest.mark.parametrize(
    ("k", "d", "message"),
    [
        (_k(1e-3, 1e-3, 511.5, 341.0), None, "focal length"),  # 0.001 px: a degenerate camera
        (_k(1e7, 1e7, 511.5, 341.0), None, "focal length"),  # 10 million px
        (_k(1523.6, 152360.0, 511.5, 341.0), None, "focal length"),
        (_k(1523.6, 1523.6, 511.5, 1e6), None, "principal point"),
        (_k(1523.6, 1523.6, -5000.0, 341.0), None, "principal point"),
        (None, [1e9, 0, 0, 0, 0], "distortion"),
        (None, [0, 0, 5.0, 0, 0], "distortion"),  # tangential 5: no real lens
        (None, [float("nan"), 0, 0, 0, 0], "distortion"),
        (None, [float("inf"), 0, 0, 0, 0], "distortion"),
    ],
)
def test_implausible_intrinsics_are_rejected(k, d, message):
    msg = _info()
    if k is not None:
        msg.k = k
    if d is not None:
        msg.d = [float(v) for v in d]
    with pytest.raises(ValueError, match=message):
        camera_info_to_camera(msg)


def test_bad_roi_binning_and_size_are_rejected():
    msg = _info()
    msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = 1000, 0, 100, 100
    with pytest.raises(ValueError, match="ROI"):
        camera_info_to_camera(msg)
    msg = _info()
    msg.binning_x = 4096
    with pytest.raises(ValueError, match="binning"):
        camera_info_to_camera(msg)
    msg = _info()
    msg.width = 4_000_000_000
    with pytest.raises(ValueError, match="size"):
        camera_info_to_camera(msg)


def test_camera_for_image_uses_a_relative_aspect_tolerance():
    from supergf_ros.ros.conversions import camera_for_image

    assert camera_for_image(STRECHA, 1024, 683) is STRECHA
    half = camera_for_image(STRECHA, 512, 342)  # a resized stream: within 1% aspect
    np.testing.assert_allclose(half.params, STRECHA.scaled(512 / 1024, 342 / 683).params)
    assert (half.width, half.height) == (512, 342)
    tiny = Camera.pinhole(1.0, 1.0, 0.0, 0.0, 1, 1)
    # the node's old absolute check |cw*h - ch*w| <= max(w, h) lets this 1x1 camera through
    assert abs(tiny.width * 683 - tiny.height * 1024) <= max(1024, 683)
    with pytest.raises(ValueError, match=r"CameraInfo is 1x1 but the image is 1024x683"):
        camera_for_image(tiny, 1024, 683)
    with pytest.raises(ValueError, match="aspect"):
        camera_for_image(STRECHA, 1024, 768)  # 4:3 image, 3:2 CameraInfo
    with pytest.raises(ValueError, match="resize by 16 is implausible"):
        camera_for_image(STRECHA, 1024 * 16, 683 * 16)
    with pytest.raises(ValueError, match="image size"):
        camera_for_image(STRECHA, 0, 683)


def test_bounded_text_sanitizes_and_truncates():
    from supergf_ros.ros.conversions import bounded_text

    assert bounded_text("rgb8") == "rgb8"
    out = bounded_text("a\x1b[31mred\x00\nline" + "x" * 1000, limit=50)
    assert out.isprintable() and "\x1b" not in out and "\x00" not in out
    assert len(out) <= 80 and "1015 chars" in out and out.startswith("a\\x1b[31mred")
    assert bounded_text(b"\xff\xfe", limit=10).isprintable()
    assert bounded_text(None) == "None"


def test_huge_encoding_is_not_echoed_whole():
    fields = numpy_to_image_fields(np.zeros((4, 4, 3), np.uint8), "rgb8")
    msg = Image(**{**fields, "data": list(fields["data"])})
    msg.encoding = "\x1b[2J" + "A" * 100_000
    with pytest.raises(ValueError, match="unsupported image encoding") as err:
        image_to_numpy(msg)
    text = str(err.value)
    assert len(text) < 500 and "100004 chars" in text and "\x1b" not in text


def _random_text(rng: np.random.Generator) -> str:
    kind = rng.integers(6)
    if kind == 0:
        return str(rng.choice(SUPPORTED_ENCODINGS))
    if kind == 1:
        return ""
    if kind == 2:
        return "".join(chr(c) for c in rng.integers(1, 0x2FF, rng.integers(1, 40)))
    if kind == 3:
        return str(rng.choice(["yuv422", "bayer_rggb8", "32FC1", "RGB8", "mono8 ", "16UC3"]))
    if kind == 4:
        return "x" * int(rng.integers(1000, 20000))
    return str(rng.choice(SUPPORTED_ENCODINGS)) + "\x00"


def _pick(rng: np.random.Generator, options: list):
    return options[int(rng.integers(len(options)))]


def _random_int(rng: np.random.Generator, hi: int) -> int:
    return int(rng.choice([0, 1, 2, 3, 7, 64, hi, 2**31 - 1, 2**32 - 1, int(rng.integers(0, hi))]))


def _check_image(msg) -> bool:
    try:
        out = image_to_numpy(msg)
    except ValueError as err:
        assert len(str(err)) < 1000  # bounded, whatever the input
        return False
    assert out.dtype == np.uint8 and out.ndim in (2, 3)
    assert out.shape[:2] == (int(msg.height), int(msg.width))
    return True


def test_fuzz_image_to_numpy_only_raises_value_error():
    rng = np.random.default_rng(20240601)
    decoded = 0
    for _ in range(3000):  # real messages: mostly sane headers with one or two things wrong
        msg = Image()
        msg.encoding = _random_text(rng) if rng.random() < 0.4 else _pick(rng, SUPPORTED_ENCODINGS)
        small = rng.random() < 0.75
        msg.width = int(rng.integers(1, 40)) if small else _random_int(rng, 40)
        msg.height = int(rng.integers(1, 40)) if rng.random() < 0.75 else _random_int(rng, 40)
        dtype, channels = conv.IMAGE_ENCODINGS.get(msg.encoding, (np.dtype(np.uint8), 3))
        row = msg.width * channels * dtype.itemsize
        msg.step = row + int(rng.integers(0, 9)) if rng.random() < 0.7 else _random_int(rng, 200)
        msg.step = min(msg.step, 2**32 - 1)
        msg.is_bigendian = int(rng.integers(2))
        sizes = [msg.step * msg.height, msg.step * (msg.height - 1) + row, int(rng.integers(3000))]
        n = max(0, min(int(_pick(rng, sizes)) + int(rng.integers(-2, 3)), 1 << 20))
        msg.data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        decoded += _check_image(msg)
    assert decoded > 800  # most cases reach the pixel decoding
    # what duck-typed callers (bags, tests) may pass: wrong types and negative sizes
    values = [None, -1, -(2**40), 1.5, "12", "abc", float("nan"), [], 2**70, True]
    for _ in range(1000):
        ns = SimpleNamespace(
            encoding=_pick(rng, [None, 5, b"rgb8", "rgb8", "mono16", _random_text(rng)]),
            width=values[rng.integers(len(values))] if rng.random() < 0.5 else 3,
            height=values[rng.integers(len(values))] if rng.random() < 0.5 else 2,
            step=values[rng.integers(len(values))] if rng.random() < 0.5 else 12,
            is_bigendian=values[rng.integers(len(values))],
            data=_pick(
                rng,
                [None, 12, "text", b"\x00" * 24, [300] * 24, [1.5] * 24, np.zeros(24), object()],
            ),
        )
        _check_image(ns)


def _check_camera(msg) -> bool:
    try:
        cam = camera_info_to_camera(msg)
    except ValueError as err:
        assert len(str(err)) < 1000
        return False
    assert np.isfinite(cam.params).all() and cam.width > 0 and cam.height > 0
    fx, fy = cam.params[:2]
    assert fx > 0 and fy > 0 and math.isfinite(fx / fy)
    # relative to the full sensor (an ROI crops the image, not the focal length)
    assert max(fx, fy) <= conv.MAX_FOCAL_FACTOR * max(int(msg.width), int(msg.height))
    return True


def test_fuzz_camera_info_to_camera_only_raises_value_error():
    rng = np.random.default_rng(7)
    specials = [0.0, -1.0, 1e-9, 1e9, 1e300, float("nan"), float("inf"), -float("inf")]
    accepted = 0
    for _ in range(3000):  # real messages: mostly plausible with some fields broken
        msg = _info()
        w = int(rng.integers(16, 4000)) if rng.random() < 0.8 else _random_int(rng, 5000)
        h = int(rng.integers(16, 4000)) if rng.random() < 0.8 else _random_int(rng, 5000)
        msg.width, msg.height = w, h
        side = max(w, h, 1)
        if rng.random() < 0.7:
            f = side * float(np.exp(rng.uniform(np.log(0.02), np.log(200))))
            k = _k(
                f,
                f * rng.uniform(0.8, 1.25),
                w * rng.uniform(-0.7, 1.7),
                h * rng.uniform(-0.7, 1.7),
            )
        else:
            k = rng.uniform(-2000, 4000, 9)
        if rng.random() < 0.3:
            k[rng.integers(9, size=rng.integers(1, 3))] = _pick(rng, specials)
        msg.k = k
        n = int(_pick(rng, [0, 0, 4, 5, 5, 8, 12, 14, 1000]))
        d = rng.normal(0, float(_pick(rng, [1e-3, 0.1, 0.3, 1, 100, 1e6])), n)
        if n and rng.random() < 0.3:
            d[rng.integers(n)] = _pick(rng, specials)
        msg.d = [float(v) for v in d]
        msg.distortion_model = _pick(
            rng, ["plumb_bob", "plumb_bob", "rational_polynomial", "equidistant", "", "x" * 5000]
        )
        if rng.random() < 0.3:
            msg.binning_x, msg.binning_y = _random_int(rng, 4), _random_int(rng, 4)
        else:
            msg.binning_x, msg.binning_y = _pick(rng, [0, 1, 2]), _pick(rng, [0, 1, 2])
        if rng.random() < 0.3:
            msg.roi.x_offset, msg.roi.y_offset = _random_int(rng, 500), _random_int(rng, 500)
            msg.roi.width, msg.roi.height = _random_int(rng, 800), _random_int(rng, 800)
        accepted += _check_camera(msg)
    assert accepted > 100  # the fuzz reaches the end of the decoder, not only early rejections
    for _ in range(500):  # duck-typed: wrong types
        ns = SimpleNamespace(
            width=_pick(rng, [None, -5, "640", 640, 1.5, 2**80]),
            height=_pick(rng, [None, -5, 480, 0]),
            k=_pick(rng, [None, "k", [1.0] * 8, list(_k(500, 500, 320, 240)), [[1, 2], [3]]]),
            d=_pick(rng, [None, [], ["a"], [0.1] * 5, [[0.1]]]),
            distortion_model=_pick(rng, [None, 7, "plumb_bob"]),
            binning_x=_pick(rng, [None, -3, 2, "2"]),
            binning_y=0,
            roi=_pick(rng, [None, SimpleNamespace(x_offset=-1, y_offset=0, width=10, height=10)]),
        )
        _check_camera(ns)
