"""Schemes: how the weights and architecture(s) of a search are updated each step.

``plain`` is the DARTS bilevel scheme: one supernet, an architecture step on a validation
batch (gradient from :mod:`mlonas.mlo` in the method's order), then a weight step on a
training batch. ``lease`` (:mod:`.lease`), ``sgl`` (:mod:`.sgl`) and ``lbt`` (:mod:`.lbt`,
an interpretation) are the multi-level schemes. All of them implement
:class:`mlonas.search.common.Scheme`, so every base works with every scheme and the loop
never asks which one it runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mlonas.mlo import VirtualStep, darts_arch_grad
from mlonas.search.bases import ArchState
from mlonas.search.common import Counters, Scheme, SchemeSetup, StepBatch
from mlonas.search.lbt import LbtScheme
from mlonas.search.lease import LeaseScheme
from mlonas.search.sgl import SglScheme
from mlonas.settings import SchemeOptions
from mlonas.space.supernet import Supernet


class PlainScheme(Scheme):
    """DARTS: architecture step (validation batch) then weight step (training batch)."""

    name = "plain"
    PLAIN_VIEW = False
    UNLABELED = False

    @staticmethod
    def architecture_names(options: SchemeOptions) -> list[str]:
        return ["model"]

    def __init__(self, setup: SchemeSetup, states: dict[str, ArchState]) -> None:
        super().__init__(setup, states)
        s = setup.settings
        image_size = setup.image_shape[-1]
        self.model: Supernet = setup.base.build(
            s, setup.num_classes, states["model"], image_size
        ).to(setup.device)
        self.w_opt = self.weight_optimizer(self.model.weight_parameters(), s)
        # A base without an architecture (MSR-DARTS) gets no optimizer: Adam refuses an
        # empty parameter list, and nothing would step it (updates_architecture is False).
        arch = self.model.arch_parameters()
        self.a_opt = self.arch_optimizer(arch, s) if arch else None

    def start_epoch(self, epoch: int, lr: float) -> None:
        self.set_lr(self.w_opt, lr)

    def step(self, batch: StepBatch, *, update_arch: bool, epoch: int, step: int) -> Counters:
        s, where = self.setup.settings, self.where(epoch, step)
        self.model.train()
        if update_arch:
            assert self.a_opt is not None, "architecture step on a base without architecture"
            virtual = (
                None if self.setup.mode == "first_order" else VirtualStep.from_optimizer(self.w_opt)
            )
            grads, val_loss = darts_arch_grad(
                self.model,
                self.criterion,
                (batch.x, batch.y),
                batch.val,
                mode=self.setup.mode,
                step=virtual,
                eps=s.fd_eps,
                bn_stats=s.arch_bn_stats,
            )
            self.check_loss(val_loss, where, "architecture (validation) loss")
            self.arch_step(self.a_opt, self.model.arch_parameters(), grads)
        logits = self.model(batch.x)
        loss = self.criterion(logits, batch.y)
        self.weight_step(self.w_opt, self.model.weight_parameters(), loss, where)
        n = batch.y.size(0)
        return {
            "loss_sum": float(loss.detach()) * n,
            "correct": self.correct(logits, batch.y),
            "n": n,
        }

    def train_metrics(self, totals: Counters) -> dict[str, float]:
        return {
            "train_loss": self.rate(totals, "loss_sum"),
            "train_acc": 100 * self.rate(totals, "correct"),
        }

    def evaluate(self, batches: Iterable[tuple[Any, Any]]) -> dict[str, float]:
        loss, acc = self.evaluate_nets({"model": self.model}, batches)["model"]
        return {"val_loss": loss, "val_acc": acc}

    def architectures(self) -> dict[str, Supernet]:
        return {"model": self.model}

    def select(self, history: list[dict[str, Any]]) -> str:
        return "model"

    def carry_over(self, previous: Scheme) -> None:
        """The base's stage change (DrNAS: the supernet pruned and widened, P-DARTS: none)."""
        assert isinstance(previous, PlainScheme)
        self.setup.base.carry_over(
            previous.model, self.model, [(previous.w_opt, self.w_opt), (previous.a_opt, self.a_opt)]
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "w_opt": self.w_opt.state_dict(),
            "a_opt": None if self.a_opt is None else self.a_opt.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["w_opt"])
        if self.a_opt is not None:
            self.a_opt.load_state_dict(state["a_opt"])


SCHEMES: dict[str, type[Scheme]] = {
    "plain": PlainScheme,
    "lease": LeaseScheme,
    "sgl": SglScheme,
    "lbt": LbtScheme,
}
