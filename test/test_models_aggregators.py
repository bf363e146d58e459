"""Global aggregators (SuperGF sparse/dense, VLAD, GeM) over real SuperPoint features."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from supergf_ros.features import LocalFeatures, create_extractor
from supergf_ros.models import build_model, save_checkpoint, weights
from supergf_ros.models.aggregators import available_global_descriptors, create_aggregator

SMALL = {"latent_dim": 64, "mlp_dim": 128, "num_layers": 2, "num_heads": 4}


def _load(path, crop: bool) -> np.ndarray:
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    image = cv2.resize(image, (320, 240), interpolation=cv2.INTER_AREA)
    if crop:  # a second view: crop + zoom + photometric change
        image = cv2.resize(image[12:-12, 16:-16], (320, 240))
        image = np.clip(image.astype(np.float32) * 0.8 + 20, 0, 255).astype(np.uint8)
    return image


@pytest.fixture(scope="module")
def features(data_dir, superpoint_weights):
    """Real SuperPoint features of 6 photos and of a cropped, re-lit copy of each."""
    paths = sorted((data_dir / "photos" / "sacre_coeur" / "mapping").glob("*.jpg"))[:6]
    extractor = create_extractor("superpoint", weights=superpoint_weights, max_keypoints=400)
    database = [extractor.extract(_load(p, crop=False)) for p in paths]
    queries = [extractor.extract(_load(p, crop=True)) for p in paths]
    return database, queries


@pytest.fixture(scope="module")
def sparse_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("sparse", {**SMALL, "num_slots": 8})
    return save_checkpoint(tmp_path_factory.mktemp("w") / "sparse.pt", model)


@pytest.fixture(scope="module")
def dense_ckpt(tmp_path_factory):
    torch.manual_seed(1)
    model = build_model("dense", {**SMALL, "pos_grid": [15, 20]})
    return save_checkpoint(tmp_path_factory.mktemp("w") / "dense.pt", model)


def _empty(dim: int = 256) -> LocalFeatures:
    return LocalFeatures(
        np.zeros((0, 2), np.float32),
        np.zeros(0, np.float32),
        np.zeros((0, dim), np.float32),
        None,
        (320, 240),
    )


@pytest.mark.parametrize(
    "name, conf",
    [
        ("vlad", {"num_clusters": 16}),
        ("vlad", {"num_clusters": 16, "source": "dense"}),
        ("gem", {}),
    ],
)
def test_training_free_retrieve_second_views(features, name, conf):
    database, queries = features
    agg = create_aggregator(name, **conf)
    assert agg.needs_fit == (name == "vlad")
    agg.fit(database)
    db = agg.batch(database)
    q = np.stack([agg(f) for f in queries])
    assert db.shape == (6, agg.dim) and db.dtype == np.float32
    assert np.allclose(np.linalg.norm(db, axis=1), 1, atol=1e-5)
    assert (np.argmax(q @ db.T, axis=1) == np.arange(6)).all()  # Recall@1 = 1
    assert agg.identity()["name"] == name
    if conf.get("source") == "dense":  # every cell of the map: a map is required
        assert agg.state()["vlad_centroids"].shape == (16, 256)
        sparse = create_aggregator("vlad", num_clusters=16)
        sparse.fit(database)  # keypoint descriptors: another codebook, another descriptor
        assert np.abs(sparse(queries[0]) - agg(queries[0])).max() > 1e-3
        with pytest.raises(ValueError, match=r"needs LocalFeatures\.dense"):
            agg(_empty())
        with pytest.raises(ValueError, match="source must be"):
            create_aggregator("vlad", source="cells")
    else:
        assert np.allclose(np.linalg.norm(agg(_empty())), 1, atol=1e-5)


def test_vlad_state_roundtrip_and_errors(features):
    database, queries = features
    agg = create_aggregator("vlad", num_clusters=16, seed=3)
    with pytest.raises(ValueError, match="not fitted"):
        agg(queries[0])
    assert agg.state() == {} and agg.identity()["weights_sha256"] == ""
    agg.fit(database)
    assert agg.dim == 16 * 256
    state = agg.state()
    assert state["vlad_centroids"].shape == (16, 256)
    restored = create_aggregator("vlad", num_clusters=16, seed=3)
    restored.load_state(state)
    assert restored.identity() == agg.identity() and len(agg.identity()["weights_sha256"]) == 64
    np.testing.assert_array_equal(restored(queries[1]), agg(queries[1]))
    refit = create_aggregator("vlad", num_clusters=16, seed=3)
    refit.fit(database)  # seeded: the same codebook again
    np.testing.assert_array_equal(refit.state()["vlad_centroids"], state["vlad_centroids"])
    with pytest.raises(ValueError, match="shape"):
        restored.load_state({"vlad_centroids": np.zeros((8, 256), np.float32)})
    with pytest.raises(ValueError, match="at least num_clusters"):
        create_aggregator("vlad", num_clusters=64).fit([_empty()])
    with pytest.raises(ValueError, match="unknown option"):
        create_aggregator("vlad", clusters=3)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_supergf_aggregators_on_real_features(features, sparse_ckpt, dense_ckpt, backend, tmp_path):
    database, _ = features
    for name, ckpt in (("supergf-sparse", sparse_ckpt), ("supergf-dense", dense_ckpt)):
        agg = create_aggregator(name, weights=ckpt, backend=backend, onnx_cache_dir=tmp_path)
        assert not agg.needs_fit and agg.dim == 64
        batch = agg.batch(database)
        singles = np.stack([agg(f) for f in database])
        assert batch.shape == (6, 64) and batch.dtype == np.float32
        assert np.abs(batch - singles).max() < 1e-5  # padded batch == singles
        assert np.allclose(np.linalg.norm(batch, axis=1), 1, atol=1e-5)
        ident = agg.identity()
        assert ident["name"] == name and ident["config"]["model"]["latent_dim"] == 64
        assert len(ident["weights_sha256"]) == 64


def test_supergf_backends_agree(features, sparse_ckpt, dense_ckpt, tmp_path):
    database, _ = features
    for name, ckpt in (("supergf-sparse", sparse_ckpt), ("supergf-dense", dense_ckpt)):
        ref = create_aggregator(name, weights=ckpt).batch(database)
        ort = create_aggregator(name, weights=ckpt, backend="onnxruntime", onnx_cache_dir=tmp_path)
        assert np.abs(ort.batch(database) - ref).max() < 1e-4
    sparse = create_aggregator(
        "supergf-sparse", weights=sparse_ckpt, backend="onnxruntime", onnx_cache_dir=tmp_path
    )
    empty = sparse(_empty())
    assert np.isfinite(empty).all() and abs(np.linalg.norm(empty) - 1) < 1e-5


def test_supergf_bad_input(features, sparse_ckpt, dense_ckpt, tmp_path, monkeypatch):
    database, _ = features
    sparse = create_aggregator("supergf-sparse", weights=sparse_ckpt)
    sift_like = LocalFeatures(
        database[0].keypoints,
        database[0].scores,
        np.ascontiguousarray(database[0].descriptors[:, :128]),
        None,
        (320, 240),
    )
    with pytest.raises(ValueError, match="expects 256-D local descriptors"):
        sparse(sift_like)
    nan = LocalFeatures(
        database[0].keypoints, database[0].scores, database[0].descriptors.copy(), None, (320, 240)
    )
    nan.descriptors[2, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sparse(nan)
    with pytest.raises(ValueError, match="take 256-D"):
        create_aggregator("supergf-sparse", weights=sparse_ckpt, features="sift")
    with pytest.raises(ValueError, match="holds a 'supergf-sparse' model"):
        create_aggregator("supergf-dense", weights=sparse_ckpt)  # a sparse file for dense
    dense = create_aggregator("supergf-dense", weights=dense_ckpt)
    with pytest.raises(ValueError, match="dense descriptor map"):
        dense(_empty())
    with pytest.raises(ValueError, match="backend"):
        create_aggregator("supergf-dense", weights=dense_ckpt, backend="tensorflow")
    with pytest.raises(ValueError, match="unknown global descriptor"):
        create_aggregator("netvlad")

    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path / "weights")
    with pytest.raises(
        FileNotFoundError, match=r"supergf_sparse_superpoint\.pt.*supergf-ros train"
    ):
        create_aggregator("supergf-sparse")
    assert available_global_descriptors("superpoint") == ["vlad", "gem"]
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "supergf_dense_sift.pt").write_bytes(sparse_ckpt.read_bytes())
    assert available_global_descriptors("sift") == ["vlad", "gem", "supergf-dense"]
    with pytest.raises(ValueError, match="unknown local features"):
        available_global_descriptors("orb")
