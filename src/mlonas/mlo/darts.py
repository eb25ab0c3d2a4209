"""The DARTS bilevel hypergradient: min_alpha L_val(w*(alpha), alpha), w* ~ argmin L_train.

Three modes (docs/design.md, "Hypergradients are the scientific core"):

- ``first_order`` — w* is treated as a constant: the architecture gradient is the direct
  term grad_alpha L_val(w, alpha) (DARTS-1st; Liu et al. 2019, Eq. 7 with xi = 0).
- ``finite_difference`` — the papers' algorithm (DARTS Eqs. 7-8, as the official code
  does it): one virtual SGD step w' = w - xi (mu m + grad_w L_train(w, alpha) + lambda w)
  with the weight optimizer's momentum buffer m held constant, then
  grad_alpha L_val(w', alpha) - xi H v, where v = grad_w' L_val(w', alpha) and the mixed
  second derivative H v = grad^2_{alpha,w} L_train(w, alpha) v is a central finite
  difference taken at the *pre-step* weights w with eps = 0.01 / ||v||.
- ``exact`` — autograd through the same virtual step (``create_graph``), the reference
  the finite-difference path is tested against on small float64 networks.

LeaSE, SGL and LBT reuse :func:`implicit_term` for the last link of their chains (A -> E',
A_k -> V'_k and A -> W' have the same form as DARTS' alpha -> w'), and LeaSE and LBT the
steps around it (:func:`first_order_term`, :func:`unroll`, :func:`unroll_graph`,
:func:`with_implicit_term`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mlonas.errors import MlonasError
from mlonas.mlo.core import (
    BN_STATS,
    MODES,
    Batch,
    Functional,
    LossFn,
    VirtualStep,
    central_difference,
    requiring_grad,
)


def check_mode(mode: str, step: object, bn_stats: str = "private") -> None:
    if mode not in MODES:
        raise MlonasError(
            f"hypergradient mode {mode!r} is not available (have: {', '.join(MODES)})"
        )
    if mode != "first_order" and step is None:
        raise MlonasError(f"hypergradient mode {mode!r} needs the virtual inner step")
    if bn_stats not in BN_STATS:
        raise MlonasError(
            f"BN statistics mode {bn_stats!r} is not available (have: {', '.join(BN_STATS)})"
        )


def implicit_term(
    f: Functional,
    alphas: Sequence[torch.Tensor],
    train_batch: Batch,
    step: VirtualStep,
    vector: Sequence[torch.Tensor],
    eps: float,
    update_stats: bool = False,
) -> list[torch.Tensor] | None:
    """-xi * grad^2_{alpha,w} L_train(w, alpha) @ vector, by central differences at the
    pre-step weights (DARTS Eq. 8). None when ``vector`` is zero. ``update_stats``: the
    +eps and -eps forwards (in that order) move the model's BN running statistics, as the
    official ``_hessian_vector_product`` does on the real model."""
    weights = f.detached_weights()

    def arch_grad(shifted: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        loss = f.loss(shifted, alphas, train_batch, update_stats)
        return torch.autograd.grad(loss, alphas)

    hv = central_difference(arch_grad, weights, vector, eps)
    return None if hv is None else [-step.lr * h for h in hv]


def first_order_term(
    f: Functional, alphas: Sequence[torch.Tensor], val_batch: Batch, update_stats: bool = False
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(grad_alpha L_val(w, alpha) at the current weights, L_val): the first-order gradient
    of DARTS and of every scheme whose inner solutions it treats as constants."""
    loss = f.loss(f.detached_weights(), alphas, val_batch, update_stats)
    return list(torch.autograd.grad(loss, alphas)), loss.detach()


def unroll(
    f: Functional,
    alphas: Sequence[torch.Tensor],
    train_batch: Batch,
    val_batch: Batch,
    step: VirtualStep,
    update_stats: bool = False,
) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    """The virtual step w' (no graph to w: leaves for what follows), then the direct term
    and v at w': (w', L_val(w', alpha), grad_alpha L_val, grad_w' L_val). ``update_stats``
    applies to the training forward of the step only (the official architect runs its
    forward at w' on a copy of the model)."""
    w_req = requiring_grad(f.weights)
    g_train = torch.autograd.grad(f.loss(w_req, alphas, train_batch, update_stats), w_req)
    unrolled = requiring_grad(step.apply(f.detached_weights(), g_train))
    loss = f.loss(unrolled, alphas, val_batch)
    grads = torch.autograd.grad(loss, [*alphas, *unrolled])
    return unrolled, loss.detach(), list(grads[: len(alphas)]), list(grads[len(alphas) :])


def unroll_graph(
    f: Functional, alphas: Sequence[torch.Tensor], train_batch: Batch, step: VirtualStep
) -> list[torch.Tensor]:
    """w' as a differentiable function of alpha (``exact``: autograd through the step)."""
    weights = requiring_grad(f.weights)
    g_train = torch.autograd.grad(f.loss(weights, alphas, train_batch), weights, create_graph=True)
    return step.apply(weights, g_train)


def with_implicit_term(
    f: Functional,
    alphas: Sequence[torch.Tensor],
    train_batch: Batch,
    step: VirtualStep,
    direct: Sequence[torch.Tensor],
    v: Sequence[torch.Tensor],
    extra: Sequence[torch.Tensor] | None,
    *,
    gamma: float,
    eps: float,
    extra_only: bool = False,
) -> list[torch.Tensor]:
    """direct - xi grad^2_{alpha,w} L_train (v + gamma extra), detached: DARTS' own term and a
    scheme's further term that reaches alpha through the same w' (LeaSE's audience, LBT's
    student) share one central difference, so gamma = 0 (or ``extra`` None, an exactly zero
    term) gives DARTS-2nd exactly. ``extra_only``: the further term alone."""
    if extra_only:
        vector = (
            [gamma * u for u in extra] if extra is not None else [torch.zeros_like(t) for t in v]
        )
        direct = [torch.zeros_like(d) for d in direct]
    elif extra is None:
        vector = list(v)
    else:
        vector = [t + gamma * u for t, u in zip(v, extra, strict=True)]
    term = implicit_term(f, alphas, train_batch, step, vector, eps)
    if term is not None:
        direct = [d + t for d, t in zip(direct, term, strict=True)]
    return [d.detach() for d in direct]


def darts_arch_grad(
    model: nn.Module,
    loss_fn: LossFn,
    train_batch: Batch,
    val_batch: Batch,
    *,
    mode: str = "first_order",
    step: VirtualStep | None = None,
    eps: float = 0.01,
    bn_stats: str = "private",
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Architecture gradient of the DARTS objective and the validation loss it came from.

    ``step`` (the virtual inner step) is required by the unrolled modes; ``eps`` is the
    finite-difference radius numerator (DARTS: 0.01, divided by ||v||). ``bn_stats``:
    ``private`` keeps every forward off the model's BN running statistics; ``shared``
    lets the forwards the official architect runs on the real model move them (first
    order: the validation forward; unrolled: the training forward of the virtual step and
    the two finite-difference forwards, but not the forward at w', which the official
    code runs on a copy of the model).
    """
    check_mode(mode, step, bn_stats)
    shared = bn_stats == "shared"
    f = Functional(model, loss_fn)
    alphas = [a.detach().requires_grad_(True) for a in f.alphas]
    if mode == "first_order":
        return first_order_term(f, alphas, val_batch, shared)
    assert step is not None
    if mode == "exact":
        weights = requiring_grad(f.weights)
        g_train = torch.autograd.grad(
            f.loss(weights, alphas, train_batch, shared), weights, create_graph=True
        )
        loss = f.loss(step.apply(weights, g_train), alphas, val_batch)
        return list(torch.autograd.grad(loss, alphas)), loss.detach()
    # finite_difference: the virtual step w' (a constant for what follows), the direct term
    # and v = grad_w' L_val(w', alpha)
    _, loss, direct, v = unroll(f, alphas, train_batch, val_batch, step, shared)
    term = implicit_term(f, alphas, train_batch, step, v, eps, shared)
    if term is None:
        return [d.detach() for d in direct], loss
    return [d + t for d, t in zip(direct, term, strict=True)], loss
