"""The scheme contract: what the loop calls, what a scheme is built from, and the
mechanics every scheme (plain, LeaSE, SGL) shares.

A scheme owns one step of its multi-level optimization; the loop (:mod:`.loop`) owns
epochs, data, checkpoints and history. This module is the contract between them:

- :class:`Scheme` — the abstract base class every scheme derives from: three class
  attributes and eleven methods the loop calls, plus the shared mechanics as methods
  (DARTS' optimizers, a checked weight step, an architecture step, evaluation of several
  networks over one pass of the validation data);
- :class:`SchemeSetup` — everything a scheme is constructed from;
- :class:`StepBatch` — what one step receives: a search-train batch (with example indices,
  and for LeaSE the un-augmented images), a search-val batch and, for SGL, unlabeled images.

A scheme reports additive counters from :meth:`Scheme.step` (sums and counts, so the loop
can add them over an epoch) and turns them into history columns in ``train_metrics``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from mlonas.checkpoint import check_finite
from mlonas.search.bases import ArchState, Base
from mlonas.settings import SchemeOptions, SearchSettings
from mlonas.space.supernet import Supernet

Counters = dict[str, float]


@dataclass(frozen=True)
class SchemeSetup:
    base: Base
    settings: SearchSettings  # the method's search settings
    options: SchemeOptions  # the scheme's options (params schemes.<scheme> + overrides)
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


class Scheme(ABC):
    """How the weights and architecture(s) of a search are updated each step.

    The loop builds a scheme from a :class:`SchemeSetup` and one architecture state per
    name in :meth:`architecture_names` (a P-DARTS stage change builds a new one and
    calls :meth:`carry_over`), and never asks which scheme it runs.

    What a scheme may assume about the base (:class:`mlonas.search.bases.Base`) and the
    supernets it builds with ``base.build(settings, num_classes, state, image_size)``:

    - every supernet has the :class:`~mlonas.space.supernet.Supernet` interface:
      ``forward``, ``weight_parameters()``, ``arch_parameters()``, ``genotype()``,
      ``arch_record()``, ``trajectory_record()``;
    - if ``base.learns_architecture``, ``arch_parameters()`` is non-empty and the scheme
      updates it in the epochs ``base.updates_architecture`` says (with the optimizer of
      :meth:`arch_optimizer`);
    - if not (MSR-DARTS), ``arch_parameters()`` is empty, ``updates_architecture`` is
      always False (so ``step`` gets ``update_arch=False``), and the supernet's mixing is
      schedule that ``base.set_epoch`` refreshes; a scheme must build no optimizer over the
      empty list (Adam refuses it). Only :class:`~mlonas.search.schemes.PlainScheme` in
      first order runs such a base: LeaSE, SGL and second order exist to shape an
      architecture's hypergradient, and :func:`mlonas.config.validate_params` refuses
      them with it (``mlonas.config.BASES_WITHOUT_ARCHITECTURE``).
    """

    name: ClassVar[str]  # params.yaml's ``scheme``
    PLAIN_VIEW: ClassVar[bool]  # batches carry the un-augmented images too (``x_plain``)
    UNLABELED: ClassVar[bool]  # batches carry an unlabeled batch (``unlabeled``)

    def __init__(self, setup: SchemeSetup, states: dict[str, ArchState]) -> None:
        self.setup = setup
        self.criterion = nn.CrossEntropyLoss()
        self.arch_confidence = 1.0  # CLR's factor of this epoch (set_arch_confidence)

    @staticmethod
    @abstractmethod
    def architecture_names(options: SchemeOptions) -> list[str]:
        """The names of the architectures searched (the keys of :meth:`architectures`)."""

    @abstractmethod
    def start_epoch(self, epoch: int, lr: float) -> None:
        """Set this epoch's learning rates (``lr``: the base's weight schedule)."""

    @abstractmethod
    def step(self, batch: StepBatch, *, update_arch: bool, epoch: int, step: int) -> Counters:
        """One iteration; additive counters (``n`` = the labeled examples seen)."""

    @abstractmethod
    def train_metrics(self, totals: Counters) -> dict[str, float]:
        """An epoch's summed counters as history columns (``train_loss``, ``train_acc``...)."""

    @abstractmethod
    def evaluate(self, batches: Iterable[tuple[Any, Any]]) -> dict[str, float]:
        """Validation columns (``val_loss``, ``val_acc``...) over one pass of ``batches``."""

    @abstractmethod
    def architectures(self) -> dict[str, Supernet]:
        """The supernet(s) whose architecture this scheme searches, by name."""

    def supernets(self) -> list[Supernet]:
        """Every supernet the base's per-epoch knobs apply to."""
        return list(self.architectures().values())

    @abstractmethod
    def select(self, history: list[dict[str, Any]]) -> str:
        """The name of the architecture a seed reports, given the search's history."""

    def carry_over(self, previous: Scheme) -> None:  # noqa: B027 (nothing is the default)
        """Take over from ``previous`` what outlives a P-DARTS stage change (by default
        nothing: the supernets are rebuilt)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed search needs (weights, optimizers, scheme state)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    # -- the shared mechanics -----------------------------------------------------------
    @staticmethod
    def weight_optimizer(params: Iterable[nn.Parameter], s: SearchSettings) -> torch.optim.SGD:
        """DARTS' weight optimizer: SGD with momentum and weight decay (lr set per epoch)."""
        return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)

    @staticmethod
    def arch_optimizer(params: Iterable[nn.Parameter], s: SearchSettings) -> torch.optim.Adam:
        """DARTS' architecture optimizer: Adam(3e-4, betas (0.5, 0.999), wd 1e-3)."""
        return torch.optim.Adam(
            params, lr=s.arch_lr, betas=tuple(s.arch_betas), weight_decay=s.arch_weight_decay
        )

    def set_arch_confidence(self, c: float) -> None:
        """This epoch's CLR factor (:meth:`mlonas.search.bases.Base.arch_confidence`), which
        :meth:`arch_step` applies to every architecture optimizer of the scheme."""
        self.arch_confidence = c

    @staticmethod
    def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
        for group in opt.param_groups:
            group["lr"] = lr

    def where(self, epoch: int, step: int) -> tuple[int, int, int]:
        """(0-based epoch, 0-based step, seed): how a non-finite loss is reported."""
        return epoch, step, self.setup.seed

    @staticmethod
    def check_loss(loss: torch.Tensor, where: tuple[int, int, int], what: str) -> None:
        """Stop on a non-finite loss, naming the 1-based epoch and step (``where`` is 0-based
        epoch, 0-based step, seed)."""
        epoch, step, seed = where
        check_finite(loss, epoch + 1, step + 1, seed, what)

    def weight_step(
        self,
        opt: torch.optim.Optimizer,
        params: Sequence[nn.Parameter],
        loss: torch.Tensor,
        where: tuple[int, int, int],
        what: str = "training loss",
    ) -> None:
        """One optimizer step on ``loss`` with the search's gradient-norm clipping
        (``search.grad_clip``); stops on a non-finite loss."""
        self.check_loss(loss, where, what)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, self.setup.settings.grad_clip)
        opt.step()

    def arch_step(
        self,
        opt: torch.optim.Optimizer,
        params: Sequence[nn.Parameter],
        grads: Sequence[torch.Tensor],
    ) -> None:
        """Apply a hypergradient with the architecture optimizer (P-DARTS clips its norm:
        ``search.arch_grad_clip``, null elsewhere).

        CLR's factor c (1 unless ``arch_lr_schedule: confident``) scales Adam's lr, as
        B-DARTS' first-order code does, or the hypergradient before the clip and Adam, as
        its second-order code does by scaling the validation loss: in both the unrolled
        term and the finite difference (whose radius shrinks by 1/c) that is c times the
        hypergradient (tests/test_clr.py checks it against autograd)."""
        s, c = self.setup.settings, self.arch_confidence
        opt.zero_grad(set_to_none=True)
        scale = c if s.confidence_scales == "hypergradient" else 1.0
        for p, g in zip(params, grads, strict=True):
            p.grad = g * scale if scale != 1.0 else g
        if s.confidence_scales == "lr":
            self.set_lr(opt, s.arch_lr * c)
        clip = s.arch_grad_clip
        if clip is not None:
            nn.utils.clip_grad_norm_(params, clip)
        opt.step()

    @staticmethod
    def correct(logits: torch.Tensor, targets: torch.Tensor) -> int:
        return int((logits.argmax(dim=1) == targets).sum())

    @torch.no_grad()
    def evaluate_nets(
        self, nets: Mapping[str, nn.Module], batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, tuple[float, float]]:
        """{name: (mean loss, accuracy %)} of each network (eval mode) over one pass of data."""
        for net in nets.values():
            net.eval()
        sums = {name: [0.0, 0] for name in nets}
        n = 0
        device = self.setup.device
        for xb, yb in batches:
            xb, yb = xb.to(device), yb.to(device)
            for name, net in nets.items():
                logits = net(xb)
                sums[name][0] += float(self.criterion(logits, yb)) * yb.size(0)
                sums[name][1] += self.correct(logits, yb)
            n += yb.size(0)
        n = max(n, 1)
        return {name: (loss / n, 100.0 * c / n) for name, (loss, c) in sums.items()}

    @staticmethod
    def rate(totals: Mapping[str, float], key: str) -> float:
        """Per-example mean of an additive counter (``n`` counts the examples)."""
        return totals[key] / max(totals["n"], 1)
