"""LeaSE's hypergradient (Eqs. 9-17) against exact autograd and finite differences, float64.

On a smooth explainer supernet and a smooth audience (softplus, average pooling) the
four-level unrolled objective O_A(A) = L(E'(A), A, val) + gamma L(W'(Delta'(E'(A))), val)
is infinitely differentiable, so:

- ``exact`` must match a central difference of O_A computed from scratch (independent of
  mlonas.mlo), for the full objective and for the audience term alone;
- ``finite_difference`` (the paper's chain of vector products) must match ``exact``
  (cosine >= 0.99), for the full gradient and for the audience term alone;
- gamma = 0 gives exactly DARTS-2nd's gradient; first order gives DARTS-1st's;
- no mode moves BatchNorm statistics, leaves gradients on the models, or edits Delta.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_nets import (
    LOSS,
    batches,
    cosine,
    flat,
    images,
    momentum_step,
    rel_err,
    tiny_audience,
    tiny_net,
)

from mlonas.mlo import darts_arch_grad
from mlonas.mlo.core import Functional
from mlonas.mlo.lease import Explanations, lease_arch_grad

EXPL = Explanations(lr=20.0, direction=1.0, eps=0.125, weight=1.0)


def setup(eps_fraction: float = 0.5):
    explainer, audience = tiny_net(), tiny_audience()
    train, val = batches()
    g = torch.Generator().manual_seed(7)
    delta = (torch.rand(6, 3, 8, 8, generator=g, dtype=torch.float64) * 2 - 1) * (
        eps_fraction * EXPL.eps
    )
    return explainer, audience, train, val, delta


def lease(mode: str, *, expl: Explanations = EXPL, gamma: float = 1.0, **kw):
    explainer, audience, train, val, delta = setup()
    return lease_arch_grad(
        explainer,
        audience,
        LOSS,
        train,
        val,
        train[0],
        delta,
        expl,
        mode=mode,
        gamma=gamma,
        e_step=momentum_step(explainer, lr=0.2),
        w_step=momentum_step(audience, lr=0.2, seed=4),
        **kw,
    )


def objective(explainer, frozen, audience, train, val, delta, e_step, w_step, audience_only):
    """O_A (gamma = 1) from scratch with plain autograd on copies; the attack uses the
    architecture ``frozen`` of the base point (the paper's chain: A reaches Delta' only
    through E')."""
    expl = EXPL
    e = copy.deepcopy(explainer).train()
    weights = e.weight_parameters()
    g = torch.autograd.grad(LOSS(e(train[0]), train[1]), weights)
    with torch.no_grad():
        for p, n in zip(weights, e_step.apply([p.detach() for p in weights], g), strict=True):
            p.copy_(n)
    attacker = copy.deepcopy(e)
    with torch.no_grad():
        for a, f in zip(attacker.arch_parameters(), frozen, strict=True):
            a.copy_(f)
    d = delta.clone().requires_grad_(True)
    x = train[0]
    target = torch.softmax(copy.deepcopy(attacker)(x), dim=1)
    attack = -(target * torch.log_softmax(copy.deepcopy(attacker)(x + d), dim=1)).sum()
    (gd,) = torch.autograd.grad(attack, d)
    d1 = (delta + expl.direction * expl.lr * gd).clamp(-expl.eps, expl.eps).detach()
    a = copy.deepcopy(audience).train()
    inp = x * (1 + expl.weight * (d1 / expl.eps) ** 2)
    ga = torch.autograd.grad(LOSS(a(inp), train[1]), list(a.parameters()))
    with torch.no_grad():
        new = w_step.apply([p.detach() for p in a.parameters()], ga)
        for p, n in zip(a.parameters(), new, strict=True):
            p.copy_(n)
        la = float(LOSS(a(val[0]), val[1]))
        le = float(LOSS(e(val[0]), val[1]))
    return la if audience_only else le + la


@pytest.mark.parametrize("audience_only", [False, True])
def test_exact_matches_finite_difference_of_the_four_level_objective(audience_only: bool) -> None:
    explainer, audience, train, val, delta = setup()
    e_step, w_step = momentum_step(explainer, lr=0.2), momentum_step(audience, lr=0.2, seed=4)
    res = lease_arch_grad(
        explainer, audience, LOSS, train, val, train[0], delta, EXPL,
        mode="exact", e_step=e_step, w_step=w_step, audience_only=audience_only,
    )  # fmt: skip
    base = [a.detach().clone() for a in explainer.arch_parameters()]
    g = torch.Generator().manual_seed(8)
    dirs = [torch.randn(a.shape, generator=g, dtype=torch.float64) for a in base]
    h = 1e-4

    def at(t: float) -> float:
        m = copy.deepcopy(explainer)
        with torch.no_grad():
            for a, d in zip(m.arch_parameters(), dirs, strict=True):
                a.add_(t * d)
        return objective(m, base, audience, train, val, delta, e_step, w_step, audience_only)

    numeric = (at(h) - at(-h)) / (2 * h)
    analytic = float(flat(res.grads) @ flat(dirs))
    assert numeric == pytest.approx(analytic, rel=1e-4 if audience_only else 1e-6)
    assert analytic != 0.0


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_finite_difference_agrees_with_exact_full_and_audience_term(direction: float) -> None:
    expl = Explanations(lr=EXPL.lr, direction=direction, eps=EXPL.eps, weight=EXPL.weight)
    full_e, full_f = lease("exact", expl=expl), lease("finite_difference", expl=expl)
    aud_e = lease("exact", expl=expl, audience_only=True)
    aud_f = lease("finite_difference", expl=expl, audience_only=True)
    assert cosine(full_f.grads, full_e.grads) >= 0.99
    assert cosine(aud_f.grads, aud_e.grads) >= 0.99
    assert rel_err(aud_f.grads, aud_e.grads) < 1e-2
    assert float(full_f.explainer_val_loss) == pytest.approx(float(full_e.explainer_val_loss))
    assert float(full_f.audience_val_loss) == pytest.approx(float(full_e.audience_val_loss))
    # the audience term is a real part of the gradient, not rounding noise
    assert flat(aud_e.grads).norm() > 1e-6 * flat(full_e.grads).norm()
    darts2 = lease("exact", expl=expl, gamma=0.0)
    diff = [a - b for a, b in zip(full_e.grads, darts2.grads, strict=True)]
    torch.testing.assert_close(flat(diff), flat(aud_e.grads), rtol=1e-6, atol=1e-14)


def test_the_projection_is_part_of_the_chain() -> None:
    """A step large enough to clip some explanations: clipped entries carry no gradient,
    in both modes alike."""
    expl = Explanations(lr=1.0e4, eps=EXPL.eps, weight=EXPL.weight)
    explainer, _, train, _, delta = setup()
    f = Functional(explainer, LOSS)
    d = delta.clone().requires_grad_(True)
    alphas = [a.detach() for a in f.alphas]
    attack = expl.attack_loss(f, f.detached_weights(), alphas, train[0], d)
    _, inside = expl.step(delta, torch.autograd.grad(attack, d)[0])
    assert 0.05 < float(inside.mean()) < 0.95
    e = lease("exact", expl=expl, audience_only=True)
    fd = lease("finite_difference", expl=expl, audience_only=True)
    assert cosine(fd.grads, e.grads) >= 0.99


@pytest.mark.parametrize("mode", ["finite_difference", "exact"])
def test_gamma_zero_is_darts_second_order(mode: str) -> None:
    explainer, audience, train, val, delta = setup()
    e_step = momentum_step(explainer, lr=0.2)
    res = lease_arch_grad(
        explainer, audience, LOSS, train, val, train[0], delta, EXPL, mode=mode, gamma=0.0,
        e_step=e_step, w_step=momentum_step(audience, lr=0.2, seed=4),
    )  # fmt: skip
    darts, loss = darts_arch_grad(explainer, LOSS, train, val, mode=mode, step=e_step)
    for a, b in zip(res.grads, darts, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    assert float(res.explainer_val_loss) == float(loss)


def test_first_order_is_darts_first_order() -> None:
    explainer, audience, train, val, delta = setup()
    res = lease_arch_grad(
        explainer, audience, LOSS, train, val, train[0], delta, EXPL, mode="first_order"
    )
    darts, _ = darts_arch_grad(explainer, LOSS, train, val, mode="first_order")
    for a, b in zip(res.grads, darts, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["first_order", "finite_difference", "exact"])
def test_no_mode_touches_statistics_gradients_or_explanations(mode: str) -> None:
    explainer, audience, train, val, delta = setup()
    e_step, w_step = momentum_step(explainer), momentum_step(audience, seed=4)
    before = {n: b.clone() for m in (explainer, audience) for n, b in m.named_buffers()}
    saved = delta.clone()
    audience.eval()
    lease_arch_grad(
        explainer, audience, LOSS, train, val, train[0], delta, EXPL,
        mode=mode, e_step=e_step, w_step=w_step,
    )  # fmt: skip
    assert not audience.training and explainer.training
    after = {n: b for m in (explainer, audience) for n, b in m.named_buffers()}
    for n, b in after.items():
        assert torch.equal(b, before[n]), n
    assert torch.equal(delta, saved)
    assert all(p.grad is None for m in (explainer, audience) for p in m.parameters())


def test_explanations_step_direction_and_audience_weighting() -> None:
    expl = Explanations(lr=1.0, direction=-1.0, eps=0.5, weight=3.0)
    d = torch.tensor([0.1, -0.2, 0.45])
    new, inside = expl.step(d, torch.tensor([1.0, 1.0, -1.0]))
    torch.testing.assert_close(new, torch.tensor([-0.5, -0.5, 0.5]))  # descent, then clipped
    assert inside.tolist() == [0.0, 0.0, 0.0]
    x = torch.ones(3)
    torch.testing.assert_close(
        expl.audience_input(x, torch.tensor([0.0, 0.25, -0.5])), torch.tensor([1.0, 1.75, 4.0])
    )
    assert images(1).shape == (6, 3, 8, 8)
