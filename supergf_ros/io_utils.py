"""Small file helpers shared by the package: atomic writes and file hashes.

Every output file (results, maps, ONNX models, engines, JSON reports, plots, bags) is written
atomically: into a temp file (or folder) next to the target, then moved into place with
``os.replace``. A crash or an exception half-way leaves the previous file intact and no temp file
behind.

- `atomic_output(path, suffix=".tmp")`: context manager yielding a temp path in the same folder,
  for writers that want a file name (h5py, torch.onnx.export, savefig, shutil.copyfile).
- `atomic_write_bytes(path, data)`, `atomic_write_text(path, text)`: one-call versions.
- `atomic_output_dir(path)`: the same for a folder (e.g. a rosbag2 bag); an existing target is
  replaced as a whole.
- `file_sha256(path)`: hex SHA-256 of a file, read in chunks.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp file path next to `path`; on success move it onto `path`, else remove it.

    The temp file already exists (empty) and is named ``.<name>.<random><suffix>``; the result
    gets the usual permissions of a new file (0666 less the umask), not mkstemp's 0600, so a map
    written by one user stays readable by a node running as another; writers that pick the format from the file name (e.g. matplotlib)
    need a `suffix` ending in the right extension. The parent folder is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = False) -> None:
    """Write `data` to `path` atomically; `fsync=True` also flushes it to disk before the move."""
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (temp file in the same folder, then os.replace)."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_output_dir(path: str | Path) -> Iterator[Path]:
    """Yield a not-yet-existing folder path to fill; on success it replaces `path` as a whole.

    The yielded path lies in a temp folder next to `path` and has the same name (so tools that
    name files after their folder, like rosbag2, see the final name). On success an existing
    `path` (folder or file) is removed and the new folder moved in; the temp folder is always
    removed, so a failure leaves the old `path` untouched and nothing behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        tmp = tmp_dir / path.name
        yield tmp
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, used to identify weights and ONNX models in maps and caches."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


__all__ = [
    "atomic_output",
    "atomic_output_dir",
    "atomic_write_bytes",
    "atomic_write_text",
    "file_sha256",
]
