"""Global descriptors over `LocalFeatures`, numpy in / numpy out, behind one interface.

`create_aggregator(name, **conf)` builds one of:
- "supergf-sparse", "supergf-dense": the learned SuperGF models (weights=PATH or the shipped
  checkpoint; backend "torch" or "onnxruntime");
- "vlad": training-free VLAD with a k-means codebook fitted on the map's local descriptors;
- "gem": training-free generalized-mean pooling of the dense local descriptor map.

Every aggregator returns (dim,) float32 vectors of unit L2 norm. Features with no keypoints give a
defined vector (SuperGF: the model's output for an empty set; VLAD/GeM: a constant unit vector).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..features.base import LocalFeatures
from ..inference.backends import create_runner, resolve_backend
from ..inference.spec import ModelSpec

FEATURE_DIMS = {"superpoint": 256, "sift": 128}
COMMON_CONF: dict[str, Any] = {"features": "superpoint", "input_dim": None}


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = float(np.linalg.norm(x))
    if not np.isfinite(norm) or norm < 1e-12:
        return np.full(x.shape, 1.0 / np.sqrt(x.size), dtype=np.float32)
    return x / norm


def _sha256_arrays(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


class GlobalAggregator:
    """Base class: turns the local features of one image into a global descriptor.

    `needs_fit`: `fit` must see the map's features first; `needs_dense`: it reads
    `LocalFeatures.dense` (extractors may skip that map otherwise).
    """

    name: ClassVar[str] = ""
    default_conf: ClassVar[dict[str, Any]] = {}
    needs_fit: ClassVar[bool] = False
    needs_dense: bool = True
    dim: int

    def __init__(self, **conf: Any) -> None:
        valid = {**COMMON_CONF, **self.default_conf}
        unknown = set(conf) - set(valid)
        if unknown:
            raise ValueError(
                f"unknown option(s) for global descriptor '{self.name}': {sorted(unknown)}; "
                f"valid: {sorted(valid)}"
            )
        self.conf = {**valid, **conf}
        features = self.conf["features"]
        if self.conf["input_dim"] is None:
            if features not in FEATURE_DIMS:
                raise ValueError(
                    f"unknown local features '{features}'; choose one of {sorted(FEATURE_DIMS)} "
                    "or give input_dim"
                )
            self.conf["input_dim"] = FEATURE_DIMS[features]
        self.input_dim = int(self.conf["input_dim"])

    def fit(self, features: list[LocalFeatures]) -> None:
        """Learn what the aggregator needs from the map's features (no-op unless `needs_fit`)."""

    def __call__(self, features: LocalFeatures) -> np.ndarray:
        """(dim,) float32 global descriptor of unit L2 norm."""
        return self.batch([features])[0]

    def batch(self, features: list[LocalFeatures]) -> np.ndarray:
        """(B, dim) float32 descriptors for a list of feature sets."""
        if not features:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self._single(self._check(f)) for f in features])

    def _single(self, features: LocalFeatures) -> np.ndarray:
        raise NotImplementedError

    def state(self) -> dict[str, np.ndarray]:
        """Arrays to persist beside the descriptors (e.g. the VLAD codebook)."""
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what `state()` returned."""

    def _weights_sha256(self) -> str:
        return ""

    def identity(self) -> dict[str, Any]:
        """{"name", "config", "weights_sha256"}: what a map must match to be compatible."""
        config = {k: v for k, v in self.conf.items() if k in self._identity_keys()}
        return {
            "name": self.name,
            "config": json.loads(json.dumps(config, default=str)),
            "weights_sha256": self._weights_sha256(),
        }

    def _identity_keys(self) -> set[str]:
        return set(COMMON_CONF) | set(self.default_conf)

    def _check(self, features: LocalFeatures) -> LocalFeatures:
        if not isinstance(features, LocalFeatures):
            raise ValueError(f"expected LocalFeatures, got {type(features).__name__}")
        features.validate()
        d = features.descriptors.shape[1]
        if len(features) and d != self.input_dim:
            raise ValueError(
                f"global descriptor '{self.name}' expects {self.input_dim}-D local descriptors "
                f"({self.conf['features']}), got {d}-D (features from another extractor?)"
            )
        if features.dense is not None and features.dense.shape[0] != self.input_dim:
            raise ValueError(
                f"global descriptor '{self.name}' expects a {self.input_dim}-channel dense map, "
                f"got {features.dense.shape[0]} channels"
            )
        return features

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, conf={self.conf})"


class SuperGFAggregator(GlobalAggregator):
    """SuperGF dense or sparse model as a global aggregator (PyTorch, ONNX Runtime, TensorRT)."""

    variant: ClassVar[str] = ""
    default_conf: ClassVar[dict[str, Any]] = {
        "weights": None,  # checkpoint path; None -> the shipped default for `features`
        "backend": "torch",  # "torch" | "onnxruntime" | "tensorrt" | "auto" | a BackendChoice
        "device": "cpu",  # "cpu" | "cuda[:N]" | "auto"
        "onnx_cache_dir": None,
        "model": None,  # an in-memory SuperGF model instead of a checkpoint (training, tests)
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        c = self.conf
        choice = resolve_backend(c["backend"], c["device"])  # a given BackendChoice is kept
        if not isinstance(c["backend"], str):  # the conf holds names
            c["backend"], c["device"] = choice.backend, choice.device
        self.backend, self.device = choice.backend, choice.device
        if choice.backend == "tensorrt":
            self.max_batch = 1  # engines are built for batch 1 (bounded memory on a Jetson)
        spec = self._load_model(choice.backend)
        self._check_input_dim(conf)
        self.dim = self.info.dim
        self._runner = create_runner(spec, choice, onnx_cache_dir=c["onnx_cache_dir"])

    def _load_model(self, backend: str) -> ModelSpec:
        """The network's spec; sets `info` (`spec.SuperGFInfo`), `model` (the torch model, eval;
        None when not loaded), `weights_sha256` and `weights_path` from conf `model` or `weights`.

        With torch the checkpoint is loaded (torch); with ONNX Runtime or TensorRT its cached
        ONNX export runs and torch is imported only to export it (`spec.checkpoint_spec`)."""
        from .spec import SuperGFInfo, checkpoint_spec, supergf_spec

        c = self.conf
        self.model = c["model"]
        if self.model is not None:
            from .checkpoint import model_key

            if self.model.name != self.name:
                raise ValueError(f"model is a '{self.model.name}', expected '{self.name}'")
            self.model = self.model.eval() if backend == "torch" else self.model.cpu().eval()
            self.weights_sha256, self.weights_path = model_key(self.model), None
            self.info = SuperGFInfo.of_model(self.model, self.weights_sha256)
            return supergf_spec(self.model, self.weights_sha256)
        self.weights_path = self._checkpoint_path()
        if backend == "torch":
            from .checkpoint import load_checkpoint

            self.model, info = load_checkpoint(self.weights_path, expected_model=self.name)
            self.weights_sha256 = info["weights_sha256"]
            self.info = SuperGFInfo.of_model(self.model, self.weights_sha256)
            return supergf_spec(self.model, self.weights_sha256)
        spec, self.info = checkpoint_spec(
            self.weights_path, self.name, cache_dir=c["onnx_cache_dir"]
        )
        self.weights_sha256 = self.info.weights_sha256
        return spec

    def _checkpoint_path(self) -> Path:
        """The checkpoint of conf `weights`, else the shipped one; FileNotFoundError if absent."""
        from .weights import default_weights_path

        c = self.conf
        if c["weights"]:
            path = Path(c["weights"])
            if not path.is_file():
                raise FileNotFoundError(
                    f"SuperGF checkpoint not found: {path}. Train one with `supergf-ros train` "
                    "or pass the path of an existing checkpoint."
                )
            return path
        path = default_weights_path(self.variant, c["features"])
        if not path.is_file():
            raise FileNotFoundError(
                f"no trained {self.name} weights for {c['features']} features at {path}. "
                f"Train them with `supergf-ros train` and place the checkpoint there, or "
                f"pass weights=PATH (--supergf-weights PATH); the training-free 'vlad' and "
                f"'gem' global descriptors work without weights."
            )
        return path

    def _check_input_dim(self, conf: dict[str, Any]) -> None:
        """The model fixes input_dim (and the features its weights were made for)."""
        model_dim = int(self.info.conf["input_dim"])
        if conf.get("input_dim") is not None and int(conf["input_dim"]) != model_dim:
            raise ValueError(
                f"input_dim={conf['input_dim']} does not match the model's input_dim {model_dim}"
            )
        if "features" in conf and FEATURE_DIMS.get(conf["features"], model_dim) != model_dim:
            raise ValueError(
                f"the {self.name} weights take {model_dim}-D local descriptors, but features="
                f"'{conf['features']}' gives {FEATURE_DIMS[conf['features']]}-D; use weights "
                f"trained for {conf['features']}"
            )
        self.input_dim = model_dim
        self.conf["input_dim"] = model_dim
        if "features" not in conf:  # name the features the weights were made for
            by_dim = {d: f for f, d in FEATURE_DIMS.items()}
            self.conf["features"] = by_dim.get(model_dim, self.conf["features"])

    def _identity_keys(self) -> set[str]:
        return {"features"}

    def identity(self) -> dict[str, Any]:
        ident = super().identity()
        ident["config"]["model"] = json.loads(json.dumps(self.info.conf))
        return ident

    def _weights_sha256(self) -> str:
        return self.weights_sha256

    def _run(self, inputs: tuple[np.ndarray, ...]) -> np.ndarray:
        """The global descriptors for positional numpy inputs."""
        return self._runner(dict(zip(self.info.input_names, inputs)))["global_descriptor"]


class SuperGFSparseAggregator(SuperGFAggregator):
    """SuperGF-sparse over keypoints, scores and descriptors; batches are padded and masked."""

    name = "supergf-sparse"
    variant = "sparse"
    needs_dense = False

    max_batch: ClassVar[int] = 32

    def batch(self, features: list[LocalFeatures]) -> np.ndarray:
        if len(features) > self.max_batch:
            return np.concatenate(
                [
                    self.batch(features[i : i + self.max_batch])
                    for i in range(0, len(features), self.max_batch)
                ]
            )
        if not features:
            return np.zeros((0, self.dim), np.float32)
        features = [self._check(f) for f in features]
        for f in features:
            if min(f.image_size) <= 0:
                raise ValueError(
                    f"supergf-sparse needs LocalFeatures.image_size (width, height), got {f.image_size}"
                )
        inputs = pad_sparse_features(features, self.input_dim)
        return self._run(inputs).astype(np.float32, copy=False)


class SuperGFDenseAggregator(SuperGFAggregator):
    """SuperGF-dense over the dense local descriptor map; same-size maps are batched together."""

    name = "supergf-dense"
    variant = "dense"
    max_batch: ClassVar[int] = 4

    def batch(self, features: list[LocalFeatures]) -> np.ndarray:
        if not features:
            return np.zeros((0, self.dim), np.float32)
        features = [self._check(f) for f in features]
        for f in features:
            if f.dense is None:
                raise ValueError(
                    "supergf-dense needs a dense descriptor map (LocalFeatures.dense); this "
                    "extractor returned none (use SuperPoint or dense SIFT)"
                )
        out = np.zeros((len(features), self.dim), np.float32)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, f in enumerate(features):
            groups.setdefault(f.dense.shape, []).append(i)
        for idx in groups.values():
            for start in range(0, len(idx), self.max_batch):  # bounded attention memory
                chunk = idx[start : start + self.max_batch]
                dense = np.stack([features[i].dense for i in chunk]).astype(np.float32, copy=False)
                out[chunk] = self._run((dense,))
        return out


class VLADAggregator(GlobalAggregator):
    """Training-free VLAD: hard assignment to a k-means codebook fitted on the map's descriptors,
    residual sums, signed power normalization, intra-normalization per cluster, global L2.

    `source` "sparse" aggregates the keypoint descriptors; "dense" every (L2-normalized) cell of
    the dense descriptor map (DenseVLAD-style).
    """

    name = "vlad"
    needs_fit = True
    default_conf: ClassVar[dict[str, Any]] = {
        "num_clusters": 64,
        "kmeans_iterations": 25,
        "max_training_descriptors": 50_000,
        "power": 0.5,  # signed power normalization exponent (1 disables)
        "seed": 0,
        "source": "sparse",  # "sparse" keypoint descriptors | "dense" descriptor-map cells
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        if self.conf["source"] not in ("sparse", "dense"):
            raise ValueError(f"source must be sparse or dense, got {self.conf['source']!r}")
        if int(self.conf["num_clusters"]) < 1:
            raise ValueError(f"num_clusters must be >= 1, got {self.conf['num_clusters']}")
        self.num_clusters = int(self.conf["num_clusters"])
        self.dim = self.num_clusters * self.input_dim
        self.needs_dense = self.conf["source"] == "dense"
        self.centroids: np.ndarray | None = None

    def _local(self, features: LocalFeatures) -> np.ndarray:
        """(N, D) float32 local descriptors this VLAD aggregates (keypoints or map cells)."""
        if self.conf["source"] == "sparse":
            return features.descriptors.astype(np.float32)
        if features.dense is None:
            raise ValueError("vlad with source='dense' needs LocalFeatures.dense (a dense map)")
        return dense_cells(features)

    def fit(self, features: list[LocalFeatures]) -> None:
        """k-means codebook from the local descriptors of `features` (subsampled, seeded)."""
        descs = [self._local(self._check(f)) for f in features]
        self.fit_streamed([len(d) for d in descs], lambda i: descs[i])

    def fit_streamed(self, counts: list[int], read: Callable[[int], np.ndarray]) -> None:
        """`fit` from images that stay on disk: `counts[i]` local descriptors of image i,
        `read(i)` -> them (N_i, D). Only the sampled rows are kept; each image with one is read
        once, in order. The same codebook as `fit` on the same descriptors."""
        total = int(sum(counts))
        if total < self.num_clusters:
            raise ValueError(
                f"VLAD needs at least num_clusters={self.num_clusters} local descriptors to fit "
                f"its codebook, got {total} from {len(counts)} images"
            )
        rng = np.random.default_rng(int(self.conf["seed"]))
        limit = int(self.conf["max_training_descriptors"])
        pick = rng.choice(total, limit, replace=False) if total > limit else np.arange(total)
        slot = np.argsort(pick, kind="stable")  # output position of each sampled row, by row
        rows = pick[slot]
        x = np.empty((len(pick), self.input_dim), np.float32)
        start = 0
        for i, count in enumerate(counts):
            lo, hi = np.searchsorted(rows, [start, start + count])
            if hi > lo:
                x[slot[lo:hi]] = np.asarray(read(i), np.float32)[rows[lo:hi] - start]
            start += count
        self.centroids = _kmeans(x, self.num_clusters, int(self.conf["kmeans_iterations"]), rng)

    def _single(self, features: LocalFeatures) -> np.ndarray:
        if self.centroids is None:
            raise ValueError("VLAD codebook not fitted: call fit(map features) or load_state()")
        x = self._local(features)
        if not len(x):
            return _unit(np.zeros(self.dim, np.float32))
        c = self.centroids
        assign = np.argmin((c * c).sum(1)[None] - 2.0 * x @ c.T, axis=1)
        vlad = _cluster_sums(x - c[assign], assign, len(c))
        p = float(self.conf["power"])
        if p != 1.0:
            vlad = np.sign(vlad) * np.abs(vlad) ** p
        vlad /= np.maximum(np.linalg.norm(vlad, axis=1, keepdims=True), 1e-12)  # intra-norm
        return _unit(vlad.reshape(-1))

    def state(self) -> dict[str, np.ndarray]:
        return {} if self.centroids is None else {"vlad_centroids": self.centroids.copy()}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        if "vlad_centroids" not in state:
            raise ValueError(f"VLAD state needs 'vlad_centroids', got keys {sorted(state)}")
        c = np.asarray(state["vlad_centroids"], dtype=np.float32)
        if c.shape != (self.num_clusters, self.input_dim) or not np.isfinite(c).all():
            raise ValueError(
                f"VLAD codebook must be finite with shape ({self.num_clusters}, {self.input_dim}), "
                f"got {c.shape}"
            )
        self.centroids = c

    def _weights_sha256(self) -> str:
        return "" if self.centroids is None else _sha256_arrays(self.centroids)


def pad_sparse_features(
    features: list[LocalFeatures], dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Zero-pad keypoint sets to one batch, in SuperGF-sparse input order.

    Returns float32 keypoints (B, N, 2), descriptors (B, N, dim), scores (B, N), image sizes
    (B, 2) and the bool mask (B, N) of real keypoints; N >= 1, so empty sets are padded too.
    """
    b, n = len(features), max(1, max(len(f) for f in features))
    kpts = np.zeros((b, n, 2), np.float32)
    desc = np.zeros((b, n, dim), np.float32)
    scores = np.zeros((b, n), np.float32)
    mask = np.zeros((b, n), bool)
    for i, f in enumerate(features):
        k = len(f)
        kpts[i, :k], desc[i, :k], scores[i, :k], mask[i, :k] = (
            f.keypoints,
            f.descriptors,
            f.scores,
            True,
        )
    size = np.array([f.image_size for f in features], np.float32)
    return kpts, desc, scores, size, mask


def dense_cells(features: LocalFeatures, rows: np.ndarray | None = None) -> np.ndarray:
    """(h * w, D) float32: the cells of the dense descriptor map as L2-normalized descriptors,
    row-major (as SuperGF-dense with residual slots sees them); only the cells `rows` if given."""
    if features.dense is None:
        raise ValueError("dense-map cells need LocalFeatures.dense (a dense map)")
    x = features.dense.reshape(features.dense.shape[0], -1).T
    x = (x if rows is None else x[rows]).astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _cluster_sums(x: np.ndarray, assign: np.ndarray, k: int) -> np.ndarray:
    """(k, D) sums of the rows of `x` per cluster index in `assign` (a sparse one-hot product)."""
    from scipy.sparse import csr_matrix

    onehot = csr_matrix(
        (np.ones(len(assign), np.float32), (assign, np.arange(len(assign)))), shape=(k, len(x))
    )
    return np.asarray(onehot @ x, dtype=np.float32)


def _kmeans(x: np.ndarray, k: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """Seeded k-means (k-means++ init, Lloyd iterations); empty clusters are re-seeded."""
    n = len(x)
    sq = (x * x).sum(1)
    centroids = [x[rng.integers(n)]]
    dist = np.full(n, np.inf, np.float32)
    for _ in range(1, k):
        c = centroids[-1]
        dist = np.minimum(dist, sq - 2.0 * x @ c + c @ c)
        probs = np.clip(dist, 0, None).astype(np.float64)
        total = probs.sum()
        centroids.append(x[rng.choice(n, p=probs / total)] if total > 0 else x[rng.integers(n)])
    c = np.stack(centroids).astype(np.float32)
    for _ in range(iterations):
        assign = np.argmin((c * c).sum(1)[None] - 2.0 * x @ c.T, axis=1)
        counts = np.bincount(assign, minlength=k)
        sums = _cluster_sums(x, assign, k)
        empty = counts == 0
        c = np.where(empty[:, None], c, sums / np.maximum(counts, 1)[:, None])
        if empty.any():
            c[empty] = x[rng.choice(n, int(empty.sum()), replace=False)]
    return c.astype(np.float32)


class GeMAggregator(GlobalAggregator):
    """Training-free GeM over the dense local descriptor map (or the sparse descriptors).

    With `signed=True` the positive and negative parts are pooled separately and concatenated
    (dim 2D), which keeps the sign information of SuperPoint descriptors.
    """

    name = "gem"
    default_conf: ClassVar[dict[str, Any]] = {
        "p": 3.0,
        "signed": True,
        "source": "auto",  # "dense" | "sparse" | "auto" (dense map if present, else sparse)
    }

    def __init__(self, **conf: Any) -> None:
        super().__init__(**conf)
        if self.conf["source"] not in ("auto", "dense", "sparse"):
            raise ValueError(f"source must be auto, dense or sparse, got {self.conf['source']!r}")
        if float(self.conf["p"]) <= 0:
            raise ValueError(f"GeM exponent p must be > 0, got {self.conf['p']}")
        self.dim = self.input_dim * (2 if self.conf["signed"] else 1)
        self.needs_dense = self.conf["source"] != "sparse"

    def _single(self, features: LocalFeatures) -> np.ndarray:
        source = self.conf["source"]
        if source == "dense" and features.dense is None:
            raise ValueError("gem with source='dense' needs LocalFeatures.dense (a dense map)")
        if source != "sparse" and features.dense is not None:
            x = features.dense.reshape(features.dense.shape[0], -1).T
        else:
            x = features.descriptors
        if len(x) == 0:
            return _unit(np.zeros(self.dim, np.float32))
        x = x.astype(np.float32)
        p = float(self.conf["p"])

        def gem(v: np.ndarray) -> np.ndarray:
            return np.mean(np.clip(v, 1e-6, None) ** p, axis=0) ** (1.0 / p)

        parts = [gem(x), gem(-x)] if self.conf["signed"] else [gem(x)]
        return _unit(np.concatenate(parts))


AGGREGATORS: dict[str, type[GlobalAggregator]] = {
    "supergf-sparse": SuperGFSparseAggregator,
    "supergf-dense": SuperGFDenseAggregator,
    "vlad": VLADAggregator,
    "gem": GeMAggregator,
}


def create_aggregator(name: str, **conf: Any) -> GlobalAggregator:
    """Build a global aggregator by name: supergf-sparse, supergf-dense, vlad, gem.

    Common options: features ("superpoint" | "sift"), input_dim (overrides the features' dim).
    SuperGF: weights (path; default the shipped checkpoint), backend (a name or a resolved
    `BackendChoice`), device, onnx_cache_dir, model (in-memory model). VLAD: num_clusters, kmeans_iterations,
    max_training_descriptors, power, seed. GeM: p, signed, source.
    """
    if name not in AGGREGATORS:
        raise ValueError(f"unknown global descriptor '{name}'; choose one of {sorted(AGGREGATORS)}")
    return AGGREGATORS[name](**conf)


# Best first per local feature type, by the held-out Recall@1 of the shipped weights
# (supergf_ros/weights/MODEL_CARD.md). SuperPoint: SuperGF-dense (residual slots over the dense
# map) is first on vpr/corridor under both protocols (320x240: 0.865 vs VLAD 0.820; native
# 160x120: 0.901 vs 0.874) and first or tied on Herz-Jesus-P25; SuperGF-sparse beats VLAD at
# 320x240 but not at 160x120, so VLAD stays ahead of it. SIFT: SuperGF-sparse beats VLAD on the
# corridor at 320x240 but not at 160x120 nor on Herz-Jesus-P25, so VLAD stays the default.
RETRIEVAL_RANKING: dict[str, tuple[str, ...]] = {
    "superpoint": ("supergf-dense", "vlad", "supergf-sparse", "gem"),
    "sift": ("vlad", "supergf-sparse", "gem", "supergf-dense"),
}


def available_global_descriptors(features: str = "superpoint") -> list[str]:
    """Global descriptors usable with `features`, best first (SuperGF only where weights ship)."""
    if features not in FEATURE_DIMS:
        raise ValueError(
            f"unknown local features '{features}'; choose one of {sorted(FEATURE_DIMS)}"
        )
    from .weights import default_weights_path

    shipped = {
        f"supergf-{v}" for v in ("sparse", "dense") if default_weights_path(v, features).is_file()
    }
    ranking = RETRIEVAL_RANKING[features]
    return [name for name in ranking if name in shipped or not name.startswith("supergf")]
