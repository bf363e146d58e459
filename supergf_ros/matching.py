"""Vectorized descriptor matching shared by localization, retrieval re-ranking and training.

Descriptors are expected L2-normalized (as every extractor here returns them), so similarities
are dot products and Euclidean distances follow as sqrt(2 - 2 * similarity).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, overload

import numpy as np

if TYPE_CHECKING:
    import torch


def _is_torch(x: Any) -> bool:
    """Whether `x` is a torch tensor (never imports torch: without it nothing is a tensor)."""
    module = sys.modules.get("torch")
    return module is not None and isinstance(x, module.Tensor)


def _check_thresholds(ratio_threshold: float | None, distance_threshold: float | None) -> None:
    if ratio_threshold is not None and not 0.0 < ratio_threshold <= 1.0:
        raise ValueError(f"ratio_threshold must be in (0, 1] or None, got {ratio_threshold}")
    if distance_threshold is not None and not distance_threshold >= 0.0:
        raise ValueError(f"distance_threshold must be >= 0 or None, got {distance_threshold}")


def _check(desc: Any, name: str) -> None:
    if desc.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {tuple(desc.shape)}")
    if _is_torch(desc):
        import torch

        if not desc.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {desc.dtype}")
        finite = bool(torch.isfinite(desc).all())
    else:
        if not np.issubdtype(desc.dtype, np.floating):
            raise ValueError(f"{name} must be a floating-point array, got {desc.dtype}")
        finite = bool(np.isfinite(desc).all())
    if not finite:
        raise ValueError(f"{name} contain NaN or infinite values")


@overload
def match_mutual_nn(
    desc0: np.ndarray,
    desc1: np.ndarray,
    ratio_threshold: float | None = ...,
    distance_threshold: float | None = ...,
) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def match_mutual_nn(
    desc0: torch.Tensor,
    desc1: torch.Tensor,
    ratio_threshold: float | None = ...,
    distance_threshold: float | None = ...,
) -> tuple[torch.Tensor, torch.Tensor]: ...
def match_mutual_nn(desc0, desc1, ratio_threshold=None, distance_threshold=None):
    """Mutual nearest-neighbour matches between two sets of unit descriptors.

    Args:
        desc0: (N, D) descriptors of image 0, L2-normalized, float16/32/64; numpy or torch.
        desc1: (M, D) descriptors of image 1, same type and D.
        ratio_threshold: keep a match only if dist(1st NN) <= ratio * dist(2nd NN) for image 0's
            query (Lowe's ratio test on Euclidean distances, as hloc); None disables.
        distance_threshold: keep a match only if its Euclidean distance is <= this; None disables.
    Returns:
        matches: (K, 2) int64 index pairs (i in desc0, j in desc1), sorted by i;
        similarities: (K,) float32 dot products of the matched descriptors.
        numpy in -> numpy out; torch in -> torch out (on the inputs' device).
    Raises:
        ValueError: wrong shapes/dtypes, mismatched D, NaN/inf values or bad thresholds.
    """
    if _is_torch(desc0) != _is_torch(desc1):
        raise ValueError("desc0 and desc1 must both be numpy arrays or both be torch tensors")
    as_torch = _is_torch(desc0)
    if as_torch and desc0.device.type == "cpu" and desc1.device.type == "cpu":
        # numpy's reductions are much faster than torch's on CPU here; fp32 inputs are shared
        desc0, desc1 = (_cpu_to_numpy(d) for d in (desc0, desc1))
    elif not as_torch:
        desc0, desc1 = np.asarray(desc0), np.asarray(desc1)
    _check(desc0, "desc0")
    _check(desc1, "desc1")
    if desc0.shape[1] != desc1.shape[1]:
        raise ValueError(
            f"descriptor dimensions differ: desc0 is {tuple(desc0.shape)}, desc1 is "
            f"{tuple(desc1.shape)}"
        )
    _check_thresholds(ratio_threshold, distance_threshold)
    if _is_torch(desc0):  # on an accelerator
        return _match_torch(desc0, desc1, ratio_threshold, distance_threshold)
    matches, sims = _match_numpy(desc0, desc1, ratio_threshold, distance_threshold)
    if as_torch:
        import torch

        return torch.from_numpy(matches), torch.from_numpy(sims)
    return matches, sims


def _cpu_to_numpy(desc: torch.Tensor) -> np.ndarray:
    import torch

    desc = desc.detach()
    if desc.is_floating_point() and desc.dtype not in (torch.float16, torch.float32, torch.float64):
        desc = desc.float()  # e.g. bfloat16, which numpy lacks
    return desc.numpy()


def _match_numpy(d0, d1, ratio, dist):
    n, m = d0.shape[0], d1.shape[0]
    if n == 0 or m == 0:
        return np.zeros((0, 2), np.int64), np.zeros((0,), np.float32)
    sim = d0.astype(np.float32, copy=False) @ d1.astype(np.float32, copy=False).T
    nn01 = sim.argmax(axis=1)
    idx0 = np.arange(n)
    sim_nn = sim[idx0, nn01]
    # mutual: i is (one of) the best for its match j. Column max is ~50x faster than a
    # column argmax on a C-ordered matrix; ties are resolved below to the smallest i (as argmax).
    keep = sim_nn >= sim.max(axis=0)[nn01]
    if dist is not None:
        keep &= 2.0 - 2.0 * sim_nn <= dist**2
    rows = np.flatnonzero(keep)
    _, first = np.unique(nn01[rows], return_index=True)
    if len(first) < len(rows):  # several i tie for the same j: keep the first
        keep[:] = False
        keep[rows[first]] = True
        rows = np.flatnonzero(keep)
    if ratio is not None and m >= 2:
        sub = sim[rows]  # second neighbours only for the surviving candidates
        sub[np.arange(len(rows)), nn01[rows]] = -np.inf
        second = sub.max(axis=1)
        # squared distances 2 - 2 s: d1 <= r d2  <=>  (1 - s1) <= r^2 (1 - s2)
        keep[rows] = (1.0 - sim_nn[rows]) <= (ratio**2) * (1.0 - second)
    i = idx0[keep]
    matches = np.stack([i, nn01[keep]], axis=1).astype(np.int64)
    return matches, sim_nn[keep].astype(np.float32)


def _mutual_nn_torch(d0, d1, ratio, dist):
    """Mutual-NN core on torch tensors without host synchronization.

    Returns (nn01 (N,) int64, sim_nn (N,) float32, keep (N,) bool) on the inputs' device; the
    same rules (and tie handling: the first index wins) as `_match_numpy`. Needs N, M >= 1.
    """
    import torch

    n, m = d0.shape[0], d1.shape[0]
    sim = d0.float() @ d1.float().t()
    if ratio is not None and m >= 2:
        top, nn = sim.topk(2, dim=1)
        sim_nn, nn01 = top[:, 0], nn[:, 0]
    else:
        sim_nn, nn01 = sim.max(dim=1)
    nn10 = sim.argmax(dim=0)
    keep = nn10[nn01] == torch.arange(n, device=d0.device)
    if ratio is not None and m >= 2:
        keep &= (1.0 - sim_nn) <= (ratio**2) * (1.0 - top[:, 1])
    if dist is not None:
        keep &= 2.0 - 2.0 * sim_nn <= dist**2
    return nn01, sim_nn, keep


def _match_torch(d0, d1, ratio, dist):
    import torch

    n, m = d0.shape[0], d1.shape[0]
    dev = d0.device
    if n == 0 or m == 0:
        return (
            torch.zeros((0, 2), dtype=torch.int64, device=dev),
            torch.zeros((0,), dtype=torch.float32, device=dev),
        )
    with torch.no_grad():
        nn01, sim_nn, keep = _mutual_nn_torch(d0, d1, ratio, dist)
        idx0 = torch.arange(n, device=dev)
        matches = torch.stack([idx0[keep], nn01[keep]], dim=1)
        return matches, sim_nn[keep].float()


class DeviceMatcher:
    """Mutual-NN matching of one query against chosen groups of a descriptor bank kept on a
    torch device (e.g. a map's keyframes on the GPU, uploaded once at map load).

    Each call runs the matching of all requested groups on the device without waiting for it and
    brings the result to the host in one copy; the same rules as `match_mutual_nn` (it is the
    same torch code as its accelerator path, and it runs on CPU tensors as well).

    Args:
        groups: per group (e.g. keyframe) an (M_i, D) array of L2-normalized descriptors.
        device: torch device for the bank, e.g. "cuda", "cuda:1" or "cpu".
    Attributes:
        device: the torch device; num_groups; dim (D); nbytes (bank size on the device).
    """

    def __init__(self, groups: list[np.ndarray], device: str | Any = "cpu") -> None:
        import torch

        if not groups:
            raise ValueError("DeviceMatcher needs at least one descriptor group")
        dims = {int(g.shape[1]) for g in groups if getattr(g, "ndim", 0) == 2}
        if any(getattr(g, "ndim", 0) != 2 for g in groups) or len(dims) != 1:
            shapes = sorted({tuple(np.shape(g)) for g in groups})[:4]
            raise ValueError(f"groups must be (M_i, D) arrays with one D, got shapes {shapes}")
        for i, g in enumerate(groups):
            _check(np.asarray(g), f"group {i}")
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"invalid device {device!r}: {err}") from err
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but torch has no CUDA here")
        sizes = np.array([len(g) for g in groups], np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(sizes)])
        bank = np.concatenate([np.asarray(g, np.float32) for g in groups])
        self._bank = torch.from_numpy(np.ascontiguousarray(bank)).to(self.device)
        self.device = self._bank.device  # with its index: "cuda" -> cuda:0
        self.num_groups = len(groups)
        self.dim = dims.pop()

    @property
    def nbytes(self) -> int:
        return int(self._bank.numel() * self._bank.element_size())

    def group_size(self, i: int) -> int:
        return int(self._offsets[i + 1] - self._offsets[i])

    def to_device(self, desc: Any) -> Any:
        """(N, D) query descriptors as a float32 tensor on the bank's device (no copy if there)."""
        import torch

        if not _is_torch(desc):
            desc = torch.from_numpy(np.ascontiguousarray(desc))
        return desc.to(self.device, torch.float32)

    def match(
        self,
        desc0: Any,
        group_ids: Any,
        ratio_threshold: float | None = None,
        distance_threshold: float | None = None,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Match `desc0` against each group in `group_ids`.

        Args:
            desc0: (N, D) query descriptors, numpy or a torch tensor (ideally on `device`).
            group_ids: sequence of group indices.
            ratio_threshold / distance_threshold: as `match_mutual_nn`.
        Returns:
            per group, in order: (matches (K, 2) int64 numpy (i in desc0, j in the group),
            similarities (K,) float32 numpy), as `match_mutual_nn` returns for numpy inputs.
        """
        import torch

        if _is_torch(desc0) and not desc0.is_floating_point():
            raise ValueError(f"desc0 must be a floating-point tensor, got {desc0.dtype}")
        # a query already on the bank's device is checked for NaN/inf in the same host copy as
        # the matches (no extra synchronization); anything else is checked before the upload
        resident = _is_torch(desc0) and desc0.device == self.device
        if not resident:
            _check(_cpu_to_numpy(desc0.cpu()) if _is_torch(desc0) else np.asarray(desc0), "desc0")
        desc0 = self.to_device(desc0)
        if desc0.ndim != 2:
            raise ValueError(f"desc0 must have shape (N, D), got {tuple(desc0.shape)}")
        if desc0.shape[1] != self.dim:
            raise ValueError(
                f"descriptor dimensions differ: desc0 is {tuple(desc0.shape)}, the bank is "
                f"(*, {self.dim})"
            )
        _check_thresholds(ratio_threshold, distance_threshold)
        ids = [int(i) for i in group_ids]
        bad = [i for i in ids if not 0 <= i < self.num_groups]
        if bad:
            raise ValueError(f"group ids {bad[:5]} out of range [0, {self.num_groups})")
        n = desc0.shape[0]
        empty = (np.zeros((0, 2), np.int64), np.zeros((0,), np.float32))
        live = [i for i in ids if self.group_size(i) > 0]
        if n == 0 or not live:
            if resident:
                _check(desc0, "desc0")
            return [empty for _ in ids]
        rows = []
        with torch.no_grad():
            for i in live:  # queued on the device; nothing here waits for it
                a, b = int(self._offsets[i]), int(self._offsets[i + 1])
                nn01, sim_nn, keep = _mutual_nn_torch(
                    desc0, self._bank[a:b], ratio_threshold, distance_threshold
                )
                # float64 holds any int32 index and any float32 similarity exactly
                rows.append(torch.stack([torch.where(keep, nn01, -1).double(), sim_nn.double()]))
            packed = torch.stack(rows).reshape(-1)  # (G * 2 * N,)
            if resident:
                packed = torch.cat([packed, torch.isfinite(desc0).all().double().reshape(1)])
            flat = packed.cpu().numpy()  # the one device -> host copy
        if resident and not flat[-1]:
            raise ValueError("desc0 contain NaN or infinite values")
        host = flat[: len(live) * 2 * n].reshape(len(live), 2, n)
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        idx0 = np.arange(n)
        for g, i in enumerate(live):
            nn01 = host[g, 0]
            keep = nn01 >= 0
            matches = np.stack([idx0[keep], nn01[keep].astype(np.int64)], axis=1)
            out[i] = (matches.astype(np.int64), host[g, 1, keep].astype(np.float32))
        return [out.get(i, empty) for i in ids]
