"""SGL as a scheme on any base: K learners, each an architecture with two weight sets.

One iteration (Algorithm 1 of Du & Xie 2021, in DARTS' order: the architecture step
first, from the unrolled steps at the current weights, then the real steps):

3. every A_k <- Adam step on grad_{A_k} sum_j L(W'_j, A_j, D^val)      (mlonas.mlo.sgl)
1. every V_k <- SGD step on L(V_k, A_k, D^tr)                           (Eq. 5)
   every learner pseudo-labels the unlabeled batch with its new V_k (soft labels)
2. every W_k <- SGD step on L(W_k, A_k, D^tr) + lambda sum_{j!=k} CE(W_k(u), p_j)   (Eq. 6)

Learner k's architecture is shared by its two supernets (the V-network only produces
pseudo-labels; the W-network is the one validated, evaluated and whose cell is derived).
Learners start from different random initializations: they are drawn one after the
other from the seeded RNG. Every base's options apply to both supernets of every learner
(P-DARTS' stages rebuild all of them). The unlabeled images are another dataset's training
images (``datasets.<d>.unlabeled``), a batch of the search's batch size per step.

History: per learner ``learner{k}_train_loss/_train_acc`` (W-network, labeled loss) and
``learner{k}_val_loss/_val_acc``; ``train_*``/``val_*`` are their means over learners; and
``pl_agreement``, the share of unlabeled images on which all learners' pseudo-labels have
the same argmax. Which learner's cell a seed reports is ``select``: the lowest final
search validation loss (default), the highest accuracy, or a fixed learner number.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from mlonas.errors import MlonasError
from mlonas.mlo import VirtualStep
from mlonas.mlo.sgl import Learner, pseudo_label_loss, sgl_arch_grad
from mlonas.search.bases import ArchState
from mlonas.search.common import Counters, Scheme, SchemeSetup, StepBatch
from mlonas.settings import SchemeOptions, SglOptions
from mlonas.space.supernet import Supernet


def learner_names(k: int) -> list[str]:
    return [f"learner{i + 1}" for i in range(k)]


def select_learner(select: str | int, history: list[dict[str, Any]], names: list[str]) -> str:
    """The learner whose cell a seed reports, from the final epoch's validation metrics."""
    if isinstance(select, int):
        if not 1 <= select <= len(names):
            raise MlonasError(f"schemes.sgl.select: learner {select} of {len(names)} learners")
        return names[select - 1]
    last = history[-1]
    if select == "min_val_loss":
        return min(names, key=lambda n: (last[f"{n}_val_loss"], names.index(n)))
    return min(names, key=lambda n: (-last[f"{n}_val_acc"], names.index(n)))


class SglScheme(Scheme):
    name = "sgl"
    PLAIN_VIEW = False
    UNLABELED = True

    @staticmethod
    def architecture_names(options: SchemeOptions) -> list[str]:
        assert isinstance(options, SglOptions)
        return learner_names(options.learners)

    def __init__(self, setup: SchemeSetup, states: dict[str, ArchState]) -> None:
        super().__init__(setup, states)
        s, nc, dev = setup.settings, setup.num_classes, setup.device
        self.names = learner_names(self.options.learners)
        self.learners: list[Learner] = []
        for name in self.names:
            w_net = setup.base.build(s, nc, states[name]).to(dev)
            v_net = setup.base.build(s, nc, states[name]).to(dev).tie_architecture(w_net)
            self.learners.append(Learner(v_net, w_net))
        # per learner k: SGD on V_k, SGD on W_k, Adam on A_k (held by the W-network)
        self.v_opts = [
            self.weight_optimizer(learner.v_net.weight_parameters(), s) for learner in self.learners
        ]
        self.w_opts = [
            self.weight_optimizer(learner.w_net.weight_parameters(), s) for learner in self.learners
        ]
        self.a_opts = [
            self.arch_optimizer(learner.w_net.arch_parameters(), s) for learner in self.learners
        ]

    @property
    def options(self) -> SglOptions:
        """The setup's options, as the SGL options they are (SCHEMES pairs them)."""
        assert isinstance(self.setup.options, SglOptions)
        return self.setup.options

    def start_epoch(self, epoch: int, lr: float) -> None:
        for opt in (*self.v_opts, *self.w_opts):
            self.set_lr(opt, lr)

    def step(self, batch: StepBatch, *, update_arch: bool, epoch: int, step: int) -> Counters:
        s, where = self.setup.settings, self.where(epoch, step)
        lam = self.options.lam
        assert batch.unlabeled is not None
        x, y, u = batch.x, batch.y, batch.unlabeled
        for learner in self.learners:
            learner.v_net.train()
            learner.w_net.train()
        if update_arch:
            unrolled = self.setup.mode != "first_order"
            res = sgl_arch_grad(
                self.learners,
                self.criterion,
                (x, y),
                batch.val,
                u,
                lam=lam,
                mode=self.setup.mode,
                v_steps=[VirtualStep.from_optimizer(o) for o in self.v_opts] if unrolled else None,
                w_steps=[VirtualStep.from_optimizer(o) for o in self.w_opts] if unrolled else None,
                eps=s.fd_eps,
            )
            for learner, opt, grads, loss in zip(
                self.learners, self.a_opts, res.grads, res.val_losses, strict=True
            ):
                self.check_loss(loss, where, "architecture (validation) loss")
                self.arch_step(opt, learner.w_net.arch_parameters(), grads)
        # 1. every learner trains V_k (Eq. 5), then pseudo-labels u with it: p_k
        for learner, opt in zip(self.learners, self.v_opts, strict=True):
            loss = self.criterion(learner.v_net(x), y)
            self.weight_step(opt, learner.v_net.weight_parameters(), loss, where)
        with torch.no_grad():
            pseudo_labels = [torch.softmax(learner.v_net(u), dim=1) for learner in self.learners]
        votes = torch.stack([p.argmax(dim=1) for p in pseudo_labels])
        agree = int((votes == votes[0]).all(dim=0).sum())
        # 2. every learner trains W_k on D^tr and the others' pseudo-labels (Eq. 6)
        n, n_learners = y.size(0), len(self.learners)
        out: Counters = {"n": n, "loss_sum": 0.0, "correct": 0, "pl_agree": agree}
        out["pl_n"] = u.size(0)
        for k, (learner, opt) in enumerate(zip(self.learners, self.w_opts, strict=True)):
            logits = learner.w_net(x)
            labeled_loss = self.criterion(logits, y)
            others = [p for j, p in enumerate(pseudo_labels) if j != k]
            loss = labeled_loss + lam * pseudo_label_loss(learner.w_net(u), others)
            self.weight_step(opt, learner.w_net.weight_parameters(), loss, where)
            out[f"{self.names[k]}_loss_sum"] = float(labeled_loss.detach()) * n
            out[f"{self.names[k]}_correct"] = self.correct(logits, y)
            # the means over learners, for the scheme-independent train_loss / train_acc
            out["loss_sum"] += out[f"{self.names[k]}_loss_sum"] / n_learners
            out["correct"] += out[f"{self.names[k]}_correct"] / n_learners
        return out

    def train_metrics(self, totals: Counters) -> dict[str, float]:
        row = {
            "train_loss": self.rate(totals, "loss_sum"),
            "train_acc": 100 * self.rate(totals, "correct"),
        }
        for name in self.names:
            row[f"{name}_train_loss"] = self.rate(totals, f"{name}_loss_sum")
            row[f"{name}_train_acc"] = 100 * self.rate(totals, f"{name}_correct")
        row["pl_agreement"] = 100.0 * totals["pl_agree"] / max(totals["pl_n"], 1)
        return row

    def evaluate(self, batches: Iterable[tuple[Any, Any]]) -> dict[str, float]:
        res = self.evaluate_nets(self.architectures(), batches)
        row = {}
        for name, (loss, acc) in res.items():
            row[f"{name}_val_loss"], row[f"{name}_val_acc"] = loss, acc
        row["val_loss"] = sum(loss for loss, _ in res.values()) / len(res)
        row["val_acc"] = sum(acc for _, acc in res.values()) / len(res)
        return row

    def architectures(self) -> dict[str, Supernet]:
        """Learner k's architecture A_k, held by its W-network (the one validated)."""
        return {
            name: learner.w_net for name, learner in zip(self.names, self.learners, strict=True)
        }

    def supernets(self) -> list[Supernet]:
        return [net for learner in self.learners for net in (learner.v_net, learner.w_net)]

    def select(self, history: list[dict[str, Any]]) -> str:
        return select_learner(self.options.select, history, self.names)

    def carry_over(self, previous: Scheme) -> None:
        """The base's stage change, learner by learner (DrNAS: each learner's two weight sets
        widened, its one architecture, held by the W-network, carried once)."""
        assert isinstance(previous, SglScheme)
        base = self.setup.base
        for k, (old, new) in enumerate(zip(previous.learners, self.learners, strict=True)):
            w = [(previous.w_opts[k], self.w_opts[k]), (previous.a_opts[k], self.a_opts[k])]
            base.carry_over(old.w_net, new.w_net, w)
            base.carry_over(old.v_net, new.v_net, [(previous.v_opts[k], self.v_opts[k])], False)

    def state_dict(self) -> dict[str, Any]:
        return {
            "learners": [
                {"v_net": learner.v_net.state_dict(), "w_net": learner.w_net.state_dict()}
                for learner in self.learners
            ],
            "v_opts": [o.state_dict() for o in self.v_opts],
            "w_opts": [o.state_dict() for o in self.w_opts],
            "a_opts": [o.state_dict() for o in self.a_opts],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for learner, st in zip(self.learners, state["learners"], strict=True):
            learner.w_net.load_state_dict(st["w_net"])
            learner.v_net.load_state_dict(st["v_net"])
        for group, saved in (
            (self.v_opts, state["v_opts"]),
            (self.w_opts, state["w_opts"]),
            (self.a_opts, state["a_opts"]),
        ):
            for opt, st in zip(group, saved, strict=True):
                opt.load_state_dict(st)
