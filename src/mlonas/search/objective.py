"""The search objective of scheme plain (``search.objective``): what the supernet is
trained and its architecture chosen on.

- ``classification`` — the papers' cross-entropy on the labels (every method but MAE-NAS);
- ``mae`` — MAE-NAS' masked-image reconstruction at both levels, labels ignored
  (:mod:`mlonas.space.mae`; an interpretation, docs/mae-nas.md).

An objective turns the base's supernet into the module the scheme trains (:meth:`wrap`),
a loader batch into the ``(inputs, targets)`` pair the hypergradients of :mod:`mlonas.mlo`
take (:meth:`prepare`), and gives the loss and the history columns. The scheme stays
base-agnostic and never asks which objective it runs. An objective that draws random
numbers (MAE's masks) owns its generator, drawn in :meth:`prepare` *before* a
hypergradient so that all of its forwards see the same draw, and checkpointed through
:meth:`state_dict` so a resumed search is bitwise the uninterrupted one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from mlonas.errors import MlonasError
from mlonas.search.common import Counters
from mlonas.settings import SearchSettings
from mlonas.space.mae import (
    MaeSupernet,
    apply_mask,
    masked_mse,
    normalize_patches,
    patch_mask,
    unpack,
)
from mlonas.space.supernet import Supernet

# The mask streams: separate from the loaders' (mlonas.search.loop) and from each other.
MASK_SEED_OFFSET = 3_000_017  # training and architecture batches, drawn in order
EVAL_MASK_SEED_OFFSET = 4_000_037  # the validation pass: the same masks every epoch


class Objective(ABC):
    """What scheme plain optimizes (module docstring)."""

    name: ClassVar[str]

    @abstractmethod
    def wrap(self, supernet: Supernet) -> nn.Module:
        """The module the scheme trains; its ``arch_parameters()`` are the supernet's."""

    @abstractmethod
    def prepare(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A loader batch as ``(inputs, targets)``; ``generator``: the validation pass's
        (None: the objective's own training stream)."""

    @abstractmethod
    def loss_fn(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The batch's mean loss (what :func:`mlonas.mlo.darts_arch_grad` differentiates)."""

    @abstractmethod
    def counters(self, out: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> Counters:
        """Additive counters of one batch (``loss_sum`` and ``n``, the examples, at least)."""

    @abstractmethod
    def metrics(self, totals: Counters, prefix: str) -> dict[str, float]:
        """History columns ``<prefix>_loss``, ... of summed counters; all finite."""

    def eval_generator(self) -> torch.Generator | None:
        """A fresh generator for one validation pass (None: nothing is drawn)."""
        return None

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, batches: Iterable[tuple[Any, Any]], device: torch.device
    ) -> dict[str, float]:
        """``val_*`` columns of one pass over ``batches`` in eval mode."""
        model.eval()
        generator = self.eval_generator()
        totals: Counters = {}
        for xb, yb in batches:
            inputs, targets = self.prepare(xb.to(device), yb.to(device), generator)
            out = model(inputs)
            for k, v in self.counters(out, targets, self.loss_fn(out, targets)).items():
                totals[k] = totals.get(k, 0.0) + v
        return self.metrics(totals, "val")

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 (nothing to load)
        pass


class Classification(Objective):
    """The papers' objective: cross-entropy on the labels; accuracy reported."""

    name = "classification"

    def __init__(self) -> None:
        self.criterion = nn.CrossEntropyLoss()

    def wrap(self, supernet: Supernet) -> nn.Module:
        return supernet

    def prepare(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def loss_fn(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.criterion(out, targets)

    def counters(self, out: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> Counters:
        n = targets.size(0)
        correct = int((out.argmax(dim=1) == targets).sum())
        return {"loss_sum": float(loss.detach()) * n, "correct": correct, "n": n}

    def metrics(self, totals: Counters, prefix: str) -> dict[str, float]:
        # the training accuracy's spelling before objectives existed (histories stay bitwise
        # what they were); the scheme evaluates validation through Scheme.evaluate_nets
        n = max(totals["n"], 1)
        return {
            f"{prefix}_loss": totals["loss_sum"] / n,
            f"{prefix}_acc": 100 * (totals["correct"] / n),
        }


class MaskedReconstruction(Objective):
    """MAE-NAS (our reading): reconstruct the masked patches; labels are ignored.

    History columns: ``*_loss`` (the masked-pixel MSE the search minimizes) and
    ``*_rec_skill`` = 1 - SSE / sum(target^2) over the masked pixels, i.e. how much of
    the error of predicting 0 (the per-channel dataset mean of the normalized images, or
    the patch mean under ``norm_pix_loss``) the reconstruction removes. No accuracy:
    a search without labels has none, and a NaN column would stop the loop.
    """

    name = "mae"

    def __init__(self, s: SearchSettings, seed: int) -> None:
        assert s.mask_ratio is not None and s.patch_size is not None
        assert s.decoder is not None and s.decoder_channels is not None
        self.s = s
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed + MASK_SEED_OFFSET)

    def wrap(self, supernet: Supernet) -> nn.Module:
        assert self.s.decoder is not None and self.s.decoder_channels is not None
        return MaeSupernet(supernet, self.s.decoder, self.s.decoder_channels)

    def prepare(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.s.patch_size is not None and self.s.mask_ratio is not None
        gen = self.generator if generator is None else generator
        size = (x.shape[-2], x.shape[-1])
        try:
            mask = patch_mask(x.shape[0], size, self.s.patch_size, self.s.mask_ratio, gen)
        except ValueError as e:
            raise MlonasError(f"search.patch_size / search.mask_ratio: {e}") from None
        return apply_mask(x, mask)

    def loss_fn(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        assert self.s.patch_size is not None
        return masked_mse(out, targets, self.s.patch_size, bool(self.s.norm_pix_loss))

    @torch.no_grad()
    def counters(self, out: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> Counters:
        assert self.s.patch_size is not None
        target, mask = unpack(targets)
        if self.s.norm_pix_loss:
            target = normalize_patches(target, self.s.patch_size)
        n = targets.size(0)
        return {
            "loss_sum": float(loss.detach()) * n,
            "sse": float(((out - target) ** 2 * mask).sum()),
            "sst": float((target**2 * mask).sum()),
            "n": n,
        }

    def metrics(self, totals: Counters, prefix: str) -> dict[str, float]:
        n = max(totals["n"], 1)
        skill = 1.0 - totals["sse"] / totals["sst"] if totals["sst"] > 0 else 0.0
        return {f"{prefix}_loss": totals["loss_sum"] / n, f"{prefix}_rec_skill": skill}

    def eval_generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + EVAL_MASK_SEED_OFFSET)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


OBJECTIVES = ("classification", "mae")


def make_objective(s: SearchSettings, seed: int) -> Objective:
    """The objective ``search.objective`` names (validated: mlonas.config)."""
    if s.objective == "classification":
        return Classification()
    if s.objective == "mae":
        return MaskedReconstruction(s, seed)
    raise MlonasError(f"search.objective: unknown objective {s.objective!r}")
