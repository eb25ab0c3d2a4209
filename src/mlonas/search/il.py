"""Interleaving learning (IL) as a scheme on any base — an INTERPRETATION (docs/il.md).

The paper (Ban & Xie, arXiv 2103.07018) is known only by its abstract: K models
collaboratively learn one data encoder; model 1 trains it "for a while", passes it to
model 2, ..., and back to model 1, for several rounds; the stages form a multi-level
problem whose upper level searches the architecture. Our reading (each choice in
params.yaml ``schemes.il``):

- Model k = the supernet (the shared encoder) with head k, which classifies within class
  group S_k of the search dataset (``groups: contiguous``: K blocks of consecutive labels,
  CIFAR-10 with K = 2: {0-4}, {5-9}). Head k is rows S_k of the supernet's own classifier:
  no new modules, heads are disjoint parameter blocks, and the architecture record,
  derivation and export are the plain supernet's.
- Stage k's loss: CE(logits[:, S_k], y - min S_k) over the batch's examples in S_k, with
  only those examples forwarded (model k trains on its own data). A group with no example
  in a batch has no stage (and no validation term) in that iteration.
- One iteration, in DARTS' order (architecture step first, then the real steps):
  1. A <- Adam step on grad_A sum_k L_k^val(W_{R K}(A), A), the hypergradient through R
     rounds x K stages of virtual steps on the current batch (:func:`mlonas.mlo.il.il_arch_grad`);
  2. for k = 1..K: one SGD step of all weights on stage k's loss ("passing" the encoder
     is initialisation: stage k starts where stage k - 1 ended; no proximity term).
  One real step per stage, as every Xie-lab paper approximates a level by one step; the
  iterations then give the rounds ABAB... The weight optimizer is one SGD over the whole
  supernet, so in stage k the other heads' rows move by momentum and weight decay only.

History: ``train_*``/``val_*`` are the whole supernet's over all classes (train: the stage
forwards' logits, each example scored once, in the stage of its group); per head
``head{k}_train_loss/_train_acc`` and ``head{k}_val_loss/_val_acc`` are within its group;
``heads_val_loss`` is the upper level's objective sum_k L_k^val over the validation pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mlonas.errors import MlonasError
from mlonas.mlo import VirtualStep
from mlonas.mlo.il import IlGrad, Stage, il_arch_grad
from mlonas.search.bases import ArchState
from mlonas.search.common import Counters, Scheme, SchemeSetup, StepBatch
from mlonas.settings import IlOptions, SchemeOptions
from mlonas.space.supernet import Supernet


def class_groups(num_classes: int, models: int) -> list[range]:
    """K contiguous label blocks whose sizes differ by at most one (10 classes, K = 3:
    {0-2}, {3-5}, {6-9}); every class is in exactly one group. A group needs two classes:
    a one-class head's cross-entropy is identically 0 (nothing to learn, no gradient)."""
    if not 1 <= models <= num_classes // 2:
        raise MlonasError(
            f"schemes.il.models: {models} models need class groups of at least 2 classes,"
            f" and the search dataset has {num_classes} classes"
        )
    return [
        range(k * num_classes // models, (k + 1) * num_classes // models) for k in range(models)
    ]


@dataclass(frozen=True)
class HeadLoss:
    """Head k's loss on its group's examples: CE over the group's logits (rows S_k of the
    classifier), labels already remapped to 0..|S_k| - 1."""

    lo: int
    hi: int

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits[:, self.lo : self.hi], y)


def head_batches(x: torch.Tensor, y: torch.Tensor, groups: list[range]) -> list[Stage | None]:
    """Per group: (its head's loss, its examples with remapped labels), or None when the
    batch has none of its classes."""
    out: list[Stage | None] = []
    for g in groups:
        mask = (y >= g.start) & (y < g.stop)
        out.append(
            (HeadLoss(g.start, g.stop), (x[mask], y[mask] - g.start)) if bool(mask.any()) else None
        )
    return out


def head_names(models: int) -> list[str]:
    return [f"head{k + 1}" for k in range(models)]


class IlScheme(Scheme):
    """Interleaving learning (an interpretation): K class-group heads of one supernet take
    one SGD step each per iteration, in order, after an architecture step through R rounds
    of those K stages (see the module docstring for each choice)."""

    name = "il"
    PLAIN_VIEW = False
    UNLABELED = False

    @staticmethod
    def architecture_names(options: SchemeOptions) -> list[str]:
        return ["model"]

    def __init__(self, setup: SchemeSetup, states: dict[str, ArchState]) -> None:
        super().__init__(setup, states)
        s = setup.settings
        self.groups = class_groups(setup.num_classes, self.options.models)
        self.names = head_names(self.options.models)
        self.model: Supernet = setup.base.build(
            s, setup.num_classes, states["model"], setup.image_shape[-1]
        ).to(setup.device)
        self.w_opt = self.weight_optimizer(self.model.weight_parameters(), s)
        self.a_opt = self.arch_optimizer(self.model.arch_parameters(), s)

    @property
    def options(self) -> IlOptions:
        """The setup's options, as the IL options they are (SCHEMES pairs them)."""
        assert isinstance(self.setup.options, IlOptions)
        return self.setup.options

    def start_epoch(self, epoch: int, lr: float) -> None:
        self.set_lr(self.w_opt, lr)

    def arch_grad(self, batch: StepBatch, mode: str) -> IlGrad:
        """The hypergradient of this iteration: R rounds of the batch's K stages, the heads'
        validation losses on the validation batch (also what benchmarks/search_step.py
        compares across modes)."""
        stages = [st for st in head_batches(batch.x, batch.y, self.groups) if st is not None]
        vals = [st for st in head_batches(*batch.val, self.groups) if st is not None]
        step = None if mode == "first_order" else VirtualStep.from_optimizer(self.w_opt)
        return il_arch_grad(
            self.model,
            stages * self.options.rounds,
            vals,
            mode=mode,
            step=step,
            eps=self.setup.settings.fd_eps,
        )

    def step(self, batch: StepBatch, *, update_arch: bool, epoch: int, step: int) -> Counters:
        where = self.where(epoch, step)
        self.model.train()
        if update_arch:
            res = self.arch_grad(batch, self.setup.mode)
            self.check_loss(res.val_loss, where, "architecture (validation) loss")
            self.arch_step(self.a_opt, self.model.arch_parameters(), res.grads)
        out: Counters = {"n": batch.y.size(0), "loss_sum": 0.0, "correct": 0}
        stages = head_batches(batch.x, batch.y, self.groups)
        for name, group, stage in zip(self.names, self.groups, stages, strict=True):
            out |= {f"{name}_loss_sum": 0.0, f"{name}_correct": 0, f"{name}_n": 0}
            if stage is None:
                continue
            loss_fn, (x, y) = stage
            logits = self.model(x)
            loss = loss_fn(logits, y)
            self.weight_step(self.w_opt, self.model.weight_parameters(), loss, where)
            n, full = y.size(0), logits.detach()
            out[f"{name}_loss_sum"] = float(loss.detach()) * n
            out[f"{name}_correct"] = self.correct(full[:, group.start : group.stop], y)
            out[f"{name}_n"] = n
            # the whole supernet over all classes, on the same forward
            out["loss_sum"] += float(F.cross_entropy(full, y + group.start, reduction="sum"))
            out["correct"] += self.correct(full, y + group.start)
        return out

    def train_metrics(self, totals: Counters) -> dict[str, float]:
        row = {
            "train_loss": self.rate(totals, "loss_sum"),
            "train_acc": 100 * self.rate(totals, "correct"),
        }
        for name in self.names:
            n = max(totals[f"{name}_n"], 1)
            row[f"{name}_train_loss"] = totals[f"{name}_loss_sum"] / n
            row[f"{name}_train_acc"] = 100 * totals[f"{name}_correct"] / n
        return row

    @torch.no_grad()
    def evaluate(self, batches: Iterable[tuple[Any, Any]]) -> dict[str, float]:
        """The whole supernet over all classes, and each head within its group (eval mode)."""
        self.model.eval()
        sums = {key: 0.0 for key in ("loss", "correct", "n")}
        heads = {name: {key: 0.0 for key in sums} for name in self.names}
        dev = self.setup.device
        for xb, yb in batches:
            xb, yb = xb.to(dev), yb.to(dev)
            logits = self.model(xb)
            sums["loss"] += float(F.cross_entropy(logits, yb, reduction="sum"))
            sums["correct"] += self.correct(logits, yb)
            sums["n"] += yb.size(0)
            for name, group in zip(self.names, self.groups, strict=True):
                mask = (yb >= group.start) & (yb < group.stop)
                part, y = logits[mask][:, group.start : group.stop], yb[mask] - group.start
                heads[name]["loss"] += float(F.cross_entropy(part, y, reduction="sum"))
                heads[name]["correct"] += self.correct(part, y)
                heads[name]["n"] += y.size(0)
        n = max(sums["n"], 1)
        row = {"val_loss": sums["loss"] / n, "val_acc": 100 * sums["correct"] / n}
        for name, h in heads.items():
            row[f"{name}_val_loss"] = h["loss"] / max(h["n"], 1)
            row[f"{name}_val_acc"] = 100 * h["correct"] / max(h["n"], 1)
        row["heads_val_loss"] = sum(row[f"{name}_val_loss"] for name in self.names)
        return row

    def architectures(self) -> dict[str, Supernet]:
        return {"model": self.model}

    def select(self, history: list[dict[str, Any]]) -> str:
        return "model"

    def carry_over(self, previous: Scheme) -> None:
        """The base's stage change (DrNAS: the supernet pruned and widened, P-DARTS: none);
        the heads are classifier rows, carried with it."""
        assert isinstance(previous, IlScheme)
        self.setup.base.carry_over(
            previous.model, self.model, [(previous.w_opt, self.w_opt), (previous.a_opt, self.a_opt)]
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "w_opt": self.w_opt.state_dict(),
            "a_opt": self.a_opt.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
