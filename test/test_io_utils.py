"""Atomic writes and file hashes (supergf_ros.io_utils), exercised on real files."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from supergf_ros.io_utils import (
    atomic_output,
    atomic_output_dir,
    atomic_write_bytes,
    atomic_write_text,
    file_sha256,
)


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_atomic_write_text_and_bytes_create_folders_and_replace(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "out.txt"
    atomic_write_text(path, "héllo\n")
    assert path.read_bytes() == "héllo\n".encode()
    atomic_write_bytes(path, b"\x00\x01second", fsync=True)
    assert path.read_bytes() == b"\x00\x01second"
    assert _leftovers(path.parent, {"out.txt"}) == []


def test_atomic_output_success_moves_temp_file_in_place(tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    path.write_bytes(b"old")
    with atomic_output(path, suffix=".tmp.png") as tmp:
        assert tmp.parent == tmp_path and tmp != path
        assert tmp.name.startswith(".plot.png.") and tmp.name.endswith(".tmp.png")
        assert tmp.exists() and path.read_bytes() == b"old"  # target untouched until the end
        tmp.write_bytes(b"new")
    assert path.read_bytes() == b"new"
    assert _leftovers(tmp_path, {"plot.png"}) == []


def test_exception_keeps_old_file_and_removes_temp(tmp_path: Path) -> None:
    path = tmp_path / "map.h5"
    path.write_bytes(b"good map")
    with pytest.raises(RuntimeError, match="writer crashed"), atomic_output(path) as tmp:
        tmp.write_bytes(b"half a map")
        raise RuntimeError("writer crashed")
    assert path.read_bytes() == b"good map"
    assert _leftovers(tmp_path, {"map.h5"}) == []


def test_exception_before_first_write_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "new.json"
    with pytest.raises(KeyboardInterrupt), atomic_output(path):
        raise KeyboardInterrupt  # BaseException too
    assert list(tmp_path.iterdir()) == []


def test_failing_replace_keeps_old_file_and_removes_temp(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "results.txt"
    atomic_write_text(path, "old\n")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(path, "new\n")
    monkeypatch.undo()
    assert path.read_text() == "old\n"
    assert _leftovers(tmp_path, {"results.txt"}) == []


def test_atomic_output_dir_replaces_a_folder_as_a_whole(tmp_path: Path) -> None:
    bag = tmp_path / "bag"
    with atomic_output_dir(bag) as tmp:
        assert tmp.name == "bag" and not tmp.exists() and tmp.parent.parent == tmp_path
        tmp.mkdir()
        (tmp / "a.mcap").write_bytes(b"first")
        (tmp / "stale.txt").write_text("only in the first bag")
    assert sorted(p.name for p in bag.iterdir()) == ["a.mcap", "stale.txt"]
    with atomic_output_dir(bag) as tmp:
        tmp.mkdir()
        (tmp / "a.mcap").write_bytes(b"second")
    assert sorted(p.name for p in bag.iterdir()) == ["a.mcap"]  # not merged
    assert (bag / "a.mcap").read_bytes() == b"second"
    assert _leftovers(tmp_path, {"bag"}) == []


def test_atomic_output_dir_failure_keeps_old_folder(tmp_path: Path) -> None:
    bag = tmp_path / "bag"
    bag.mkdir()
    (bag / "a.mcap").write_bytes(b"good")
    with pytest.raises(ValueError, match="bad frame"), atomic_output_dir(bag) as tmp:
        tmp.mkdir()
        (tmp / "a.mcap").write_bytes(b"partial")
        raise ValueError("bad frame")
    assert (bag / "a.mcap").read_bytes() == b"good"
    assert _leftovers(tmp_path, {"bag"}) == []


def test_atomic_output_dir_replaces_a_file(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_text("a file where the bag goes")
    with atomic_output_dir(target) as tmp:
        tmp.mkdir()
        (tmp / "metadata.yaml").write_text("x: 1\n")
    assert target.is_dir() and (target / "metadata.yaml").read_text() == "x: 1\n"


def test_file_sha256_matches_hashlib_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    data = os.urandom(3000)
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert file_sha256(path) == expected
    assert file_sha256(str(path), chunk=7) == expected  # several reads, last one partial
    with pytest.raises(FileNotFoundError):
        file_sha256(tmp_path / "missing.pth")


def test_old_public_names_still_work(tmp_path: Path) -> None:
    from supergf_ros.datasets import atomic_write_text as datasets_atomic_write_text
    from supergf_ros.features.base import file_sha256 as base_file_sha256
    from supergf_ros.inference.engine_cache import sha256_file

    path = tmp_path / "names.txt"
    datasets_atomic_write_text(path, "a.jpg\n")
    assert path.read_text() == "a.jpg\n"
    assert base_file_sha256(path) == sha256_file(path) == file_sha256(path)


def test_atomic_output_has_regular_file_permissions(tmp_path):
    """Not mkstemp's 0600: a map written by one user must stay readable by a node run by another."""
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "map.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "map.txt").stat().st_mode) == 0o644
