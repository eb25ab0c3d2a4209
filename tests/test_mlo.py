"""DARTS hypergradients against exact autograd and finite differences, float64.

On the smooth surrogate supernet (softplus, average pooling) the unrolled objective
L_val(w'(alpha), alpha) is infinitely differentiable, so:

- ``exact`` (autograd through the virtual step) must match a central finite difference of
  the whole unrolled objective along a random direction of alpha (an independent check);
- ``finite_difference`` (the papers' algorithm) must match ``exact``: cosine >= 0.99, and
  the relative error shrinks as eps shrinks (it is O(eps^2) for central differences until
  float64 round-off dominates; bound used below: < 1e-4 at DARTS' eps = 0.01);
- with xi = 0 both unrolled modes reduce to ``first_order`` (the direct term alone);
- no mode moves BatchNorm running statistics or leaves gradients on the model.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_nets import LOSS, batches, cosine, flat, momentum_step, rel_err, tiny_net

from mlonas.errors import MlonasError
from mlonas.mlo import VirtualStep, darts_arch_grad
from mlonas.space.supernet import Supernet


def unrolled_objective(net: Supernet, step: VirtualStep, train, val) -> float:
    """L_val(w'(alpha), alpha) computed from scratch on a copy (train-mode BN)."""
    m = copy.deepcopy(net).train()
    loss = LOSS(m(train[0]), train[1])
    grads = torch.autograd.grad(loss, m.weight_parameters())
    with torch.no_grad():
        new = step.apply([p.detach() for p in m.weight_parameters()], grads)
        for p, n in zip(m.weight_parameters(), new, strict=True):
            p.copy_(n)
        return float(LOSS(m(val[0]), val[1]))


def test_virtual_step_is_the_optimizers_next_step() -> None:
    net = tiny_net()
    step = momentum_step(net)
    opt = torch.optim.SGD(net.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    opt.load_state_dict(  # same momentum buffers as the virtual step holds
        {
            "state": {i: {"momentum_buffer": b} for i, b in enumerate(step.momentum_buffers)},
            "param_groups": opt.state_dict()["param_groups"],
        }
    )
    g = [torch.randn_like(p) for p in net.weight_parameters()]
    virtual = step.apply([p.detach() for p in net.weight_parameters()], g)
    for p, gi in zip(net.weight_parameters(), g, strict=True):
        p.grad = gi
    opt.step()
    for v, p in zip(virtual, net.weight_parameters(), strict=True):
        torch.testing.assert_close(v, p.detach(), rtol=1e-12, atol=1e-12)


def test_exact_matches_finite_difference_of_the_unrolled_objective() -> None:
    net = tiny_net()
    train, val = batches()
    step = momentum_step(net)
    grads, _ = darts_arch_grad(net, LOSS, train, val, mode="exact", step=step)
    g = torch.Generator().manual_seed(4)
    dirs = [torch.randn(a.shape, generator=g, dtype=torch.float64) for a in net.arch_parameters()]
    h = 1e-5

    def at(t: float) -> float:
        m = copy.deepcopy(net)
        with torch.no_grad():
            for a, d in zip(m.arch_parameters(), dirs, strict=True):
                a.add_(t * d)
        return unrolled_objective(m, step, train, val)

    numeric = (at(h) - at(-h)) / (2 * h)
    analytic = float(flat(grads) @ flat(dirs))
    assert numeric == pytest.approx(analytic, rel=1e-6)


def test_finite_difference_agrees_with_exact_and_converges_in_eps() -> None:
    net = tiny_net()
    train, val = batches()
    step = momentum_step(net)
    exact, loss_e = darts_arch_grad(net, LOSS, train, val, mode="exact", step=step)
    errors = []
    # One decade below DARTS' 0.01 at the small end: with the official BatchNorm after the
    # pooling ops the surrogate curves more, and at eps = 1 the difference is no longer a
    # derivative (cosine 0.98); the error shrinks 10x per decade from 0.1 down.
    for eps in (0.1, 0.01, 0.001):
        fd, loss_f = darts_arch_grad(
            net, LOSS, train, val, mode="finite_difference", step=step, eps=eps
        )
        assert float(loss_f) == pytest.approx(float(loss_e), rel=1e-12)
        errors.append(rel_err(fd, exact))
        assert cosine(fd, exact) >= 0.99
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-4
    # the implicit (second-order) term is not negligible here, so the test has teeth
    direct, _ = darts_arch_grad(net, LOSS, train, val, mode="first_order")
    assert rel_err(direct, exact) > 10 * errors[2]


def test_zero_inner_lr_reduces_unrolled_modes_to_first_order() -> None:
    net = tiny_net()
    train, val = batches()
    first, _ = darts_arch_grad(net, LOSS, train, val, mode="first_order")
    for mode in ("finite_difference", "exact"):
        g, _ = darts_arch_grad(net, LOSS, train, val, mode=mode, step=VirtualStep(lr=0.0))
        for a, b in zip(g, first, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_first_order_is_the_direct_term_with_train_mode_batchnorm() -> None:
    net = tiny_net()
    train, val = batches()
    grads, loss = darts_arch_grad(net, LOSS, train, val, mode="first_order")
    ref_net = copy.deepcopy(net).train()
    ref_loss = LOSS(ref_net(val[0]), val[1])
    ref = torch.autograd.grad(ref_loss, ref_net.arch_parameters())
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-14)
    assert float(loss) == pytest.approx(float(ref_loss.detach()))


@pytest.mark.parametrize("mode", ["first_order", "finite_difference", "exact"])
def test_no_mode_touches_batchnorm_statistics_or_model_gradients(mode: str) -> None:
    net = tiny_net()
    train, val = batches()
    before = {n: b.clone() for n, b in net.named_buffers()}
    net.eval()
    darts_arch_grad(net, LOSS, train, val, mode=mode, step=momentum_step(net))
    assert not net.training  # the caller's mode is restored
    for n, b in net.named_buffers():
        assert torch.equal(b, before[n]), n
    assert all(p.grad is None for p in net.parameters())


def test_relu_maxpool_supernet_both_unrolled_estimators_are_finite() -> None:
    """On the real (piecewise-smooth) supernet the two are different estimators: the
    finite difference straddles ReLU/max-pool kinks that autograd's one-sided derivatives
    do not see. Their gap is measured and printed by benchmarks/search_step.py (at this
    tiny size the cosine is about 0.46); here only that both are usable numbers.
    """
    net = tiny_net(smooth=False)
    train, val = batches()
    step = momentum_step(net)
    exact, _ = darts_arch_grad(net, LOSS, train, val, mode="exact", step=step)
    fd, _ = darts_arch_grad(net, LOSS, train, val, mode="finite_difference", step=step)
    assert torch.isfinite(flat(fd)).all() and torch.isfinite(flat(exact)).all()


def test_unknown_mode_and_missing_step_are_clear_errors() -> None:
    net = tiny_net()
    train, val = batches()
    with pytest.raises(MlonasError, match="hypergradient mode 'magic' is not available"):
        darts_arch_grad(net, LOSS, train, val, mode="magic")
    with pytest.raises(MlonasError, match="needs the virtual inner step"):
        darts_arch_grad(net, LOSS, train, val, mode="exact")
