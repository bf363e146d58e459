"""The training loop on real cached SuperPoint features: overfitting, resume, CLI, data parallel."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from supergf_ros.features import create_extractor
from supergf_ros.training.cache import FeatureCache
from supergf_ros.training.data import CandidateSampler, load_project_dataset
from supergf_ros.training.trainer import evaluate_sets, recall_at_n, train

TINY = {"latent_dim": 32, "mlp_dim": 64, "num_layers": 1, "num_heads": 2}
SIZE = [160, 120]
OVERFIT_STEPS = 50  # 30 leaves 1 of 22 training queries unsolved on a fresh scene


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models here run much faster on one thread on a shared, busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_scene(cache_dir):
    """A small synthetic room (exact depth labels), generated once into the test cache."""
    from supergf_ros.datasets.synthetic import SceneConfig, generate_scene

    root = cache_dir / "training" / "scene_160x120_s3"
    if not (root / "sparse_gt" / "images.txt").exists():
        conf = SceneConfig(width=160, height=120, num_map=16, num_queries=8, num_points=0)
        generate_scene(root, conf, seed=3, progress=False)
    return load_project_dataset(root)


@pytest.fixture(scope="module")
def feature_cache(cache_dir, superpoint_weights):
    extractor = create_extractor("superpoint", weights=str(superpoint_weights), max_keypoints=128)
    return FeatureCache(cache_dir / "training" / "features", extractor, tuple(SIZE))


def _conf(**kw):
    conf = {
        "model_conf": TINY,
        "image_size": SIZE,
        "num_negatives": 6,
        "batch_size": 4,
        "steps": 30,
        "lr": 3e-3,
        "lr_min": 1e-4,
        "val_every": 1000,
        "checkpoint_every": 1000,
        "forward_chunk": 32,
    }
    conf.update(kw)
    return conf


def test_tiny_model_overfits_tiny_set(tiny_scene, feature_cache, tmp_path):
    s = tiny_scene
    assert s.info["labels"] == "maps"
    torch.manual_seed(0)
    from supergf_ros.models import build_model

    feats = feature_cache.load(s.paths)
    untrained = evaluate_sets(build_model("dense", TINY), "supergf-dense", [s], [feats])
    conf = _conf(steps=OVERFIT_STEPS, val_every=OVERFIT_STEPS)
    out = train([s], [s], feature_cache, conf, tmp_path / "run", progress=False)
    rows = out["rows"]
    # soft-label AP of the sampled lists (< 1 even for a perfect ranking of graded labels)
    first = np.mean([r["train_ap"] for r in rows[:5]])
    last = np.mean([r["train_ap"] for r in rows[-5:]])
    assert last > first + 0.05
    final = rows[-1]  # binary AP (positives: overlap >= 0.5) of full rankings on the training set
    assert final["val_map"] > 0.95 and final["val_map"] > untrained["map"] + 0.05
    assert final["val_r@1"] == pytest.approx(1.0)
    # outputs: log, plot, atomic checkpoints (no temp files left)
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {
        "log.csv",
        "training.png",
        "checkpoint_last.pt",
        "model_best.pt",
        "model_last.pt",
    } <= names
    assert not [n for n in names if n.endswith(".tmp")]
    with open(tmp_path / "run" / "log.csv") as f:
        assert len(list(csv.DictReader(f))) == OVERFIT_STEPS


@pytest.mark.parametrize("model", ["supergf-dense", "supergf-sparse"])
def test_resume_reproduces_next_losses(tiny_scene, feature_cache, tmp_path, model):
    conf = _conf(
        model=model, steps=8, model_conf={**TINY, **({"num_slots": 4} if "sparse" in model else {})}
    )
    full = train([tiny_scene], [], feature_cache, conf, tmp_path / "full", progress=False)["rows"]
    train([tiny_scene], [], feature_cache, conf, tmp_path / "part", progress=False, stop_after=4)
    assert not (tmp_path / "part" / "model_last.pt").exists()
    resumed = train(
        [tiny_scene], [], feature_cache, conf, tmp_path / "part", resume=True, progress=False
    )["rows"]
    assert [r["step"] for r in resumed] == list(range(1, 9))
    np.testing.assert_allclose(
        [r["loss"] for r in resumed[4:]], [r["loss"] for r in full[4:]], rtol=1e-5, atol=1e-6
    )
    if "sparse" in model:
        assert all(r["decorrelation"] != "" for r in full)
    with pytest.raises(ValueError, match="differs"):
        train(
            [tiny_scene],
            [],
            feature_cache,
            {**conf, "lr": 1e-3},
            tmp_path / "part",
            resume=True,
            progress=False,
        )


def test_sampler_and_recall(tiny_scene):
    sampler = CandidateSampler([tiny_scene], num_soft_negatives=2, num_negatives=5)
    sample = sampler.sample(0, np.random.default_rng(1))
    assert sample.labels[0] >= 0.5  # one positive first
    assert ((sample.labels[1:3] > 0) & (sample.labels[1:3] < 0.5)).all()  # two soft negatives
    assert (sample.labels[3:] == 0).all() and len(sample.labels) == 8
    assert sample.query not in sample.candidates
    sim = np.array([[0.9, 0.1, 0.5], [0.1, 0.2, 0.3]])
    assert recall_at_n(sim, [np.array([2]), np.array([0])], ns=(1, 2, 3)) == {
        "r@1": 0.0,
        "r@2": 0.5,
        "r@3": 1.0,
    }
    with pytest.raises(ValueError):
        recall_at_n(sim, [np.array([])] * 2)


def test_cli_and_two_process_data_parallel(tiny_scene, feature_cache, tmp_path, superpoint_weights):
    """`supergf-ros train` under torchrun with 2 gloo processes on the CPU."""
    feature_cache.prepare(tiny_scene.paths, progress=False)  # shared cache already filled
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "supergf_ros.cli",
        "train",
        str(out),
        "--data",
        str(tiny_scene.paths[0].parents[1]),
        "--superpoint-weights",
        str(superpoint_weights),
        "--cache-dir",
        str(feature_cache.path.parent),
        "--max-keypoints",
        "128",
        "--image-size",
        *map(str, SIZE),
        "--steps",
        "4",
        "--batch-size",
        "2",
        "--latent-dim",
        "32",
        "--mlp-dim",
        "64",
        "--num-layers",
        "1",
        "--num-heads",
        "2",
        "--num-negatives",
        "4",
        "--no-progress",
        "--export",
        str(out / "exported.pt"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]
    from supergf_ros.models import load_checkpoint

    model, info = load_checkpoint(out / "exported.pt")
    assert info["model"] == "supergf-dense" and model.conf["latent_dim"] == 32
    assert info["extra"]["training"]["conf"]["batch_size"] == 2
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert summary["steps"] == 4


def test_residual_slots_start_from_training_codebook(tiny_scene, feature_cache, tmp_path):
    """aggregation="residual": the slots start from k-means of the training descriptors."""
    from supergf_ros.models import load_checkpoint
    from supergf_ros.training.trainer import codebook_from_features

    model_conf = {**TINY, "num_slots": 8, "aggregation": "residual"}
    conf = _conf(model="supergf-sparse", steps=2, lr=1e-7, lr_min=1e-7, model_conf=model_conf)
    train([tiny_scene], [], feature_cache, conf, tmp_path / "run", progress=False)
    model, _ = load_checkpoint(tmp_path / "run" / "model_last.pt")
    sampler = CandidateSampler([tiny_scene], 1, 2, 6, 0.5)
    expected = codebook_from_features(feature_cache.load(sampler.paths), 8, seed=0)
    np.testing.assert_allclose(model.centroids.detach().numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(
        model.slot_keys.detach().numpy(), 2 * 30.0 * expected, rtol=1e-3, atol=1e-4
    )
    with pytest.raises(ValueError, match="at least num_slots"):
        codebook_from_features(feature_cache.load(sampler.paths[:1]), 1000)


def test_dense_residual_starts_from_dense_cell_codebook(tiny_scene, feature_cache, tmp_path):
    """The dense residual model's codebook is k-means of the dense-map cells it aggregates."""
    from supergf_ros.models import load_checkpoint
    from supergf_ros.training.trainer import codebook_from_features

    model_conf = {**TINY, "num_slots": 8, "aggregation": "residual"}
    conf = _conf(model="supergf-dense", steps=2, lr=1e-7, lr_min=1e-7, model_conf=model_conf)
    summary = train([tiny_scene], [], feature_cache, conf, tmp_path / "run", progress=False)
    assert np.isfinite(summary["final_loss"])
    model, _ = load_checkpoint(tmp_path / "run" / "model_last.pt")
    feats = feature_cache.load(CandidateSampler([tiny_scene], 1, 2, 6, 0.5).paths)
    dense = codebook_from_features(feats, 8, seed=0, source="dense")
    sparse = codebook_from_features(feats, 8, seed=0)
    np.testing.assert_allclose(model.centroids.detach().numpy(), dense, atol=1e-5)
    assert np.abs(dense - sparse).max() > 1e-2  # not the keypoint codebook
    with pytest.raises(ValueError, match="codebook source"):
        codebook_from_features(feats, 8, source="grid")


def test_frozen_parameters_stay_fixed(tiny_scene, feature_cache, tmp_path):
    from supergf_ros.models import load_checkpoint
    from supergf_ros.training.trainer import codebook_from_features

    model_conf = {**TINY, "num_slots": 8, "aggregation": "residual"}
    conf = _conf(
        model="supergf-sparse",
        steps=3,
        lr=1e-2,
        model_conf=model_conf,
        frozen_parameters=["centroids", "slot_keys", "slot_bias"],
    )
    train([tiny_scene], [], feature_cache, conf, tmp_path / "run", progress=False)
    model, _ = load_checkpoint(tmp_path / "run" / "model_last.pt")
    sampler = CandidateSampler([tiny_scene], 1, 2, 6, 0.5)
    expected = codebook_from_features(feature_cache.load(sampler.paths), 8, seed=0)
    np.testing.assert_array_equal(model.centroids.detach().numpy(), expected)
    assert model.layers[0].mlp[-1].weight.abs().max() > 0  # trained (zero at init)
    with pytest.raises(ValueError, match="match no parameter"):
        train(
            [tiny_scene],
            [],
            feature_cache,
            {**conf, "frozen_parameters": ["no_such_layer"]},
            tmp_path / "bad",
            progress=False,
        )
