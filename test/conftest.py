"""Shared fixtures: where the real test data and weights live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("SUPERGF_SHARED_DIR", REPO_ROOT.parent / "shared"))
DATA_DIR = SHARED_DIR / "data"
SUPERPOINT_WEIGHTS = SHARED_DIR / "weights" / "superpoint_v1.pth"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared test data not found at {path} (place ../shared beside the repository)")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _require(DATA_DIR)


@pytest.fixture(scope="session")
def superpoint_weights() -> Path:
    return _require(SUPERPOINT_WEIGHTS)


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    """A persistent cache for expensive intermediate results (features, maps) across test runs."""
    path = REPO_ROOT / ".cache" / "test"
    path.mkdir(parents=True, exist_ok=True)
    return path
