"""SuperGF dense and sparse models: invariances, padding, unit norm, bad input, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from supergf_ros.models import (
    SuperGFDense,
    SuperGFSparse,
    build_model,
    default_weights_path,
    load_checkpoint,
    save_checkpoint,
)

SMALL = {"latent_dim": 64, "mlp_dim": 128, "num_layers": 2, "num_heads": 4}


@pytest.fixture(scope="module")
def sparse_model() -> SuperGFSparse:
    torch.manual_seed(0)
    return build_model("supergf-sparse", {**SMALL, "num_slots": 8}).eval()


@pytest.fixture(scope="module")
def dense_model() -> SuperGFDense:
    torch.manual_seed(1)
    return build_model("dense", {**SMALL, "pos_grid": [6, 8]}).eval()


def sparse_inputs(n: int, seed: int = 0, dim: int = 256) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([[640.0, 480.0]])
    return {
        "keypoints": torch.rand(1, n, 2, generator=g) * size[:, None],
        "descriptors": torch.nn.functional.normalize(torch.randn(1, n, dim, generator=g), dim=-1),
        "scores": torch.rand(1, n, generator=g),
        "image_size": size,
    }


@torch.no_grad()
def test_sparse_order_invariant_and_unit_norm(sparse_model):
    data = sparse_inputs(300)
    out = sparse_model(data)
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(3))
    permuted = {k: v[:, perm] if k != "image_size" else v for k, v in data.items()}
    out_p = sparse_model(permuted)
    g = out["global_descriptor"]
    assert g.shape == (1, 64)
    torch.testing.assert_close(out_p["global_descriptor"], g, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_p["attention"], out["attention"][:, :, perm], atol=1e-6, rtol=0)
    assert torch.allclose(g.norm(dim=-1), torch.ones(1), atol=1e-5)
    # attention rows are distributions over keypoints
    assert out["attention"].shape == (1, 8, 300)
    torch.testing.assert_close(out["attention"].sum(-1), torch.ones(1, 8), atol=1e-5, rtol=0)
    # a different keypoint set gives a different descriptor
    other = sparse_model(sparse_inputs(300, seed=5))["global_descriptor"]
    assert (other - g).abs().max() > 1e-4


@torch.no_grad()
def test_sparse_padded_batch_equals_singles(sparse_model):
    singles = [sparse_inputs(n, seed=n) for n in (50, 173, 1)]
    n_max = 173
    batch = {
        "keypoints": torch.full((3, n_max, 2), 1e3),  # padding garbage must not matter
        "descriptors": torch.randn(3, n_max, 256),
        "scores": torch.full((3, n_max), 5.0),
        "image_size": torch.cat([s["image_size"] for s in singles]),
        "mask": torch.zeros(3, n_max, dtype=torch.bool),
    }
    for i, s in enumerate(singles):
        n = s["keypoints"].shape[1]
        for k in ("keypoints", "descriptors", "scores"):
            batch[k][i, :n] = s[k][0]
        batch["mask"][i, :n] = True
    out = sparse_model(batch)
    for i, s in enumerate(singles):
        n = s["keypoints"].shape[1]
        single = sparse_model(s)
        torch.testing.assert_close(
            out["global_descriptor"][i], single["global_descriptor"][0], atol=1e-5, rtol=0
        )
        assert not out["attention"][i, :, n:].any()
        torch.testing.assert_close(
            out["attention"][i, :, :n], single["attention"][0], atol=1e-5, rtol=0
        )


@torch.no_grad()
def test_sparse_empty_set_is_defined(sparse_model):
    empty = sparse_model(sparse_inputs(0))
    g = empty["global_descriptor"]
    assert torch.isfinite(g).all() and abs(float(g.norm()) - 1) < 1e-5
    assert empty["attention"].shape == (1, 8, 0)
    masked = sparse_inputs(10)
    masked["mask"] = torch.zeros(1, 10, dtype=torch.bool)
    torch.testing.assert_close(sparse_model(masked)["global_descriptor"], g, atol=1e-6, rtol=0)


@torch.no_grad()
def test_dense_any_size_and_unit_norm(dense_model):
    g = torch.Generator().manual_seed(0)
    for h, w in ((12, 16), (31, 23)):  # native 2x the position grid, and an odd size
        x = torch.randn(2, 256, h, w, generator=g)
        out = dense_model({"dense": x})["global_descriptor"]
        assert out.shape == (2, 64)
        torch.testing.assert_close(out.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
        assert (out[0] - out[1]).abs().max() > 1e-4
    # batch of two equals two singles
    x = torch.randn(2, 256, 12, 16, generator=g)
    both = dense_model({"dense": x})["global_descriptor"]
    for i in range(2):
        single = dense_model({"dense": x[i : i + 1]})["global_descriptor"][0]
        torch.testing.assert_close(both[i], single, atol=1e-5, rtol=0)


def test_gradients_reach_all_parameters(sparse_model, dense_model):
    for model, data in (
        (sparse_model, sparse_inputs(40)),
        (dense_model, {"dense": torch.randn(1, 256, 12, 16)}),
    ):
        model.zero_grad()
        out = model(data)
        loss = out["global_descriptor"][0, :5].sum()
        if "attention" in out:
            loss = loss + out["attention"].square().sum()
        loss.backward()
        no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
        assert not no_grad, no_grad
        model.zero_grad()


def test_bad_inputs_raise_value_error(sparse_model, dense_model):
    data = sparse_inputs(20)
    nan = dict(data, descriptors=data["descriptors"].clone())
    nan["descriptors"][0, 3, 7] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        sparse_model(nan)
    with pytest.raises(ValueError, match="descriptor dim 128"):
        sparse_model(sparse_inputs(20, dim=128))
    with pytest.raises(ValueError, match="scores must have shape"):
        sparse_model(dict(data, scores=data["scores"][:, :5]))
    with pytest.raises(ValueError, match="missing key"):
        sparse_model({"keypoints": data["keypoints"]})
    with pytest.raises(ValueError, match="image_size"):
        sparse_model(dict(data, image_size=torch.tensor([[0.0, 480.0]])))
    with pytest.raises(ValueError, match="dense descriptor dim 128"):
        dense_model({"dense": torch.randn(1, 128, 12, 16)})
    with pytest.raises(ValueError, match=r"\(B, D, h, w\)"):
        dense_model({"dense": torch.randn(256, 12, 16)})
    bad = torch.randn(1, 256, 12, 16)
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite"):
        dense_model({"dense": bad})
    with pytest.raises(ValueError, match="unknown option"):
        build_model("sparse", {"latnt_dim": 3})
    with pytest.raises(ValueError, match="divisible"):
        build_model("sparse", {"latent_dim": 30, "num_heads": 4})
    with pytest.raises(ValueError, match="unknown SuperGF variant"):
        build_model("supergf-medium")


def test_paper_defaults():
    model = build_model("supergf-sparse")
    assert model.conf["latent_dim"] == 512 and model.conf["mlp_dim"] == 1024
    assert model.conf["num_layers"] == 3 and model.conf["input_dim"] == 256
    assert len(model.layers) == 3 and model.dim == 512
    assert build_model("supergf-dense", {"input_dim": 128}).tokenizer.in_channels == 128


@torch.no_grad()
def test_checkpoint_roundtrip_and_errors(sparse_model, dense_model, tmp_path):
    path = save_checkpoint(
        tmp_path / "ck" / "sparse.pt", sparse_model, {"step": 7, "recall": [0.5]}
    )
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    raw = torch.load(path, weights_only=True)
    assert raw["model"] == "supergf-sparse" and raw["format_version"] == 1
    assert raw["config"]["num_slots"] == 8 and raw["extra"]["step"] == 7
    model, info = load_checkpoint(path)
    assert isinstance(model, SuperGFSparse) and not model.training
    assert info["config"] == sparse_model.conf and len(info["weights_sha256"]) == 64
    data = sparse_inputs(64)
    torch.testing.assert_close(
        model(data)["global_descriptor"], sparse_model(data)["global_descriptor"], atol=0, rtol=0
    )

    with pytest.raises(FileNotFoundError, match="supergf-ros train"):
        load_checkpoint(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(truncated)
    with pytest.raises(ValueError, match="'supergf-sparse' model"):
        load_checkpoint(path, expected_model="supergf-dense")
    foreign = tmp_path / "foreign.pt"
    torch.save({"conv1a.weight": torch.zeros(1)}, foreign)
    with pytest.raises(ValueError, match="not a SuperGF checkpoint"):
        load_checkpoint(foreign)
    mismatched = tmp_path / "mismatched.pt"
    raw["config"]["num_layers"] = 3
    torch.save(raw, mismatched)
    with pytest.raises(ValueError, match="does not match"):
        load_checkpoint(mismatched)
    raw["format_version"] = 99
    torch.save(raw, mismatched)
    with pytest.raises(ValueError, match="format_version"):
        load_checkpoint(mismatched)

    dense_path = save_checkpoint(tmp_path / "dense.pt", dense_model)
    dense, _ = load_checkpoint(dense_path, expected_model="dense")
    x = torch.randn(1, 256, 10, 14)
    torch.testing.assert_close(dense({"dense": x}), dense_model({"dense": x}), atol=0, rtol=0)


def test_default_weights_path():
    p = default_weights_path("sparse", "superpoint")
    assert p.name == "supergf_sparse_superpoint.pt" and p.parent.name == "weights"
    assert default_weights_path("supergf-dense", "sift").name == "supergf_dense_sift.pt"
    with pytest.raises(ValueError, match="unknown local features"):
        default_weights_path("dense", "orb")
    assert np.isclose(float(build_model("dense").pool.p.detach()), 3.0)


# ----------------------------------------------------------------------------- residual slots

RESIDUAL = {
    "latent_dim": 32,
    "input_dim": 32,
    "mlp_dim": 64,
    "num_layers": 1,
    "num_heads": 2,
    "num_slots": 6,
    "aggregation": "residual",
}


def _soft_vlad(desc: np.ndarray, centroids: np.ndarray, alpha: float) -> np.ndarray:
    """Reference soft-assignment VLAD: intra-normalized residual sums, concatenated, L2."""
    d2 = ((desc[:, None, :] - centroids[None]) ** 2).sum(-1)
    logits = -alpha * d2
    a = np.exp(logits - logits.max(1, keepdims=True))
    a /= a.sum(1, keepdims=True)
    res = a.T @ desc - a.sum(0)[:, None] * centroids
    res /= np.maximum(np.linalg.norm(res, axis=1, keepdims=True), 1e-12)
    v = res.ravel()
    return v / np.linalg.norm(v)


@torch.no_grad()
def test_residual_slots_start_as_soft_vlad():
    torch.manual_seed(0)
    model = build_model("sparse", RESIDUAL).eval()
    assert model.dim == 6 * 32
    g = torch.Generator().manual_seed(4)
    centroids = torch.nn.functional.normalize(torch.randn(6, 32, generator=g), dim=-1)
    model.init_from_codebook(centroids, alpha=5.0)
    data = sparse_inputs(200, seed=2, dim=32)
    out = model(data)
    expected = _soft_vlad(data["descriptors"][0].numpy(), centroids.numpy(), 5.0)
    got = out["global_descriptor"][0].numpy()
    assert got.shape == (192,)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert out["attention"].shape == (1, 6, 200)
    torch.testing.assert_close(out["attention"].sum(-1), torch.ones(1, 6), atol=1e-5, rtol=0)
    # keypoint order does not matter; padding does not matter; the empty set is defined
    perm = torch.randperm(200, generator=g)
    permuted = {k: v[:, perm] if k != "image_size" else v for k, v in data.items()}
    torch.testing.assert_close(model(permuted)["global_descriptor"][0], out["global_descriptor"][0])
    padded = {
        k: torch.cat([v, torch.ones_like(v[:, :30]) * 7], 1) if k != "image_size" else v
        for k, v in data.items()
    }
    padded["mask"] = torch.arange(230)[None] < 200
    torch.testing.assert_close(model(padded)["global_descriptor"], out["global_descriptor"])
    empty = model(sparse_inputs(0, dim=32))["global_descriptor"]
    assert torch.isfinite(empty).all() and abs(float(empty.norm()) - 1) < 1e-5


def test_residual_slots_train_all_parameters_and_reject_bad_options():
    torch.manual_seed(0)
    model = build_model("sparse", RESIDUAL)
    model.init_from_codebook(torch.randn(6, 32), alpha=2.0)
    # the encoder starts as the identity (zero residual branches); one step makes it not
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        out = model(sparse_inputs(40, dim=32))
        (out["global_descriptor"][0, :50].sum() + out["attention"].square().sum()).backward()
        opt.step()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_grad, no_grad
    with pytest.raises(ValueError, match="aggregation"):
        build_model("sparse", {**RESIDUAL, "aggregation": "netvlad"})
    with pytest.raises(ValueError, match="codebook must have shape"):
        model.init_from_codebook(torch.randn(5, 32), alpha=1.0)
    with pytest.raises(ValueError, match="alpha"):
        model.init_from_codebook(torch.randn(6, 32), alpha=0.0)
    with pytest.raises(ValueError, match="residual"):
        build_model("sparse", {**SMALL, "num_slots": 4}).init_from_codebook(torch.randn(4, 256), 1)


def test_residual_slots_onnx_and_checkpoint(tmp_path):
    from supergf_ros.inference.runners import OrtRunner
    from supergf_ros.models.spec import supergf_spec

    torch.manual_seed(0)
    model = build_model("sparse", {**RESIDUAL, "residual_power": 0.5}).eval()
    model.init_from_codebook(torch.randn(6, 32), alpha=3.0)
    with torch.no_grad():  # a non-trivial encoder
        for p in model.layers.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ort = OrtRunner(supergf_spec(model).write_onnx(tmp_path / "residual.onnx"))
    inputs = model.example_inputs(batch=2, num_keypoints=50)  # 32-D descriptors (input_dim)
    inputs[-1][1, 20:] = False  # second sample padded
    with torch.no_grad():
        expected = model(dict(zip(model.input_names, inputs)))
    got = ort(*(t.numpy() for t in inputs))
    assert got[0].shape == (2, 192)
    np.testing.assert_allclose(got[0], expected["global_descriptor"].numpy(), atol=1e-4)
    save_checkpoint(tmp_path / "r.pt", model)
    loaded, info = load_checkpoint(tmp_path / "r.pt")
    assert info["config"]["aggregation"] == "residual" and loaded.dim == 192
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(dict(zip(model.input_names, inputs)))["global_descriptor"],
            expected["global_descriptor"],
        )


# ----------------------------------------------------------------------- dense residual slots


def _dense_inputs(h: int, w: int, seed: int = 0, dim: int = 32, batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, h, w, generator=g) * 3.0  # not unit: the model normalizes


@torch.no_grad()
def test_dense_residual_starts_as_soft_dense_vlad():
    """aggregation="residual" for the dense model: every map cell is an L2-normalized local
    descriptor; from a codebook the untrained model is a soft-assignment VLAD of the cells."""
    torch.manual_seed(0)
    model = build_model("dense", RESIDUAL).eval()
    assert model.dim == 6 * 32 and model.residual
    g = torch.Generator().manual_seed(4)
    centroids = torch.nn.functional.normalize(torch.randn(6, 32, generator=g), dim=-1)
    model.init_from_codebook(centroids, alpha=5.0)
    dense = _dense_inputs(7, 9, seed=3)
    out = model({"dense": dense})
    cells = dense[0].reshape(32, -1).T.numpy()
    cells /= np.linalg.norm(cells, axis=1, keepdims=True)
    expected = _soft_vlad(cells, centroids.numpy(), 5.0)
    np.testing.assert_allclose(out["global_descriptor"][0].numpy(), expected, atol=1e-5)
    assert out["attention"].shape == (1, 6, 63)
    # the position term is live: a trained position MLP changes the descriptor, and a map of
    # another size (other cell positions) still gives a unit descriptor
    with torch.no_grad():
        model.keypoint_encoder[-1].weight.normal_(0, 1.0)
    moved = model({"dense": dense})["global_descriptor"][0]
    assert float((moved - out["global_descriptor"][0]).abs().max()) > 1e-3
    other = model({"dense": _dense_inputs(11, 5, seed=1)})["global_descriptor"]
    assert other.shape == (1, 192) and abs(float(other.norm()) - 1) < 1e-5


def test_dense_residual_onnx_parity_and_options(tmp_path):
    from supergf_ros.inference.runners import OrtRunner
    from supergf_ros.models.spec import supergf_spec

    torch.manual_seed(0)
    model = build_model("dense", RESIDUAL).eval()
    model.init_from_codebook(torch.randn(6, 32), alpha=3.0)
    with torch.no_grad():  # a non-trivial encoder and position term
        for p in [*model.layers.parameters(), *model.keypoint_encoder.parameters()]:
            p.add_(0.05 * torch.randn_like(p))
    ort = OrtRunner(supergf_spec(model).write_onnx(tmp_path / "dense_residual.onnx"))
    for h, w in ((6, 8), (9, 13)):  # dynamic map size: positions follow the grid
        dense = _dense_inputs(h, w, seed=h, batch=2)
        with torch.no_grad():
            expected = model({"dense": dense})["global_descriptor"].numpy()
        (got,) = ort(dense.numpy())
        np.testing.assert_allclose(got, expected, atol=1e-4)
    with pytest.raises(ValueError, match="aggregation"):
        build_model("dense", {**RESIDUAL, "aggregation": "slots"})
    assert build_model("dense", {**SMALL}).conf["aggregation"] == "tokens"  # the paper's default
