"""Compressed images: the decoder on real photos, and the node on `<image_topic>/compressed`
(image_transport: compressed) over real DDS, with a corrupt JPEG reported, not fatal."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from supergf_ros.ros.conversions import compressed_to_numpy, numpy_to_compressed_fields


@pytest.fixture(scope="module")
def photo(data_dir: Path) -> np.ndarray:
    path = sorted((data_dir / "photos" / "sacre_coeur" / "mapping").glob("*.jpg"))[0]
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_png_round_trip_is_exact_and_jpeg_is_close(photo):
    png = compressed_to_numpy(SimpleNamespace(**numpy_to_compressed_fields(photo, "png")))
    assert np.array_equal(png, photo)
    jpeg = compressed_to_numpy(SimpleNamespace(**numpy_to_compressed_fields(photo, "jpeg", 95)))
    assert jpeg.shape == photo.shape and np.abs(jpeg.astype(int) - photo).mean() < 4.0
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    assert compressed_to_numpy(SimpleNamespace(**numpy_to_compressed_fields(gray, "png"))).ndim == 2


def test_sixteen_bit_png_keeps_its_contrast(photo):
    gray12 = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY).astype(np.uint16) << 4  # 12-bit data
    _, data = cv2.imencode(".png", gray12)
    out = compressed_to_numpy(SimpleNamespace(format="png", data=data.tobytes()))
    assert out.dtype == np.uint8 and np.array_equal(out, (gray12 >> 4).astype(np.uint8))


@pytest.mark.parametrize("cut", ["half", "no-end", "garbage", "empty"])
def test_truncated_or_garbage_payloads_are_clear_errors(photo, cut):
    data = numpy_to_compressed_fields(photo, "jpeg")["data"]
    bad = {
        "half": data[: len(data) // 2],
        "no-end": data[:-2],
        "garbage": b"\x00\x01" * 500,
        "empty": b"",
    }[cut]
    with pytest.raises(ValueError, match=r"truncated|neither JPEG nor PNG"):
        compressed_to_numpy(SimpleNamespace(format="jpeg", data=bad))


def test_corrupt_jpeg_body_is_refused(photo):
    data = bytearray(numpy_to_compressed_fields(photo, "jpeg")["data"])
    data[2:200] = b"\x00" * 198  # the headers are gone, the end marker is still there
    with pytest.raises(ValueError, match="corrupt"):
        compressed_to_numpy(SimpleNamespace(format="jpeg", data=bytes(data)))


@pytest.mark.ros
def test_node_localizes_compressed_frames_and_survives_a_corrupt_one(cache_dir, tmp_path):
    pytest.importorskip("rclpy")
    from ros_testing import IsolatedRos, synthetic_sift_map, wait_until
    from sensor_msgs.msg import CompressedImage
    from test_ros_node import NODE_EXE, PARAMS, RELIABLE, Harness, _query

    from supergf_ros.ros.replay import stop_node

    scene = synthetic_sift_map(cache_dir)
    log = tmp_path / "node.log"
    with IsolatedRos() as ros, open(log, "w") as log_file:
        cmd = [str(NODE_EXE), "--ros-args", "--params-file", str(PARAMS)]
        for arg in (
            f"map_path:={scene['map']}",
            "image_topic:=/test/image",
            "image_transport:=compressed",
            "camera_info_topic:=/test/camera_info",
            "odometry_source:=none",
            "confirm_fixes:=1",
        ):
            cmd += ["-p", arg]
        proc = subprocess.Popen(cmd, env=ros.env, stdout=log_file, stderr=subprocess.STDOUT)
        h = Harness(ros, proc, log, scene)
        h.image_type = CompressedImage
        h.image_pub = ros.node.create_publisher(CompressedImage, "/test/image/compressed", RELIABLE)
        try:
            assert wait_until(lambda: h.ready() or proc.poll() is not None, 120.0), h.tail()
            image, camera, _ = _query(scene, 0)
            h.send_camera_info(camera)
            wait_until(lambda: False, 0.3)
            fields = numpy_to_compressed_fields(image, "jpeg", 95)
            st = h.send(fields)
            assert st.success, st.failure_reason
            st = h.send({**fields, "data": fields["data"][: len(fields["data"]) // 3]})
            assert not st.success and "truncated" in st.failure_reason
            assert h.send(fields).success and proc.poll() is None
        finally:
            code = stop_node(proc)
        assert code == 0, h.tail()
