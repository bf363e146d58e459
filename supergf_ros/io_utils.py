"""Small file helpers shared by the package: atomic writes and file hashes.

Every output file (results, maps, ONNX models, engines, JSON reports, plots, bags) is written
atomically: into a temp file (or folder) next to the target, then moved into place with
``os.replace``. A crash or an exception half-way leaves the previous file intact and no temp file
behind. A writer killed outright (kill -9, power loss) cannot clean up: its temp file or folder
(``.<name>.<pid>-<random><suffix>``) stays, and the next write to the same target removes it
(`remove_stale_temp_files`).

- `atomic_output(path, suffix=".tmp")`: context manager yielding a temp path in the same folder,
  for writers that want a file name (h5py, torch.onnx.export, savefig, shutil.copyfile).
- `atomic_write_bytes(path, data)`, `atomic_write_text(path, text)`: one-call versions.
- `atomic_output_dir(path)`: the same for a folder (e.g. a rosbag2 bag); an existing target is
  replaced as a whole.
- `file_sha256(path)`: hex SHA-256 of a file, read in chunks.
- `load_npy_safely(path)`: a ``.npy`` file without running code planted in it (object arrays are
  unpickled with a restricted unpickler that only rebuilds numpy arrays of plain Python data).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Temp paths of writes in progress in this process: never stale, whatever their age.
_IN_PROGRESS: set[Path] = set()
_IN_PROGRESS_LOCK = threading.Lock()
# When this module was imported: a temp file of our own PID older than this is a leftover of an
# earlier process that had the same PID (containers reuse small PIDs).
_PROCESS_START = time.time()
_MKSTEMP_CHARS = "[a-z0-9_]{8}"  # tempfile's random part


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a PID we can check: assume someone owns it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists, owned by another user (or not a PID): leave it alone
    return True


def remove_stale_temp_files(path: str | Path, suffix: str = ".tmp") -> list[Path]:
    """Remove temp files/folders that earlier writes to `path` left behind; return them.

    A temp path of `path` is ``.<name>.<pid>-<random><suffix>`` (files; folders have no suffix),
    or ``.<name>.<random><suffix>`` from releases that did not record the PID. It is stale when
    it is not a write in progress in this process and either its writer PID is dead, or it is
    older than this process's start (a legacy name, or our own PID reused by an earlier process).
    Temp paths of live writers in other processes are kept. Errors removing one are ignored.
    """
    path = Path(path)
    pattern = re.compile(
        rf"^\.{re.escape(path.name)}\.(?:(\d+)-)?{_MKSTEMP_CHARS}{re.escape(suffix)}$"
    )
    removed: list[Path] = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    with _IN_PROGRESS_LOCK:
        in_progress = set(_IN_PROGRESS)
    for entry in entries:
        match = pattern.match(entry.name)
        candidate = Path(entry.path)
        if not match or candidate in in_progress:
            continue
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
        except OSError:
            continue
        pid = int(match.group(1)) if match.group(1) else None
        if pid is None or pid == os.getpid():
            stale = mtime < _PROCESS_START
        else:
            stale = not _pid_alive(pid)
        if not stale:
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(candidate)
            else:
                candidate.unlink()
            removed.append(candidate)
        except OSError:
            pass
    return removed


@contextmanager
def _registered(tmp: Path) -> Iterator[None]:
    with _IN_PROGRESS_LOCK:
        _IN_PROGRESS.add(tmp)
    try:
        yield
    finally:
        with _IN_PROGRESS_LOCK:
            _IN_PROGRESS.discard(tmp)


@contextmanager
def atomic_output(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp file path next to `path`; on success move it onto `path`, else remove it.

    The temp file already exists (empty) and is named ``.<name>.<pid>-<random><suffix>``; temp
    files that killed writers left for the same target are removed first; the result
    gets the usual permissions of a new file (0666 less the umask), not mkstemp's 0600, so a map
    written by one user stays readable by a node running as another; writers that pick the format from the file name (e.g. matplotlib)
    need a `suffix` ending in the right extension. The parent folder is created if missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path, suffix)
    fd, name = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}-", suffix=suffix, dir=path.parent
    )
    os.close(fd)
    tmp = Path(name)
    with _registered(tmp):
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
    remove_stale_temp_files(path, suffix="")
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}-", dir=path.parent))
    with _IN_PROGRESS_LOCK:
        _IN_PROGRESS.add(tmp_dir)
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
        with _IN_PROGRESS_LOCK:
            _IN_PROGRESS.discard(tmp_dir)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, used to identify weights and ONNX models in maps and caches."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# What a pickled numpy object array may reference: numpy's own array reconstruction. Anything
# else a pickle names (os.system, builtins.open, eval, ...) would run on load and is refused.
_NUMPY_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}
_MAX_NPY_BYTES = 256 << 20


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _NUMPY_PICKLE_GLOBALS:
            raise ValueError(
                f"{self._path}: refusing to unpickle '{module}.{name}': only numpy arrays of plain "
                "numbers, strings and lists are allowed in this file (it may hold planted code)"
            )
        import numpy as np

        if name == "ndarray":
            return np.ndarray
        if name == "dtype":
            return np.dtype
        multiarray = getattr(np, "_core", None) or np.core
        return getattr(multiarray.multiarray, name)

    def persistent_load(self, pid):
        raise ValueError(f"{self._path}: refusing a pickle persistent id (not a plain numpy file)")


def load_npy_safely(path: str | Path, max_bytes: int = _MAX_NPY_BYTES):
    """A ``.npy`` array; object arrays are read without executing code (see module doc).

    Plain arrays load with ``allow_pickle=False``. An object array's pickle may only rebuild
    numpy arrays, dtypes and scalars; its elements come back as plain Python values (ints, floats,
    strings, lists, tuples, dicts) or such arrays.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a .npy file, larger than `max_bytes`, or a pickle that names anything else
            (the message names the file and the refused global).
    """
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"array file not found: {path}")
    size = path.stat().st_size
    if size > max_bytes:
        raise ValueError(f"{path}: {size} B is larger than the {max_bytes} B allowed for this file")
    raw = path.read_bytes()
    f = io.BytesIO(raw)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, SyntaxError, TypeError) as err:
        raise ValueError(f"{path} is not a readable .npy file: {err}") from err
    if not dtype.hasobject:
        try:
            return np.load(io.BytesIO(raw), allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise ValueError(f"{path} is not a readable .npy file: {err}") from err
    try:
        array = _NumpyOnlyUnpickler(f, path).load()
    except ValueError:
        raise
    except Exception as err:  # truncated or malformed pickle stream
        raise ValueError(f"{path}: cannot read the object array: {err}") from err
    if not isinstance(array, np.ndarray) or array.shape != tuple(shape):
        raise ValueError(
            f"{path}: the pickled data is not the {tuple(shape)} array its header says"
        )
    return array


__all__ = [
    "atomic_output",
    "atomic_output_dir",
    "atomic_write_bytes",
    "atomic_write_text",
    "file_sha256",
    "load_npy_safely",
    "remove_stale_temp_files",
]


_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"
_PNG_START, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


def decode_image_bytes(buf: bytes, what: str, flags: int | None = None):
    """JPEG or PNG bytes decoded by OpenCV (BGR or gray, as cv2.imdecode returns them).

    ValueError naming `what` for a payload that is neither, truncated (no end marker: libjpeg
    would return a half-decoded image with only a warning) or corrupt."""
    import cv2
    import numpy as np

    if buf.startswith(_JPEG_START):
        kind, complete = "JPEG", buf.rstrip(b"\x00").endswith(_JPEG_END)
    elif buf.startswith(_PNG_START):
        kind, complete = "PNG", buf.endswith(_PNG_END)
    else:
        raise ValueError(f"{what} is neither JPEG nor PNG ({len(buf)} B starting {buf[:8].hex()})")
    if not complete:
        raise ValueError(f"{what}: truncated {kind} ({len(buf)} B, no end marker)")
    image = cv2.imdecode(
        np.frombuffer(buf, np.uint8), cv2.IMREAD_UNCHANGED if flags is None else flags
    )
    if image is None or image.size == 0:
        raise ValueError(f"{what}: corrupt {kind} ({len(buf)} B do not decode)")
    return image
