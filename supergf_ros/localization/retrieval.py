"""Top-k retrieval of map keyframes by global descriptor with FAISS."""

from __future__ import annotations

import numpy as np

INDEX_KINDS = ("auto", "flat", "hnsw")


class GlobalIndex:
    """Inner-product (= cosine for unit vectors) index over the keyframes' global descriptors.

    Args:
        descriptors: (K, G) float32, L2-normalized rows.
        kind: "flat" (exact), "hnsw" (approximate, for large maps) or "auto" (flat up to
            `auto_max_exact` keyframes, else HNSW).
        hnsw_m, hnsw_ef_search: HNSW graph degree and search breadth.
    """

    def __init__(
        self,
        descriptors: np.ndarray,
        kind: str = "auto",
        auto_max_exact: int = 20_000,
        hnsw_m: int = 32,
        hnsw_ef_search: int = 128,
    ) -> None:
        import faiss

        if kind not in INDEX_KINDS:
            raise ValueError(f"retrieval index must be one of {INDEX_KINDS}, got {kind!r}")
        x = np.ascontiguousarray(descriptors, dtype=np.float32)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"global descriptors must be a non-empty (K, G) array, got {x.shape}")
        if kind == "auto":
            kind = "flat" if len(x) <= auto_max_exact else "hnsw"
        self.kind = kind
        self.dim = x.shape[1]
        if kind == "flat":
            self.index = faiss.IndexFlatIP(self.dim)
        else:
            self.index = faiss.IndexHNSWFlat(self.dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efSearch = max(hnsw_ef_search, 1)
        self.index.add(x)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices (k',), similarities (k',)) of the best keyframes for one (G,) descriptor,
        best first; k' = min(k, number of keyframes)."""
        q = np.ascontiguousarray(np.asarray(query, dtype=np.float32).reshape(1, -1))
        if q.shape[1] != self.dim:
            raise ValueError(f"query descriptor has dim {q.shape[1]}, index has {self.dim}")
        k = max(1, min(int(k), len(self)))
        sims, idx = self.index.search(q, k)
        keep = idx[0] >= 0
        return idx[0][keep].astype(np.int64), sims[0][keep].astype(np.float32)
