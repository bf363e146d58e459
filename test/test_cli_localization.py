"""End to end through the command line: build-map -> localize -> evaluate on a subset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from supergf_ros.cli import main
from supergf_ros.datasets import write_image_list

KEYFRAMES = ["0000.jpg", "0002.jpg", "0004.jpg", "0006.jpg"]
QUERIES = ["0003.jpg", "0005.jpg"]


def test_help_lists_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "supergf_ros.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for cmd in ("build-map", "localize", "evaluate", "eval-vpr"):
        assert cmd in out


@pytest.mark.slow
def test_build_localize_evaluate(data_dir: Path, superpoint_weights: Path, tmp_path: Path, capsys):
    dataset = data_dir / "strecha" / "fountain-P11"
    write_image_list(tmp_path / "keyframes.txt", KEYFRAMES)
    write_image_list(tmp_path / "queries.txt", QUERIES)
    map_path = tmp_path / "map.h5"
    rc = main([
        "build-map", str(dataset), "--out", str(map_path),
        "--images-list", str(tmp_path / "keyframes.txt"),
        "--features", "superpoint", "--superpoint-weights", str(superpoint_weights),
        "--resize-max", "512", "--max-keypoints", "768", "--quiet", "--json",
    ])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_keyframes"] == 4 and summary["num_points3D"] > 300
    assert summary["file_size_bytes"] == map_path.stat().st_size

    results, log = tmp_path / "results.txt", tmp_path / "log.json"
    rc = main([
        "localize", str(map_path), str(dataset), "--queries", str(tmp_path / "queries.txt"),
        "--out", str(results), "--log", str(log), "--top-k", "2", "--quiet",
        "--superpoint-weights", str(superpoint_weights),
    ])  # fmt: skip
    assert rc == 0
    assert "localized 2/2 queries" in capsys.readouterr().out
    lines = results.read_text().splitlines()
    assert [line.split()[0] for line in lines] == QUERIES
    assert all(len(line.split()) == 8 for line in lines)
    entries = json.loads(log.read_text())
    assert [e["name"] for e in entries] == QUERIES
    for e in entries:
        assert e["success"] and e["num_inliers"] >= 12 and len(e["retrieved"]) == 2
        assert set(e["timings_ms"]) >= {"extract", "global", "retrieval", "matching", "pose"}

    rc = main(["evaluate", str(results), str(dataset), "--queries",
               str(tmp_path / "queries.txt"), "--json"])  # fmt: skip
    assert rc == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["recall"]["0.25m_2deg"] == 1.0
    assert metrics["median_translation_m"] < 0.05 and metrics["num_localized"] == 2

    # a query missing from the dataset: clear error, nothing written
    write_image_list(tmp_path / "bad_queries.txt", ["0003.jpg", "0099.jpg"])
    out2 = tmp_path / "results2.txt"
    rc = main([
        "localize", str(map_path), str(dataset), "--queries", str(tmp_path / "bad_queries.txt"),
        "--out", str(out2), "--quiet", "--superpoint-weights", str(superpoint_weights),
    ])  # fmt: skip
    assert rc == 2 and "0099.jpg" in capsys.readouterr().err
    assert not out2.exists()

    # a truncated map: clear error
    bad_map = tmp_path / "truncated.h5"
    bad_map.write_bytes(map_path.read_bytes()[:10000])
    rc = main([
        "localize", str(bad_map), str(dataset), "--queries", str(tmp_path / "queries.txt"),
        "--out", str(out2), "--quiet", "--superpoint-weights", str(superpoint_weights),
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and ("corrupt" in err or "truncated" in err)
    assert not out2.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [
            "keyframes.txt",
            "queries.txt",
            "bad_queries.txt",
            "map.h5",
            "results.txt",
            "log.json",
            "truncated.h5",
        ]
    )  # no temp files left behind


def test_sift_map_through_cli(data_dir: Path, tmp_path: Path, capsys):
    dataset = data_dir / "strecha" / "fountain-P11"
    write_image_list(tmp_path / "keyframes.txt", ["0002.jpg", "0004.jpg", "0006.jpg"])
    write_image_list(tmp_path / "queries.txt", ["0005.jpg"])
    map_path, results = tmp_path / "sift.h5", tmp_path / "results.txt"
    rc = main([
        "build-map", str(dataset), "--out", str(map_path), "--features", "sift",
        "--images-list", str(tmp_path / "keyframes.txt"), "--max-keypoints", "1024",
        "--global", "gem", "--quiet",
    ])  # fmt: skip
    assert rc == 0 and "3 keyframes" in capsys.readouterr().out
    rc = main([
        "localize", str(map_path), str(dataset), "--queries", str(tmp_path / "queries.txt"),
        "--out", str(results), "--top-k", "1", "--rerank", "--quiet",
    ])  # fmt: skip
    assert rc == 0 and "localized 1/1" in capsys.readouterr().out
    rc = main(["evaluate", str(results), str(dataset), "--json"])
    metrics = json.loads(capsys.readouterr().out)
    assert rc == 0 and metrics["recall"]["0.25m_2deg"] == 1.0
    assert metrics["median_translation_m"] < 0.05
