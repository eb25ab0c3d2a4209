"""Device choice and the cosine schedule, shared by the search and training stages.

Both stages must agree on what ``--device auto`` means and on DARTS' schedule (the
search anneals the weight lr with it, CIFAR evaluation too), so they live here once.
"""

from __future__ import annotations

import math

import torch

from mlonas.errors import MlonasError


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` = CUDA when available, else CPU; a distributed CUDA rank gets its local GPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise MlonasError(
            f"--device {device!r} is not a torch device (use auto, cpu or cuda)"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MlonasError(f"--device {device}: CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    return dev


def cosine_lr(epoch: int, epochs: int, lr: float, lr_min: float, step_first: bool = False) -> float:
    """DARTS' per-epoch cosine annealing from ``lr`` to ``lr_min`` (CosineAnnealingLR).

    ``step_first`` (``search.scheduler_step_first``, ``eval.cifar.scheduler_step_first``):
    the official DARTS, PC-DARTS and P-DARTS loops call ``scheduler.step()`` at the top of
    each epoch (the PyTorch 0.3/0.4 idiom), so epoch e trains at the cosine value of e + 1
    and the last epoch at ``lr_min``; DARTS- calls ``scheduler.step(epoch)`` (epoch e at
    the value of e). docs/fidelity.md.
    """
    e = epoch + 1 if step_first else epoch
    return lr_min + (lr - lr_min) * 0.5 * (1.0 + math.cos(math.pi * e / epochs))
