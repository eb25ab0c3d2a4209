"""Schemes: how the weights and architecture(s) of a search are updated each step.

``plain`` is the DARTS bilevel scheme: one supernet, an architecture step on a validation
batch (gradient from :mod:`mlonas.mlo` in the method's order), then a weight step on a
training batch. LeaSE and SGL will be further schemes behind the same interface:
``step``, ``evaluate``, ``state_dict``/``load_state_dict``, ``architectures``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from mlonas.checkpoint import check_finite
from mlonas.mlo import VirtualStep, darts_arch_grad
from mlonas.search.bases import ArchState, Base
from mlonas.space.supernet import Supernet


def accuracy_count(logits: torch.Tensor, targets: torch.Tensor) -> int:
    return int((logits.argmax(dim=1) == targets).sum())


class PlainScheme:
    """DARTS: architecture step (validation batch) then weight step (training batch)."""

    name = "plain"
    ARCHITECTURES = ("model",)

    def __init__(
        self,
        base: Base,
        settings: dict[str, Any],
        num_classes: int,
        mode: str,
        device: torch.device,
        seed: int,
        states: dict[str, ArchState],
    ) -> None:
        self.base = base
        self.settings = settings
        self.mode = mode
        self.seed = seed
        self.device = device
        self.model: Supernet = base.build(settings, num_classes, states["model"]).to(device)
        self.criterion = nn.CrossEntropyLoss()
        self.w_opt = torch.optim.SGD(
            self.model.weight_parameters(),
            lr=settings["lr"],
            momentum=settings["momentum"],
            weight_decay=settings["weight_decay"],
        )
        self.a_opt = torch.optim.Adam(
            self.model.arch_parameters(),
            lr=settings["arch_lr"],
            betas=tuple(settings["arch_betas"]),
            weight_decay=settings["arch_weight_decay"],
        )

    def set_lr(self, lr: float) -> None:
        for group in self.w_opt.param_groups:
            group["lr"] = lr

    def step(
        self,
        train_batch: tuple[torch.Tensor, torch.Tensor],
        val_batch: tuple[torch.Tensor, torch.Tensor],
        *,
        update_arch: bool,
        epoch: int,
        step: int,
    ) -> dict[str, float]:
        self.model.train()
        x, y = (t.to(self.device) for t in train_batch)
        if update_arch:
            xv, yv = (t.to(self.device) for t in val_batch)
            virtual = None if self.mode == "first_order" else VirtualStep.from_optimizer(self.w_opt)
            grads, val_loss = darts_arch_grad(
                self.model,
                self.criterion,
                (x, y),
                (xv, yv),
                mode=self.mode,
                step=virtual,
                eps=self.settings["fd_eps"],
            )
            check_finite(val_loss, epoch + 1, step + 1, self.seed, "architecture (validation) loss")
            self.a_opt.zero_grad(set_to_none=True)
            for p, g in zip(self.model.arch_parameters(), grads, strict=True):
                p.grad = g
            if "arch_grad_clip" in self.settings:  # P-DARTS clips the architecture gradient
                nn.utils.clip_grad_norm_(
                    self.model.arch_parameters(), self.settings["arch_grad_clip"]
                )
            self.a_opt.step()
        self.w_opt.zero_grad(set_to_none=True)
        logits = self.model(x)
        loss = self.criterion(logits, y)
        check_finite(loss, epoch + 1, step + 1, self.seed)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.weight_parameters(), self.settings["grad_clip"])
        self.w_opt.step()
        return {
            "loss_sum": float(loss.detach()) * y.size(0),
            "correct": accuracy_count(logits, y),
            "n": y.size(0),
        }

    @torch.no_grad()
    def evaluate(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        self.model.eval()
        loss_sum, correct, n = 0.0, 0, 0
        for xb, yb in batches:
            xb, yb = xb.to(self.device), yb.to(self.device)
            logits = self.model(xb)
            loss_sum += float(self.criterion(logits, yb)) * yb.size(0)
            correct += accuracy_count(logits, yb)
            n += yb.size(0)
        return {"val_loss": loss_sum / max(n, 1), "val_acc": 100.0 * correct / max(n, 1)}

    def architectures(self) -> dict[str, Supernet]:
        """The supernet(s) whose architecture this scheme searches, by name."""
        return {"model": self.model}

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


SCHEMES = {"plain": PlainScheme}
