"""Training losses: listwise Average-Precision with soft labels, slot-attention decorrelation.

The AP loss is the histogram-binned differentiable AP of Revaud et al. ("Learning with Average
Precision: Training Image Retrieval with a Listwise Loss", ICCV 2019), generalised to graded labels
S in [0, 1] (field-of-view overlap) as in the soft-label retrieval losses SuperGF trains with:

    AP = sum_k (S_k / sum S) * precision@k,   precision@k = (sum_{j<=k} S_j) / k

With binary labels this is the usual AP. Similarities (cosine, in [-1, 1]) are soft-assigned to
`num_bins` bins by a triangular kernel; two variants are provided:

- ``"quantized"`` (AP_Q of Revaud et al.): precision of bin m = (labels in bins <= m) / (items in
  bins <= m).
- ``"tie_aware"`` (AP_T, after He et al.'s tie-aware AP used by Revaud et al.): items sharing a
  bin are treated as tied and get the *expected* precision over random orders of the tie,
  extended to soft labels. With n = c_m items, k = c+_m = sum S and q = sum S^2 in bin m, and
  N = C_{m-1}, P = C+_{m-1} accumulated over the bins before it, bin m adds
  (k P + q) A / n + (k^2 - q) B / (n (n - 1)) with A = sum_{j=1..n} 1/(N + j) (digamma, so it is
  smooth in the soft counts) and B = sum_j (j - 1)/(N + j) = n - (N + 1) A. This is the exact
  expectation for whole items; for a bin holding one item it is the exact AP term.

Both equal the exact AP when every similarity falls on a bin centre and no two items share a bin.
"""

from __future__ import annotations

import torch
from torch import nn


def exact_average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Exact (graded) AP of one ranking: `scores` (N,) higher is better, `labels` (N,) in [0, 1].

    Ties are broken by index order (stable sort). Returns a 0-dim tensor (0 if no label > 0).
    """
    scores = torch.as_tensor(scores, dtype=torch.float64)
    labels = torch.as_tensor(labels, dtype=torch.float64)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores and labels must both be (N,), got {scores.shape}, {labels.shape}")
    total = labels.sum()
    if total <= 0:
        return torch.zeros((), dtype=torch.float64)
    order = torch.sort(scores, descending=True, stable=True).indices
    ranked = labels[order]
    ranks = torch.arange(1, len(ranked) + 1, dtype=torch.float64)
    precision = torch.cumsum(ranked, 0) / ranks
    return (ranked * precision).sum() / total


class APLoss(nn.Module):
    """Listwise soft-label AP loss on cosine similarities, ``1 - mean AP`` over queries.

    Args:
        num_bins: number of histogram bins M (bin centres uniformly from 1 down to -1).
        mode: ``"quantized"`` (AP_Q) or ``"tie_aware"`` (AP_T), see the module docstring.
        sim_range: (min, max) of the similarities; default cosine (-1, 1).
    """

    def __init__(
        self,
        num_bins: int = 25,
        mode: str = "tie_aware",
        sim_range: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        super().__init__()
        if num_bins < 2:
            raise ValueError(f"num_bins must be >= 2, got {num_bins}")
        if mode not in ("quantized", "tie_aware"):
            raise ValueError(f"mode must be 'quantized' or 'tie_aware', got '{mode}'")
        lo, hi = float(sim_range[0]), float(sim_range[1])
        if not hi > lo:
            raise ValueError(f"sim_range must be (min, max) with max > min, got {sim_range}")
        self.num_bins = int(num_bins)
        self.mode = mode
        self.delta = (hi - lo) / (num_bins - 1)
        self.register_buffer("centres", torch.linspace(hi, lo, num_bins), persistent=False)

    def soft_bins(self, similarities: torch.Tensor) -> torch.Tensor:
        """(..., N) similarities -> (..., N, M) triangular bin memberships (rows sum to 1)."""
        centres = self.centres.to(similarities)
        return torch.clamp(1 - (similarities[..., None] - centres).abs() / self.delta, min=0)

    def average_precision(
        self, similarities: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Differentiable AP per query.

        Args:
            similarities: (B, N) query-to-candidate similarities.
            labels: (B, N) soft labels in [0, 1].
            mask: optional (B, N) bool, False for padding entries that must be ignored.
        Returns:
            (B,) AP per query (0 for queries without any label > 0).
        """
        if similarities.shape != labels.shape or similarities.ndim != 2:
            raise ValueError(
                f"similarities and labels must both be (B, N), got {tuple(similarities.shape)} "
                f"and {tuple(labels.shape)}"
            )
        labels = labels.to(similarities)
        delta = self.soft_bins(similarities)  # (B, N, M)
        if mask is not None:
            delta = delta * mask[..., None].to(delta)
            labels = labels * mask.to(labels)
        count = delta.sum(1)  # (B, M) items per bin
        pos = (delta * labels[..., None]).sum(1)  # (B, M) label mass per bin
        total = labels.sum(1)  # (B,)
        eps = 1e-8
        if self.mode == "quantized":
            precision = pos.cumsum(1) / (count.cumsum(1) + eps)
            ap = (precision * pos).sum(1)
        else:
            sq = (delta * labels[..., None] ** 2).sum(1)  # (B, M)
            before = count.cumsum(1) - count  # N: items in the bins before m
            cum_pos = pos.cumsum(1) - pos  # P: label mass in the bins before m
            n = count
            # A = sum_{j=1..n} 1 / (N + j) = digamma(N + n + 1) - digamma(N + 1), continuous in n
            harmonic = torch.digamma(before + n + 1) - torch.digamma(before + 1)
            a_over_n = torch.where(
                n > 1e-3, harmonic / n.clamp(min=1e-3), torch.polygamma(1, before + 1)
            )
            # B = sum_j (j - 1) / (N + j) = n - (N + 1) A; coefficient of (c+^2 - q) is B / (n (n-1))
            b_coef = torch.where(
                n > 1.5,
                (n - (before + 1) * harmonic) / (n * (n - 1)).clamp(min=1e-3),
                1 / (2 * before + n + 1),  # midpoint form where the tie holds < 1.5 items
            )
            ap = ((pos * cum_pos + sq) * a_over_n + (pos**2 - sq) * b_coef).sum(1)
        return torch.where(total > 0, ap / total.clamp(min=eps), torch.zeros_like(ap))

    def forward(
        self, similarities: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Returns {"loss": 1 - mean AP over queries with positives, "ap": (B,) AP per query}."""
        ap = self.average_precision(similarities, labels, mask)
        valid = (labels * (mask.to(labels) if mask is not None else 1)).sum(1) > 0
        if not bool(valid.any()):
            raise ValueError("no query in the batch has any candidate with label > 0")
        return {"loss": 1 - ap[valid].mean(), "ap": ap.detach()}


def decorrelation_loss(attention: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention-decorrelation loss between slot attention maps (sparse SuperGF).

    Args:
        attention: (B, S, N) attention of S slots over N local features (any non-negative
            weights; each slot's map is L2-normalised here).
        mask: optional (B, N) bool, False for padded features.
    Returns:
        0-dim mean squared cosine similarity between distinct slots' maps (0 = orthogonal slots).
    """
    if attention.ndim != 3:
        raise ValueError(f"attention must be (B, S, N), got {tuple(attention.shape)}")
    if mask is not None:
        attention = attention * mask[:, None, :].to(attention)
    num_slots = attention.shape[1]
    if num_slots < 2:
        return attention.new_zeros(())
    a = nn.functional.normalize(attention, dim=-1, eps=1e-8)
    gram = a @ a.transpose(1, 2)  # (B, S, S)
    off = gram - torch.diag_embed(torch.diagonal(gram, dim1=1, dim2=2))
    return (off**2).sum((1, 2)).mean() / (num_slots * (num_slots - 1))
