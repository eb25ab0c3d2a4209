"""LeaSE as a scheme on any base: explainer supernet, explanations, ResNet audience.

One iteration (Algorithm 1 of Hosseini & Xie 2021, in DARTS' order: the architecture
step first, from the unrolled steps at the current weights, then the real steps the
unrolled ones replay):

4. A  <- Adam step on grad_A [L(E', D_e^val) + gamma L(W', D_a^val)]   (mlonas.mlo.lease)
1. E  <- SGD step on L(E, A, D_e^tr)                                    (Eq. 6)
2. Delta[batch] <- projected step on the attack loss at the new E       (Eq. 7)
3. W  <- SGD step on l(audience(x * (1 + kappa (delta/eps)^2)), t)       (Eq. 8)

D_e^tr = D_a^tr is the search-train half and D_e^val = D_a^val the search-val half (paper
section 3.1), so one batch of each serves both models.

Choices the paper leaves open (all in params.yaml ``schemes.lease``):

- Delta is persistent state, one perturbation per search-train image, indexed by the
  image's position and updated only for the images of the current batch; it is saved in
  the checkpoint like the weights. Explanations belong to an image's pixels, so they are
  computed on, and applied to, the un-augmented image (``x_plain``); the explainer's own
  weight step keeps DARTS' random crop/flip, exactly as DARTS-2nd's does.
- Initialization: uniform in +-(``explanation_init`` * eps). Not zero: at delta = 0 the
  attack loss l(f(x + delta), f(x)) is at its minimum, its gradient is exactly zero, and
  the explanations would never move.
- Direction: ``ascent`` (Eq. 2's maximization, an adversarial attack) by default;
  ``descent`` reproduces the minus sign printed in Eq. 7.
- Projection onto the L-inf ball of radius ``explanation_eps`` after every step (as PGD),
  and the audience's input x * (1 + kappa (delta/eps)^2): see
  :class:`mlonas.mlo.lease.Explanations` for why not the literal delta * x.
- The audience is torchvision's ResNet with a CIFAR stem (:mod:`mlonas.space.audience`),
  trained with SGD (paper: lr 0.025 cosine, momentum 0.9, wd 3e-4), the search's gradient
  clipping, cosine-annealed over the whole search.

With ``order: first`` the inner solutions are constants and the audience term vanishes:
LeaSE-1st would be DARTS-1st with an audience that learns but never feeds back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from mlonas.mlo import VirtualStep
from mlonas.mlo.core import Functional
from mlonas.mlo.lease import Explanations, lease_arch_grad
from mlonas.runtime import cosine_lr
from mlonas.search.bases import ArchState
from mlonas.search.common import Counters, Scheme, SchemeSetup, StepBatch
from mlonas.settings import LeaseOptions, SchemeOptions
from mlonas.space.supernet import Supernet


def explanations_from(options: LeaseOptions) -> Explanations:
    return Explanations(
        lr=options.explanation_lr,
        direction=1.0 if options.explanation_direction == "ascent" else -1.0,
        eps=options.explanation_eps,
        weight=options.explanation_weight,
    )


class LeaseScheme(Scheme):
    name = "lease"
    PLAIN_VIEW = True
    UNLABELED = False

    @staticmethod
    def architecture_names(options: SchemeOptions) -> list[str]:
        return ["explainer"]

    def __init__(self, setup: SchemeSetup, states: dict[str, ArchState]) -> None:
        super().__init__(setup, states)
        s, o, dev = setup.settings, self.options, setup.device
        self.explainer: Supernet = setup.base.build(s, setup.num_classes, states["explainer"])
        self.explainer.to(dev)
        # imported here: torchvision (the audience's ResNet) costs seconds to import, and
        # only LeaSE searches need it (mlonas.data.augment)
        from mlonas.space.audience import AudienceResNet

        self.audience = AudienceResNet(o.audience_blocks, setup.num_classes, o.audience_width)
        self.audience.to(dev)
        self.explanations = explanations_from(o)
        init = o.explanation_init * o.explanation_eps
        self.delta = ((torch.rand(setup.n_train, *setup.image_shape) * 2 - 1) * init).to(dev)
        self.e_opt = self.weight_optimizer(self.explainer.weight_parameters(), s)
        self.a_opt = self.arch_optimizer(self.explainer.arch_parameters(), s)
        self.w_opt = torch.optim.SGD(
            self.audience.parameters(),
            lr=o.audience_lr,
            momentum=o.audience_momentum,
            weight_decay=o.audience_weight_decay,
        )

    @property
    def options(self) -> LeaseOptions:
        """The setup's options, as the LeaSE options they are (SCHEMES pairs them)."""
        assert isinstance(self.setup.options, LeaseOptions)
        return self.setup.options

    def start_epoch(self, epoch: int, lr: float) -> None:
        o = self.options
        self.set_lr(self.e_opt, lr)
        s = self.setup.settings
        total, first = self.setup.base.total_epochs(s), s.scheduler_step_first
        lr_w = cosine_lr(epoch, total, o.audience_lr, o.audience_lr_min, first)
        self.set_lr(self.w_opt, lr_w)

    def step(self, batch: StepBatch, *, update_arch: bool, epoch: int, step: int) -> Counters:
        s, o, where = self.setup.settings, self.options, self.where(epoch, step)
        assert batch.x_plain is not None
        x, y, xp = batch.x, batch.y, batch.x_plain
        idx = batch.index.to(self.delta.device)
        self.explainer.train()
        self.audience.train()
        if update_arch:
            unrolled = self.setup.mode != "first_order"
            res = lease_arch_grad(
                self.explainer,
                self.audience,
                self.criterion,
                (x, y),
                batch.val,
                xp,
                self.delta[idx],
                self.explanations,
                mode=self.setup.mode,
                gamma=o.gamma,
                e_step=VirtualStep.from_optimizer(self.e_opt) if unrolled else None,
                w_step=VirtualStep.from_optimizer(self.w_opt) if unrolled else None,
                eps=s.fd_eps,
            )
            self.check_loss(res.explainer_val_loss, where, "architecture (validation) loss")
            if res.audience_val_loss is not None:
                self.check_loss(res.audience_val_loss, where, "audience validation loss")
            self.arch_step(self.a_opt, self.explainer.arch_parameters(), res.grads)
        # 1. the explainer learns
        logits = self.explainer(x)
        loss = self.criterion(logits, y)
        self.weight_step(self.e_opt, self.explainer.weight_parameters(), loss, where)
        # 2. it explains its predictions on this batch (its running BN statistics untouched)
        f = Functional(self.explainer, self.criterion)
        d = self.delta[idx].clone().requires_grad_(True)
        attack = self.explanations.attack_loss(
            f, f.detached_weights(), [a.detach() for a in f.alphas], xp, d
        )
        self.check_loss(attack, where, "explanation (attack) loss")
        new, _ = self.explanations.step(self.delta[idx], torch.autograd.grad(attack, d)[0])
        self.delta[idx] = new.detach()
        # 3. the audience learns from the explained images
        a_logits = self.audience(self.explanations.audience_input(xp, self.delta[idx]))
        a_loss = self.criterion(a_logits, y)
        self.weight_step(
            self.w_opt, list(self.audience.parameters()), a_loss, where, "audience training loss"
        )
        n = y.size(0)
        return {
            "loss_sum": float(loss.detach()) * n,
            "correct": self.correct(logits, y),
            "audience_loss_sum": float(a_loss.detach()) * n,
            "audience_correct": self.correct(a_logits, y),
            "n": n,
        }

    def train_metrics(self, totals: Counters) -> dict[str, float]:
        eps = self.explanations.eps
        size = self.delta.abs()
        return {
            "train_loss": self.rate(totals, "loss_sum"),
            "train_acc": 100 * self.rate(totals, "correct"),
            "audience_train_loss": self.rate(totals, "audience_loss_sum"),
            "audience_train_acc": 100 * self.rate(totals, "audience_correct"),
            # how far the explanations moved: mean |delta|/eps and the share at the bound
            "explanation_abs_mean": float(size.mean()) / eps,
            "explanation_saturated": float((size >= eps * (1 - 1e-6)).float().mean()),
        }

    def evaluate(self, batches: Iterable[tuple[Any, Any]]) -> dict[str, float]:
        nets = {"explainer": self.explainer, "audience": self.audience}
        res = self.evaluate_nets(nets, batches)
        return {
            "val_loss": res["explainer"][0],
            "val_acc": res["explainer"][1],
            "audience_val_loss": res["audience"][0],
            "audience_val_acc": res["audience"][1],
        }

    def architectures(self) -> dict[str, Supernet]:
        return {"explainer": self.explainer}

    def select(self, history: list[dict[str, Any]]) -> str:
        return "explainer"

    def carry_over(self, previous: Scheme) -> None:
        """A stage change rebuilds the explainer (DrNAS carries it over pruned and widened:
        the base's carry_over); the audience (a fixed architecture), its optimizer and the
        explanations (of the images, not of a network) carry on."""
        assert isinstance(previous, LeaseScheme)
        self.setup.base.carry_over(
            previous.explainer,
            self.explainer,
            [(previous.e_opt, self.e_opt), (previous.a_opt, self.a_opt)],
        )
        self.audience, self.w_opt, self.delta = previous.audience, previous.w_opt, previous.delta

    def state_dict(self) -> dict[str, Any]:
        return {
            "explainer": self.explainer.state_dict(),
            "audience": self.audience.state_dict(),
            "e_opt": self.e_opt.state_dict(),
            "a_opt": self.a_opt.state_dict(),
            "w_opt": self.w_opt.state_dict(),
            "delta": self.delta,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.explainer.load_state_dict(state["explainer"])
        self.audience.load_state_dict(state["audience"])
        self.e_opt.load_state_dict(state["e_opt"])
        self.a_opt.load_state_dict(state["a_opt"])
        self.w_opt.load_state_dict(state["w_opt"])
        self.delta.copy_(state["delta"])
