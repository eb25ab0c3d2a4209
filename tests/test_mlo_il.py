"""Interleaving learning's hypergradient (mlonas.mlo.il) against autograd, float64.

Tiny smooth supernet with 6 classes; heads over the class groups of the scheme
(K = 2: {0-2}, {3-5}; K = 3: {0, 1}, {2, 3}, {4, 5}), stages = R rounds of the K heads on
one batch (a one-class head would have a cross-entropy of 0, so 3 classes are too few):

- ``exact`` equals a central difference of the S-step objective written from scratch with
  ``torch.func.functional_call`` (no mlonas.mlo), for (K, R) = (2, 1), (2, 2), (3, 1);
- ``finite_difference`` agrees with ``exact`` (cosine >= 0.99), closer as eps shrinks;
- K = 1, R = 1 is DARTS-2nd (both unrolled modes) and first order is the sum of the
  heads' direct terms;
- no BN statistics or ``.grad`` move; the order of the stages matters; a stage's gradient
  reaches only its own head's classifier rows.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_nets import LOSS, batches, cosine, flat, momentum_step, rel_err, tiny_net
from torch.func import functional_call

from mlonas.errors import MlonasError
from mlonas.mlo import darts_arch_grad
from mlonas.mlo.il import il_arch_grad
from mlonas.search.il import HeadLoss, class_groups, head_batches

LR = 0.2
C = 6  # classes
BOUNDS = {2: [(0, 3), (3, 6)], 3: [(0, 2), (2, 4), (4, 6)]}  # the groups, written out


def six_class_batches():
    """12 training and 12 validation images, every class twice in each."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(12, 3, 8, 8, generator=g, dtype=torch.float64)
    xv = torch.randn(12, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.arange(12) % C
    return (x, y), (xv, y[torch.randperm(12, generator=g)])


def net6(seed: int = 0):
    return tiny_net(seed=seed, num_classes=C)


def stages_of(net, k: int, rounds: int = 1, order: list[int] | None = None):
    """(stages, vals) of the scheme's heads on the tiny batches."""
    train, val = six_class_batches()
    groups = class_groups(C, k)
    heads = [st for st in head_batches(*train, groups) if st is not None]
    if order is not None:
        heads = [heads[i] for i in order]
    vals = [st for st in head_batches(*val, groups) if st is not None]
    assert len(heads) == k and len(vals) == k
    return heads * rounds, vals


def il(mode: str, k: int = 2, rounds: int = 1, eps: float = 0.01, order=None, seed: int = 0):
    net = net6(seed)
    stages, vals = stages_of(net, k, rounds, order)
    step = momentum_step(net, lr=LR)
    return net, il_arch_grad(net, stages, vals, mode=mode, step=step, eps=eps), step


def scratch_objective(net, alphas, k: int, rounds: int, step) -> float:
    """sum_k L_k^val(W_S) from scratch: R rounds of K stages of
    W <- W - lr (mu m + grad + wd W), each head's CE on its own group's examples."""
    arch_ids = {id(a) for a in net.arch_parameters()}
    names = [n for n, p in net.named_parameters() if id(p) not in arch_ids]
    a_names = [n for n, p in net.named_parameters() if id(p) in arch_ids]
    w = {n: p.detach().clone() for n, p in net.named_parameters() if id(p) not in arch_ids}
    a = dict(zip(a_names, alphas, strict=True))
    bufs = dict(zip(names, step.momentum_buffers, strict=True))
    train, val = six_class_batches()
    bounds = BOUNDS[k]
    net.train()

    def head_loss(params, x, y, lo, hi) -> torch.Tensor:
        sel = (y >= lo) & (y < hi)
        buffers = {n: b.clone() for n, b in net.named_buffers()}
        logits = functional_call(net, {**params, **a, **buffers}, (x[sel],))
        return F.cross_entropy(logits[:, lo:hi], y[sel] - lo)

    for _ in range(rounds):
        for lo, hi in bounds:
            req = {n: t.clone().requires_grad_(True) for n, t in w.items()}
            g = torch.autograd.grad(head_loss(req, *train, lo, hi), list(req.values()))
            w = {
                n: t - step.lr * (step.momentum * bufs[n] + gi + step.weight_decay * t)
                for (n, t), gi in zip(w.items(), g, strict=True)
            }
    with torch.no_grad():
        return float(sum(head_loss(w, *val, lo, hi) for lo, hi in bounds))


@pytest.mark.parametrize(("k", "rounds"), [(2, 1), (2, 2), (3, 1)])
def test_exact_matches_central_difference_of_the_scratch_objective(k: int, rounds: int) -> None:
    net, res, step = il("exact", k, rounds)
    base = [a.detach().clone() for a in net.arch_parameters()]
    g = torch.Generator().manual_seed(11)
    dirs = [torch.randn(a.shape, generator=g, dtype=torch.float64) for a in base]
    h = 1e-5  # truncation ~h^2: 1e-4 leaves ~1e-6 relative at K = 3

    def at(t: float) -> float:
        return scratch_objective(
            net, [a + t * d for a, d in zip(base, dirs, strict=True)], k, rounds, step
        )

    numeric = (at(h) - at(-h)) / (2 * h)
    analytic = float(flat(res.grads) @ flat(dirs))
    assert numeric == pytest.approx(analytic, rel=1e-6)
    assert float(res.val_loss) == pytest.approx(at(0.0), rel=1e-12)


@pytest.mark.parametrize(("k", "rounds"), [(2, 1), (2, 2), (3, 1)])
def test_finite_difference_agrees_with_exact(k: int, rounds: int) -> None:
    _, exact, _ = il("exact", k, rounds)
    _, fd, _ = il("finite_difference", k, rounds)
    assert cosine(fd.grads, exact.grads) >= 0.99
    assert float(fd.val_loss) == pytest.approx(float(exact.val_loss), rel=1e-12)
    assert flat(exact.grads).norm() > 0


def test_finite_difference_error_shrinks_with_eps() -> None:
    _, exact, _ = il("exact", 2, 2)
    errors = [rel_err(il("finite_difference", 2, 2, eps=eps)[1].grads, exact.grads)
              for eps in (1e-1, 1e-2, 1e-3)]  # fmt: skip
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-4


@pytest.mark.parametrize("mode", ["finite_difference", "exact"])
def test_one_model_one_round_is_darts_second_order(mode: str) -> None:
    net = tiny_net()
    step = momentum_step(net, lr=LR)
    train, val = batches()
    (stage,) = head_batches(*train, class_groups(3, 1))
    (val_term,) = head_batches(*val, class_groups(3, 1))
    assert stage is not None and val_term is not None
    res = il_arch_grad(net, [stage], [val_term], mode=mode, step=step)
    darts, darts_loss = darts_arch_grad(net, LOSS, train, val, mode=mode, step=step)
    for a, b in zip(res.grads, darts, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    assert float(res.val_loss) == pytest.approx(float(darts_loss), rel=1e-12)


def test_first_order_is_the_sum_of_the_heads_direct_terms() -> None:
    net = net6()
    stages, vals = stages_of(net, 2)
    res = il_arch_grad(net, stages, vals, mode="first_order")
    alphas = net.arch_parameters()
    direct = [torch.zeros_like(a) for a in alphas]
    for loss_fn, (x, y) in vals:  # the heads' validation losses at the current weights
        net.train()
        buffers = [b.clone() for b in net.buffers()]
        grads = torch.autograd.grad(loss_fn(net(x), y), alphas)
        with torch.no_grad():  # undo the forward's running-statistics update
            for b, saved in zip(net.buffers(), buffers, strict=True):
                b.copy_(saved)
        direct = [d + g for d, g in zip(direct, grads, strict=True)]
    for a, b in zip(res.grads, direct, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("mode", ["first_order", "finite_difference", "exact"])
def test_no_mode_touches_statistics_or_gradients(mode: str) -> None:
    net = net6()
    stages, vals = stages_of(net, 2, rounds=2)
    step = momentum_step(net, lr=LR)
    before = {k: b.clone() for k, b in net.named_buffers()}
    weights = [p.detach().clone() for p in net.parameters()]
    il_arch_grad(net, stages, vals, mode=mode, step=step)
    for k, t in net.named_buffers():
        assert torch.equal(t, before[k]), k
    for p, w in zip(net.parameters(), weights, strict=True):
        assert p.grad is None and torch.equal(p.detach(), w)


@pytest.mark.parametrize("mode", ["finite_difference", "exact"])
def test_the_order_of_the_stages_matters(mode: str) -> None:
    _, ab, _ = il(mode, 2)
    _, ba, _ = il(mode, 2, order=[1, 0])
    assert rel_err(ab.grads, ba.grads) > 1e-3
    # first order ignores the stages: the same gradient either way
    _, fa, _ = il("first_order", 2)
    _, fb, _ = il("first_order", 2, order=[1, 0])
    assert all(torch.equal(a, b) for a, b in zip(fa.grads, fb.grads, strict=True))


def test_a_stage_gradient_reaches_only_its_heads_classifier_rows() -> None:
    net = net6()
    train, _ = six_class_batches()
    groups = class_groups(C, 2)
    for group, stage in zip(groups, head_batches(*train, groups), strict=True):
        assert stage is not None
        loss_fn, (x, y) = stage
        assert isinstance(loss_fn, HeadLoss) and (loss_fn.lo, loss_fn.hi) == (
            group.start,
            group.stop,
        )
        grads = torch.autograd.grad(
            loss_fn(net(x), y), [net.classifier.weight, net.classifier.bias]
        )
        rows = torch.zeros(C, dtype=torch.bool)
        rows[group.start : group.stop] = True
        for g in grads:
            assert float(g[~rows].abs().max()) == 0.0
            assert float(g[rows].abs().min()) > 0.0
    # apart from weight decay: a virtual step moves the other rows by lr * wd * w only
    step = momentum_step(net, lr=LR)
    nomom = type(step)(step.lr, 0.0, step.weight_decay)
    loss_fn, (x, y) = head_batches(*train, groups)[0]  # type: ignore[misc]
    w = net.classifier.weight.detach()
    (g,) = torch.autograd.grad(loss_fn(net(x), y), [net.classifier.weight])
    (moved,) = nomom.apply([w], [g])
    torch.testing.assert_close(moved[3:], w[3:] * (1 - step.lr * step.weight_decay))
    assert not torch.allclose(moved[:3], w[:3] * (1 - step.lr * step.weight_decay))


def test_groups_are_contiguous_and_checked() -> None:
    assert class_groups(10, 2) == [range(0, 5), range(5, 10)]
    assert class_groups(10, 3) == [range(0, 3), range(3, 6), range(6, 10)]
    assert class_groups(6, 3) == [range(lo, hi) for lo, hi in BOUNDS[3]]
    assert class_groups(3, 1) == [range(0, 3)]
    with pytest.raises(MlonasError, match=r"schemes\.il\.models: 2 models need class groups"):
        class_groups(3, 2)  # {0} would be a one-class head
    # a group with no example in the batch has no stage
    x = torch.zeros(2, 3, 8, 8)
    stages = head_batches(x, torch.tensor([3, 5]), class_groups(C, 2))
    assert stages[0] is None and stages[1] is not None
    assert stages[1][1][1].tolist() == [0, 2]  # remapped labels
