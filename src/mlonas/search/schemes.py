"""Schemes: how the weights and architecture(s) of a search are updated each step.

``plain`` is the DARTS bilevel scheme: one supernet, an architecture step on a validation
batch (gradient from :mod:`mlonas.mlo` in the method's order), then a weight step on a
training batch, both on the search objective (:mod:`.objective`: the labels'
cross-entropy, or MAE-NAS' masked reconstruction). ``lease`` (:mod:`.lease`), ``sgl``
(:mod:`.sgl`), and the interpretations ``lbt`` (:mod:`.lbt`) and ``il`` (:mod:`.il`) are
the multi-level schemes. All of them implement
:class:`mlonas.search.common.Scheme`, so every base works with every scheme and the loop
never asks which one it runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mlonas.mlo import VirtualStep, darts_arch_grad
from mlonas.search.bases import ArchState
from mlonas.search.common import Counters, Scheme, SchemeSetup, StepBatch
from mlonas.search.il import IlScheme
from mlonas.search.lbt import LbtScheme
from mlonas.search.lease import LeaseScheme
from mlonas.search.objective import Classification, make_objective
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
        # search.objective: classification (the papers'), or MAE-NAS' masked reconstruction,
        # whose module is the supernet wrapped with a decoder (mlonas.search.objective)
        self.objective = make_objective(s, setup.seed)
        self.supernet: Supernet = setup.base.build(
            s, setup.num_classes, states["model"], image_size
        )
        self.model = self.objective.wrap(self.supernet).to(setup.device)
        self.w_opt = self.weight_optimizer(self.model.weight_parameters(), s)
        # A base without an architecture (MSR-DARTS) gets no optimizer: Adam refuses an
        # empty parameter list, and nothing would step it (updates_architecture is False).
        arch = self.model.arch_parameters()
        self.a_opt = self.arch_optimizer(arch, s) if arch else None

    def start_epoch(self, epoch: int, lr: float) -> None:
        self.set_lr(self.w_opt, lr)

    def step(self, batch: StepBatch, *, update_arch: bool, epoch: int, step: int) -> Counters:
        s, where = self.setup.settings, self.where(epoch, step)
        objective = self.objective
        self.model.train()
        # Any random input of the objective (MAE's masks) is drawn here, before the
        # hypergradient: all its forwards, and the weight step, see the same draw.
        train = objective.prepare(batch.x, batch.y)
        if update_arch:
            assert self.a_opt is not None, "architecture step on a base without architecture"
            virtual = (
                None if self.setup.mode == "first_order" else VirtualStep.from_optimizer(self.w_opt)
            )
            grads, val_loss = darts_arch_grad(
                self.model,
                objective.loss_fn,
                train,
                objective.prepare(*batch.val),
                mode=self.setup.mode,
                step=virtual,
                eps=s.fd_eps,
                bn_stats=s.arch_bn_stats,
            )
            self.check_loss(val_loss, where, "architecture (validation) loss")
            self.arch_step(self.a_opt, self.model.arch_parameters(), grads)
        out = self.model(train[0])
        loss = objective.loss_fn(out, train[1])
        self.weight_step(self.w_opt, self.model.weight_parameters(), loss, where)
        return objective.counters(out, train[1], loss)

    def train_metrics(self, totals: Counters) -> dict[str, float]:
        return self.objective.metrics(totals, "train")

    def evaluate(self, batches: Iterable[tuple[Any, Any]]) -> dict[str, float]:
        if isinstance(self.objective, Classification):
            # the labels' loss and accuracy, as every scheme evaluates its networks
            loss, acc = self.evaluate_nets({"model": self.model}, batches)["model"]
            return {"val_loss": loss, "val_acc": acc}
        return self.objective.evaluate(self.model, batches, self.setup.device)

    def architectures(self) -> dict[str, Supernet]:
        return {"model": self.supernet}

    def select(self, history: list[dict[str, Any]]) -> str:
        return "model"

    def carry_over(self, previous: Scheme) -> None:
        """The base's stage change (DrNAS: the supernet pruned and widened, P-DARTS: none);
        the objective's random stream runs on."""
        assert isinstance(previous, PlainScheme)
        self.setup.base.carry_over(
            previous.model, self.model, [(previous.w_opt, self.w_opt), (previous.a_opt, self.a_opt)]
        )
        self.objective.load_state_dict(previous.objective.state_dict())

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "w_opt": self.w_opt.state_dict(),
            "a_opt": None if self.a_opt is None else self.a_opt.state_dict(),
            "objective": self.objective.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["w_opt"])
        if self.a_opt is not None:
            self.a_opt.load_state_dict(state["a_opt"])
        self.objective.load_state_dict(state["objective"])


SCHEMES: dict[str, type[Scheme]] = {
    "plain": PlainScheme,
    "lease": LeaseScheme,
    "sgl": SglScheme,
    "il": IlScheme,
    "lbt": LbtScheme,
}
