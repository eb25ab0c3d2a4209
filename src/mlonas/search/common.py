"""What every scheme (plain, LeaSE, SGL) is built from: its inputs, optimizers and steps.

A scheme owns one step of its multi-level optimization; the loop (:mod:`.loop`) owns
epochs, data, checkpoints and history. This module is the contract between them:

- :class:`SchemeSetup` — everything a scheme is constructed from;
- :class:`StepBatch` — what one step receives: a search-train batch (with example indices,
  and for LeaSE the un-augmented images), a search-val batch and, for SGL, unlabeled images;
- the shared mechanics: DARTS' optimizers, a checked weight step, an architecture step,
  and evaluation of several networks over one pass of the validation data.

A scheme reports additive counters from :meth:`step` (sums and counts, so the loop can add
them over an epoch) and turns them into history columns in ``train_metrics``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mlonas.checkpoint import check_finite
from mlonas.search.bases import Base

Counters = dict[str, float]


@dataclass(frozen=True)
class SchemeSetup:
    base: Base
    settings: dict[str, Any]  # the method's search settings
    options: dict[str, Any]  # the scheme's options (params schemes.<scheme> + overrides)
    num_classes: int
    mode: str  # hypergradient mode of mlonas.mlo
    device: torch.device
    seed: int
    n_train: int  # size of the search-train half (per-example state)
    image_shape: tuple[int, int, int]


@dataclass
class StepBatch:
    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    val: tuple[torch.Tensor, torch.Tensor]
    x_plain: torch.Tensor | None = None
    unlabeled: torch.Tensor | None = None

    def to(self, device: torch.device) -> StepBatch:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return StepBatch(
            move(self.x),
            move(self.y),
            self.index,
            (self.val[0].to(device), self.val[1].to(device)),
            move(self.x_plain),
            move(self.unlabeled),
        )


def weight_optimizer(params: Iterable[nn.Parameter], s: Mapping[str, Any]) -> torch.optim.SGD:
    """DARTS' weight optimizer: SGD with momentum and weight decay (lr set per epoch)."""
    return torch.optim.SGD(
        params, lr=s["lr"], momentum=s["momentum"], weight_decay=s["weight_decay"]
    )


def arch_optimizer(params: Iterable[nn.Parameter], s: Mapping[str, Any]) -> torch.optim.Adam:
    """DARTS' architecture optimizer: Adam(3e-4, betas (0.5, 0.999), wd 1e-3)."""
    return torch.optim.Adam(
        params,
        lr=s["arch_lr"],
        betas=tuple(s["arch_betas"]),
        weight_decay=s["arch_weight_decay"],
    )


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def check_loss(loss: torch.Tensor, where: tuple[int, int, int], what: str) -> None:
    """Stop on a non-finite loss, naming the 1-based epoch and step (``where`` is 0-based
    epoch, 0-based step, seed)."""
    epoch, step, seed = where
    check_finite(loss, epoch + 1, step + 1, seed, what)


def weight_step(
    opt: torch.optim.Optimizer,
    params: Sequence[nn.Parameter],
    loss: torch.Tensor,
    clip: float,
    where: tuple[int, int, int],
    what: str = "training loss",
) -> None:
    """One optimizer step on ``loss`` with gradient-norm clipping; stops on a non-finite loss
    (``where`` = 0-based epoch, 0-based step, seed)."""
    check_loss(loss, where, what)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(params, clip)
    opt.step()


def arch_step(
    opt: torch.optim.Optimizer,
    params: Sequence[nn.Parameter],
    grads: Sequence[torch.Tensor],
    s: Mapping[str, Any],
) -> None:
    """Apply a hypergradient with the architecture optimizer (P-DARTS clips its norm)."""
    opt.zero_grad(set_to_none=True)
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    if "arch_grad_clip" in s:
        nn.utils.clip_grad_norm_(params, s["arch_grad_clip"])
    opt.step()


def correct(logits: torch.Tensor, targets: torch.Tensor) -> int:
    return int((logits.argmax(dim=1) == targets).sum())


@torch.no_grad()
def evaluate_nets(
    nets: Mapping[str, nn.Module],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    criterion: nn.Module,
) -> dict[str, tuple[float, float]]:
    """{name: (mean loss, accuracy %)} of each network (eval mode) over one pass of data."""
    for net in nets.values():
        net.eval()
    sums = {name: [0.0, 0] for name in nets}
    n = 0
    for xb, yb in batches:
        xb, yb = xb.to(device), yb.to(device)
        for name, net in nets.items():
            logits = net(xb)
            sums[name][0] += float(criterion(logits, yb)) * yb.size(0)
            sums[name][1] += correct(logits, yb)
        n += yb.size(0)
    n = max(n, 1)
    return {name: (loss / n, 100.0 * c / n) for name, (loss, c) in sums.items()}


def rate(totals: Mapping[str, float], key: str) -> float:
    """Per-example mean of an additive counter (``n`` counts the examples)."""
    return totals[key] / max(totals["n"], 1)
