"""Top-k retrieval of map keyframes by global descriptor with FAISS.

A map of format version 3 stores its index (`GlobalIndex.to_bytes`) and, when the aggregator's
descriptors are wider than the map needs, a projection learned on the map (`fit_projection_rows`):
queries are projected and renormalized, so the search runs in the reduced space.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

INDEX_KINDS = ("auto", "flat", "hnsw", "ivf")
# `auto`: exact search up to this many keyframes (at 256-D about 10 ms a query on one core at
# 100,000), above it an HNSW graph whose efSearch is raised until recall@5 >= TARGET_RECALL
# (exact again where it cannot get there)
AUTO_MAX_EXACT = 100_000
TARGET_RECALL = 0.99
MAX_EF_SEARCH = 4096  # HNSW tuning stops here; `auto` then falls back to exact search
DEFAULT_INDEX_PARAMS: dict[str, Any] = {
    "hnsw_m": 32,
    "ef_search": None,  # None: tuned to TARGET_RECALL at build time
    "nlist": None,  # IVF lists; None: 4 sqrt(K)
    "nprobe": None,  # None: tuned to TARGET_RECALL at build time
    "target_recall": TARGET_RECALL,
}


def fit_projection_rows(read_rows, n: int, g: int, dim: int, seed: int = 0,
                        chunk: int = 256) -> np.ndarray | None:  # fmt: skip
    """(g, d) orthonormal projection onto the top singular directions of the n rows
    `read_rows(indices)` -> (len, g) float32 (the map's global descriptors, uncentered),
    d = min(dim, rank bound); None if d >= g.

    Uncentered, so a map with at most `dim` keyframes keeps every inner product of a query with
    its keyframes exactly (the keyframes lie in the kept span). The rows are read `chunk` at a
    time: memory O(g d), not O(n g). Randomized SVD with two power iterations: O(n g d).
    """
    d = min(int(dim), n, g)
    if d >= g:
        return None
    if n <= d:  # the rows' span, exactly (at most d rows)
        q, _ = np.linalg.qr(read_rows(np.arange(n)).T.astype(np.float64))
        return np.ascontiguousarray(q[:, :d], dtype=np.float32)
    k = min(d + 32, n)
    blocks = [np.arange(a, min(n, a + chunk)) for a in range(0, n, chunk)]
    gaussian = np.random.default_rng(seed).standard_normal((n, k)).astype(np.float32)
    y = np.zeros((g, k), np.float32, order="F")  # the range of x^T, accumulated in place
    for b in blocks:
        _add_at_b(y, read_rows(b), gaussian[b])
    for _ in range(2):
        q, y = _orthonormal(y), np.zeros((g, k), np.float32, order="F")
        for x in map(read_rows, blocks):
            _add_at_b(y, x, x @ q)
    basis = _orthonormal(y)
    small = np.concatenate([read_rows(b) @ basis for b in blocks])
    _, _, vt = np.linalg.svd(small, full_matrices=False)
    return np.ascontiguousarray(basis @ vt[:d].T, dtype=np.float32)


def _add_at_b(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """y += a^T b in place (BLAS sgemm into the Fortran-ordered y: no (g, k) temporary)."""
    from scipy.linalg.blas import sgemm

    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    out = sgemm(1.0, a, b, beta=1.0, c=y, trans_a=True, overwrite_c=True)
    if out is not y:  # sgemm wrote a copy: not expected for a Fortran float32 y
        y[...] = out


def _orthonormal(y: np.ndarray) -> np.ndarray:
    """Q of the economic QR of a tall (g, k) float32 matrix, in float32 and in place (numpy's
    qr works in float64: twice the memory of a (16,384, 288) block, the writer's peak)."""
    from scipy.linalg import qr

    q, _ = qr(y, mode="economic", overwrite_a=True, check_finite=False)
    return q


def project(descriptors: np.ndarray, projection: np.ndarray | None) -> np.ndarray:
    """Rows projected by `projection` (if any) and L2-normalized again, float32."""
    x = np.atleast_2d(np.asarray(descriptors, dtype=np.float32))
    if projection is None:
        return np.ascontiguousarray(x)
    # one query: einsum's own loop; a threaded BLAS gemv waits for its threads on a busy CPU
    # (16,384 x 256 on the shared 2-core machine: 1 ms instead of 11-24 ms)
    y = np.einsum("ij,jk->ik", x, projection) if len(x) == 1 else x @ projection
    return np.ascontiguousarray(y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12))


@contextmanager
def one_faiss_thread() -> Iterator[None]:
    """FAISS on one OpenMP thread in the calling thread (OpenMP's thread count is per thread),
    restored after: one query is too small to split, and split it waits for the other threads
    on a busy CPU (flat search of 10,000 x 256 on the shared 2-core machine: 0.4 ms on one
    thread, 48 ms on two)."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


class GlobalIndex:
    """Inner-product (= cosine for unit vectors) index over the keyframes' global descriptors.

    Args:
        descriptors: (K, d) float32, L2-normalized rows (already projected, if `projection`).
        kind: "flat" (exact), "hnsw" / "ivf" (approximate, for large maps) or "auto" (flat up
            to `auto_max_exact` keyframes, else HNSW tuned to `target_recall`, flat again if
            HNSW cannot reach it: the synthetic 50,000-keyframe scale map's near-identical
            copies hold it at recall@5 0.53 with efSearch 4096).
        params: `DEFAULT_INDEX_PARAMS` overrides (hnsw_m, ef_search, nlist, nprobe,
            target_recall); None search breadths are measured for recall@5 against exact.
        projection: (G, d) projection of the aggregator's descriptors, applied to queries.
    Attributes:
        kind, dim, input_dim, params (as used), recall_at_5 (measured, None for flat).
    """

    def __init__(
        self,
        descriptors: np.ndarray,
        kind: str = "auto",
        auto_max_exact: int = AUTO_MAX_EXACT,
        params: dict[str, Any] | None = None,
        projection: np.ndarray | None = None,
    ) -> None:
        if kind not in INDEX_KINDS:
            raise ValueError(f"retrieval index must be one of {INDEX_KINDS}, got {kind!r}")
        x = np.ascontiguousarray(descriptors, dtype=np.float32)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"global descriptors must be a non-empty (K, G) array, got {x.shape}")
        self.params = {**DEFAULT_INDEX_PARAMS, **(params or {})}
        unknown = set(self.params) - set(DEFAULT_INDEX_PARAMS)
        if unknown:
            raise ValueError(f"unknown index parameter(s) {sorted(unknown)}")
        auto, self.kind = kind == "auto", kind
        if auto:
            self.kind = "flat" if len(x) <= auto_max_exact else "hnsw"
        self.dim = x.shape[1]
        self._set_projection(projection)
        self.recall_at_5: float | None = None
        self.index = self._build(x)
        if self.kind != "flat":
            self._tune(x)
        if auto and self.kind != "flat" and self.recall_at_5 < self.params["target_recall"]:
            logger.warning("retrieval index auto: exact search instead (see the warning above)")
            self.kind, self.recall_at_5 = "flat", None  # auto never keeps a recall below target
            self.index = self._build(x)

    def _set_projection(self, projection: np.ndarray | None) -> None:
        self.projection = None if projection is None else np.asarray(projection, np.float32)
        if self.projection is not None and self.projection.shape[1] != self.dim:
            raise ValueError(
                f"projection maps to {self.projection.shape[1]}-D but the index is {self.dim}-D"
            )
        self.input_dim = self.dim if self.projection is None else self.projection.shape[0]

    def _build(self, x: np.ndarray):
        import faiss

        if self.kind == "flat":
            index = faiss.IndexFlatIP(self.dim)
        elif self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(
                self.dim, int(self.params["hnsw_m"]), faiss.METRIC_INNER_PRODUCT
            )
            index.hnsw.efConstruction = max(40, 2 * int(self.params["hnsw_m"]))
        else:
            nlist = self.params["nlist"] or int(4 * np.sqrt(len(x)))
            nlist = int(max(1, min(nlist, len(x) // 39 or 1)))
            self.params["nlist"] = nlist
            index = faiss.IndexIVFFlat(
                faiss.IndexFlatIP(self.dim), self.dim, nlist, faiss.METRIC_INNER_PRODUCT
            )
            index.train(x)
        index.add(x)
        if self.kind == "ivf":
            index.make_direct_map()
        return index

    def _set_breadth(self, value: int) -> None:
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = int(value)
            self.params["ef_search"] = int(value)
        elif self.kind == "ivf":
            self.index.nprobe = int(value)
            self.params["nprobe"] = int(value)

    def _tune(self, x: np.ndarray, k: int = 5, num_queries: int = 500) -> None:
        """Set efSearch / nprobe (the given one, else the smallest power of two reaching
        `target_recall`) and measure recall@k against exact search on map rows + noise."""
        import faiss

        key = "ef_search" if self.kind == "hnsw" else "nprobe"
        rng = np.random.default_rng(0)
        rows = rng.choice(len(x), size=min(num_queries, len(x)), replace=False)
        q = x[rows] + rng.normal(0, 0.3 / np.sqrt(self.dim), (len(rows), self.dim)).astype(
            np.float32
        )
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        exact = faiss.IndexFlatIP(self.dim)
        exact.add(x)
        k = min(k, len(x))
        _, truth = exact.search(q, k)
        del exact
        limit = MAX_EF_SEARCH if self.kind == "hnsw" else int(self.params["nlist"])
        given = self.params[key]
        value = int(given or (16 if self.kind == "hnsw" else 1))
        while True:
            self._set_breadth(min(value, limit))
            _, got = self.index.search(q, k)
            recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(got, truth)]))
            if given or recall >= self.params["target_recall"] or value >= limit:
                break
            value *= 2
        self.recall_at_5 = recall
        if recall < self.params["target_recall"]:
            logger.warning(
                "retrieval index %s with %s=%d reaches recall@%d %.3f < %.3f against exact search",
                self.kind, key, self.params[key], k, recall, self.params["target_recall"],
            )  # fmt: skip

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices (k',), similarities (k',)) of the best keyframes for one (G,) descriptor,
        best first; k' = min(k, number of keyframes)."""
        q = np.asarray(query, dtype=np.float32).reshape(1, -1)
        if q.shape[1] != self.input_dim:
            raise ValueError(f"query descriptor has dim {q.shape[1]}, index has {self.input_dim}")
        q = project(q, self.projection)
        k = max(1, min(int(k), len(self)))
        with one_faiss_thread():
            sims, idx = self.index.search(q, k)
        keep = idx[0] >= 0
        return idx[0][keep].astype(np.int64), sims[0][keep].astype(np.float32)

    def similarities(self, ids: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Similarities of one (G,) query with the keyframes `ids` (as `search` scores them)."""
        q = project(np.asarray(query, dtype=np.float32).reshape(1, -1), self.projection)[0]
        ids = np.asarray(ids, dtype=np.int64)
        return self.index.reconstruct_batch(ids) @ q if len(ids) else np.zeros(0, np.float32)

    def to_bytes(self) -> np.ndarray:
        """The FAISS index serialized (uint8), for `from_bytes`."""
        import faiss

        return np.asarray(faiss.serialize_index(self.index), dtype=np.uint8)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dim": self.dim,
            "params": dict(self.params),
            "recall_at_5": self.recall_at_5,
        }

    @classmethod
    def from_bytes(
        cls, raw: np.ndarray, info: dict[str, Any], projection: np.ndarray | None = None
    ) -> GlobalIndex:
        """An index saved by `to_bytes` with its `describe()` record: loaded, not rebuilt."""
        import faiss

        self = cls.__new__(cls)
        self.index = faiss.deserialize_index(np.ascontiguousarray(raw, dtype=np.uint8))
        self.kind, self.dim = str(info["kind"]), int(self.index.d)
        self.params = {**DEFAULT_INDEX_PARAMS, **dict(info.get("params", {}))}
        self.recall_at_5 = info.get("recall_at_5")
        self._set_projection(projection)
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = int(self.params["ef_search"] or 128)
        elif self.kind == "ivf":
            self.index.nprobe = int(self.params["nprobe"] or 1)
            self.index.make_direct_map()
        return self
