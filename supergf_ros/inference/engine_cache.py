"""A cache of serialized TensorRT engines, keyed by everything that makes an engine valid.

An engine only runs on the TensorRT version and GPU it was built for, and encodes the ONNX graph,
the precision and the shape profile. `EngineKey` holds exactly these; `EngineCache` maps a key to
one file and

- loads it when present and valid (an unchanged model on an unchanged device loads in ms),
- rebuilds when it is missing, unreadable, truncated, fails its checksum, belongs to another key,
  or the caller's loader (TensorRT deserialization) rejects it,
- writes atomically (temp file in the same folder + os.replace), so a crash never leaves a
  half-written engine under the final name.

The file format is ``MAGIC | u32 header length | JSON header | engine bytes``; the header stores
the key and the SHA-256 and size of the engine bytes. Nothing here imports TensorRT: the builder
and loader are callables, so the logic is testable on any machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from ..io_utils import atomic_write_bytes
from ..io_utils import file_sha256 as sha256_file

logger = logging.getLogger(__name__)

MAGIC = b"SGFTRTE1"
FORMAT_VERSION = 1
_LEN = struct.Struct("<I")
T = TypeVar("T")


def default_engine_dir() -> Path:
    """Engine cache folder: $SUPERGF_CACHE_DIR/engines, else ~/.cache/supergf_ros/engines."""
    env = os.environ.get("SUPERGF_CACHE_DIR")
    root = Path(env) if env else Path.home() / ".cache" / "supergf_ros"
    return root / "engines"


def canonical_profile(
    profile: Mapping[str, tuple[Any, Any, Any]],
) -> tuple[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...]:
    """Validate a TensorRT shape profile {input: (min, opt, max)} and return a canonical tuple.

    Raises ValueError unless every shape has the same rank, positive sizes, and
    min <= opt <= max element-wise.
    """
    if not isinstance(profile, Mapping) or not profile:
        raise ValueError("profile must be a non-empty dict {input name: (min, opt, max) shape}")
    out = []
    for name in sorted(profile):
        shapes = profile[name]
        if len(shapes) != 3:
            raise ValueError(f"profile for {name!r} must be (min, opt, max), got {shapes!r}")
        lo, opt, hi = (tuple(int(d) for d in s) for s in shapes)
        if not (len(lo) == len(opt) == len(hi)):
            raise ValueError(f"profile shapes for {name!r} differ in rank: {lo}, {opt}, {hi}")
        if min(lo, default=1) < 1:
            raise ValueError(f"profile sizes for {name!r} must be >= 1, got min {lo}")
        if any(a > b or b > c for a, b, c in zip(lo, opt, hi)):
            raise ValueError(f"profile for {name!r} needs min <= opt <= max, got {lo}, {opt}, {hi}")
        out.append((str(name), lo, opt, hi))
    return tuple(out)


@dataclass(frozen=True)
class EngineKey:
    """What an engine depends on. Equal keys -> interchangeable engines.

    Attributes:
        model: model name, e.g. "superpoint" (only for readable file names and logs).
        onnx_sha256: SHA-256 of the ONNX file the engine was built from.
        tensorrt_version: e.g. "10.3.0".
        device_name: GPU name, e.g. "NVIDIA Jetson Orin" (plus compute capability if known).
        precision: "fp32" or "fp16".
        profile: canonical shape profile, see `canonical_profile`.
        workspace_bytes: builder workspace limit (changes the tactics TensorRT may pick).
    """

    model: str
    onnx_sha256: str
    tensorrt_version: str
    device_name: str
    precision: str
    profile: tuple
    workspace_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["profile"] = [[n, list(a), list(b), list(c)] for n, a, b, c in self.profile]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineKey:
        profile = tuple(
            (str(n), tuple(a), tuple(b), tuple(c)) for n, a, b, c in data.get("profile", [])
        )
        return cls(**{**data, "profile": profile})

    def digest(self) -> str:
        """SHA-256 over the canonical JSON of the key."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def make_engine_key(
    onnx_path: str | Path,
    *,
    model: str,
    tensorrt_version: str,
    device_name: str,
    precision: str,
    profile: Mapping[str, tuple[Any, Any, Any]],
    workspace_bytes: int = 0,
) -> EngineKey:
    """Build the key for engines of the ONNX file at `onnx_path` (hashes the file)."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {onnx_path}")
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
    if not tensorrt_version or not device_name:
        raise ValueError("tensorrt_version and device_name must be non-empty")
    return EngineKey(
        model=str(model),
        onnx_sha256=sha256_file(onnx_path),
        tensorrt_version=str(tensorrt_version),
        device_name=str(device_name),
        precision=precision,
        profile=canonical_profile(profile),
        workspace_bytes=int(workspace_bytes),
    )


class CorruptEngineFile(ValueError):
    """The cache file exists but cannot be trusted (reason in the message)."""


@dataclass
class CacheResult(Generic[T]):
    """Outcome of `EngineCache.get_or_build`.

    Attributes:
        value: the loader's result (e.g. a deserialized engine), or the engine bytes without loader.
        engine: the serialized engine bytes.
        status: "hit" (loaded from cache), "built" (no cache file) or "rebuilt" (file was invalid).
        path: the cache file.
        seconds: time spent loading or building.
        reason: why a rebuild happened ("" otherwise).
    """

    value: T
    engine: bytes
    status: str
    path: Path
    seconds: float
    reason: str = ""


class EngineCache:
    """Serialized engines on disk under `root`, one file per `EngineKey`."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_engine_dir()

    def path(self, key: EngineKey) -> Path:
        """File for `key`: ``{model}-{precision}-{digest[:16]}.engine``."""
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in key.model) or "model"
        return self.root / f"{safe}-{key.precision}-{key.digest()[:16]}.engine"

    def read(self, key: EngineKey) -> bytes | None:
        """Engine bytes for `key`; None when there is no file; CorruptEngineFile when invalid."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise CorruptEngineFile(f"cannot read {path}: {err}") from err
        return self._decode(data, key, path)

    def write(self, key: EngineKey, engine: bytes) -> Path:
        """Store `engine` for `key` atomically; return the file."""
        if not isinstance(engine, (bytes, bytearray, memoryview)) or len(engine) == 0:
            raise ValueError("engine must be non-empty bytes")
        engine = bytes(engine)
        header = json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "key": key.to_json(),
                "engine_sha256": hashlib.sha256(engine).hexdigest(),
                "engine_size": len(engine),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            sort_keys=True,
        ).encode()
        path = self.path(key)
        atomic_write_bytes(path, MAGIC + _LEN.pack(len(header)) + header + engine, fsync=True)
        return path

    def remove(self, key: EngineKey) -> None:
        """Delete the file for `key` if present."""
        self.path(key).unlink(missing_ok=True)

    def get_or_build(
        self,
        key: EngineKey,
        build: Callable[[], bytes],
        load: Callable[[bytes], T] | None = None,
    ) -> CacheResult[T]:
        """Load the cached engine for `key`, or build, store and load it.

        Args:
            key: what the engine depends on.
            build: returns serialized engine bytes (e.g. TensorRT `build_serialized_network`).
            load: turns bytes into the usable object (e.g. `deserialize_cuda_engine`); returning
                None or raising means "this engine is unusable", which triggers one rebuild.
        Raises:
            RuntimeError: a freshly built engine is empty or rejected by `load`.
        """
        load_fn: Callable[[bytes], Any] = load if load is not None else (lambda b: b)
        path = self.path(key)
        start = time.perf_counter()
        reason = ""
        try:
            engine = self.read(key)
        except CorruptEngineFile as err:
            engine, reason = None, str(err)
        if engine is not None:
            try:
                value = load_fn(engine)
            except Exception as err:  # the loader (TensorRT) may raise anything
                value, reason = None, f"loader failed on cached engine {path}: {err}"
            else:
                if value is None:
                    reason = f"loader rejected cached engine {path}"
            if value is not None:
                seconds = time.perf_counter() - start
                logger.info("engine cache hit %s (%.3f s)", path, seconds)
                return CacheResult(value, engine, "hit", path, seconds)
        if reason:
            logger.warning("rebuilding engine: %s", reason)
        engine = build()
        if not engine:
            raise RuntimeError(f"engine build for {key.model!r} returned no data")
        engine = bytes(engine)
        try:
            value = load_fn(engine)
        except Exception as err:
            raise RuntimeError(
                f"freshly built engine for {key.model!r} failed to load: {err}"
            ) from err
        if value is None:
            raise RuntimeError(f"freshly built engine for {key.model!r} was rejected by the loader")
        self.write(key, engine)
        seconds = time.perf_counter() - start
        status = "rebuilt" if reason else "built"
        logger.info("engine %s %s (%.1f s)", status, path, seconds)
        return CacheResult(value, engine, status, path, seconds, reason)

    @staticmethod
    def _decode(data: bytes, key: EngineKey, path: Path) -> bytes:
        if len(data) < len(MAGIC) + _LEN.size or not data.startswith(MAGIC):
            raise CorruptEngineFile(f"{path} is not a supergf_ros engine file (bad magic)")
        (header_len,) = _LEN.unpack_from(data, len(MAGIC))
        start = len(MAGIC) + _LEN.size
        if start + header_len > len(data):
            raise CorruptEngineFile(f"{path} is truncated (header)")
        try:
            header = json.loads(data[start : start + header_len])
            stored_key = EngineKey.from_json(header["key"])
            expected_sha, expected_size = header["engine_sha256"], int(header["engine_size"])
        except (ValueError, KeyError, TypeError) as err:
            raise CorruptEngineFile(f"{path} has an unreadable header: {err}") from err
        if header.get("format_version") != FORMAT_VERSION:
            raise CorruptEngineFile(f"{path} has format {header.get('format_version')}")
        if stored_key != key:
            raise CorruptEngineFile(f"{path} belongs to a different key")
        engine = data[start + header_len :]
        if len(engine) != expected_size:
            raise CorruptEngineFile(
                f"{path} is truncated ({len(engine)} of {expected_size} engine bytes)"
            )
        if hashlib.sha256(engine).hexdigest() != expected_sha:
            raise CorruptEngineFile(f"{path} fails its checksum")
        return engine
