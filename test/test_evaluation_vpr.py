"""`eval-vpr` on the Corridor place-recognition data (real images)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from supergf_ros.cli import main
from supergf_ros.evaluation.eval_vpr import evaluate_vpr, read_vpr_dataset


@pytest.fixture(scope="session")
def corridor(data_dir: Path) -> Path:
    return data_dir / "vpr" / "corridor"


def test_read_vpr_layout(corridor: Path, tmp_path: Path):
    queries, refs, positives = read_vpr_dataset(corridor)
    assert len(queries) == len(refs) == 111
    assert positives[0] == [0, 1, 2]
    with pytest.raises(ValueError, match="query/"):
        read_vpr_dataset(tmp_path)


def test_raw_pixel_baseline_matches_reference_numbers(corridor: Path, capsys):
    assert main(["eval-vpr", str(corridor), "--raw-pixels", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # the published raw 32x24 cosine baseline on this data: 0.270 / 0.541 / 0.802
    assert out["recall"]["1"] == pytest.approx(0.270, abs=0.005)
    assert out["recall"]["5"] == pytest.approx(0.541, abs=0.005)
    assert out["recall"]["10"] == pytest.approx(0.802, abs=0.005)
    assert out["num_queries"] == 111


@pytest.mark.slow
def test_superpoint_vlad_beats_raw_pixels(corridor: Path, superpoint_weights: Path):
    out = evaluate_vpr(
        corridor,
        features="superpoint",
        extractor_conf={
            "weights": str(superpoint_weights),
            "max_keypoints": 512,
            "backend": "onnxruntime",  # several times faster than torch on 160x120 images
        },
        global_name="vlad",
        progress=False,
    )
    r = out["recall"]
    assert out["method"] == "superpoint+vlad"
    assert 0.0 <= r["1"] <= r["5"] <= r["10"] <= 1.0
    # measured 0.874 / 1.0 / 1.0; the raw-pixel baseline gets 0.270 / 0.541 / 0.802
    assert r["1"] >= 0.6 and r["5"] >= 0.85


def test_shipped_supergf_beats_training_free_on_held_out_corridor(
    corridor: Path, superpoint_weights: Path
):
    """The shipped weights on data held out from their training (the corridor was never used for
    training, codebooks or model selection), all over the same SuperPoint features."""
    from supergf_ros.models import default_weights_path

    if not default_weights_path("dense", "superpoint").is_file():
        pytest.skip("no shipped SuperGF-dense weights in supergf_ros/weights/")
    conf = {"weights": str(superpoint_weights), "max_keypoints": 512, "backend": "onnxruntime"}
    r1 = {
        name: evaluate_vpr(
            corridor, features="superpoint", extractor_conf=conf, global_name=name, progress=False
        )["recall"]["1"]
        for name in ("supergf-dense", "supergf-sparse", "vlad", "gem")
    }
    raw = evaluate_vpr(corridor, raw_pixels=True, progress=False)["recall"]["1"]
    # measured: SuperGF-dense 0.901, SuperGF-sparse 0.847, VLAD 0.874, GeM 0.802, raw 0.270
    assert r1["supergf-dense"] > r1["vlad"] > r1["gem"] > raw
    assert r1["supergf-dense"] >= 0.88 and r1["supergf-sparse"] > r1["gem"]
