"""`supergf-ros evaluate` on careless and hostile input, through the real command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from supergf_ros.datasets import Dataset, write_results

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fountain(data_dir: Path) -> Path:
    return data_dir / "strecha" / "fountain-P11"


def _evaluate(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "supergf_ros.cli", "evaluate", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )


def _results_text(fountain: Path, names: list[str]) -> str:
    ds = Dataset(fountain)
    lines = []
    for n in names:
        q, t = ds.poses[n].qvec, ds.poses[n].tvec
        lines.append(n + " " + " ".join(f"{v:.10g}" for v in (*q, *t)))
    return "\n".join(lines) + "\n"


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # one line, no traceback
    return lines[0]


def test_clean_input_still_evaluates(fountain: Path, tmp_path: Path):
    ds = Dataset(fountain)
    write_results(tmp_path / "r.txt", {n: ds.poses[n] for n in ("0003.jpg", "0005.jpg")})
    (tmp_path / "q.txt").write_text("0003.jpg\n0005.jpg\n0007.jpg\n")
    proc = _evaluate(tmp_path / "r.txt", fountain, "--queries", tmp_path / "q.txt")
    assert proc.returncode == 0, proc.stderr
    assert "queries: 3, localized: 2" in proc.stdout


def test_duplicate_result_names_are_an_error(fountain: Path, tmp_path: Path):
    results = tmp_path / "r.txt"
    results.write_text("# header\n" + _results_text(fountain, ["0003.jpg", "0005.jpg", "0003.jpg"]))
    line = _one_error_line(_evaluate(results, fountain))
    assert (
        f"{results}:4" in line and "duplicate" in line and "'0003.jpg'" in line and "line 2" in line
    )


def test_result_names_not_in_dataset_are_an_error(fountain: Path, tmp_path: Path):
    results = tmp_path / "r.txt"
    text = _results_text(fountain, ["0003.jpg", "0005.jpg"])
    results.write_text(text + text.splitlines()[0].replace("0003.jpg", "9999.jpg") + "\n")
    line = _one_error_line(_evaluate(results, fountain))
    assert f"{results}:3" in line and "'9999.jpg'" in line and "not in dataset" in line


def test_query_list_duplicates_and_unknown_names_are_errors(fountain: Path, tmp_path: Path):
    results = tmp_path / "r.txt"
    results.write_text(_results_text(fountain, ["0003.jpg"]))
    queries = tmp_path / "q.txt"
    queries.write_text("0003.jpg\n\n0005.jpg\n0003.jpg\n")
    line = _one_error_line(_evaluate(results, fountain, "--queries", queries))
    assert f"{queries}:4" in line and "duplicate" in line and "'0003.jpg'" in line
    queries.write_text("0003.jpg\nnope.jpg\n")
    line = _one_error_line(_evaluate(results, fountain, "--queries", queries))
    assert f"{queries}:2" in line and "'nope.jpg'" in line and "not in dataset" in line


@pytest.mark.parametrize("which", ["results", "queries"])
def test_binary_garbage_names_the_file(fountain: Path, tmp_path: Path, which: str):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(bytes(range(256)) * 8 + b"\xff\xfe\x00\x80")
    results = tmp_path / "r.txt"
    results.write_text(_results_text(fountain, ["0003.jpg"]))
    args = (garbage, fountain) if which == "results" else (results, fountain, "--queries", garbage)
    line = _one_error_line(_evaluate(*args))
    assert str(garbage) in line and "UTF-8" in line
