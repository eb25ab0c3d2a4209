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

LeaSE and SGL reuse :func:`implicit_term` for the last link of their chains (A -> E' and
A_k -> V'_k have the same form as DARTS' alpha -> w').
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
        loss = f.loss(f.detached_weights(), alphas, val_batch, shared)
        return list(torch.autograd.grad(loss, alphas)), loss.detach()
    assert step is not None
    if mode == "exact":
        weights = requiring_grad(f.weights)
        g_train = torch.autograd.grad(
            f.loss(weights, alphas, train_batch, shared), weights, create_graph=True
        )
        loss = f.loss(step.apply(weights, g_train), alphas, val_batch)
        return list(torch.autograd.grad(loss, alphas)), loss.detach()
    # finite_difference: the virtual step w' (no graph: w' is a constant for what follows)
    w_req = requiring_grad(f.weights)
    g_train = torch.autograd.grad(f.loss(w_req, alphas, train_batch, shared), w_req)
    unrolled = requiring_grad(step.apply(f.detached_weights(), g_train))
    # direct term and v = grad_w' L_val(w', alpha)
    loss = f.loss(unrolled, alphas, val_batch)
    grads = torch.autograd.grad(loss, [*alphas, *unrolled])
    direct, v = grads[: len(alphas)], grads[len(alphas) :]
    term = implicit_term(f, alphas, train_batch, step, v, eps, shared)
    if term is None:
        return [d.detach() for d in direct], loss.detach()
    return [d + t for d, t in zip(direct, term, strict=True)], loss.detach()
