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


class _Payload:
    """Unpickling this runs `open(marker, "w")`: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _copy_corridor_with_ground_truth(corridor: Path, dest: Path, gt) -> Path:
    import numpy as np

    for sub in ("query", "ref"):
        (dest / sub).mkdir(parents=True)
        for p in sorted((corridor / sub).iterdir())[:3]:
            (dest / sub / p.name).symlink_to(p)
    np.save(dest / "ground_truth_new.npy", gt, allow_pickle=True)
    return dest


def test_planted_pickle_payload_is_refused_and_never_runs(corridor: Path, tmp_path: Path):
    import numpy as np

    marker = tmp_path / "payload_ran"
    gt = np.empty((1, 2), dtype=object)
    gt[0, 0], gt[0, 1] = 0, _Payload(marker)
    root = _copy_corridor_with_ground_truth(corridor, tmp_path / "vpr", gt)
    with pytest.raises(ValueError, match=r"ground_truth_new\.npy.*(refus|not allowed)") as err:
        read_vpr_dataset(root)
    assert "open" in str(err.value)  # names what it refused
    assert not marker.exists()  # the payload did not run
    # the same through the CLI: exit 2, no traceback, no payload
    assert main(["eval-vpr", str(root), "--raw-pixels"]) == 2
    assert not marker.exists()


def test_ground_truth_forms_read_without_unpickling(corridor: Path, tmp_path: Path):
    import numpy as np

    # the shipped object array reads the same as numpy's (trusted) unpickling of it
    trusted = np.load(corridor / "ground_truth_new.npy", allow_pickle=True)
    _, _, positives = read_vpr_dataset(corridor)
    assert positives == [[int(r) for r in row[1]] for row in trusted]
    # a plain integer array (one reference per query) needs no pickle at all
    root = _copy_corridor_with_ground_truth(
        corridor, tmp_path / "plain", np.array([[0, 1], [2, 0]], np.int64)
    )
    assert read_vpr_dataset(root)[2] == [[1], [], [0]]
    # an object array holding a numpy array of ints (np.save of arrays of arrays) also reads
    gt = np.empty((1, 2), dtype=object)
    gt[0, 0], gt[0, 1] = np.int64(1), np.array([0, 2])
    root = _copy_corridor_with_ground_truth(corridor, tmp_path / "arrays", gt)
    assert read_vpr_dataset(root)[2] == [[], [0, 2], []]
