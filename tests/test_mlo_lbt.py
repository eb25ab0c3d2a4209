"""LBT's hypergradient (mlonas.mlo.lbt) against exact autograd and finite differences, float64.

On a smooth teacher supernet and a smooth student (softplus, average pooling) the
three-level unrolled objective O(A) = L(W'(A), A, val) + gamma L(V'(p(W'(A))), val) is
infinitely differentiable, so:

- ``exact`` must match a central difference of O computed from scratch with
  ``torch.func.functional_call`` (nothing of mlonas.mlo), for the full objective and for
  the student term alone;
- ``finite_difference`` must match ``exact`` (cosine >= 0.99), full and student term;
- gamma = 0 gives exactly DARTS-2nd's gradient, lambda = 0 makes the student term exactly
  zero (the student no longer depends on the teacher), first order is DARTS-1st's;
- no mode moves BatchNorm statistics or leaves gradients on the models.
"""

from __future__ import annotations

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
from torch.func import functional_call

from mlonas.mlo import darts_arch_grad
from mlonas.mlo.lbt import lbt_arch_grad

LAMBDA = 0.7
GAMMA = 1.3


def models():
    teacher, student = tiny_net(), tiny_audience()
    return teacher, student, momentum_step(teacher, lr=0.2), momentum_step(student, lr=0.3, seed=4)


def lbt(mode: str, *, lam: float = LAMBDA, gamma: float = GAMMA, **kw):
    teacher, student, t_step, s_step = models()
    train, val = batches()
    return lbt_arch_grad(
        teacher, student, LOSS, train, val, images(9), lam=lam, gamma=gamma, mode=mode,
        t_step=t_step, s_step=s_step, **kw,
    )  # fmt: skip


def sgd(weights, grads, step):
    """One SGD-with-momentum step, from the step's recorded hyperparameters and buffers:
    w - lr (mu m + g + wd w)."""
    return [
        w - step.lr * (g + step.weight_decay * w + step.momentum * m)
        for w, g, m in zip(weights, grads, step.momentum_buffers, strict=True)
    ]


def forward(model, names, tensors, x):
    """``model`` in training mode with ``tensors`` substituted, on copies of its buffers."""
    state = dict(zip(names, tensors, strict=True))
    state |= {n: b.clone() for n, b in model.named_buffers()}
    return functional_call(model.train(), state, (x,))


def objective(teacher, student, alphas, frozen, t_step, s_step, student_only) -> float:
    """O(A) from scratch; the pseudo-labelling forward uses the base point's architecture
    ``frozen`` (the chain A -> W' -> p -> V')."""
    (x, y), (xv, yv) = batches()
    u = images(9)
    arch = {id(a) for a in teacher.arch_parameters()}
    t_named = [(n, p) for n, p in teacher.named_parameters() if id(p) not in arch]
    a_names = [n for n, p in teacher.named_parameters() if id(p) in arch]
    names = [n for n, _ in t_named] + a_names
    w = [p.detach().clone().requires_grad_(True) for _, p in t_named]
    g = torch.autograd.grad(LOSS(forward(teacher, names, [*w, *alphas], x), y), w)
    w1 = [t.detach() for t in sgd(w, g, t_step)]
    with torch.no_grad():
        teacher_val = LOSS(forward(teacher, names, [*w1, *alphas], xv), yv)
        p = torch.softmax(forward(teacher, names, [*w1, *frozen], u), dim=1)
    s_names = [n for n, _ in student.named_parameters()]
    v = [q.detach().clone().requires_grad_(True) for q in student.parameters()]
    log_q = torch.log_softmax(forward(student, s_names, v, u), dim=1)
    o = LOSS(forward(student, s_names, v, x), y) - LAMBDA * (p * log_q).sum(1).mean()
    v1 = sgd(v, torch.autograd.grad(o, v), s_step)
    with torch.no_grad():
        student_val = LOSS(forward(student, s_names, v1, xv), yv)
    total = GAMMA * student_val if student_only else teacher_val + GAMMA * student_val
    return float(total)


@pytest.mark.parametrize("student_only", [False, True])
def test_exact_matches_finite_difference_of_the_three_level_objective(student_only: bool) -> None:
    teacher, student, t_step, s_step = models()
    train, val = batches()
    res = lbt_arch_grad(
        teacher, student, LOSS, train, val, images(9), lam=LAMBDA, gamma=GAMMA, mode="exact",
        t_step=t_step, s_step=s_step, student_only=student_only,
    )  # fmt: skip
    frozen = [a.detach().clone() for a in teacher.arch_parameters()]
    g = torch.Generator().manual_seed(11)
    dirs = [torch.randn(a.shape, generator=g, dtype=torch.float64) for a in frozen]
    h = 1e-4

    def at(t: float) -> float:
        moved = [a + t * d for a, d in zip(frozen, dirs, strict=True)]
        return objective(teacher, student, moved, frozen, t_step, s_step, student_only)

    numeric = (at(h) - at(-h)) / (2 * h)
    analytic = float(flat(res.grads) @ flat(dirs))
    assert analytic != 0.0
    assert numeric == pytest.approx(analytic, rel=1e-6)


def test_finite_difference_agrees_with_exact_full_and_student_term() -> None:
    e, f = lbt("exact"), lbt("finite_difference")
    assert cosine(f.grads, e.grads) >= 0.99
    assert rel_err(f.grads, e.grads) < 0.05
    es, fs = lbt("exact", student_only=True), lbt("finite_difference", student_only=True)
    assert cosine(fs.grads, es.grads) >= 0.99
    assert rel_err(fs.grads, es.grads) < 0.05
    # the student term is not negligible here, so the check above means something
    assert flat(es.grads).norm() > 1e-3 * flat(e.grads).norm()
    assert float(f.teacher_val_loss) == pytest.approx(float(e.teacher_val_loss))
    assert float(f.student_val_loss) == pytest.approx(float(e.student_val_loss))


@pytest.mark.parametrize("mode", ["finite_difference", "exact"])
def test_gamma_zero_is_darts_second_order(mode: str) -> None:
    res = lbt(mode, gamma=0.0)
    teacher, _, t_step, _ = models()
    train, val = batches()
    darts, loss = darts_arch_grad(teacher, LOSS, train, val, mode=mode, step=t_step)
    for a, b in zip(res.grads, darts, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
    assert float(res.teacher_val_loss) == float(loss)


@pytest.mark.parametrize("mode", ["finite_difference", "exact"])
def test_zero_lambda_cuts_the_student_off_the_teacher(mode: str) -> None:
    student = lbt(mode, lam=0.0, student_only=True)
    assert float(flat(student.grads).abs().max()) == 0.0
    full = lbt(mode, lam=0.0)
    teacher, _, t_step, _ = models()
    train, val = batches()
    darts, _ = darts_arch_grad(teacher, LOSS, train, val, mode=mode, step=t_step)
    for a, b in zip(full.grads, darts, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)


def test_first_order_is_darts_first_order() -> None:
    res = lbt("first_order")
    teacher, *_ = models()
    train, val = batches()
    darts, loss = darts_arch_grad(teacher, LOSS, train, val, mode="first_order")
    for a, b in zip(res.grads, darts, strict=True):
        assert torch.equal(a, b)
    assert float(res.teacher_val_loss) == float(loss) and res.student_val_loss is None
    assert float(flat(lbt("first_order", student_only=True).grads).abs().max()) == 0.0


@pytest.mark.parametrize("mode", ["first_order", "finite_difference", "exact"])
def test_no_mode_touches_statistics_or_gradients(mode: str) -> None:
    teacher, student, t_step, s_step = models()
    train, val = batches()
    before = [{k: b.clone() for k, b in n.named_buffers()} for n in (teacher, student)]
    weights = [[p.detach().clone() for p in n.parameters()] for n in (teacher, student)]
    lbt_arch_grad(
        teacher, student, LOSS, train, val, images(9), lam=LAMBDA, gamma=GAMMA, mode=mode,
        t_step=t_step, s_step=s_step,
    )  # fmt: skip
    for n, b, w in zip((teacher, student), before, weights, strict=True):
        for k, t in n.named_buffers():
            assert torch.equal(t, b[k]), k
        assert all(p.grad is None for p in n.parameters())
        assert all(torch.equal(p, q) for p, q in zip(n.parameters(), w, strict=True))
