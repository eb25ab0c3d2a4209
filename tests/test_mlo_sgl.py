"""SGL's hypergradient (Eqs. 7-11) against exact autograd and finite differences, float64.

Tiny smooth learners (softplus, average pooling), each two supernets sharing one
architecture, so the three-level unrolled objective sum_j L(W'_j, A_j, val) is smooth:

- ``exact`` matches a central difference of that objective computed from scratch;
- ``finite_difference`` matches ``exact`` (cosine >= 0.99) for the whole gradient, the own
  terms (Eqs. 8-9) and the cross-learner terms (Eqs. 10-11) separately, for K = 2 and 3;
- lambda = 0 decouples the learners: the cross terms vanish and each learner's gradient is
  DARTS-2nd's on its W-network; first order is DARTS-1st's on each W-network.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_nets import LOSS, batches, cosine, flat, images, momentum_step, rel_err, tiny_net

from mlonas.mlo import darts_arch_grad
from mlonas.mlo.sgl import Learner, sgl_arch_grad
from mlonas.space.supernet import Supernet

LAMBDA = 0.5


def group(k: int = 2) -> list[Learner]:
    """Learners with different random initializations; V_k and W_k share A_k."""
    out = []
    for i in range(k):
        w = tiny_net(seed=10 + i)
        torch.manual_seed(20 + i)
        v = Supernet(w.spec).double().tie_architecture(w)
        out.append(Learner(v, w))
    return out


def steps(learners: list[Learner]):
    v = [momentum_step(lr.v_net, lr=0.2, seed=30 + i) for i, lr in enumerate(learners)]
    w = [momentum_step(lr.w_net, lr=0.2, seed=40 + i) for i, lr in enumerate(learners)]
    return v, w


def sgl(mode: str, k: int = 2, lam: float = LAMBDA):
    learners = group(k)
    train, val = batches()
    v_steps, w_steps = steps(learners)
    return sgl_arch_grad(
        learners, LOSS, train, val, images(9), lam=lam, mode=mode, v_steps=v_steps,
        w_steps=w_steps,
    )  # fmt: skip


def objective(learners, frozen, train, val, u, v_steps, w_steps, lam) -> list[float]:
    """[L(W'_j, A_j, val) for each j] from scratch; pseudo-labelling uses the base-point
    alphas (the paper's chain: A_k reaches the pseudo-labels only through V'_k)."""
    v1 = []
    for i, lr in enumerate(learners):
        v = copy.deepcopy(lr.v_net).train()
        g = torch.autograd.grad(LOSS(v(train[0]), train[1]), v.weight_parameters())
        with torch.no_grad():
            new = v_steps[i].apply([p.detach() for p in v.weight_parameters()], g)
            for p, n in zip(v.weight_parameters(), new, strict=True):
                p.copy_(n)
            for a, f in zip(v.arch_parameters(), frozen[i], strict=True):
                a.copy_(f)
        v1.append(v)
    with torch.no_grad():
        pl = [torch.softmax(v(u), dim=1) for v in v1]
    losses = []
    for i, lr in enumerate(learners):
        w = copy.deepcopy(lr.w_net).train()
        loss = LOSS(w(train[0]), train[1])
        logits = w(u)
        for j, p in enumerate(pl):
            if j != i:
                loss = loss - lam * (p * torch.log_softmax(logits, dim=1)).sum(1).mean()
        g = torch.autograd.grad(loss, w.weight_parameters())
        with torch.no_grad():
            new = w_steps[i].apply([p.detach() for p in w.weight_parameters()], g)
            for p, n in zip(w.weight_parameters(), new, strict=True):
                p.copy_(n)
            losses.append(float(LOSS(w(val[0]), val[1])))
    return losses


def test_exact_matches_finite_difference_of_the_group_objective() -> None:
    learners = group(2)
    train, val = batches()
    u = images(9)
    v_steps, w_steps = steps(learners)
    res = sgl_arch_grad(
        learners, LOSS, train, val, u, lam=LAMBDA, mode="exact", v_steps=v_steps,
        w_steps=w_steps,
    )  # fmt: skip
    frozen = [[a.detach().clone() for a in lr.w_net.arch_parameters()] for lr in learners]
    g = torch.Generator().manual_seed(11)
    dirs = [[torch.randn(a.shape, generator=g, dtype=torch.float64) for a in f] for f in frozen]
    h = 1e-4

    def at(t: float, only: int | None = None) -> list[float]:
        moved = copy.deepcopy(learners)  # deepcopy keeps each learner's V/W tie
        with torch.no_grad():
            for i, (lr, ds) in enumerate(zip(moved, dirs, strict=True)):
                for a, d in zip(lr.w_net.arch_parameters(), ds, strict=True):
                    a.add_(t * d if only in (None, i) else 0 * d)
        assert moved[0].v_net.alpha_normal is moved[0].w_net.alpha_normal
        return objective(moved, frozen, train, val, u, v_steps, w_steps, LAMBDA)

    numeric = (sum(at(h)) - sum(at(-h))) / (2 * h)
    analytic = sum(float(flat(gk) @ flat(dk)) for gk, dk in zip(res.grads, dirs, strict=True))
    assert numeric == pytest.approx(analytic, rel=1e-6)
    # the cross term alone (Eqs. 10-11): moving learner 0's architecture changes learner
    # 1's validation loss only through learner 0's pseudo-labels
    cross = (at(h, only=0)[1] - at(-h, only=0)[1]) / (2 * h)
    assert cross == pytest.approx(float(flat(res.cross[0]) @ flat(dirs[0])), rel=1e-4)
    assert cross != 0.0


@pytest.mark.parametrize("k", [2, 3])
def test_finite_difference_agrees_with_exact_own_and_cross_terms(k: int) -> None:
    e, f = sgl("exact", k), sgl("finite_difference", k)
    for i in range(k):
        assert cosine(f.grads[i], e.grads[i]) >= 0.99
        assert cosine(f.own[i], e.own[i]) >= 0.99
        assert cosine(f.cross[i], e.cross[i]) >= 0.99
        assert rel_err(f.cross[i], e.cross[i]) < 1e-2
        assert float(f.val_losses[i]) == pytest.approx(float(e.val_losses[i]))
        assert flat(e.cross[i]).norm() > 1e-6 * flat(e.own[i]).norm()


@pytest.mark.parametrize("mode", ["finite_difference", "exact"])
def test_zero_lambda_decouples_the_learners_into_darts_second_order(mode: str) -> None:
    learners = group(2)
    train, val = batches()
    v_steps, w_steps = steps(learners)
    res = sgl_arch_grad(
        learners, LOSS, train, val, images(9), lam=0.0, mode=mode, v_steps=v_steps,
        w_steps=w_steps,
    )  # fmt: skip
    for i, lr in enumerate(learners):
        assert float(flat(res.cross[i]).abs().max()) == 0.0
        darts, _ = darts_arch_grad(lr.w_net, LOSS, train, val, mode=mode, step=w_steps[i])
        for a, b in zip(res.grads[i], darts, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_first_order_is_darts_first_order_per_learner() -> None:
    learners = group(2)
    train, val = batches()
    res = sgl_arch_grad(learners, LOSS, train, val, images(9), lam=LAMBDA, mode="first_order")
    for i, lr in enumerate(learners):
        darts, _ = darts_arch_grad(lr.w_net, LOSS, train, val, mode="first_order")
        for a, b in zip(res.grads[i], darts, strict=True):
            assert torch.equal(a, b)
        assert float(flat(res.cross[i]).abs().max()) == 0.0


@pytest.mark.parametrize("mode", ["first_order", "finite_difference", "exact"])
def test_no_mode_touches_statistics_or_gradients(mode: str) -> None:
    learners = group(2)
    train, val = batches()
    v_steps, w_steps = steps(learners)
    nets = [n for lr in learners for n in (lr.v_net, lr.w_net)]
    before = [{k: b.clone() for k, b in n.named_buffers()} for n in nets]
    sgl_arch_grad(
        learners, LOSS, train, val, images(9), lam=LAMBDA, mode=mode, v_steps=v_steps,
        w_steps=w_steps,
    )  # fmt: skip
    for n, b in zip(nets, before, strict=True):
        for k, t in n.named_buffers():
            assert torch.equal(t, b[k]), k
        assert all(p.grad is None for p in n.parameters())


def test_tied_architecture_is_shared_and_checked() -> None:
    w = tiny_net()
    v = Supernet(w.spec).double().tie_architecture(w)
    assert v.alpha_reduce is w.alpha_reduce
    assert {id(p) for p in v.weight_parameters()}.isdisjoint(map(id, w.weight_parameters()))
    other = Supernet(type(w.spec)(init_channels=4, num_classes=3, layers=3, steps=2))
    with pytest.raises(ValueError, match="differently shaped"):
        other.tie_architecture(w)
