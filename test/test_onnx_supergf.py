"""ONNX export of both SuperGF variants and the shared ONNX Runtime helpers, against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from supergf_ros.inference.onnx import cached_export, export_onnx
from supergf_ros.inference.runners import OrtRunner
from supergf_ros.models import build_model
from supergf_ros.models.spec import supergf_spec

SMALL = {"latent_dim": 64, "mlp_dim": 128, "num_layers": 2, "num_heads": 4}
TOL = 1e-4


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="module")
def sparse(onnx_dir):
    torch.manual_seed(0)
    model = build_model("sparse", {**SMALL, "num_slots": 8}).eval()
    return model, OrtRunner(supergf_spec(model).write_onnx(onnx_dir / "sparse.onnx"))


@pytest.fixture(scope="module")
def dense(onnx_dir):
    torch.manual_seed(1)
    model = build_model("dense", {**SMALL, "pos_grid": [6, 8]}).eval()
    return model, OrtRunner(supergf_spec(model).write_onnx(onnx_dir / "dense.onnx"))


def torch_outputs(model, inputs):
    with torch.no_grad():
        out = model(dict(zip(model.input_names, inputs)))
    return [out[k].numpy() for k in model.output_names]


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 60, 80), (2, 23, 37)])
def test_dense_onnx_matches_torch(dense, batch, height, width):
    model, ort = dense
    x = torch.randn(batch, 256, height, width, generator=torch.Generator().manual_seed(height))
    (expected,) = torch_outputs(model, (x,))
    (got,) = ort(x.numpy())
    assert got.shape == (batch, 64)
    assert np.abs(got - expected).max() < TOL
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)


@pytest.mark.parametrize(("batch", "num_keypoints"), [(1, 1024), (3, 17)])
def test_sparse_onnx_matches_torch(sparse, batch, num_keypoints):
    model, ort = sparse
    inputs = model.example_inputs(batch=batch, num_keypoints=num_keypoints)
    inputs[-1][-1, num_keypoints // 2 :] = False  # last sample padded
    expected = torch_outputs(model, inputs)
    got = ort(*(t.numpy() for t in inputs))
    assert [g.shape for g in got] == [(batch, 64), (batch, 8, num_keypoints)]
    for g, e in zip(got, expected):
        assert np.abs(g - e).max() < TOL
    assert np.allclose(np.linalg.norm(got[0], axis=1), 1, atol=1e-5)


def test_sparse_onnx_order_invariance_and_padding(sparse):
    model, ort = sparse
    kpts, desc, scores, size, mask = (t.numpy() for t in model.example_inputs(1, 200))
    perm = np.random.default_rng(0).permutation(200)
    (g,) = ort(kpts, desc, scores, size, mask)[:1]
    (g_perm,) = ort(kpts[:, perm], desc[:, perm], scores[:, perm], size, mask[:, perm])[:1]
    assert np.abs(g - g_perm).max() < 1e-5
    pad = 56  # padded with garbage, masked out
    padded = (
        np.concatenate([kpts, np.full((1, pad, 2), 7e3, np.float32)], 1),
        np.concatenate([desc, np.ones((1, pad, 256), np.float32)], 1),
        np.concatenate([scores, np.ones((1, pad), np.float32)], 1),
        size,
        np.concatenate([mask, np.zeros((1, pad), bool)], 1),
    )
    g_pad, attention = ort(*padded)
    assert np.abs(g - g_pad).max() < 1e-5
    assert not attention[0, :, 200:].any()


def test_paper_config_onnx_matches_torch(onnx_dir):
    """Default (paper) configs at their real sizes: 1024 keypoints and a 640x480 dense map."""
    torch.manual_seed(2)
    for name, sizes in (
        ("sparse", {"num_keypoints": 1024}),
        ("dense", {"height": 60, "width": 80}),
    ):
        model = build_model(name).eval()
        ort = OrtRunner(supergf_spec(model).export_onnx(onnx_dir))
        inputs = model.example_inputs(**sizes)
        expected = torch_outputs(model, inputs)
        got = ort(*(t.numpy() for t in inputs))
        assert np.abs(got[0] - expected[0]).max() < TOL


def test_cached_export_reuses_and_keys(onnx_dir, tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU()).train()
    kwargs = dict(
        input_names=["image"],
        output_names=["features"],
        dynamic_axes={"image": {2: "h", 3: "w"}, "features": {2: "h", 3: "w"}},
        cache_dir=tmp_path,
    )
    example = (torch.rand(1, 1, 16, 24),)
    path = cached_export(net, "tiny", "a" * 64, example, **kwargs)
    assert path == tmp_path / f"tiny-{'a' * 16}.onnx" and net.training  # mode restored
    mtime = path.stat().st_mtime_ns
    assert cached_export(net, "tiny", "a" * 64, example, **kwargs) == path
    assert path.stat().st_mtime_ns == mtime  # reused, not re-exported
    other = cached_export(net, "tiny", "b" * 64, example, **kwargs)
    assert other != path and other.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, other.name])
    x = np.random.default_rng(0).random((1, 1, 33, 47), dtype=np.float32)
    (y,) = OrtRunner(path)(x)
    with torch.no_grad():
        assert np.abs(y - net(torch.from_numpy(x)).numpy()).max() < 1e-6
    with pytest.raises(ValueError, match="non-empty key"):
        cached_export(net, "tiny", "", example, **kwargs)


def test_ort_module_errors(dense, onnx_dir, tmp_path):
    _, ort = dense
    assert ort.providers == ["CPUExecutionProvider"] and ort.input_names == ["dense"]
    one_thread = OrtRunner(onnx_dir / "dense.onnx", intra_op_num_threads=1)
    x = np.random.default_rng(1).random((1, 256, 9, 11), dtype=np.float32)
    np.testing.assert_allclose(one_thread(x)[0], ort(x)[0], atol=1e-6)
    assert set(ort.run_dict({"dense": x})) == {"global_descriptor"}
    with pytest.raises(ValueError, match="expects 1 inputs"):
        ort(np.zeros((1, 256, 4, 4), np.float32), np.zeros(3, np.float32))
    with pytest.raises(FileNotFoundError):
        OrtRunner(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(ValueError, match="cannot load ONNX model"):
        OrtRunner(bad)
    with pytest.raises(ValueError, match="not available"):
        OrtRunner(onnx_dir / "dense.onnx", providers=["NoSuchExecutionProvider"])
    with pytest.raises(ValueError, match="input_names"):
        export_onnx(
            torch.nn.Identity(),
            (torch.zeros(1),),
            tmp_path / "x.onnx",
            input_names=["a", "b"],
            output_names=["y"],
            dynamic_axes={},
        )
