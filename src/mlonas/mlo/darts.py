"""The DARTS bilevel hypergradient: min_alpha L_val(w*(alpha), alpha), w* ~ argmin L_train.

Three modes (DESIGN.md, "Hypergradients are the scientific core"):

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

Batch normalisation: every forward pass here runs in training mode (batch statistics,
as in the weight step), but on *copies* of the running-statistics buffers. A
hypergradient therefore never moves the model's running statistics: the virtual step does
not count a second batch, and validation batches never leak into statistics that
evaluation later uses. Only the real weight step updates them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from mlonas.errors import MlonasError

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Params = dict[str, torch.Tensor]

MODES = ("first_order", "finite_difference", "exact")


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

    def apply(
        self, weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """w - lr * (momentum * m + g + weight_decay * w), differentiable in ``grads``."""
        bufs = self.momentum_buffers or (None,) * len(weights)
        out = []
        for w, g, m in zip(weights, grads, bufs, strict=True):
            d = g + self.weight_decay * w
            if m is not None and self.momentum:
                d = d + self.momentum * m
            out.append(w - self.lr * d)
        return out


class _Functional:
    """Forward passes of ``model`` with substituted weights/alphas and private BN buffers."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        self.model = model
        self.loss_fn = loss_fn
        arch_ids = {id(p) for p in model.arch_parameters()}  # type: ignore[operator]
        named = list(model.named_parameters())
        self.w_names = [n for n, p in named if id(p) not in arch_ids]
        self.a_names = [n for n, p in named if id(p) in arch_ids]
        self.weights = [p for n, p in named if id(p) not in arch_ids]
        self.alphas = [p for n, p in named if id(p) in arch_ids]

    def loss(
        self, weights: Sequence[torch.Tensor], alphas: Sequence[torch.Tensor], batch: Batch
    ) -> torch.Tensor:
        # Fresh copies each call: BN running-stat updates land in them and are dropped.
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}
        params: Params = dict(zip(self.w_names, weights, strict=True))
        params.update(zip(self.a_names, alphas, strict=True))
        x, y = batch
        was_training = self.model.training
        self.model.train()
        try:
            logits = functional_call(self.model, {**params, **buffers}, (x,))
        finally:
            self.model.train(was_training)
        return self.loss_fn(logits, y)


def darts_arch_grad(
    model: nn.Module,
    loss_fn: LossFn,
    train_batch: Batch,
    val_batch: Batch,
    *,
    mode: str = "first_order",
    step: VirtualStep | None = None,
    eps: float = 0.01,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Architecture gradient of the DARTS objective and the validation loss it came from.

    ``step`` (the virtual inner step) is required by the unrolled modes; ``eps`` is the
    finite-difference radius numerator (DARTS: 0.01, divided by ||v||).
    """
    if mode not in MODES:
        raise MlonasError(
            f"hypergradient mode {mode!r} is not available (have: {', '.join(MODES)})"
        )
    f = _Functional(model, loss_fn)
    alphas = [a.detach().requires_grad_(True) for a in f.alphas]
    if mode == "first_order":
        weights = [w.detach() for w in f.weights]
        loss = f.loss(weights, alphas, val_batch)
        return list(torch.autograd.grad(loss, alphas)), loss.detach()
    if step is None:
        raise MlonasError(f"hypergradient mode {mode!r} needs the virtual inner step")
    if mode == "exact":
        return _exact(f, alphas, train_batch, val_batch, step)
    return _finite_difference(f, alphas, train_batch, val_batch, step, eps)


def _exact(
    f: _Functional,
    alphas: list[torch.Tensor],
    train_batch: Batch,
    val_batch: Batch,
    step: VirtualStep,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    weights = [w.detach().requires_grad_(True) for w in f.weights]
    g_train = torch.autograd.grad(f.loss(weights, alphas, train_batch), weights, create_graph=True)
    unrolled = step.apply(weights, g_train)
    loss = f.loss(unrolled, alphas, val_batch)
    return list(torch.autograd.grad(loss, alphas)), loss.detach()


def _finite_difference(
    f: _Functional,
    alphas: list[torch.Tensor],
    train_batch: Batch,
    val_batch: Batch,
    step: VirtualStep,
    eps: float,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    weights = [w.detach() for w in f.weights]
    # 1. the virtual step w' (no graph: w' is a constant for what follows)
    w_req = [w.clone().requires_grad_(True) for w in weights]
    g_train = torch.autograd.grad(f.loss(w_req, alphas, train_batch), w_req)
    unrolled = [w.detach().requires_grad_(True) for w in step.apply(weights, g_train)]
    # 2. direct term and v = grad_w' L_val(w', alpha)
    loss = f.loss(unrolled, alphas, val_batch)
    grads = torch.autograd.grad(loss, [*alphas, *unrolled])
    direct, v = grads[: len(alphas)], grads[len(alphas) :]
    # 3. grad^2_{alpha,w} L_train(w, alpha) v by central differences at the pre-step w
    norm = torch.sqrt(sum((t * t).sum() for t in v))
    r = eps / float(norm) if float(norm) > 0 else 0.0
    if r == 0.0:
        return [d.detach() for d in direct], loss.detach()

    def arch_grad_at(sign: float) -> tuple[torch.Tensor, ...]:
        shifted = [w + sign * r * t for w, t in zip(weights, v, strict=True)]
        return torch.autograd.grad(f.loss(shifted, alphas, train_batch), alphas)

    g_plus, g_minus = arch_grad_at(1.0), arch_grad_at(-1.0)
    hv = [(p - m) / (2 * r) for p, m in zip(g_plus, g_minus, strict=True)]
    return [d - step.lr * h for d, h in zip(direct, hv, strict=True)], loss.detach()
