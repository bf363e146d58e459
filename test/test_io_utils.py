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


def _killed_writer(target: Path, directory: bool = False) -> Path:
    """Run a writer in a child process, kill -9 it mid-write; return the temp path it left."""
    import signal
    import subprocess
    import sys

    kind = "atomic_output_dir" if directory else "atomic_output"
    fill = (
        "t.mkdir(); (t / 'a.mcap').write_bytes(b'half')" if directory else "t.write_bytes(b'half')"
    )
    code = (
        "import sys, time\n"
        f"from supergf_ros.io_utils import {kind}\n"
        f"with {kind}(sys.argv[1]) as t:\n"
        f"    {fill}\n"
        "    print(t, flush=True)\n"
        "    time.sleep(120)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        tmp = Path(proc.stdout.readline().strip())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    return tmp if not directory else tmp.parent


def test_next_write_removes_temp_files_left_by_a_killed_writer(tmp_path: Path) -> None:
    path = tmp_path / "map.h5"
    path.write_bytes(b"good map")
    left = _killed_writer(path)
    assert left.exists() and left.parent == tmp_path and left.name.startswith(".map.h5.")
    # a leftover of an older release (no writer PID in the name), from before this process started
    legacy = tmp_path / ".map.h5.k2j4h_9a.tmp"
    legacy.write_bytes(b"half")
    os.utime(legacy, (1_000_000_000, 1_000_000_000))
    # not ours to touch: another target's temp file, another file of the same name stem, and a
    # temp file whose writer is still alive (pid 1 always exists)
    other = tmp_path / ".other.h5.k2j4h_9a.tmp"
    other.write_bytes(b"x")
    backup = tmp_path / "map.h5.bak"
    backup.write_bytes(b"x")
    alive = tmp_path / ".map.h5.1-abcdefgh.tmp"
    alive.write_bytes(b"x")
    atomic_write_bytes(path, b"new map")
    assert path.read_bytes() == b"new map"
    assert not left.exists() and not legacy.exists()
    assert _leftovers(tmp_path, {"map.h5"}) == sorted([other.name, backup.name, alive.name])


def test_cleanup_never_touches_a_write_in_progress(tmp_path: Path) -> None:
    path = tmp_path / "map.h5"
    with atomic_output(path) as outer:
        outer.write_bytes(b"outer, in progress")
        atomic_write_bytes(path, b"inner")  # a second write to the same target meanwhile
        assert outer.read_bytes() == b"outer, in progress"
    assert path.read_bytes() == b"outer, in progress"
    assert _leftovers(tmp_path, {"map.h5"}) == []


def test_next_folder_write_removes_temp_folders_left_by_a_killed_writer(tmp_path: Path) -> None:
    bag = tmp_path / "bag"
    left = _killed_writer(bag, directory=True)
    assert left.is_dir() and left.name.startswith(".bag.")
    with atomic_output_dir(bag) as tmp:
        tmp.mkdir()
        (tmp / "a.mcap").write_bytes(b"whole")
    assert not left.exists()
    assert _leftovers(tmp_path, {"bag"}) == []
