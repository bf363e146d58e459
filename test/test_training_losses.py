"""The soft-label AP loss against exact AP, its gradients, and the decorrelation loss."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from supergf_ros.training.losses import APLoss, decorrelation_loss, exact_average_precision

RANKINGS = [
    ([1, 0, 0, 1, 0, 0], [0, 1, 2, 3, 4, 5]),
    ([0, 0, 1, 0, 1, 1], [0, 2, 3, 7, 10, 15]),
    ([1.0, 0.0, 0.5, 1.0, 0.0, 0.3], [0, 2, 3, 7, 10, 15]),  # soft labels
    ([0.2, 0.9, 0.0, 0.6, 0.4], [1, 4, 5, 9, 20]),
]


@pytest.mark.parametrize("mode", ["quantized", "tie_aware"])
@pytest.mark.parametrize(("labels", "bins"), RANKINGS)
def test_ap_matches_exact_on_bin_centres(mode, labels, bins):
    loss = APLoss(num_bins=21, mode=mode)
    sims = loss.centres[bins].clone()  # distinct bin centres: no quantization error, no ties
    labels = torch.tensor(labels, dtype=torch.float32)
    ap = loss.average_precision(sims[None], labels[None])[0]
    exact = exact_average_precision(sims, labels)
    assert ap.item() == pytest.approx(exact.item(), abs=1e-6)
    # shuffling the candidates changes nothing
    perm = torch.randperm(len(sims), generator=torch.Generator().manual_seed(0))
    ap2 = loss.average_precision(sims[perm][None], labels[perm][None])[0]
    assert ap2.item() == pytest.approx(ap.item(), abs=1e-6)


def test_perfect_and_worst_rankings():
    loss = APLoss(num_bins=11)
    sims = torch.tensor([[1.0, 0.6, 0.2, -0.2, -0.6, -1.0]])
    good = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    assert loss(sims, good)["loss"].item() == pytest.approx(0.0, abs=1e-6)
    bad = good.flip(1)
    assert loss(sims, bad)["ap"].item() == pytest.approx(
        exact_average_precision(sims[0], bad[0]).item(), abs=1e-6
    )
    assert loss(sims, bad)["ap"].item() < 0.5


def test_tie_aware_ap_is_expected_ap_over_tie_orders():
    """All candidates in one bin: AP_T ~ mean exact AP over all orders of the tie."""
    labels = [1.0, 0.0, 0.0, 1.0, 0.5]
    loss = APLoss(num_bins=11, mode="tie_aware")
    sims = torch.full((1, len(labels)), float(loss.centres[3]))
    ap_t = loss.average_precision(sims, torch.tensor([labels]))[0].item()
    perms = list(itertools.permutations(range(len(labels))))
    expected = np.mean(
        [
            exact_average_precision(-torch.arange(5.0), torch.tensor(labels)[list(p)]).item()
            for p in perms
        ]
    )
    assert ap_t == pytest.approx(expected, abs=0.03)  # midpoint approximation of 1/(N+j)
    # the quantized AP treats the whole tie as one rank, which is clearly more optimistic here
    ap_q = APLoss(num_bins=11, mode="quantized").average_precision(sims, torch.tensor([labels]))
    assert abs(ap_q.item() - expected) > abs(ap_t - expected)


@pytest.mark.parametrize("mode", ["quantized", "tie_aware"])
def test_gradients_push_positives_up_and_negatives_down(mode):
    loss = APLoss(num_bins=25, mode=mode)
    sims = torch.tensor([[0.31, 0.52, 0.23, 0.27, -0.33, 0.44]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0, 0.7, 0.0, 0.0, 0.2]])
    loss(sims, labels)["loss"].backward()
    g = sims.grad[0]
    assert g[0] < 0  # raising the positive's similarity lowers the loss
    if mode == "tie_aware":  # (AP_Q's coarse bins give zero or odd-signed gradients here)
        assert g[2] < 0  # and so does raising the soft positive
        assert g[1] > 0 and g[3] > 0  # raising negatives ranked near positives raises it
    # gradient descent on the similarities improves the exact AP
    x = sims.detach().clone().requires_grad_(True)
    for _ in range(30):
        x.grad = None
        loss(x, labels)["loss"].backward()
        with torch.no_grad():
            x -= 0.05 * x.grad.sign()
    before = exact_average_precision(sims.detach()[0], labels[0])
    assert exact_average_precision(x.detach()[0], labels[0]) > before + 0.3


def test_mask_ignores_padding_and_bad_input():
    loss = APLoss(num_bins=11)
    sims = torch.tensor([[0.8, 0.4, 0.9, 0.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False, False]])
    assert loss(sims, labels, mask)["ap"].item() == pytest.approx(1.0, abs=1e-6)
    assert loss(sims, labels)["ap"].item() < 0.99
    with pytest.raises(ValueError, match="no query"):
        loss(sims, torch.zeros_like(labels))
    with pytest.raises(ValueError, match="mode"):
        APLoss(mode="smooth")
    with pytest.raises(ValueError, match=r"\(B, N\)"):
        loss.average_precision(sims[0], labels[0])


def test_decorrelation_loss():
    eye = torch.eye(4)[None]  # 4 slots attending to disjoint features
    assert decorrelation_loss(eye).item() == pytest.approx(0.0)
    same = torch.ones(1, 4, 6)  # identical attention maps
    assert decorrelation_loss(same).item() == pytest.approx(1.0)
    att = torch.rand(2, 4, 6, requires_grad=True)
    decorrelation_loss(att).backward()
    assert torch.isfinite(att.grad).all()
    with pytest.raises(ValueError):
        decorrelation_loss(torch.rand(4, 6))
