"""Hypergradients against independent references on tiny float64 networks.

First order (DARTS-1st) is the direct term grad_alpha L_val(w, alpha) with w held fixed:
checked against exact autograd of the same loss and against a central finite difference
of the loss along alpha.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlonas.errors import MlonasError
from mlonas.mlo import darts_arch_grad
from mlonas.space.supernet import Supernet, SupernetSpec


def tiny_net() -> Supernet:
    torch.manual_seed(0)
    net = Supernet(SupernetSpec(init_channels=2, num_classes=3, layers=3, steps=2, multiplier=2))
    net.double()
    with torch.no_grad():  # alphas away from uniform, so ops are distinguishable
        for a in net.arch_parameters():
            a.normal_(0, 0.5)
    net.eval()  # fixed BN statistics: L_val is a deterministic function of alpha
    return net


def batches() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    xv = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    return (x, torch.tensor([0, 1, 2, 0])), (xv, torch.tensor([2, 1, 0, 1]))


def test_first_order_equals_exact_direct_term_and_finite_differences() -> None:
    net = tiny_net()
    loss_fn = nn.CrossEntropyLoss()
    train, val = batches()
    grads, loss = darts_arch_grad(net, loss_fn, train, val, mode="first_order")

    # exact autograd of L_val(w, alpha) w.r.t. alpha, weights fixed
    ref = torch.autograd.grad(loss_fn(net(val[0]), val[1]), net.arch_parameters())
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=0)
    with torch.no_grad():
        assert float(loss) == pytest.approx(float(loss_fn(net(val[0]), val[1])))

    # central finite difference along a random direction of (alpha_normal, alpha_reduce)
    g = torch.Generator().manual_seed(2)
    dirs = [torch.randn(a.shape, generator=g, dtype=torch.float64) for a in net.arch_parameters()]
    eps = 1e-5

    def loss_at(t: float) -> float:
        with torch.no_grad():
            for a, d in zip(net.arch_parameters(), dirs, strict=True):
                a.add_(t * d)
            value = float(loss_fn(net(val[0]), val[1]))
            for a, d in zip(net.arch_parameters(), dirs, strict=True):
                a.sub_(t * d)
        return value

    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    analytic = sum(float((gr * d).sum()) for gr, d in zip(grads, dirs, strict=True))
    assert numeric == pytest.approx(analytic, rel=1e-6)


def test_first_order_leaves_weight_gradients_alone() -> None:
    net = tiny_net()
    train, val = batches()
    darts_arch_grad(net, nn.CrossEntropyLoss(), train, val)
    assert all(p.grad is None for p in net.parameters())


def test_unknown_mode_is_a_clear_error() -> None:
    net = tiny_net()
    train, val = batches()
    with pytest.raises(MlonasError, match="hypergradient mode 'exact' is not available"):
        darts_arch_grad(net, nn.CrossEntropyLoss(), train, val, mode="exact")
