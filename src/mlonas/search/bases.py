"""Bases of the DARTS family: what differs between them is the supernet, the schedule
and the derivation rule — nothing else (docs/design.md, "Methods are compositions").

A base turns the method's search settings into a :class:`SupernetSpec`, says in which
epochs the architecture is updated, sets the per-epoch knobs of the supernet (DARTS-'s
auxiliary-skip beta, P-DARTS' skip-connect dropout), and, for P-DARTS, splits the search
into stages that prune each edge's candidate ops (DrNAS: stages that prune and widen, its
weights, alphas and optimizer states carried over). Schemes (plain, LeaSE, SGL) receive the
base and never branch on which one it is; the loop only asks it questions.

An *architecture state* is the JSON-able part of a supernet's definition that the
schedule changes (the stage and each edge's candidate ops); the loop checkpoints it so a
resumed P-DARTS search rebuilds the supernet of the stage it was in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from mlonas.errors import MlonasError
from mlonas.runtime import cosine_lr
from mlonas.settings import SearchSettings
from mlonas.space.broad import BroadSpec, BroadSupernet
from mlonas.space.genotype import MIN_STABLE_RANK, PRIMITIVES
from mlonas.space.msr import PRIMITIVES_SPECTRAL, StableRankSupernet
from mlonas.space.pruning import prune_ops, top_ops
from mlonas.space.supernet import Supernet, SupernetSpec

#: DrNAS' candidate ops: DARTS' without ``none``, in DARTS' order (DrNAS
#: DARTS-space/genotypes.py:5-14).
DRNAS_PRIMITIVES = tuple(p for p in PRIMITIVES if p != "none")

ArchState = dict[str, Any]


@dataclass(frozen=True)
class Base:
    """A DARTS-family base as a set of options (defaults: DARTS, Liu et al. 2019).

    The settings ``s`` are the method's :class:`SearchSettings`; the keys a base-specific
    option reads (``stage_layers`` ...) are set wherever the option is on (validated at
    load time by :func:`mlonas.config.validate_params`)."""

    name: str
    partial_channels: bool = False  # PC-DARTS: K = search.partial_channels
    edge_normalization: bool = False  # PC-DARTS: beta per edge
    aux_skip: bool = False  # DARTS-: auxiliary skip, beta 1 -> 0
    progressive: bool = False  # stages of search.stage_ops (P-DARTS: and stage_layers)
    widen: bool = False  # DrNAS: a stage carries the supernet over, pruned and widened
    primitives: tuple[str, ...] = PRIMITIVES
    mixing: str = "softmax"  # DrNAS: dirichlet
    derivation: str = "darts"  # P-DARTS: pdarts
    # MSR-DARTS: no alphas; spectrally normalised convs mixed by softmax(-stable rank)
    stable_rank: bool = False
    # B-DARTS: the broad supernet (mlonas.space.broad), search.en_layers enhancement cells
    broad: bool = False

    @property
    def learns_architecture(self) -> bool:
        """Whether the supernet has architecture parameters that a scheme updates.
        MSR-DARTS' has none (``arch_parameters()`` is empty); only scheme plain in first
        order runs it (mlonas.config.BASES_WITHOUT_ARCHITECTURE; a test keeps them equal)."""
        return not self.stable_rank

    # -- schedule -------------------------------------------------------------------
    def num_stages(self, s: SearchSettings) -> int:
        return len(s.stage_ops) if self.progressive else 1

    def total_epochs(self, s: SearchSettings) -> int:
        """``search.epochs`` per stage (P-DARTS: 25 per stage; others: one stage)."""
        return s.epochs * self.num_stages(s)

    def stage_of(self, epoch: int, s: SearchSettings) -> tuple[int, int]:
        """(stage, epoch within the stage), both 0-based."""
        return divmod(epoch, s.epochs)

    def updates_architecture(self, epoch: int, s: SearchSettings) -> bool:
        """No architecture steps in the first ``warmup_epochs`` of each stage (PC-DARTS:
        15; P-DARTS: 10 per stage; DARTS: 0); never for a base without an architecture."""
        return self.learns_architecture and self.stage_of(epoch, s)[1] >= s.warmup_epochs

    def lr(self, epoch: int, s: SearchSettings) -> float:
        """Cosine annealing within each stage: P-DARTS restarts it with each new network;
        DrNAS carries its scheduler over (net2wider.configure_scheduler), one cosine over
        the whole search."""
        if self.widen:
            return cosine_lr(epoch, self.total_epochs(s), s.lr, s.lr_min, s.scheduler_step_first)
        e = self.stage_of(epoch, s)[1]
        return cosine_lr(e, s.epochs, s.lr, s.lr_min, s.scheduler_step_first)

    def arch_confidence(self, epoch: int, s: SearchSettings) -> float:
        """B-DARTS' confident learning rate: the factor c on this epoch's architecture
        steps, ``((epoch + 1) / E) ** p`` with the 0-based epoch and E the search's epochs
        (BNASv2CLR/train_search_b_confidence.py:147); 1 under ``arch_lr_schedule:
        constant``. The authors' code has one stage; over several (P-DARTS, DrNAS) E is
        all of them, so the confidence grows once over the whole search."""
        if s.arch_lr_schedule == "constant":
            return 1.0
        return ((epoch + 1) / self.total_epochs(s)) ** s.confidence_power

    def set_epoch(self, model: Supernet, epoch: int, s: SearchSettings) -> None:
        """Per-epoch knobs of the supernet that are schedule, not learned."""
        if self.stable_rank:  # MSR-DARTS refreshes its mixing at every epoch's start
            assert isinstance(model, StableRankSupernet)
            model.update_stable_ranks()
        if self.aux_skip:  # DARTS-' linear DecayScheduler: (E - e) / E, 0.02 in the last of 50
            model.aux_beta = 1.0 - epoch / self.total_epochs(s)
        if s.stage_skip_dropout is not None:  # P-DARTS' skip-connect dropout, per stage
            stage, e = self.stage_of(epoch, s)
            rate, warm, n = s.stage_skip_dropout[stage], s.warmup_epochs, s.epochs
            model.skip_dropout = (
                rate * (n - e - 1) / n if e < warm else rate * math.exp(-(e - warm) * 0.2)
            )

    # -- the supernet ---------------------------------------------------------------
    def initial_state(self, s: SearchSettings) -> ArchState:
        return {"stage": 0, "edge_ops_normal": None, "edge_ops_reduce": None}

    def spec(self, s: SearchSettings, num_classes: int, state: ArchState) -> SupernetSpec:
        stage = state["stage"]
        layers = s.stage_layers[stage] if self.progressive and s.stage_layers else s.layers
        if self.progressive and s.stage_partial_channels:  # DrNAS: K per stage
            partial = s.stage_partial_channels[stage]
        else:
            partial = s.partial_channels if self.partial_channels else 1
        as_tuple = lambda ops: None if ops is None else tuple(tuple(o) for o in ops)  # noqa: E731
        extra = {"en_layers": s.en_layers} if self.broad else {}
        return (BroadSpec if self.broad else SupernetSpec)(
            init_channels=s.init_channels,
            num_classes=num_classes,
            layers=layers,
            steps=s.steps,
            multiplier=s.multiplier,
            stem_multiplier=s.stem_multiplier,
            primitives=self.primitives,
            partial_channels=partial,
            edge_normalization=self.edge_normalization,
            aux_skip=self.aux_skip,
            edge_ops_normal=as_tuple(state["edge_ops_normal"]),
            edge_ops_reduce=as_tuple(state["edge_ops_reduce"]),
            max_skip_normal=s.max_skip_normal if self.derivation == "pdarts" else None,
            derivation=self.derivation,
            mixing=self.mixing,
            **extra,  # type: ignore[arg-type]
        )

    def build(
        self, s: SearchSettings, num_classes: int, state: ArchState, image_size: int | None = None
    ) -> Supernet:
        """The supernet; ``image_size`` (the search images' side) only MSR-DARTS needs: its
        spectral norms and stable ranks are of the conv operator on each edge's map size."""
        spec = self.spec(s, num_classes, state)
        if self.stable_rank:
            if image_size is None:
                raise ValueError(f"base {self.name} needs the image size to build its supernet")
            return StableRankSupernet(spec, image_size)
        if self.broad:
            assert isinstance(spec, BroadSpec)
            return BroadSupernet(spec)
        return Supernet(spec)

    def next_state(self, model: Supernet, stage: int, s: SearchSettings) -> ArchState:
        """Between stages: keep each edge's ``stage_ops[stage]`` strongest ops. P-DARTS
        by :func:`mlonas.space.pruning.prune_ops` (its tie rule); DrNAS by ``topk`` of the
        raw eta (``utils.prune``; ties, which torch leaves unspecified, keep the lower
        index), listed in the original op order."""
        keep = s.stage_ops[stage]
        state: ArchState = {"stage": stage}
        for kind, alpha in (("normal", model.alpha_normal), ("reduce", model.alpha_reduce)):
            values = alpha.detach().cpu().double()
            ops = model.spec.edge_ops(kind == "reduce")
            if self.widen:
                state[f"edge_ops_{kind}"] = [
                    top_ops(names, row.tolist(), keep)
                    for names, row in zip(ops, values, strict=True)
                ]
            else:
                probs = torch.softmax(values, dim=-1)
                state[f"edge_ops_{kind}"] = [
                    prune_ops(names, probs[e].tolist(), keep) for e, names in enumerate(ops)
                ]
        return state

    def carry_over(
        self,
        old: Supernet,
        new: Supernet,
        optimizers: list[tuple[torch.optim.Optimizer, torch.optim.Optimizer]],
        carry_arch: bool = True,
    ) -> None:
        """What a stage change keeps of a supernet: nothing for P-DARTS (a new, deeper
        network from scratch); DrNAS' weights widened, its kept alphas and the optimizers'
        states (:func:`mlonas.space.widen.carry_supernet`)."""
        if self.widen:
            from mlonas.space.widen import carry_supernet

            carry_supernet(old, new, optimizers, carry_arch)


BASES: dict[str, Base] = {
    "darts": Base("darts"),
    "pcdarts": Base("pcdarts", partial_channels=True, edge_normalization=True),
    "pdarts": Base("pdarts", progressive=True, derivation="pdarts"),
    "darts_minus": Base("darts_minus", aux_skip=True),
    # DrNAS (Chen et al. 2021): Dirichlet mixing, partial channels K per stage without
    # edge normalisation, two stages that prune and widen, no `none` op
    "drnas": Base(
        "drnas",
        progressive=True,
        widen=True,
        primitives=DRNAS_PRIMITIVES,
        mixing="dirichlet",
    ),
    # MSR-DARTS (official code mtaecchhi/msrdarts): no alphas, minimum stable rank
    "msrdarts": Base(
        "msrdarts", stable_rank=True, primitives=PRIMITIVES_SPECTRAL, derivation=MIN_STABLE_RANK
    ),
    # B-DARTS (official code zixiangding/BNASv2 @ d649dfd, model_search_b.py): the broad
    # supernet, 2 stride-2 convolution cells (alpha_normal) then search.en_layers
    # enhancement cells (alpha_reduce); DARTS' ops, softmax and derivation
    "bdarts": Base("bdarts", broad=True),
}
ORDERS = ("first", "second")


def get_base(name: str) -> Base:
    try:
        return BASES[name]
    except KeyError:
        raise MlonasError(f"unknown search base {name!r} (have: {', '.join(BASES)})") from None


def hypergradient_mode(order: str, settings: SearchSettings) -> str:
    """params.yaml's ``order`` -> a mode of :mod:`mlonas.mlo`.

    First order is ``first_order``; second order unrolls one virtual step and takes the
    mixed second derivative as ``search.unrolled_mode`` says: ``finite_difference`` (the
    papers' algorithm) or ``exact`` (autograd, about 2-3x the memory).
    """
    if order not in ORDERS:
        raise MlonasError(f"unknown order {order!r} (have: {', '.join(ORDERS)})")
    if order == "first":
        return "first_order"
    return settings.unrolled_mode
