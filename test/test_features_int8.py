"""INT8 SuperPoint on ONNX Runtime (CPU): same identity as fp32, homography matches still correct,
refused elsewhere. The quantized model is built once into the ONNX cache (about a minute the first
time on a 2-core CPU) and loaded from it afterwards."""

from __future__ import annotations

import numpy as np
import pytest
from test_features_homography import _evaluate, pairs  # noqa: F401 (fixture)

from supergf_ros.features import create_extractor, to_grayscale
from supergf_ros.features.superpoint import sample_descriptors_np, superpoint_calibration
from supergf_ros.inference.quantize import Int8Settings, int8_key


@pytest.fixture(scope="module")
def extractors(superpoint_weights):
    common = {"weights": str(superpoint_weights), "backend": "onnxruntime", "device": "cpu"}
    return {
        "fp32": create_extractor("superpoint", **common),
        "int8": create_extractor("superpoint", precision="int8", **common),
    }


def test_int8_keeps_the_fp32_identity(extractors):
    fp32, int8 = extractors["fp32"], extractors["int8"]
    assert int8._runner.precision == "int8" and fp32._runner.precision == "fp32"
    assert int8._runner.onnx_path != fp32._runner.onnx_path
    assert int8.identity() == fp32.identity()  # maps built in fp32 accept int8 queries


def test_int8_homography_matches_stay_correct(extractors, pairs):  # noqa: F811
    results = _evaluate(extractors["int8"], pairs)
    for _num, num_correct, precision in results:
        assert num_correct >= 100, results
        assert precision >= 0.90, results


def test_int8_descriptors_close_to_fp32(extractors, pairs):  # noqa: F811
    image = pairs[0][0]
    ref = extractors["fp32"].extract(image)
    gray = to_grayscale(image).astype(np.float32) / 255
    _, dense = extractors["int8"].run_network(gray[None, None])
    cosine = np.sum(sample_descriptors_np(ref.keypoints, dense[0]) * ref.descriptors, axis=1)
    assert float(np.mean(cosine)) > 0.98  # measured 0.995


def test_int8_cache_key_names_what_the_model_depends_on(tmp_path):
    fp32 = tmp_path / "superpoint-0123.onnx"
    fp32.write_bytes(b"model")
    base = int8_key(fp32, superpoint_calibration(), Int8Settings())
    assert base == int8_key(fp32, superpoint_calibration(), Int8Settings())
    assert base != int8_key(fp32, superpoint_calibration(), Int8Settings(method="minmax"))
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(b"not read for the key beyond its hash")
    assert base != int8_key(fp32, superpoint_calibration(photos), Int8Settings())
    fp32.write_bytes(b"other model")
    assert base != int8_key(fp32, superpoint_calibration(), Int8Settings())


def test_int8_only_on_onnxruntime_cpu(superpoint_weights):
    with pytest.raises(ValueError, match=r"int8.*ONNX Runtime on the CPU only"):
        create_extractor(
            "superpoint", weights=str(superpoint_weights), backend="torch", precision="int8"
        )
    with pytest.raises(ValueError, match="precision must be 'fp32' or 'int8'"):
        create_extractor("superpoint", weights=str(superpoint_weights), precision="fp16")
