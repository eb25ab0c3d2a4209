"""The SGL hypergradient (small-group learning; Du & Xie 2021, Eqs. 5-11).

K learners; learner k has an architecture A_k and two weight sets V_k, W_k (two supernets
sharing A_k's tensors). One unrolled step per level, on a labeled training batch (x, y),
an unlabeled batch u and a validation batch:

1. V'_k = V_k - xi_v (grad L(V_k, A_k, D^tr) + ...)                               (Eq. 5)
2. p_k  = softmax(f(u; V'_k)), learner k's soft pseudo-labels of u;
   O_k  = L(W_k, A_k, D^tr) + lambda sum_{j != k} CE(f(u; W_k, A_k), p_j)
   W'_k = W_k - xi_w (grad_W O_k + ...)                                             (Eq. 6)
3. A_k descends grad_{A_k} sum_j L(W'_j, A_j, D^val)                               (Eq. 7)

The gradient of A_k has its *own* term (Eqs. 8-9: A_k -> W'_k, and the direct term) and
*cross* terms (Eqs. 10-11: A_k -> V'_k -> p_k -> W'_j for j != k). As the paper writes
D_k^pl(D^u, V'_k), the pseudo-labels depend on A_k only through V'_k: the architecture in
the pseudo-labelling forward pass is held constant in every mode.

``finite_difference`` (each mixed second derivative by a central difference with radius
eps / ||vector||, Eq. 9):

    v_j   = grad_{W'_j} L(W'_j, A_j, D^val)
    own_k = grad_{A_k} L(W'_k, A_k, D^val) - xi_w grad^2_{A_k,W_k} O_k v_k          (Eq. 9)
    U_k   = sum_{j != k} -xi_w grad_{V'_k} <grad_{W_j} O_j(W_j, p_k(V'_k)), v_j>      (Eq. 10)
    cross_k = -xi_v grad^2_{A_k,V_k} L(V_k, A_k, D^tr) U_k                            (Eq. 11)

The inner product of Eq. 10 is a central difference in W_j; because CE(., p) is linear in
p, the difference of the two perturbed cross-entropies is a fixed tensor times p_k, so one
backward pass through p_k(V'_k) per learner collects every j's contribution.
``exact`` differentiates the same unrolled steps with autograd; ``first_order`` treats
V', W' as constants: grad_{A_k} L(W_k, A_k, D^val) (cross terms vanish).
With lambda = 0 the learners decouple: the cross terms are zero and each own term is the
DARTS-2nd gradient of learner k's W-network alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mlonas.mlo.core import (
    Batch,
    Functional,
    LossFn,
    VirtualStep,
    central_difference,
    pseudo_label_adjoint,
    requiring_grad,
    soft_cross_entropy,
)
from mlonas.mlo.darts import check_mode, implicit_term


@dataclass(frozen=True)
class Learner:
    """One member of the group: two supernets that share the architecture tensors."""

    v_net: nn.Module
    w_net: nn.Module


@dataclass
class SglGrad:
    """Per learner: the architecture gradient (own + cross), its parts and val loss."""

    grads: list[list[torch.Tensor]]
    own: list[list[torch.Tensor]]
    cross: list[list[torch.Tensor]]
    val_losses: list[torch.Tensor]


def pseudo_label_loss(logits: torch.Tensor, targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum over the given pseudo-label sets of the mean soft cross-entropy on u."""
    return sum(soft_cross_entropy(logits, p).mean() for p in targets)  # type: ignore[return-value]


def sgl_arch_grad(
    learners: Sequence[Learner],
    loss_fn: LossFn,
    train_batch: Batch,
    val_batch: Batch,
    unlabeled: torch.Tensor,
    *,
    lam: float,
    mode: str = "first_order",
    v_steps: Sequence[VirtualStep] | None = None,
    w_steps: Sequence[VirtualStep] | None = None,
    eps: float = 0.01,
) -> SglGrad:
    """grad_{A_k} sum_j L(W'_j, A_j, D^val) for every learner k (Eq. 7)."""
    check_mode(mode, v_steps)
    if mode != "first_order":
        check_mode(mode, w_steps)
    K = len(learners)
    # f(.; V_k) and f(.; W_k, A_k) as functions of explicit weights; A_k as leaves
    v_nets = [Functional(learner.v_net, loss_fn) for learner in learners]
    w_nets = [Functional(learner.w_net, loss_fn) for learner in learners]
    arch = [[a.detach().requires_grad_(True) for a in f.alphas] for f in w_nets]
    arch_const = [[a.detach() for a in f.alphas] for f in w_nets]
    zeros = [[torch.zeros_like(a) for a in arch_k] for arch_k in arch]
    others = [[j for j in range(K) if j != k] for k in range(K)]

    def objective_w(
        k: int,
        w: Sequence[torch.Tensor],
        arch_k: Sequence[torch.Tensor],
        pseudo: list[torch.Tensor],
    ) -> torch.Tensor:
        """O_k^w: the W-step objective of learner k given every learner's pseudo-labels
        ``pseudo`` (p_j = f(u; V'_j), of which the others' are used)."""
        loss = w_nets[k].loss(w, arch_k, train_batch)
        return loss + lam * pseudo_label_loss(
            w_nets[k].logits(w, arch_k, unlabeled), [pseudo[j] for j in others[k]]
        )

    if mode == "first_order":
        losses = [
            w_nets[k].loss(w_nets[k].detached_weights(), arch[k], val_batch) for k in range(K)
        ]
        grads = [list(torch.autograd.grad(losses[k], arch[k])) for k in range(K)]
        return SglGrad(grads, grads, zeros, [loss.detach() for loss in losses])
    assert v_steps is not None and w_steps is not None

    if mode == "exact":
        v_prime = []
        for k in range(K):
            v_req = requiring_grad(v_nets[k].weights)
            g = torch.autograd.grad(
                v_nets[k].loss(v_req, arch[k], train_batch), v_req, create_graph=True
            )
            v_prime.append(v_steps[k].apply(v_req, g))
        pseudo = [
            torch.softmax(v_nets[k].logits(v_prime[k], arch_const[k], unlabeled), dim=1)
            for k in range(K)
        ]
        losses = []
        for k in range(K):
            w_req = requiring_grad(w_nets[k].weights)
            g = torch.autograd.grad(
                objective_w(k, w_req, arch[k], pseudo), w_req, create_graph=True
            )
            losses.append(w_nets[k].loss(w_steps[k].apply(w_req, g), arch[k], val_batch))
        flat = [a for arch_k in arch for a in arch_k]
        # grad_val[j][k] = grad_{A_k} L(W'_j, A_j, D^val)
        val_grads = [
            [
                torch.zeros_like(a) if g is None else g
                for g, a in zip(
                    torch.autograd.grad(losses[j], flat, retain_graph=True, allow_unused=True),
                    flat,
                    strict=True,
                )
            ]
            for j in range(K)
        ]
        n = len(arch[0])
        grad_val = [[list(val_grads[j][k * n : (k + 1) * n]) for k in range(K)] for j in range(K)]
        own = [grad_val[k][k] for k in range(K)]
        cross = [
            [
                sum((grad_val[j][k][i] for j in others[k]), torch.zeros_like(a))
                for i, a in enumerate(arch_k)
            ]
            for k, arch_k in enumerate(arch)
        ]
        grads = [[o + c for o, c in zip(own[k], cross[k], strict=True)] for k in range(K)]
        return SglGrad(grads, own, cross, [loss.detach() for loss in losses])

    # -- finite_difference ---------------------------------------------------------------
    v_now = [f.detached_weights() for f in v_nets]
    w_now = [f.detached_weights() for f in w_nets]
    v_prime = []
    for k in range(K):
        tmp = requiring_grad(v_now[k])
        g = torch.autograd.grad(v_nets[k].loss(tmp, arch[k], train_batch), tmp)
        v_prime.append(requiring_grad(v_steps[k].apply(v_now[k], g)))
    with torch.no_grad():
        pseudo = [
            torch.softmax(v_nets[k].logits(v_prime[k], arch_const[k], unlabeled), dim=1)
            for k in range(K)
        ]
    own, val_grad_w, losses = [], [], []
    for k in range(K):
        tmp = requiring_grad(w_now[k])
        g = torch.autograd.grad(objective_w(k, tmp, arch[k], pseudo), tmp)
        w_prime = requiring_grad(w_steps[k].apply(w_now[k], g))
        loss = w_nets[k].loss(w_prime, arch[k], val_batch)
        gr = torch.autograd.grad(loss, [*arch[k], *w_prime])
        direct, val_grad = list(gr[: len(arch[k])]), list(gr[len(arch[k]) :])

        def arch_grad(w: list[torch.Tensor], k: int = k) -> tuple[torch.Tensor, ...]:
            return torch.autograd.grad(objective_w(k, w, arch[k], pseudo), arch[k])

        second_order = central_difference(arch_grad, w_now[k], val_grad, eps)
        if second_order is not None:
            direct = [d - w_steps[k].lr * h for d, h in zip(direct, second_order, strict=True)]
        own.append([d.detach() for d in direct])
        val_grad_w.append(val_grad)
        losses.append(loss.detach())
    # Eq. 10 for all pairs: the central difference in W_j of lam * CE(f(u; W_j), p_k) is
    # <p_k, D_j>, D_j (times -xi_w) the adjoint of p in W_j's virtual step (mlo.core)
    coeff = [
        pseudo_label_adjoint(
            w_nets[j],
            w_now[j],
            arch_const[j],
            unlabeled,
            val_grad_w[j],
            lam=lam,
            lr=w_steps[j].lr,
            eps=eps,
        )
        for j in range(K)
    ]
    cross = []
    for k in range(K):
        terms = [coeff[j] for j in others[k] if coeff[j] is not None]
        if not terms:
            cross.append(zeros[k])
            continue
        p_k = torch.softmax(v_nets[k].logits(v_prime[k], arch_const[k], unlabeled), dim=1)
        u_k = list(torch.autograd.grad((p_k * sum(terms)).sum(), v_prime[k]))
        # the last link, A_k -> V'_k, has DARTS' form (Eq. 11)
        term = implicit_term(v_nets[k], arch[k], train_batch, v_steps[k], u_k, eps)
        cross.append(zeros[k] if term is None else [t.detach() for t in term])
    grads = [[o + c for o, c in zip(own[k], cross[k], strict=True)] for k in range(K)]
    return SglGrad(grads, own, cross, losses)
