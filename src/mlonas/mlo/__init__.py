"""Hypergradients of the multi-level objectives (architecture gradients).

Each function takes the models, the batches and the hyperparameters and *returns* the
architecture gradient, without a training loop, so that it can be unit-tested against
exact autograd, compared across modes and timed in isolation (docs/design.md, "Hypergradients
are the scientific core"). Search schemes call these and hand the result to the
architecture optimizer(s).
"""

from mlonas.mlo.core import MODES, VirtualStep
from mlonas.mlo.darts import darts_arch_grad

__all__ = ["MODES", "VirtualStep", "darts_arch_grad"]
