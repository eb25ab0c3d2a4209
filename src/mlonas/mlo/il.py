"""The interleaving-learning hypergradient: alpha through a chain of S weight stages.

An INTERPRETATION (docs/il.md): the IL paper (Ban & Xie, arXiv 2103.07018) is known only
by its abstract. K models share one encoder; model 1 trains it "for a while", passes it
to model 2, ..., for several rounds; the architecture minimizes the models' validation
losses. Written as a multi-level problem with one gradient step per level (as every
Xie-lab paper approximates a level, LeaSE Eq. 6, SGL Eq. 5), over S = R*K stages
s = 1..S, stage s with its own loss l_s and batch:

    W_s = W_{s-1} - xi (mu m + grad_W l_s(W_{s-1}, A) + wd W_{s-1})      (VirtualStep)
    min_A  sum_k L_k^val(W_S, A)

This function is generic: a stage is any (loss closure, batch) and a validation term any
(loss closure, batch); what they mean (heads over class groups) is the scheme's business
(:mod:`mlonas.search.il`). Every stage is replayed with *one* :class:`VirtualStep`: the
weight optimizer's lr, momentum, weight decay and momentum buffer m as they are before the
iteration. A faithful SGD chain would update m from stage to stage; holding it constant is
DARTS' convention for its one step, extended here to the chain (docs/fidelity.md). The
buffer enters the chain as a constant, so it changes W_S but not the Jacobians, and the
three modes differentiate the same function.

- ``first_order`` — the stages are treated as constants: grad_A sum_k L_k^val(W_0, A).
- ``exact`` — autograd through all S virtual steps (``create_graph`` on each stage's
  gradient); memory grows with S. The reference the finite difference is tested against.
- ``finite_difference`` — a reverse chain of central differences, without second-order
  graphs. With u = grad_{W_S} sum_k L_k^val and g = grad_A sum_k L_k^val(W_S, A), for
  s = S..1:

      (H_WW u, H_AW u) = central difference of (grad_W l_s, grad_A l_s) at W_{s-1} +- r u
      g <- g - xi H_AW u
      u <- (1 - xi wd) u - xi H_WW u

  (r = eps / ||u||, DARTS' radius). The (1 - xi wd) factor is d W_s / d W_{s-1}'s weight-
  decay part (VirtualStep.apply adds wd W); m is constant and drops out. The last update
  of u is never used, so stage 1 is DARTS' own :func:`~mlonas.mlo.darts.implicit_term`:
  with S = 1 this *is* DARTS-2nd (Eqs. 7-8), the K = 1, R = 1 reduction.

Every forward runs on private BN-buffer copies (:class:`~mlonas.mlo.core.Functional`);
nothing here moves running statistics or leaves ``.grad``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mlonas.errors import MlonasError
from mlonas.mlo.core import (
    Batch,
    Functional,
    LossFn,
    VirtualStep,
    central_difference,
    requiring_grad,
)
from mlonas.mlo.darts import check_mode, implicit_term

Stage = tuple[LossFn, Batch]


@dataclass
class IlGrad:
    """The architecture gradient and the upper-level terms L_k^val at W_S (first order:
    at the current weights), in the order of ``vals``."""

    grads: list[torch.Tensor]
    val_losses: list[torch.Tensor]

    @property
    def val_loss(self) -> torch.Tensor:
        """The upper-level objective sum_k L_k^val."""
        return _total(self.val_losses)


def _total(losses: Sequence[torch.Tensor]) -> torch.Tensor:
    """losses[0] + losses[1] + ...; one term stays the very tensor (the S = 1 reduction is
    then bitwise DARTS' graph)."""
    out = losses[0]
    for loss in losses[1:]:
        out = out + loss
    return out


def _grads(
    loss: torch.Tensor, inputs: Sequence[torch.Tensor], create_graph: bool = False
) -> list[torch.Tensor]:
    """grad of ``loss`` w.r.t. ``inputs``; zeros for inputs a loss does not reach (a
    weight no stage uses)."""
    got = torch.autograd.grad(loss, inputs, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(got, inputs, strict=True)]


def il_arch_grad(
    model: nn.Module,
    stages: Sequence[Stage],
    vals: Sequence[Stage],
    *,
    mode: str = "first_order",
    step: VirtualStep | None = None,
    eps: float = 0.01,
) -> IlGrad:
    """grad_A sum_k L_k^val(W_S(A), A) after the stages ``stages`` (in order; a caller
    unrolling R rounds of K models passes the K stages R times).

    ``step``: the virtual inner step, replayed at every stage (unrolled modes); ``eps``:
    the finite-difference radius numerator (DARTS: 0.01, divided by ||u||).
    """
    check_mode(mode, step)
    if not vals:
        raise MlonasError("il_arch_grad: no validation term (the upper level is empty)")
    f = Functional(model, vals[0][0])  # one DrNAS draw for every forward below
    stage_f = [f.with_loss(fn) for fn, _ in stages]
    val_f = [f.with_loss(fn) for fn, _ in vals]
    alphas = [a.detach().requires_grad_(True) for a in f.alphas]

    def val_losses(weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [vf.loss(weights, alphas, batch) for vf, (_, batch) in zip(val_f, vals, strict=True)]

    if mode == "first_order":
        losses = val_losses(f.detached_weights())
        return IlGrad(_grads(_total(losses), alphas), [loss.detach() for loss in losses])
    assert step is not None
    if mode == "exact":
        weights: list[torch.Tensor] = requiring_grad(f.weights)
        for sf, (_, batch) in zip(stage_f, stages, strict=True):
            g = _grads(sf.loss(weights, alphas, batch), weights, create_graph=True)
            weights = step.apply(weights, g)
        losses = val_losses(weights)
        return IlGrad(_grads(_total(losses), alphas), [loss.detach() for loss in losses])

    # finite_difference: the forward chain without graphs, keeping W_0 .. W_{S-1}
    points: list[list[torch.Tensor]] = []
    weights = f.detached_weights()
    for sf, (_, batch) in zip(stage_f, stages, strict=True):
        w_req = requiring_grad(weights)
        g = _grads(sf.loss(w_req, alphas, batch), w_req)
        points.append(weights)
        weights = step.apply(weights, g)
    final = requiring_grad(weights)
    losses = val_losses(final)
    both = _grads(_total(losses), [*alphas, *final])
    grads, u = both[: len(alphas)], both[len(alphas) :]
    n_w = len(u)
    for s in range(len(stages) - 1, 0, -1):
        sf, batch = stage_f[s], stages[s][1]

        def joint(shifted: list[torch.Tensor], sf: Functional = sf, batch: Batch = batch) -> list:
            w = requiring_grad(shifted)
            return _grads(sf.loss(w, alphas, batch), [*w, *alphas])

        hv = central_difference(joint, points[s], u, eps)
        if hv is None:  # u = 0: every earlier stage's term is zero too
            return IlGrad([g.detach() for g in grads], [loss.detach() for loss in losses])
        h_w, h_a = hv[:n_w], hv[n_w:]
        grads = [g - step.lr * h for g, h in zip(grads, h_a, strict=True)]
        keep = 1.0 - step.lr * step.weight_decay
        u = [keep * v - step.lr * h for v, h in zip(u, h_w, strict=True)]
    if stages:  # stage 1: only the alpha part is needed, which is DARTS' implicit term
        term = implicit_term(stage_f[0], alphas, stages[0][1], step, u, eps)
        if term is not None:
            grads = [g + t for g, t in zip(grads, term, strict=True)]
    return IlGrad([g.detach() for g in grads], [loss.detach() for loss in losses])
