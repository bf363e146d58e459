"""The SuperGF training loop: frozen cached local features -> SuperGF -> listwise soft AP loss.

`train(train_sets, val_sets, cache, conf, output_dir)` runs on one process or under ``torchrun``
(torch.distributed is initialised from the environment when WORLD_SIZE is set: gloo on CPU,
nccl on CUDA). The code path is the same for any number of processes: every rank takes its own
slice of each step's queries, and gradients are averaged over ranks with all-reduce (data
parallel, as DDP does; done by hand because one step runs several forward passes).
Rank 0 writes, in `output_dir`:

- ``checkpoint_last.pt``: model config + weights, optimizer, LR scheduler and RNG state, step,
  the training config and the log so far (written atomically; `resume=True` continues exactly:
  batches depend only on (seed, step), so the next losses are the same as without the stop);
- ``model_last.pt`` and ``model_best.pt`` (best validation Recall@1): self-describing model
  checkpoints from `supergf_ros.models.save_checkpoint`;
- ``log.csv`` (step, epoch, lr, loss, ap_loss, decorrelation, train_ap, val_r@1/5/10, seconds)
  and ``training.png`` (loss and validation recall curves).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..features.base import LocalFeatures
from ..io_utils import atomic_output, atomic_write_text
from .data import CandidateSampler, ImageSet
from .losses import APLoss, decorrelation_loss

default_conf: dict[str, Any] = {
    "model": "supergf-dense",  # "supergf-dense" | "supergf-sparse"
    "model_conf": {},  # merged into the model's default_conf (latent_dim, mlp_dim, ...)
    "features": "superpoint",
    "extractor_conf": {"max_keypoints": 512},
    "image_size": [320, 240],  # (w, h) every image is resized to before feature extraction
    "num_positives": 1,
    "num_soft_negatives": 2,
    "num_negatives": 100,
    "positive_threshold": 0.5,
    "in_batch_candidates": True,  # also rank the other queries' candidates (labels known)
    "batch_size": 4,  # queries per step (per process under DDP)
    "steps": 1000,
    "lr": 1e-4,
    "lr_min": 1e-6,
    "weight_decay": 1e-4,
    "warmup_steps": 0,
    "grad_clip": 1.0,
    "ap_bins": 25,
    "ap_mode": "tie_aware",  # "tie_aware" | "quantized"
    # "minmax": rescale each query's similarities to [-1, 1] before binning (ranking, hence the
    # exact AP, is unchanged; the histogram then resolves descriptors that start out nearly
    # identical, as sparse SuperGF's do); "none": raw cosine; "auto": minmax for sparse and
    # residual-slot models, none for the paper's dense model
    "similarity_scaling": "auto",
    "decorrelation_weight": 0.1,  # sparse only
    "slot_init_scale": "auto",  # sparse, from scratch: scale the learned slots ("auto": 1/sqrt(dim))
    # sparse with model_conf aggregation="residual", from scratch: slots start from a k-means
    # codebook of the training descriptors (as NetVLAD starts from k-means), soft assignment
    # softmax(-alpha ||x - c||^2); the untrained model is then a soft-assignment VLAD
    "codebook_alpha": 30.0,
    "codebook_descriptors": 50_000,  # descriptors sampled for k-means (seeded)
    "codebook_iterations": 25,
    # parameter-name prefixes kept fixed (e.g. ["centroids", "slot_keys", "slot_bias"] keeps
    # a residual model's codebook and assignment; [] trains everything)
    "frozen_parameters": [],
    "forward_chunk": 64,  # images per forward pass
    "val_every": 100,
    "checkpoint_every": 100,
    "seed": 0,
}


def merge_conf(conf: dict[str, Any] | None) -> dict[str, Any]:
    """`default_conf` updated with `conf`; unknown keys raise ValueError."""
    conf = dict(conf or {})
    unknown = set(conf) - set(default_conf)
    if unknown:
        raise ValueError(
            f"unknown training option(s) {sorted(unknown)}; valid: {sorted(default_conf)}"
        )
    merged = {**copy.deepcopy(default_conf), **conf}
    if merged["similarity_scaling"] not in ("auto", "none", "minmax"):
        raise ValueError(
            f"similarity_scaling must be auto, none or minmax, got {merged['similarity_scaling']}"
        )
    if merged["model"] not in ("supergf-dense", "supergf-sparse"):
        raise ValueError(
            f"model must be 'supergf-dense' or 'supergf-sparse', got {merged['model']}"
        )
    for key in ("batch_size", "steps", "forward_chunk", "val_every", "checkpoint_every"):
        if int(merged[key]) < 1:
            raise ValueError(f"training option {key} must be >= 1, got {merged[key]}")
    if not 0 < float(merged["lr_min"]) <= float(merged["lr"]):
        raise ValueError(f"need 0 < lr_min <= lr, got lr={merged['lr']}, lr_min={merged['lr_min']}")
    return merged


# ----------------------------------------------------------------------------- distributed


def _dist_setup() -> tuple[int, int, torch.device]:
    """(rank, world_size, device); initialises torch.distributed when WORLD_SIZE is set."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return rank, world, device


# ----------------------------------------------------------------------------- model inputs


def features_to_inputs(
    model_name: str, feats: Sequence[LocalFeatures], device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Batch LocalFeatures into the model's input dict (dense maps stacked; sparse padded)."""
    if model_name == "supergf-dense":
        if any(f.dense is None for f in feats):
            raise ValueError(
                "supergf-dense training needs dense descriptor maps from the extractor"
            )
        shapes = {f.dense.shape for f in feats}
        if len(shapes) != 1:
            raise ValueError(f"dense maps of one batch must share a shape, got {sorted(shapes)}")
        dense = np.stack([f.dense for f in feats]).astype(np.float32)
        return {"dense": torch.from_numpy(dense).to(device)}
    from ..models.aggregators import pad_sparse_features

    kpts, desc, scores, size, mask = pad_sparse_features(list(feats), feats[0].descriptors.shape[1])
    arrays = {"keypoints": kpts, "descriptors": desc, "scores": scores, "image_size": size}
    out = {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}
    out["mask"] = torch.from_numpy(mask).to(device)
    return out


def embed(
    model: torch.nn.Module,
    model_name: str,
    feats: Sequence[LocalFeatures],
    chunk: int = 64,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Global descriptors (B, E) of `feats` and, for sparse, the decorrelation loss (mean)."""
    descs, decor = [], []
    for i in range(0, len(feats), chunk):
        part = feats[i : i + chunk]
        inputs = features_to_inputs(model_name, part, device)
        out = model(inputs)
        descs.append(out["global_descriptor"])
        if "attention" in out:
            decor.append(decorrelation_loss(out["attention"], inputs.get("mask")) * len(part))
    d = torch.cat(descs)
    return d, (torch.stack(decor).sum() / len(feats) if decor else None)


# ----------------------------------------------------------------------------- evaluation


def recall_at_n(
    similarity: np.ndarray, positives: Sequence[np.ndarray], ns: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Recall@N: the fraction of queries with a positive among their N most similar candidates.

    Args:
        similarity: (Q, D) query-to-database similarities (higher is better).
        positives: per query, the indices of its positive database items (queries without any
            are not counted).
    """
    similarity = np.asarray(similarity)
    if similarity.ndim != 2 or len(positives) != similarity.shape[0]:
        raise ValueError(
            f"similarity must be (Q, D) with one positives list per query, got "
            f"{similarity.shape} and {len(positives)} lists"
        )
    order = np.argsort(-similarity, axis=1, kind="stable")
    hits = {n: 0 for n in ns}
    counted = 0
    for q, pos in enumerate(positives):
        pos = np.asarray(pos)
        if len(pos) == 0:
            continue
        counted += 1
        for n in ns:
            hits[n] += bool(np.isin(order[q, :n], pos).any())
    if counted == 0:
        raise ValueError("no query has a positive: Recall@N is undefined")
    return {f"r@{n}": hits[n] / counted for n in ns}


@torch.no_grad()
def evaluate_sets(
    model: torch.nn.Module,
    model_name: str,
    sets: Sequence[ImageSet],
    features: Sequence[Sequence[LocalFeatures]],
    threshold: float = 0.5,
    chunk: int = 64,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Recall@1/5/10 and mAP over ImageSets (each query ranks its set's database minus itself;
    positives: overlap >= `threshold`)."""
    was_training = model.training
    model.eval()
    recalls: list[dict[str, float]] = []
    weights, aps = [], []
    ap_loss = APLoss()
    for s, feats in zip(sets, features):
        desc = embed(model, model_name, feats, chunk, device)[0].cpu()
        for q in s.query_ids:
            db = s.db_ids[s.db_ids != q]
            lab = torch.from_numpy(s.overlap[q, db])
            if (lab >= threshold).any():
                binary = (lab >= threshold).float().numpy()
                aps.append(float(_exact_ap_soft((desc[db] @ desc[q]).numpy(), binary)))
        sim = (desc[s.query_ids] @ desc.T).numpy()
        positives = []
        for r, q in enumerate(s.query_ids):
            sim[r, q] = -np.inf
            mask = np.zeros(len(s.paths), bool)
            mask[s.db_ids] = True
            sim[r, ~mask] = -np.inf
            positives.append(
                np.flatnonzero(mask & (s.overlap[q] >= threshold) & (np.arange(len(mask)) != q))
            )
        if any(len(p) for p in positives):
            recalls.append(recall_at_n(sim, positives))
            weights.append(sum(len(p) > 0 for p in positives))
    del ap_loss
    model.train(was_training)
    if not recalls:
        return {}
    w = np.array(weights, float) / sum(weights)
    out = {k: float(sum(wi * r[k] for wi, r in zip(w, recalls))) for k in recalls[0]}
    out["map"] = float(np.mean(aps)) if aps else float("nan")
    return out


def _exact_ap_soft(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")
    ranked = labels[order].astype(np.float64)
    total = ranked.sum()
    if total <= 0:
        return 0.0
    precision = np.cumsum(ranked) / np.arange(1, len(ranked) + 1)
    return float((ranked * precision).sum() / total)


# ----------------------------------------------------------------------------- checkpoints


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


LOG_FIELDS = [
    "step",
    "epoch",
    "lr",
    "loss",
    "ap_loss",
    "decorrelation",
    "train_ap",
    "val_r@1",
    "val_r@5",
    "val_r@10",
    "val_map",
    "seconds",
]


def write_log(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write the CSV log atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=LOG_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k, "") for k in LOG_FIELDS})
    atomic_write_text(path, buf.getvalue())


def plot_log(path: Path, rows: Sequence[dict[str, Any]], title: str = "") -> None:
    """PNG with the training loss (left) and validation Recall@N (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("loss", "ap_loss", "decorrelation"):
        vals = [r.get(key) for r in rows]
        pts = [(s, v) for s, v in zip(steps, vals) if v not in (None, "")]
        if pts:
            ax0.plot(*zip(*pts), label=key)
    ax0.set_xlabel("step")
    ax0.set_ylabel("loss")
    if ax0.lines:
        ax0.legend()
    ax0.grid(alpha=0.3)
    for key in ("val_r@1", "val_r@5", "val_r@10"):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) not in (None, "")]
        if pts:
            ax1.plot(*zip(*pts), marker="o", label=key)
    ax1.set_xlabel("step")
    ax1.set_ylabel("validation recall")
    ax1.set_ylim(0, 1.02)
    if ax1.lines:
        ax1.legend()
    ax1.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- training


def _lr_lambda(conf: dict[str, Any]):
    total, warm = int(conf["steps"]), int(conf["warmup_steps"])
    ratio = float(conf["lr_min"]) / float(conf["lr"])

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total - warm))
        return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def codebook_from_features(
    feats: Sequence[LocalFeatures],
    num_clusters: int,
    max_descriptors: int = 50_000,
    iterations: int = 25,
    seed: int = 0,
    source: str = "sparse",
) -> np.ndarray:
    """(num_clusters, D) k-means centroids of the local descriptors of `feats` (seeded sample).

    `source` "sparse" clusters the keypoint descriptors, "dense" the (L2-normalized) cells of the
    dense descriptor maps, as the dense residual model sees them.
    """
    from ..models.aggregators import _kmeans, dense_cells

    if source == "dense":
        if any(f.dense is None for f in feats):
            raise ValueError("a dense codebook needs dense descriptor maps from the extractor")
        # a seeded sample of cells per image: all cells of a training set do not fit in RAM
        rng = np.random.default_rng([seed, 1])
        per_image = max(1, -(-2 * max_descriptors // max(1, len(feats))))
        descs = []
        for f in feats:
            num_cells = f.dense.shape[1] * f.dense.shape[2]
            rows = None
            if num_cells > per_image:
                rows = rng.choice(num_cells, per_image, replace=False)
            descs.append(dense_cells(f, rows))
    elif source == "sparse":
        descs = [f.descriptors for f in feats if len(f)]
    else:
        raise ValueError(f"codebook source must be 'sparse' or 'dense', got {source!r}")
    total = sum(len(d) for d in descs)
    if total < num_clusters:
        raise ValueError(
            f"codebook init needs at least num_slots={num_clusters} training descriptors, "
            f"got {total}"
        )
    rng = np.random.default_rng(seed)
    x = np.concatenate(descs).astype(np.float32)
    if len(x) > max_descriptors:
        x = x[rng.choice(len(x), max_descriptors, replace=False)]
    return _kmeans(x, num_clusters, iterations, rng)


def minmax_scale(sims: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Map each row's valid similarities affinely onto [-1, 1] (order-preserving)."""
    big = torch.finfo(sims.dtype).max
    hi = torch.where(mask, sims, -big).amax(1, keepdim=True)
    lo = torch.where(mask, sims, big).amin(1, keepdim=True)
    return torch.where(mask, 2 * (sims - lo) / (hi - lo).clamp(min=1e-6) - 1, sims)


def batch_queries(
    num_queries: int, batch_size: int, step: int, seed: int
) -> tuple[int, np.ndarray]:
    """(epoch, query numbers) of global `step`: epochs are seeded permutations of the queries."""
    per_epoch = max(1, num_queries // batch_size)
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(num_queries)
    return epoch, perm[k * batch_size : (k + 1) * batch_size]


def _load_features(feature_cache, sampler: CandidateSampler, val_sets, is_main, progress):
    """(train features, val features per set); rank 0 extracts missing ones, the others wait."""
    all_paths = list(sampler.paths) + [p for s in val_sets for p in s.paths]
    if is_main:
        feature_cache.prepare(all_paths, progress=progress)
    if dist.is_initialized():
        dist.barrier()
    return feature_cache.load(sampler.paths), [feature_cache.load(s.paths) for s in val_sets]


def _init_model(conf, train_feats, init_weights, device) -> torch.nn.Module:
    """The seeded model (from `init_weights` or fresh), on `device`, the same on every rank."""
    from ..models import build_model, load_checkpoint

    torch.manual_seed(int(conf["seed"]))
    if init_weights is not None:
        model, info = load_checkpoint(init_weights, expected_model=conf["model"])
        conf["model_conf"] = {k: v for k, v in info["config"].items()}
    else:
        model = build_model(conf["model"], conf["model_conf"])
        scale = conf["slot_init_scale"]
        if hasattr(model, "slot_attention") and scale is not None:
            # unit-variance learned slots dominate the tokens (slot + mean of values), so every
            # image starts with almost the same descriptor and the AP loss has no signal
            scale = model.dim**-0.5 if scale == "auto" else float(scale)
            with torch.no_grad():
                model.slot_attention.slots.mul_(scale)
        if getattr(model, "residual", False):
            centroids = codebook_from_features(
                train_feats,
                int(model.conf["num_slots"]),
                int(conf["codebook_descriptors"]),
                int(conf["codebook_iterations"]),
                int(conf["seed"]),
                source="dense" if conf["model"] == "supergf-dense" else "sparse",
            )
            model.init_from_codebook(torch.from_numpy(centroids), float(conf["codebook_alpha"]))
    model = model.to(device).train()
    if dist.is_initialized():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, 0)
    _freeze(model, conf)
    return model


def _freeze(model: torch.nn.Module, conf) -> None:
    """Fix the parameters named by `frozen_parameters` prefixes (each must match one)."""
    frozen = tuple(str(f) for f in conf["frozen_parameters"])
    names = [n for n, _ in model.named_parameters()]
    unmatched = [f for f in frozen if not any(n.startswith(f) for n in names)]
    if unmatched:
        raise ValueError(
            f"frozen_parameters {unmatched} match no parameter of {conf['model']}; "
            f"parameters: {sorted({n.split('.')[0] for n in names})}"
        )
    for n, p in model.named_parameters():
        if frozen and n.startswith(frozen):
            p.requires_grad_(False)


@dataclass
class _Run:
    """What the steps of one training run share."""

    conf: dict[str, Any]
    output_dir: Path
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    criterion: APLoss
    sampler: CandidateSampler
    train_feats: list
    rank: int
    world: int
    device: torch.device
    extra: dict[str, Any]  # provenance stored with the model checkpoints
    rows: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"r@1": -1.0})
    start_step: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def ckpt_path(self) -> Path:
        return self.output_dir / "checkpoint_last.pt"


def _setup(train_sets, val_sets, feature_cache, conf, output_dir, init_weights, progress):
    """(the run, validation features): devices, features, model, optimizer, schedule, loss."""
    rank, world, device = _dist_setup()
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
    sampler = CandidateSampler(
        train_sets,
        conf["num_positives"],
        conf["num_soft_negatives"],
        conf["num_negatives"],
        conf["positive_threshold"],
    )
    train_feats, val_feats = _load_features(feature_cache, sampler, val_sets, rank == 0, progress)
    model = _init_model(conf, train_feats, init_weights, device)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=float(conf["lr"]),
        weight_decay=float(conf["weight_decay"]),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(conf))
    criterion = APLoss(num_bins=int(conf["ap_bins"]), mode=conf["ap_mode"]).to(device)
    extra = {
        "training": {
            "conf": json.loads(json.dumps(conf)),
            "train_sets": [s.name for s in train_sets],
            "val_sets": [s.name for s in val_sets],
            "feature_cache": json.loads(json.dumps(feature_cache.identity, default=str)),
        }
    }
    run = _Run(
        conf,
        output_dir,
        model,
        optimizer,
        scheduler,
        criterion,
        sampler,
        train_feats,
        rank,
        world,
        device,
        extra,
    )
    return run, val_feats


def _resume(run: _Run) -> None:
    """Continue from the run's checkpoint: weights, optimizer, schedule, RNG, step, log, best."""
    if not run.ckpt_path.is_file():
        raise ValueError(f"--resume: no checkpoint at {run.ckpt_path}")
    state = torch.load(run.ckpt_path, map_location="cpu", weights_only=True)
    saved = json.loads(state["conf"])
    for key in ("model", "model_conf", "steps", "batch_size", "seed", "lr", "lr_min"):
        if saved[key] != run.conf[key]:
            raise ValueError(
                f"--resume: option {key}={run.conf[key]!r} differs from the checkpoint's "
                f"{saved[key]!r}; resume with the same configuration"
            )
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    run.start_step = int(state["step"])
    run.rows = json.loads(state["log"])
    run.best = json.loads(state["best"])


def _save_state(run: _Run, step: int) -> None:
    """checkpoint_last.pt, log.csv and training.png as of `step`."""
    _atomic_torch_save(
        {
            "step": step,
            "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
            "model_name": run.conf["model"],
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "conf": json.dumps(run.conf),
            "log": json.dumps(run.rows),
            "best": json.dumps(run.best),
        },
        run.ckpt_path,
    )
    write_log(run.output_dir / "log.csv", run.rows)
    title = f"{run.conf['model']} ({run.conf['features']})"
    plot_log(run.output_dir / "training.png", run.rows, title)


def _ranked_lists(samples, images, desc, sampler, conf, device):
    """(similarities, soft labels, mask), one padded row per sampled query."""
    index = {img: k for k, img in enumerate(images)}
    if conf["in_batch_candidates"]:
        cand_lists = [[i for i in images if i != s.query] for s in samples]
    else:
        cand_lists = [list(s.candidates) for s in samples]
    width = max(len(c) for c in cand_lists)
    sims = torch.zeros(len(samples), width, device=device)
    labels = torch.zeros(len(samples), width, device=device)
    mask = torch.zeros(len(samples), width, dtype=torch.bool, device=device)
    for r, (s, cands) in enumerate(zip(samples, cand_lists)):
        idx = torch.tensor([index[c] for c in cands], device=device)
        sims[r, : len(cands)] = desc[idx] @ desc[index[s.query]]
        labels[r, : len(cands)] = torch.tensor(
            [sampler.label(s.query, c) for c in cands], device=device
        )
        mask[r, : len(cands)] = True
    return sims, labels, mask


def _average_gradients(model: torch.nn.Module, world: int) -> None:
    """Data parallel by hand: every rank gets the mean gradient of all ranks."""
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world


def _train_step(run: _Run, step: int, t0: float) -> dict[str, Any]:
    """One optimizer step on this rank's slice of the step's queries; the log row."""
    conf, model, optimizer, sampler = run.conf, run.model, run.optimizer, run.sampler
    bs = int(conf["batch_size"])
    epoch, queries = batch_queries(len(sampler), bs * run.world, step, int(conf["seed"]))
    queries = queries[run.rank * bs : (run.rank + 1) * bs]
    rng = np.random.default_rng([int(conf["seed"]), step, run.rank])
    samples = [sampler.sample(int(q), rng) for q in queries]
    images = list(dict.fromkeys([i for s in samples for i in (s.query, *s.candidates)]))
    feats = [run.train_feats[i] for i in images]
    desc, decor = embed(model, conf["model"], feats, int(conf["forward_chunk"]), run.device)
    sims, labels, mask = _ranked_lists(samples, images, desc, sampler, conf, run.device)
    is_sparse = conf["model"] == "supergf-sparse"
    is_residual = bool(getattr(model, "residual", False))
    scaling = conf["similarity_scaling"]
    if scaling == "minmax" or (scaling == "auto" and (is_sparse or is_residual)):
        sims = minmax_scale(sims, mask)
    out = run.criterion(sims, labels, mask)
    loss = out["loss"]
    if is_sparse and decor is not None and float(conf["decorrelation_weight"]) > 0:
        loss = loss + float(conf["decorrelation_weight"]) * decor
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if dist.is_initialized():
        _average_gradients(model, run.world)
    if float(conf["grad_clip"]) > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(conf["grad_clip"]))
    lr = optimizer.param_groups[0]["lr"]
    optimizer.step()
    run.scheduler.step()
    return {
        "step": step + 1,
        "epoch": epoch,
        "lr": lr,
        "loss": float(loss.detach()),
        "ap_loss": float(out["loss"].detach()),
        "decorrelation": float(decor.detach()) if decor is not None else "",
        "train_ap": float(out["ap"].mean()),
        "seconds": round(time.time() - t0, 2),
    }


def _validate(run: _Run, val_sets, val_feats, row: dict[str, Any], done: int) -> None:
    """Add validation metrics to `row`; a better Recall@1 becomes the best (model_best.pt)."""
    from ..models import save_checkpoint

    conf = run.conf
    metrics = evaluate_sets(
        run.model,
        conf["model"],
        val_sets,
        val_feats,
        conf["positive_threshold"],
        int(conf["forward_chunk"]),
        run.device,
    )
    row.update({f"val_{k}": v for k, v in metrics.items()})
    if metrics and metrics["r@1"] > run.best["r@1"]:
        run.best = {**metrics, "step": done}
        meta = {**run.extra, "step": done, "val": metrics}
        save_checkpoint(run.output_dir / "model_best.pt", run.model, meta)


def _save_final(run: _Run, steps: int, summary: dict[str, Any]) -> None:
    """model_last.pt, and model_best.pt where validation never wrote one."""
    from ..models import save_checkpoint

    meta = {**run.extra, "step": steps, "summary": summary}
    save_checkpoint(run.output_dir / "model_last.pt", run.model, meta)
    if not (run.output_dir / "model_best.pt").exists():
        save_checkpoint(run.output_dir / "model_best.pt", run.model, {**run.extra, "step": steps})


def train(
    train_sets: Sequence[ImageSet],
    val_sets: Sequence[ImageSet],
    feature_cache,
    conf: dict[str, Any] | None,
    output_dir: str | Path,
    *,
    resume: bool = False,
    init_weights: str | Path | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Train SuperGF on `train_sets`, validating on `val_sets`.

    Args:
        feature_cache: a `FeatureCache` (frozen local features; extracted once, then read back).
        conf: training options, see `default_conf`.
        output_dir: where checkpoints, log.csv and training.png go.
        resume: continue from ``output_dir/checkpoint_last.pt`` (must exist).
        init_weights: start from this SuperGF checkpoint (fine-tuning) instead of random init.
        stop_after: stop (with a checkpoint) after this global step, e.g. to test `resume`.
    Returns:
        summary dict: steps, final_loss, best_val (metrics), seconds, output_dir, rows.
    """
    from tqdm import tqdm

    conf = merge_conf(conf)
    run, val_feats = _setup(
        train_sets, val_sets, feature_cache, conf, Path(output_dir), init_weights, progress
    )
    if resume:
        _resume(run)
    t0 = time.time()
    steps = int(conf["steps"])
    bar = tqdm(
        range(run.start_step, steps),
        initial=run.start_step,
        total=steps,
        desc=f"train {conf['model']}",
        disable=not (progress and run.is_main),
    )
    last_loss = float("nan")
    for step in bar:
        row = _train_step(run, step, t0)
        last_loss = row["loss"]
        done = step + 1
        if val_sets and (done % int(conf["val_every"]) == 0 or done == steps) and run.is_main:
            _validate(run, val_sets, val_feats, row, done)
        run.rows.append(row)
        if progress and run.is_main:
            bar.set_postfix(loss=f"{last_loss:.4f}", ap=f"{row['train_ap']:.3f}")
        stop = stop_after is not None and done >= stop_after
        if run.is_main and (done % int(conf["checkpoint_every"]) == 0 or done == steps or stop):
            _save_state(run, done)
        if stop:
            break
    summary = {
        "steps": steps,
        "final_loss": last_loss,
        "best_val": run.best if run.best["r@1"] >= 0 else {},
        "seconds": round(time.time() - t0, 1),
        "output_dir": str(run.output_dir),
    }
    if run.is_main and not (stop_after is not None and stop_after < steps):
        _save_final(run, steps, summary)
    if dist.is_initialized():
        dist.barrier()
    return {**summary, "rows": run.rows}
