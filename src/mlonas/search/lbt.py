"""LBT as a scheme on any base: a teacher supernet teaches a fixed-architecture student.

INTERPRETATION of learning by teaching (Sheth, Jiang & Xie, arXiv 2103.07009): the
paper's method section was not accessible, so every choice below is ours (docs/lbt.md,
params.yaml ``schemes.lbt``). One iteration, in DARTS' order (the architecture step
first, from the unrolled steps at the current weights, then the real steps the unrolled
ones replay), as LeaSE and SGL run in mlonas:

3. A <- Adam step on grad_A [L(W', A, D^val) + gamma L(V', D^val)]      (mlonas.mlo.lbt)
1. W <- SGD step on L(W, A, D^tr)                           (the teacher learns)
2. p <- softmax(f(u; W, A)) with the new W, soft, no gradient     (the teacher teaches)
   V <- ONE SGD step on L(V, D^tr) + lambda mean CE(f(u; V), p)   (the student learns)

One combined student step, so the virtual step of the hypergradient replays exactly the
real one (the X-ray code of the same group takes two student steps, pseudo-labeled then
labeled, and unrolls a different one). The pseudo-labelling forward pass runs on private
copies of the teacher's BN buffers (mlonas.mlo.core.Functional): the teacher's running
statistics, which its evaluation uses, see only its own training batches, as in every
hypergradient forward. D^tr and D^val are the search halves (one batch of each serves
both models); u is a batch of SGL's unlabeled images (``datasets.<d>.unlabeled``).

The student is LeaSE's audience class (torchvision's ResNet with a CIFAR stem,
:mod:`mlonas.space.audience`), trained with SGD cosine-annealed over the whole search from
``student_lr`` to ``student_lr_min`` and the search's gradient clipping, as LeaSE's
audience. With ``order: first`` the student term vanishes: LBT-1st is DARTS-1st with a
student that learns but never feeds back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from mlonas.mlo import VirtualStep
from mlonas.mlo.core import Functional, soft_cross_entropy
from mlonas.mlo.lbt import lbt_arch_grad
from mlonas.runtime import cosine_lr
from mlonas.search.bases import ArchState
from mlonas.search.common import Counters, Scheme, SchemeSetup, StepBatch
from mlonas.settings import LbtOptions, SchemeOptions
from mlonas.space.supernet import Supernet


class LbtScheme(Scheme):
    """Learning by teaching (an interpretation): the teacher supernet's architecture step
    through its own and a fixed student's validation losses, then the teacher's, and the
    student's pseudo-labelled, weight steps (module docstring)."""

    name = "lbt"
    PLAIN_VIEW = False
    UNLABELED = True

    @staticmethod
    def architecture_names(options: SchemeOptions) -> list[str]:
        return ["teacher"]

    def __init__(self, setup: SchemeSetup, states: dict[str, ArchState]) -> None:
        super().__init__(setup, states)
        s, o, dev = setup.settings, self.options, setup.device
        self.teacher: Supernet = setup.base.build(s, setup.num_classes, states["teacher"])
        self.teacher.to(dev)
        # imported here: torchvision costs seconds to import (see mlonas.search.lease)
        from mlonas.space.audience import AudienceResNet

        self.student = AudienceResNet(o.student_blocks, setup.num_classes, o.student_width)
        self.student.to(dev)
        self.t_opt = self.weight_optimizer(self.teacher.weight_parameters(), s)
        self.a_opt = self.arch_optimizer(self.teacher.arch_parameters(), s)
        self.s_opt = torch.optim.SGD(
            self.student.parameters(),
            lr=o.student_lr,
            momentum=o.student_momentum,
            weight_decay=o.student_weight_decay,
        )

    @property
    def options(self) -> LbtOptions:
        """The setup's options, as the LBT options they are (SCHEMES pairs them)."""
        assert isinstance(self.setup.options, LbtOptions)
        return self.setup.options

    def start_epoch(self, epoch: int, lr: float) -> None:
        o, s = self.options, self.setup.settings
        self.set_lr(self.t_opt, lr)
        total = self.setup.base.total_epochs(s)
        lr_s = cosine_lr(epoch, total, o.student_lr, o.student_lr_min, s.scheduler_step_first)
        self.set_lr(self.s_opt, lr_s)

    def step(self, batch: StepBatch, *, update_arch: bool, epoch: int, step: int) -> Counters:
        s, o, where = self.setup.settings, self.options, self.where(epoch, step)
        assert batch.unlabeled is not None
        x, y, u = batch.x, batch.y, batch.unlabeled
        self.teacher.train()
        self.student.train()
        if update_arch:
            unrolled = self.setup.mode != "first_order"
            res = lbt_arch_grad(
                self.teacher,
                self.student,
                self.criterion,
                (x, y),
                batch.val,
                u,
                lam=o.lam,
                gamma=o.gamma,
                mode=self.setup.mode,
                t_step=VirtualStep.from_optimizer(self.t_opt) if unrolled else None,
                s_step=VirtualStep.from_optimizer(self.s_opt) if unrolled else None,
                eps=s.fd_eps,
            )
            self.check_loss(res.teacher_val_loss, where, "architecture (validation) loss")
            if res.student_val_loss is not None:
                self.check_loss(res.student_val_loss, where, "student validation loss")
            self.arch_step(self.a_opt, self.teacher.arch_parameters(), res.grads)
        # 1. the teacher learns
        logits = self.teacher(x)
        loss = self.criterion(logits, y)
        self.weight_step(self.t_opt, self.teacher.weight_parameters(), loss, where)
        # 2. it pseudo-labels u with its new weights (its running BN statistics untouched)
        f = Functional(self.teacher, self.criterion)
        with torch.no_grad():
            pseudo = torch.softmax(
                f.logits(f.detached_weights(), [a.detach() for a in f.alphas], u), dim=1
            )
        # 3. the student learns from the labeled batch and the pseudo-labels in one step
        s_logits = self.student(x)
        s_loss = self.criterion(s_logits, y)
        u_logits = self.student(u)
        pl_loss = soft_cross_entropy(u_logits, pseudo).mean()
        self.weight_step(
            self.s_opt,
            list(self.student.parameters()),
            s_loss + o.lam * pl_loss,
            where,
            "student training loss",
        )
        n = y.size(0)
        return {
            "loss_sum": float(loss.detach()) * n,
            "correct": self.correct(logits, y),
            "student_loss_sum": float(s_loss.detach()) * n,
            "student_correct": self.correct(s_logits, y),
            # per unlabeled image: the pseudo-label loss and the student's agreement
            "pl_loss_sum": float(pl_loss.detach()) * u.size(0),
            "pl_agree": self.correct(u_logits, pseudo.argmax(dim=1)),
            "pl_n": u.size(0),
            "n": n,
        }

    def train_metrics(self, totals: Counters) -> dict[str, float]:
        pl_n = max(totals["pl_n"], 1)
        return {
            "train_loss": self.rate(totals, "loss_sum"),
            "train_acc": 100 * self.rate(totals, "correct"),
            "student_train_loss": self.rate(totals, "student_loss_sum"),
            "student_train_acc": 100 * self.rate(totals, "student_correct"),
            "student_pl_loss": totals["pl_loss_sum"] / pl_n,
            # how often the student's argmax on u is the teacher's (before its step)
            "pl_agreement": 100.0 * totals["pl_agree"] / pl_n,
        }

    def evaluate(self, batches: Iterable[tuple[Any, Any]]) -> dict[str, float]:
        res = self.evaluate_nets({"teacher": self.teacher, "student": self.student}, batches)
        return {
            "val_loss": res["teacher"][0],
            "val_acc": res["teacher"][1],
            "student_val_loss": res["student"][0],
            "student_val_acc": res["student"][1],
        }

    def architectures(self) -> dict[str, Supernet]:
        return {"teacher": self.teacher}

    def select(self, history: list[dict[str, Any]]) -> str:
        return "teacher"

    def carry_over(self, previous: Scheme) -> None:
        """A stage change rebuilds the teacher (the base's carry_over); the student (a fixed
        architecture) and its optimizer carry on, as LeaSE's audience does."""
        assert isinstance(previous, LbtScheme)
        self.setup.base.carry_over(
            previous.teacher,
            self.teacher,
            [(previous.t_opt, self.t_opt), (previous.a_opt, self.a_opt)],
        )
        self.student, self.s_opt = previous.student, previous.s_opt

    def state_dict(self) -> dict[str, Any]:
        return {
            "teacher": self.teacher.state_dict(),
            "student": self.student.state_dict(),
            "t_opt": self.t_opt.state_dict(),
            "a_opt": self.a_opt.state_dict(),
            "s_opt": self.s_opt.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.student.load_state_dict(state["student"])
        self.t_opt.load_state_dict(state["t_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
        self.s_opt.load_state_dict(state["s_opt"])
