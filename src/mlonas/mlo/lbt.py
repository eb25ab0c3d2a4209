"""The LBT hypergradient (learning by teaching; Sheth, Jiang & Xie, arXiv 2103.07009).

INTERPRETATION: the paper's method section could not be read (docs/lbt.md). Its abstract
fixes three stages: the teacher learns, the teacher teaches a student with pseudo-labels,
and the teacher re-learns from how the student does on validation data; the TechRxiv
version says teacher *and* student are validated. In LeaSE/SGL style, with the teacher a
supernet (architecture A, weights W) and the student a fixed-architecture network (V):

1. W'  = W - xi_w (grad_W L(W, A, D^tr) + ...)                              (teacher)
2. p   = softmax(f(u; W', A)), soft pseudo-labels of an unlabeled batch u
   V'  = V - xi_v (grad_V [L(V, D^tr) + lambda mean_i CE(f(u_i; V), p_i)] + ...)  (student)
3. grad_A [L(W', A, D^val) + gamma L(V', D^val)]

The student term's chain is A -> W' -> p -> V'. As in SGL (mlonas.mlo.sgl), the
architecture inside the pseudo-labelling forward pass is held constant in every mode: A
reaches p only through W' (a path of the same order is left out; docs/fidelity.md).

``finite_difference`` (each mixed second derivative by a central difference with radius
eps / ||vector||, as DARTS Eq. 8):

    v_W  = grad_W' L(W', A, D^val)
    u_V  = grad_V' L(V', D^val)
    D    = (dV'/dp)^T u_V, the adjoint of the pseudo-labels (mlo.core.pseudo_label_adjoint)
    u_W  = grad_W' <p(W'), D>                        (one backward pass through p)
    grad = grad_A L(W', A, D^val) - xi_w grad^2_{A,W} L(W, A, D^tr) (v_W + gamma u_W)

The last product is the one DARTS-2nd computes for its own term; by linearity the two
terms share one central difference (as LeaSE's do), so gamma = 0 gives exactly the
DARTS-2nd gradient. ``exact`` differentiates the same unrolled steps with autograd;
``first_order`` treats W', V' as constants, which leaves grad_A L(W, A, D^val): the student
term vanishes and LBT-1st is DARTS-1st (as LeaSE-1st is).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mlonas.mlo.core import (
    Batch,
    Functional,
    LossFn,
    Tensors,
    VirtualStep,
    pseudo_label_adjoint,
    requiring_grad,
    soft_cross_entropy,
)
from mlonas.mlo.darts import check_mode, first_order_term, unroll, unroll_graph, with_implicit_term


@dataclass
class LbtGrad:
    """Architecture gradient (one tensor per teacher alpha) and the losses it came from."""

    grads: list[torch.Tensor]
    teacher_val_loss: torch.Tensor
    student_val_loss: torch.Tensor | None


def student_objective(
    f: Functional,
    weights: Tensors,
    train_batch: Batch,
    unlabeled: torch.Tensor,
    pseudo: torch.Tensor,
    lam: float,
) -> torch.Tensor:
    """L(V, D^tr) + lambda mean_i CE(f(u_i; V), p_i): what the student's step descends (the
    real step in mlonas.search.lbt and the virtual one here)."""
    loss = f.loss(weights, [], train_batch)
    return loss + lam * soft_cross_entropy(f.logits(weights, [], unlabeled), pseudo).mean()


def lbt_arch_grad(
    teacher: nn.Module,
    student: nn.Module,
    loss_fn: LossFn,
    train_batch: Batch,
    val_batch: Batch,
    unlabeled: torch.Tensor,
    *,
    lam: float,
    gamma: float = 1.0,
    mode: str = "finite_difference",
    t_step: VirtualStep | None = None,
    s_step: VirtualStep | None = None,
    eps: float = 0.01,
    student_only: bool = False,
) -> LbtGrad:
    """grad_A [L(W', A, D^val) + gamma L(V', D^val)] at the models' current weights.

    ``train_batch`` trains both teacher and student, ``unlabeled`` is the batch u the
    teacher pseudo-labels, ``val_batch`` validates both. ``t_step`` / ``s_step`` replay the
    teacher's / student's optimizer (required by the unrolled modes). ``student_only``
    returns gamma * grad_A L(V', D^val) alone (for tests and diagnostics).
    """
    check_mode(mode, t_step)
    if mode != "first_order":
        check_mode(mode, s_step)
    ft, fs = Functional(teacher, loss_fn), Functional(student, loss_fn)
    alphas = [a.detach().requires_grad_(True) for a in ft.alphas]
    a_const = [a.detach() for a in ft.alphas]
    if mode == "first_order":
        grads, lt = first_order_term(ft, alphas, val_batch)
        if student_only:
            grads = [torch.zeros_like(g) for g in grads]
        return LbtGrad(grads, lt, None)
    assert t_step is not None and s_step is not None
    if mode == "exact":
        w1 = unroll_graph(ft, alphas, train_batch, t_step)
        pseudo = torch.softmax(ft.logits(w1, a_const, unlabeled), dim=1)
        s_req = requiring_grad(fs.weights)
        o_s = student_objective(fs, s_req, train_batch, unlabeled, pseudo, lam)
        g_s = torch.autograd.grad(o_s, s_req, create_graph=True)
        ls = fs.loss(s_step.apply(s_req, g_s), [], val_batch)
        lt = ft.loss(w1, alphas, val_batch)
        total = gamma * ls if student_only else lt + gamma * ls
        return LbtGrad(list(torch.autograd.grad(total, alphas)), lt.detach(), ls.detach())

    # -- finite_difference ---------------------------------------------------------------
    w1, lt, direct, v_w = unroll(ft, alphas, train_batch, val_batch, t_step)
    # V' (a constant from here on), from the pseudo-labels of the unrolled teacher
    with torch.no_grad():
        pseudo = torch.softmax(ft.logits(w1, a_const, unlabeled), dim=1)
    v0 = fs.detached_weights()
    v_tmp = requiring_grad(v0)
    g_s = torch.autograd.grad(
        student_objective(fs, v_tmp, train_batch, unlabeled, pseudo, lam), v_tmp
    )
    v1 = requiring_grad(s_step.apply(v0, g_s))
    ls = fs.loss(v1, [], val_batch)
    u_v = list(torch.autograd.grad(ls, v1))
    # p -> V' (the adjoint D), then W' -> p by one backward pass through p(W')
    adjoint = pseudo_label_adjoint(fs, v0, [], unlabeled, u_v, lam=lam, lr=s_step.lr, eps=eps)
    u_w: list[torch.Tensor] | None = None
    if adjoint is not None:
        p_w = torch.softmax(ft.logits(w1, a_const, unlabeled), dim=1)
        u_w = list(torch.autograd.grad((p_w * adjoint).sum(), w1))
    # the last link, A -> W', one central difference shared with DARTS' own term
    grads = with_implicit_term(
        ft, alphas, train_batch, t_step, direct, v_w, u_w, gamma=gamma, eps=eps,
        extra_only=student_only,
    )  # fmt: skip
    return LbtGrad(grads, lt, ls.detach())
