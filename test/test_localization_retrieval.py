"""FAISS retrieval index: exact and approximate search agree, bad input is rejected."""

from __future__ import annotations

import numpy as np
import pytest

from supergf_ros.localization import GlobalIndex
from supergf_ros.localization.retrieval import one_faiss_thread


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_flat_and_hnsw_agree_on_clustered_data():
    rng = np.random.default_rng(0)
    db = _unit(rng.standard_normal((2000, 64)))
    queries = _unit(db[:50] + 0.05 * rng.standard_normal((50, 64)))
    flat = GlobalIndex(db, kind="flat")
    hnsw = GlobalIndex(db, kind="hnsw")
    assert flat.kind == "flat" and hnsw.kind == "hnsw" and len(hnsw) == 2000
    agree = 0
    for i, q in enumerate(queries):
        idx, sims = flat.search(q, 5)
        assert idx[0] == i and np.all(np.diff(sims) <= 1e-6)  # exact: best first
        np.testing.assert_allclose(sims, db[idx] @ q, atol=1e-5)
        agree += int(hnsw.search(q, 5)[0][0] == i)
    assert agree >= 48
    assert GlobalIndex(db, kind="auto", auto_max_exact=100).kind == "hnsw"
    assert GlobalIndex(db[:10], kind="auto").kind == "flat"


def test_search_clips_k_and_rejects_bad_input():
    db = _unit(np.eye(3, 8) + 0.1)
    index = GlobalIndex(db)
    idx, _ = index.search(db[1], 10)
    assert len(idx) == 3 and idx[0] == 1
    with pytest.raises(ValueError, match="dim"):
        index.search(np.ones(5, np.float32), 1)
    with pytest.raises(ValueError, match="retrieval index"):
        GlobalIndex(db, kind="ivfpq")
    with pytest.raises(ValueError, match="non-empty"):
        GlobalIndex(np.zeros((0, 8), np.float32))


def test_a_query_runs_faiss_on_one_thread_and_restores_the_thread_count():
    """One query's search runs on one OpenMP thread of the caller (the same results as a
    batch search on all threads), and the caller's FAISS thread count is left as it was."""
    import faiss

    rng = np.random.default_rng(3)
    db = _unit(rng.standard_normal((5000, 32)))
    queries = _unit(db[:20] + 0.1 * rng.standard_normal((20, 32)))
    index = GlobalIndex(db, kind="flat")
    before = faiss.omp_get_max_threads()
    with one_faiss_thread():
        assert faiss.omp_get_max_threads() == 1
    assert faiss.omp_get_max_threads() == before
    _, batch = index.index.search(queries, 5)
    for q, expected in zip(queries, batch):
        np.testing.assert_array_equal(index.search(q, 5)[0], expected)
    assert faiss.omp_get_max_threads() == before


def test_auto_falls_back_to_exact_search_where_hnsw_misses_the_target_recall(monkeypatch):
    """Near-identical copies of a few places (as the scale benchmark's) defeat a small HNSW
    search: `auto` then keeps exact search; an explicit `hnsw` keeps its measured recall."""
    from supergf_ros.localization import retrieval as retrieval_module

    monkeypatch.setattr(retrieval_module, "MAX_EF_SEARCH", 16)
    rng = np.random.default_rng(4)
    places = _unit(rng.standard_normal((4, 32)))
    db = _unit(places[rng.integers(0, 4, 3000)] + 0.05 * rng.standard_normal((3000, 32)))
    hnsw = GlobalIndex(db, kind="hnsw", params={"hnsw_m": 4})
    assert hnsw.kind == "hnsw" and hnsw.recall_at_5 < 0.99
    auto = GlobalIndex(db, kind="auto", auto_max_exact=100, params={"hnsw_m": 4})
    assert auto.kind == "flat" and auto.recall_at_5 is None
    assert auto.describe()["kind"] == "flat"
