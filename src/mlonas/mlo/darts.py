"""The DARTS bilevel hypergradient: min_alpha L_val(w*(alpha), alpha), w* = argmin L_train.

Mode ``first_order`` treats w* as a constant (DARTS-1st, Liu et al. 2019, Eq. 7 with
xi = 0): the architecture gradient is the direct term grad_alpha L_val(w, alpha).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from mlonas.errors import MlonasError

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

MODES = ("first_order",)


def _arch_params(model: nn.Module) -> Sequence[torch.Tensor]:
    return model.arch_parameters()  # type: ignore[operator]


def darts_arch_grad(
    model: nn.Module,
    loss_fn: LossFn,
    train_batch: Batch,
    val_batch: Batch,
    *,
    mode: str = "first_order",
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Architecture gradient of the DARTS objective and the validation loss it came from.

    ``train_batch`` is part of the signature because the unrolled (second-order) modes
    need it; the first-order mode does not look at it.
    """
    if mode not in MODES:
        raise MlonasError(
            f"hypergradient mode {mode!r} is not available (have: {', '.join(MODES)})"
        )
    x_val, y_val = val_batch
    loss = loss_fn(model(x_val), y_val)
    grads = torch.autograd.grad(loss, _arch_params(model))
    return list(grads), loss.detach()
