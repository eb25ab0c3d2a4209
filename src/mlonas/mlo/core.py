"""What every hypergradient of :mod:`mlonas.mlo` is built from.

- :class:`VirtualStep`: an inner optimizer's next step replayed as a function of the
  gradient (so autograd can differentiate through it, or the finite-difference path can
  apply it without a graph);
- :class:`Functional`: forward passes of a model with *substituted* weights and
  architecture parameters (``torch.func.functional_call``) on private copies of the
  BatchNorm buffers;
- :func:`central_difference`: the papers' finite-difference product of a mixed second
  derivative with a vector (DARTS Eq. 8, LeaSE Eq. 11, SGL Eq. 9);
- :func:`pseudo_label_adjoint`: how a virtual step trained on soft pseudo-labels p moves
  with p, applied to a vector (SGL Eq. 10, LBT's student link), by the same difference.

Batch normalisation: every forward pass here runs in training mode (batch statistics, as
in the weight steps), by default on *copies* of the running-statistics buffers. A
hypergradient then never moves a model's running statistics: virtual steps do not count a
second batch, and validation batches never leak into statistics that evaluation later uses.
A forward called with ``update_stats=True`` writes into the model's own buffers instead:
that is how the official DARTS-family codes behave (their architect runs its forwards on
the real model), reachable through ``search.arch_bn_stats: shared`` (docs/fidelity.md).
Train-mode outputs do not depend on the running statistics, so gradients are the same
either way.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Tensors = Sequence[torch.Tensor]

MODES = ("first_order", "finite_difference", "exact")
# BN running statistics of the architecture step (search.arch_bn_stats)
BN_STATS = ("private", "shared")


@dataclass(frozen=True)
class VirtualStep:
    """The inner optimizer's step, as the unrolled modes replay it: SGD with momentum."""

    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    momentum_buffers: tuple[torch.Tensor | None, ...] | None = None

    @classmethod
    def from_optimizer(cls, opt: torch.optim.SGD) -> VirtualStep:
        """xi = the optimizer's current lr; momentum buffers as they are (None before step 1)."""
        group = opt.param_groups[0]
        buffers = tuple(opt.state.get(p, {}).get("momentum_buffer") for p in group["params"])
        return cls(group["lr"], group["momentum"], group["weight_decay"], buffers)

    def apply(self, weights: Tensors, grads: Tensors) -> list[torch.Tensor]:
        """w - lr * (momentum * m + g + weight_decay * w), differentiable in ``grads``."""
        bufs = self.momentum_buffers or (None,) * len(weights)
        out = []
        for w, g, m in zip(weights, grads, bufs, strict=True):
            d = g + self.weight_decay * w
            if m is not None and self.momentum:
                d = d + self.momentum * m
            out.append(w - self.lr * d)
        return out


class Functional:
    """Forward passes of ``model`` with substituted weights/alphas and private BN buffers.

    A model without ``arch_parameters()`` (LeaSE's audience) has no alphas: pass ``()``.
    Models that share architecture parameters (SGL's two weight sets of one learner) see the
    same alpha tensors under the same names.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        self.model = model
        self.loss_fn = loss_fn
        arch = getattr(model, "arch_parameters", None)
        arch_ids = {id(p) for p in arch()} if callable(arch) else set()
        named = list(model.named_parameters())
        self.w_names = [n for n, p in named if id(p) not in arch_ids]
        self.a_names = [n for n, p in named if id(p) in arch_ids]
        self.weights = [p for _, p in named if id(p) not in arch_ids]
        self.alphas = [p for _, p in named if id(p) in arch_ids]
        # DrNAS: one draw of the mixing weights for every forward pass of this hypergradient
        draw = getattr(model, "draw", None)
        self.draw = draw() if callable(draw) else None

    def with_loss(self, loss_fn: LossFn) -> Functional:
        """The same forwards (same names, same DrNAS draw) scored by another loss: IL's
        stages and heads each have their own loss, and one hypergradient must see one draw."""
        other = copy.copy(self)
        other.loss_fn = loss_fn
        return other

    def detached_weights(self) -> list[torch.Tensor]:
        return [w.detach() for w in self.weights]

    def logits(
        self, weights: Tensors, alphas: Tensors, x: torch.Tensor, update_stats: bool = False
    ) -> torch.Tensor:
        # Fresh copies unless asked otherwise: BN running-stat updates land in them and are
        # dropped; with ``update_stats`` they land in the model's buffers.
        buffers = {n: b if update_stats else b.clone() for n, b in self.model.named_buffers()}
        params = dict(zip(self.w_names, weights, strict=True))
        params.update(zip(self.a_names, alphas, strict=True))
        was_training = self.model.training
        self.model.train()
        try:
            kwargs = {} if self.draw is None else {"draw": self.draw}
            return functional_call(self.model, {**params, **buffers}, (x,), kwargs)
        finally:
            self.model.train(was_training)

    def loss(
        self, weights: Tensors, alphas: Tensors, batch: Batch, update_stats: bool = False
    ) -> torch.Tensor:
        x, y = batch
        return self.loss_fn(self.logits(weights, alphas, x, update_stats), y)


def requiring_grad(ts: Tensors) -> list[torch.Tensor]:
    """Detached leaf copies that autograd can differentiate with respect to."""
    return [t.detach().clone().requires_grad_(True) for t in ts]


def norm(ts: Tensors) -> float:
    return float(torch.sqrt(sum((t.detach() * t.detach()).sum() for t in ts)))


def central_difference(
    grad_at: Callable[[list[torch.Tensor]], Sequence[torch.Tensor]],
    point: Tensors,
    direction: Tensors,
    eps: float,
) -> list[torch.Tensor] | None:
    """(g(point + r d) - g(point - r d)) / 2r with r = eps / ||d||, the papers' radius.

    ``g`` is a gradient (of some loss, w.r.t. other variables) as a function of ``point``;
    the result approximates the mixed second derivative times ``direction``. None when
    ``direction`` is zero (the product is then exactly zero).
    """
    n = norm(direction)
    if n == 0.0:
        return None
    r = eps / n
    plus = grad_at([p + r * d for p, d in zip(point, direction, strict=True)])
    minus = grad_at([p - r * d for p, d in zip(point, direction, strict=True)])
    return [(a - b) / (2 * r) for a, b in zip(plus, minus, strict=True)]


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-sum_c target_c log softmax(logits)_c per example (the papers' l(a, b) with b soft)."""
    return -(target * torch.log_softmax(logits, dim=1)).sum(dim=1)


def pseudo_label_adjoint(
    f: Functional,
    weights: Tensors,
    alphas: Tensors,
    unlabeled: torch.Tensor,
    vector: Tensors,
    *,
    lam: float,
    lr: float,
    eps: float,
) -> torch.Tensor | None:
    """(dV'/dp)^T ``vector`` for a virtual step V' = V - lr (grad_V [... + lam mean_i
    CE(f(u_i; V), p_i)] + ...) taken at ``weights`` V: a tensor shaped like p.

    It is -lr * lam * d/dp <grad_V mean CE(f(u; V), p), vector>, the inner product a central
    difference in V with radius eps / ||vector||. Because the soft cross-entropy is linear
    in p, the difference of the two perturbed cross-entropies is a fixed tensor times p:
    -(log_softmax f(u; V + r v) - log_softmax f(u; V - r v)) / (2 r B). A caller then needs
    one backward pass through p (whatever p depends on) to continue the chain: SGL's
    cross-learner term (Eq. 10, p = f(u; V'_k)) and LBT's student term (p = the teacher's
    f(u; W', A)). None when ``vector`` is zero or ``lam`` is 0 (the product is then exactly
    zero). ``alphas``: the architecture held constant in the perturbed forwards.
    """
    n = norm(vector)
    if n == 0.0 or lam == 0.0:
        return None
    r = eps / n
    with torch.no_grad():
        plus = [w + r * v for w, v in zip(weights, vector, strict=True)]
        minus = [w - r * v for w, v in zip(weights, vector, strict=True)]
        log_p_plus = torch.log_softmax(f.logits(plus, alphas, unlabeled), dim=1)
        log_p_minus = torch.log_softmax(f.logits(minus, alphas, unlabeled), dim=1)
    return -lr * -lam * (log_p_plus - log_p_minus) / (2 * r * unlabeled.size(0))
