"""Engine cache: keys, hit / build / rebuild, corrupt files, atomic writes.

The builder is a counting stand-in for TensorRT's builder (not the thing under test); the cache's
key derivation, file format, validation and atomic writes are exercised for real on disk.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from supergf_ros.inference.engine_cache import (
    MAGIC,
    CorruptEngineFile,
    EngineCache,
    canonical_profile,
    default_engine_dir,
    make_engine_key,
)

PROFILE = {"image": ((1, 1, 16, 16), (1, 1, 480, 640), (1, 1, 1024, 1024))}


class CountingBuilder:
    """Returns distinct engine bytes on each call and counts calls."""

    def __init__(self, payload: bytes = b"engine-bytes") -> None:
        self.calls = 0
        self.payload = payload

    def __call__(self) -> bytes:
        self.calls += 1
        return self.payload + b"#%d" % self.calls


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"fake onnx graph v1" * 100)
    return path


def key_for(onnx: Path, **overrides):
    kwargs = dict(
        model="superpoint",
        tensorrt_version="10.3.0",
        device_name="NVIDIA Orin (sm_87)",
        precision="fp16",
        profile=PROFILE,
        workspace_bytes=1 << 30,
    )
    kwargs.update(overrides)
    return make_engine_key(onnx, **kwargs)


def test_key_is_stable_and_sensitive_to_every_component(onnx_file: Path, tmp_path: Path) -> None:
    base = key_for(onnx_file)
    assert key_for(onnx_file) == base
    assert key_for(onnx_file).digest() == base.digest()
    other_onnx = tmp_path / "other.onnx"
    other_onnx.write_bytes(b"fake onnx graph v2" * 100)
    variants = [
        key_for(other_onnx),
        key_for(onnx_file, tensorrt_version="8.6.1"),
        key_for(onnx_file, device_name="NVIDIA H200 (sm_90)"),
        key_for(onnx_file, precision="fp32"),
        key_for(onnx_file, profile={"image": ((1, 1, 16, 16), (1, 1, 480, 640), (1, 1, 640, 640))}),
        key_for(onnx_file, workspace_bytes=1 << 28),
    ]
    digests = {base.digest(), *(k.digest() for k in variants)}
    assert len(digests) == 1 + len(variants)
    cache = EngineCache(tmp_path / "engines")
    assert len({cache.path(k) for k in [base, *variants]}) == 1 + len(variants)


def test_key_json_round_trip(onnx_file: Path) -> None:
    from supergf_ros.inference.engine_cache import EngineKey

    key = key_for(onnx_file)
    assert EngineKey.from_json(key.to_json()) == key


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ({}, "non-empty"),
        ({"image": ((1, 1, 16, 16), (1, 1, 8, 8), (1, 1, 32, 32))}, "min <= opt <= max"),
        ({"image": ((1, 1, 16), (1, 1, 16, 16), (1, 1, 32, 32))}, "rank"),
        ({"image": ((1, 1, 0, 16), (1, 1, 16, 16), (1, 1, 32, 32))}, ">= 1"),
        ({"image": ((1, 1, 16, 16), (1, 1, 16, 16))}, "(min, opt, max)"),
    ],
)
def test_bad_profiles_raise(profile, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        canonical_profile(profile)


def test_bad_key_inputs_raise(onnx_file: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ONNX file not found"):
        key_for(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="precision"):
        key_for(onnx_file, precision="int8")
    with pytest.raises(ValueError, match="non-empty"):
        key_for(onnx_file, device_name="")


def test_build_then_hit(onnx_file: Path, tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "engines")
    key = key_for(onnx_file)
    build = CountingBuilder()
    first = cache.get_or_build(key, build)
    assert (first.status, build.calls) == ("built", 1)
    assert first.path.is_file() and first.path.read_bytes().startswith(MAGIC)
    second = cache.get_or_build(key, build)
    assert (second.status, build.calls) == ("hit", 1)
    assert second.engine == first.engine == b"engine-bytes#1"
    assert cache.read(key) == first.engine
    # no temp files left behind
    assert [p.name for p in cache.root.iterdir()] == [first.path.name]


def test_loader_gets_bytes_and_its_result_is_returned(onnx_file: Path, tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    key = key_for(onnx_file)
    loaded = []
    result = cache.get_or_build(
        key, CountingBuilder(), load=lambda b: loaded.append(b) or {"engine": b}
    )
    assert result.value == {"engine": b"engine-bytes#1"}
    result = cache.get_or_build(key, CountingBuilder(), load=lambda b: {"engine": b})
    assert result.status == "hit" and result.value == {"engine": b"engine-bytes#1"}


def test_changed_model_or_device_rebuilds(onnx_file: Path, tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    build = CountingBuilder()
    cache.get_or_build(key_for(onnx_file), build)
    # another GPU: new key, new build; the first entry still loads
    assert cache.get_or_build(key_for(onnx_file, device_name="RTX 4090"), build).status == "built"
    # a changed ONNX file (retrained weights) changes the hash -> build
    onnx_file.write_bytes(b"retrained graph" * 100)
    assert cache.get_or_build(key_for(onnx_file), build).status == "built"
    assert build.calls == 3


@pytest.mark.parametrize(
    "damage",
    ["truncate_payload", "flip_payload_byte", "garbage", "empty", "bad_header", "truncate_header"],
)
def test_corrupt_file_is_rebuilt(onnx_file: Path, tmp_path: Path, damage: str) -> None:
    cache = EngineCache(tmp_path)
    key = key_for(onnx_file)
    build = CountingBuilder()
    path = cache.get_or_build(key, build).path
    data = path.read_bytes()
    header_end = len(data) - len(b"engine-bytes#1")
    if damage == "truncate_payload":
        path.write_bytes(data[:-3])
    elif damage == "flip_payload_byte":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    elif damage == "garbage":
        path.write_bytes(os.urandom(200))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "bad_header":
        path.write_bytes(data[:12] + b"{" * (header_end - 12) + data[header_end:])
    else:
        path.write_bytes(data[:20])
    with pytest.raises(CorruptEngineFile):
        cache.read(key)
    result = cache.get_or_build(key, build)
    assert result.status == "rebuilt" and result.reason
    assert build.calls == 2
    assert cache.read(key) == b"engine-bytes#2"
    assert cache.get_or_build(key, build).status == "hit"


def test_file_of_another_key_is_not_trusted(onnx_file: Path, tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)
    fp16, fp32 = key_for(onnx_file), key_for(onnx_file, precision="fp32")
    cache.write(fp32, b"fp32 engine")
    os.replace(cache.path(fp32), cache.path(fp16))  # e.g. a file copied from elsewhere
    with pytest.raises(CorruptEngineFile, match="different key"):
        cache.read(fp16)
    assert cache.get_or_build(fp16, CountingBuilder()).status == "rebuilt"


def test_loader_rejecting_cached_engine_triggers_one_rebuild(onnx_file: Path, tmp_path: Path):
    cache = EngineCache(tmp_path)
    key = key_for(onnx_file)
    cache.write(key, b"stale engine from an older driver")
    build = CountingBuilder()

    def load(engine: bytes):
        if engine.startswith(b"stale"):
            return None  # what deserialize_cuda_engine returns for an incompatible engine
        return engine

    result = cache.get_or_build(key, build, load=load)
    assert result.status == "rebuilt" and build.calls == 1
    assert cache.read(key) == b"engine-bytes#1"

    def raising(engine: bytes):
        raise RuntimeError("deserialization failed")

    with pytest.raises(RuntimeError, match="failed to load"):
        cache.get_or_build(key, build, load=raising)


def test_failed_build_leaves_no_files(onnx_file: Path, tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "engines")
    key = key_for(onnx_file)

    def failing() -> bytes:
        raise RuntimeError("builder ran out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        cache.get_or_build(key, failing)
    assert not cache.path(key).exists()
    with pytest.raises(RuntimeError, match="no data"):
        cache.get_or_build(key, lambda: b"")
    assert not cache.root.exists() or not any(cache.root.iterdir())


def test_write_is_atomic_when_interrupted(onnx_file: Path, tmp_path: Path, monkeypatch) -> None:
    cache = EngineCache(tmp_path)
    key = key_for(onnx_file)
    cache.write(key, b"good engine")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        cache.write(key, b"new engine")
    monkeypatch.undo()
    assert cache.read(key) == b"good engine"  # old entry intact
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_default_dir_follows_env(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SUPERGF_CACHE_DIR", str(tmp_path))
    assert default_engine_dir() == tmp_path / "engines"
    assert EngineCache().root == tmp_path / "engines"
