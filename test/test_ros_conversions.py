"""ROS-free conversions: image encodings, CameraInfo, poses, covariance (real pycolmap)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from supergf_ros.geometry import Camera, Pose
from supergf_ros.geometry import world_from_cam_covariance as covariance_to_ros
from supergf_ros.ros.conversions import (
    SUPPORTED_ENCODINGS,
    camera_info_to_camera,
    camera_to_camera_info_fields,
    image_to_numpy,
    numpy_to_image_fields,
    pose_to_ros,
    ros_to_pose,
)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (7, 5, 3), dtype=np.uint8)
GRAY = np.clip(RGB.astype(np.float32) @ [0.299, 0.587, 0.114] + 0.5, 0, 255).astype(np.uint8)


def _msg(**fields):
    return SimpleNamespace(**fields)


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
@pytest.mark.parametrize("padding", [0, 3, 8])
def test_image_roundtrip_all_encodings_with_padding(encoding, padding):
    fields = numpy_to_image_fields(RGB, encoding, padding=padding)
    assert fields["step"] >= fields["width"] + padding
    out = image_to_numpy(_msg(**fields))
    if encoding in ("rgb8", "bgr8", "rgba8", "bgra8"):
        np.testing.assert_array_equal(out, RGB)
    else:  # gray encodings (16-bit ones scaled back to 8 bits)
        assert out.shape == GRAY.shape and out.dtype == np.uint8
        assert np.abs(out.astype(int) - GRAY).max() <= 1


def test_bgr8_channel_order_is_swapped():
    data = bytes([10, 20, 30] * 4)  # one BGR pixel repeated, 2x2 image
    out = image_to_numpy(
        _msg(height=2, width=2, encoding="bgr8", is_bigendian=0, step=6, data=data)
    )
    np.testing.assert_array_equal(out[0, 0], [30, 20, 10])


def test_mono16_endianness_and_12bit_scaling():
    values = np.array([[0, 1024], [2048, 4095]], dtype=np.uint16)  # 12-bit data
    for bigendian in (False, True):
        raw = values.astype(">u2" if bigendian else "<u2").tobytes()
        msg = _msg(
            height=2, width=2, encoding="mono16", is_bigendian=int(bigendian), step=4, data=raw
        )
        out = image_to_numpy(msg)
        np.testing.assert_array_equal(out, (values >> 4).astype(np.uint8))
    # the wrong byte order gives a different image: endianness matters
    raw = values.astype(">u2").tobytes()
    wrong = image_to_numpy(
        _msg(height=2, width=2, encoding="mono16", is_bigendian=0, step=4, data=raw)
    )
    assert not np.array_equal(wrong, (values >> 4).astype(np.uint8))


def test_last_row_without_padding_and_buffer_types():
    fields = numpy_to_image_fields(GRAY, "mono8", padding=4)
    data = fields["data"][:-4]  # some drivers omit the last row's padding
    np.testing.assert_array_equal(image_to_numpy(_msg(**{**fields, "data": data})), GRAY)
    import array

    arr = array.array("B", fields["data"])  # what rclpy gives for uint8[]
    np.testing.assert_array_equal(image_to_numpy(_msg(**{**fields, "data": arr})), GRAY)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"encoding": "yuv422"}, "unsupported image encoding 'yuv422'"),
        ({"encoding": "bayer_rggb8"}, "unsupported image encoding"),
        ({"height": 0, "width": 0, "data": b""}, "empty image"),
        ({"step": 4}, "step 4 is smaller"),
        ({"data": b"\x00" * 20}, "truncated"),
    ],
)
def test_bad_images_raise_specific_value_errors(change, message):
    fields = numpy_to_image_fields(RGB, "rgb8")
    with pytest.raises(ValueError, match=message):
        image_to_numpy(_msg(**{**fields, **change}))


@pytest.mark.parametrize(
    "camera",
    [
        Camera.pinhole(500.0, 510.0, 319.5, 239.5, 640, 480),
        Camera("OPENCV", 640, 480, (500, 500, 320, 240, -0.1, 0.02, 0.001, -0.002)),
        Camera(
            "FULL_OPENCV",
            640,
            480,
            (500, 500, 320, 240, -0.1, 0.02, 1e-3, 2e-3, 0.01, 0.0, 0.0, 1e-4),
        ),
    ],
)
def test_camera_info_roundtrip(camera):
    fields = camera_to_camera_info_fields(camera)
    msg = _msg(
        **fields, binning_x=0, binning_y=0, roi=_msg(x_offset=0, y_offset=0, width=0, height=0)
    )
    back = camera_info_to_camera(msg)
    assert back.model == camera.model
    np.testing.assert_allclose(back.params, camera.params)
    assert (back.width, back.height) == (camera.width, camera.height)


def test_camera_info_binning_and_errors():
    cam = Camera.pinhole(500.0, 500.0, 319.5, 239.5, 640, 480)
    fields = camera_to_camera_info_fields(cam)
    binned = camera_info_to_camera(_msg(**fields, binning_x=2, binning_y=2, roi=None))
    assert (binned.width, binned.height) == (320, 240)
    np.testing.assert_allclose(binned.params, cam.scaled(0.5).params)
    with pytest.raises(ValueError, match="uncalibrated"):
        camera_info_to_camera(_msg(**{**fields, "k": np.zeros(9)}, roi=None))
    with pytest.raises(ValueError, match="unsupported distortion model 'equidistant'"):
        camera_info_to_camera(
            _msg(**{**fields, "distortion_model": "equidistant", "d": [0.1, 0, 0, 0]}, roi=None)
        )


def test_pose_conversion_is_world_from_cam():
    cam_from_world = Pose.from_matrix(np.c_[_rot([0.3, -0.2, 0.5]), [1.0, -2.0, 3.0]])
    position, xyzw = pose_to_ros(cam_from_world)
    np.testing.assert_allclose(position, cam_from_world.center)  # camera centre in the map
    back = ros_to_pose(
        _msg(x=position[0], y=position[1], z=position[2]),
        _msg(x=xyzw[0], y=xyzw[1], z=xyzw[2], w=xyzw[3]),
    )
    np.testing.assert_allclose(back.matrix, cam_from_world.matrix, atol=1e-12)


def _rot(rotvec):
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(rotvec).as_matrix()


def test_covariance_transform_matches_monte_carlo_of_real_pycolmap():
    """Noisy PnP with pycolmap many times: the spread of the published (world_from_cam) pose
    must match the covariance pycolmap reports, transformed by `covariance_to_ros`."""
    import pycolmap
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(1)
    camera = Camera.pinhole(500, 500, 320, 240, 640, 480)
    gt = Pose.from_matrix(np.c_[_rot([0.3, -0.5, 0.2]), [0.5, -1.0, 3.0]])
    pts_cam = np.c_[rng.uniform(-2, 2, (200, 2)), rng.uniform(4, 8, 200)]
    pts_world = gt.inverse().transform(pts_cam)
    uv = pts_cam[:, :2] / pts_cam[:, 2:] * 500 + [320, 240]
    errors, covs = [], []
    for _ in range(150):
        noisy = uv + rng.normal(0, 1.0, uv.shape)
        ret = pycolmap.estimate_and_refine_absolute_pose(
            noisy, pts_world, camera.to_pycolmap(), return_covariance=True
        )
        est = Pose.from_pycolmap(ret["cam_from_world"])
        w_est, w_gt = est.inverse(), gt.inverse()
        dtheta = Rotation.from_matrix(w_est.R @ w_gt.R.T).as_rotvec()  # about the map axes
        errors.append(np.r_[w_est.tvec - w_gt.tvec, dtheta])
        covs.append(covariance_to_ros(est, ret["covariance"]))
    empirical = np.cov(np.array(errors).T)
    predicted = np.mean(covs, axis=0)
    ratio = np.sqrt(np.diag(predicted) / np.diag(empirical))
    # same scale for position and rotation (a wrong rotation convention breaks this) ...
    assert np.all((ratio > 0.7) & (ratio < 2.0)), ratio
    assert ratio[3:].mean() / ratio[:3].mean() == pytest.approx(1.0, abs=0.3)
    # ... and the same correlations between position and rotation
    d_e, d_p = np.sqrt(np.diag(empirical)), np.sqrt(np.diag(predicted))
    corr_e = (empirical / np.outer(d_e, d_e))[:3, 3:]
    corr_p = (predicted / np.outer(d_p, d_p))[:3, 3:]
    assert np.abs(corr_e - corr_p).max() < 0.2
    assert np.all(np.linalg.eigvalsh(predicted) > 0)


def test_covariance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="6x6"):
        covariance_to_ros(Pose.identity(), np.eye(3))
