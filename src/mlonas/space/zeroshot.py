"""Zero-shot pruning of the search space before a one-shot search ("half search space").

*Half Search Space is All You Need* (Rumiantsev & Coates, arXiv 2505.13586) prunes the
DARTS space with zero-shot NAS, then runs a one-shot search on what is left; its method
section, code and settings are not accessible (docs/halfspace.md). What is built here is an
INTERPRETATION: one round of the first author's earlier pruner, ETENAS (``Rufaim/ETENAS``
@ 1c5a702, ``prune_etenas.py: prune_func_rank``), which drops ``none`` and then, per cell
type and edge, the ops whose removal changes a training-free ranker's score least:

* importance of op ``o`` on an edge: ``s_o = mean over repeats of sum over rankers of
  (r(N) - r(N \\ o)) / r(N)``, where ``N`` is a small scoring supernet with every active op
  at alpha 0 (uniform mixing) and ``N \\ o`` the same network (identical, freshly drawn
  Kaiming-normal fan-out weights, the same image batches) with ``o``'s alpha at -1000, so
  its softmax weight is exactly 0 (ETENAS' ``INF`` marking); one draw per repeat serves
  all ops (:func:`op_importance`);
* per edge, the ops with the lowest ``s_o`` are removed until ``keep`` remain; the normal
  and the reduction cells get separate masks, each shared by all cells of its type;
* ties (equal scores) remove the op earlier in ETENAS' op order first, which is what
  ETENAS' stable ``sorted`` over (cell type, edge, op) does; ops are matched by name,
  because mlonas' ``PRIMITIVES`` order is DARTS' and ETENAS' is not.

The ranker is ETENAS' default (``configs/rankers_configs/frob.json``): the Frobenius norm
of the correlation matrix of the logits over the examples of ``batches`` batches, in train
mode (batch-statistics BN) (``lib/procedures/nngp.py: get_nngp_n_v2`` with
``as_correlation=True, use_logits=True``; ``common_methods.frobenius_norm``).

The scoring network is mlonas' own :class:`~mlonas.space.supernet.Supernet` at
``channels`` (ETENAS: 1) with stem multiplier 1, but 3 cells [normal, reduce, reduce]
instead of ETENAS' 2 [normal, reduce]: :attr:`SupernetSpec.reduction_layers` puts the
reductions at L//3 and 2L//3, which for 2 cells gives [reduce, reduce] and no normal cell
to score. Its search BN is non-affine and it has no final BN+ReLU before pooling (ETENAS'
``lastact``); docs/fidelity.md lists these differences.

All randomness (the weight draws and which images form the batches) comes from one
``torch.Generator`` seeded with the search's seed, and the global RNG is left as it was,
so the mask is a function of the seed, the images and the settings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from mlonas.errors import MlonasError
from mlonas.space.genotype import num_edges
from mlonas.space.supernet import Supernet, SupernetSpec

#: ETENAS marks a removed op with alpha = -INF (``prune_etenas.py:24``): exp(-1000)
#: underflows to 0, so the op gets softmax weight exactly 0 and the others share the rest.
INF = 1000.0

#: ETENAS' DARTS-space op order (``lib/models/cell_operations.py:21``); only its tie rule
#: reads it (mlonas' ``PRIMITIVES`` are in DARTS' order).
ETENAS_ORDER: tuple[str, ...] = (
    "none",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
    "avg_pool_3x3",
    "max_pool_3x3",
)

#: ETENAS' scoring network has 2 cells; mlonas' reduction placement needs 3 (module doc).
SCORING_LAYERS = 3

Alphas = dict[bool, torch.Tensor]  # {reduction: alpha [edges, ops]}
Ranker = Callable[[Alphas], float]


def nngp_frobenius(model: nn.Module, batches: Sequence[torch.Tensor], alphas: Alphas) -> float:
    """ETENAS' "Frobenius norm of NNGP": ``||corrcoef(logits)||_F`` over the examples of
    ``batches`` (one forward per batch, train mode, no gradient), with the mixing given
    by ``alphas``."""
    assert isinstance(model, Supernet)
    if not model.training:
        raise ValueError("the NNGP-Frobenius ranker scores a network in train mode")
    with torch.no_grad():
        model.alpha_normal.copy_(alphas[False])
        model.alpha_reduce.copy_(alphas[True])
        logits = torch.cat([model(x) for x in batches])
        return float(torch.linalg.matrix_norm(torch.corrcoef(logits), "fro"))


RANKERS: dict[str, Callable[[nn.Module, Sequence[torch.Tensor], Alphas], float]] = {
    "nngp_frob": nngp_frobenius,
}


def kaiming_fanout_(model: nn.Module, generator: torch.Generator) -> None:
    """ETENAS' ``kaiming_norm_fanout`` init, drawn from ``generator``: conv and linear
    weights ~ N(0, 2 / fan_out) with fan_out = out channels x kernel area (torch's
    convention, also for depthwise convs), biases 0, affine BN weight 1 and bias 0."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                w = m.weight
                fan_out = w.size(0) * (w[0][0].numel() if w.dim() > 2 else 1)
                w.copy_(torch.randn(w.shape, generator=generator) * (2.0 / fan_out) ** 0.5)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d) and m.affine:
                m.weight.fill_(1.0)
                m.bias.zero_()


def op_importance(
    active: Alphas,
    rankers: Sequence[Ranker],
    reinit: Callable[[], None],
    repeat: int,
) -> dict[bool, torch.Tensor]:
    """ETENAS' importance of every active op (``prune_func_rank``, one round).

    ``active[reduction]`` is a bool [edges, ops] mask of the ops still in the space.
    ``repeat`` times and for each ranker: ``reinit()`` draws fresh weights (and batches),
    the ranker scores the network with every active op at alpha 0 (``origin``) and, for
    each active (cell type, edge, op), the same network with that op at -INF too
    (``pruned``); the shift ``(origin - pruned) / origin`` is summed over the rankers and
    averaged over the repeats. Inactive ops get NaN (never scored, never selected).

    One draw per (repeat, ranker) serves every op (common random numbers): ETENAS draws
    one per (op, repeat, ranker) and re-scores ``origin`` on it, which costs twice the
    forwards for the same formula (docs/fidelity.md)."""
    base = {r: torch.where(a, 0.0, -INF) for r, a in active.items()}
    items = [(r, e, o) for r in (False, True) for e, o in active[r].nonzero().tolist()]
    totals = [0.0] * len(items)
    for _ in range(repeat):
        for rank in rankers:
            reinit()
            origin = rank(base)
            for i, (reduction, e, o) in enumerate(items):
                masked = {r: a.clone() for r, a in base.items()}
                masked[reduction][e, o] = -INF
                totals[i] += (origin - rank(masked)) / origin
    scores = {r: torch.full(a.shape, float("nan"), dtype=torch.float64) for r, a in active.items()}
    for (reduction, e, o), total in zip(items, totals, strict=True):
        scores[reduction][e, o] = total / repeat
    return scores


def keep_ops(names: Sequence[str], scores: Sequence[float], keep: int) -> list[str]:
    """An edge's ``keep`` most important ops (of those with a finite score), in ``names``'
    order. The lowest scores go first; equal scores remove the op earlier in ETENAS' op
    order first (its stable sort), names it does not know after those, by position."""
    order = {n: k for k, n in enumerate(ETENAS_ORDER)}
    ranked = [k for k in range(len(names)) if scores[k] == scores[k]]  # NaN: not active
    ranked.sort(key=lambda k: (float(scores[k]), order.get(names[k], len(order) + k)))
    kept = set(ranked[max(len(ranked) - keep, 0) :])
    return [n for k, n in enumerate(names) if k in kept]


@dataclass(frozen=True)
class PruneResult:
    """The pruned space: each edge's kept ops (in the base's op order) per cell type, and
    the importance scores they were chosen by (``None`` where an op was not scored)."""

    edge_ops_normal: list[list[str]]
    edge_ops_reduce: list[list[str]]
    scores_normal: list[list[float | None]]
    scores_reduce: list[list[float | None]]

    def record(self, primitives: Sequence[str], settings: dict[str, Any]) -> dict[str, Any]:
        """What ``alphas.json``'s ``prune`` entry stores (JSON-able)."""
        return {
            "pruner": "etenas",
            "primitives": list(primitives),
            "settings": settings,
            "edge_ops_normal": self.edge_ops_normal,
            "edge_ops_reduce": self.edge_ops_reduce,
            "scores_normal": self.scores_normal,
            "scores_reduce": self.scores_reduce,
        }


def scoring_spec(
    primitives: Sequence[str], channels: int, steps: int, multiplier: int, num_classes: int
) -> SupernetSpec:
    """ETENAS' scoring network as a mlonas supernet (module doc: 3 cells, stem x1)."""
    return SupernetSpec(
        init_channels=channels,
        num_classes=num_classes,
        layers=SCORING_LAYERS,
        steps=steps,
        multiplier=multiplier,
        stem_multiplier=1,
        primitives=tuple(primitives),
    )


class Images(Protocol):
    """Indexable images (a [N, 3, H, W] tensor, or a dataset whose items are images)."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> torch.Tensor: ...


def etenas_prune(
    images: Images,
    *,
    primitives: Sequence[str],
    steps: int,
    multiplier: int,
    num_classes: int,
    keep: int,
    rankers: Sequence[str],
    repeat: int,
    batch_size: int,
    batches: int,
    channels: int,
    seed: int,
    device: torch.device,
) -> PruneResult:
    """One ETENAS round on ``images`` (the search-train half, un-augmented; no labels:
    the rankers use none): each edge keeps its ``keep`` most important ops of
    ``primitives`` without ``none``."""
    names = list(primitives)
    available = [n for n in names if n != "none"]
    if keep >= len(available):
        raise MlonasError(
            f"search.prune_keep: {keep} keeps all {len(available)} ops other than none"
        )
    need, n = batch_size * batches, len(images)
    if need > n:
        raise MlonasError(
            f"search.prune_batch_size: {batches} batches of {batch_size} need {need} images,"
            f" the search-train half has {n}"
        )
    unknown = [r for r in rankers if r not in RANKERS]
    if unknown:
        raise MlonasError(f"search.prune_rankers: unknown ranker {unknown[0]!r}")
    gen = torch.Generator().manual_seed(seed)
    spec = scoring_spec(names, channels, steps, multiplier, num_classes)
    with torch.random.fork_rng(devices=[]):  # building draws from the global RNG
        template = Supernet(spec)
    net = template if device.type == "cpu" else Supernet(spec).to(device)
    net.train()  # ETENAS' frob.json: train_mode (BN normalises with batch statistics)
    data: list[torch.Tensor] = []

    def reinit() -> None:
        # fresh weights (the same for origin and pruned) and fresh batches (ETENAS reads
        # them from its shuffled loader), one draw per (repeat, ranker): op_importance
        kaiming_fanout_(template, gen)
        if net is not template:
            net.load_state_dict(template.state_dict())
        order = torch.randperm(n, generator=gen)[:need].tolist()
        data[:] = [
            torch.stack([images[i] for i in order[b * batch_size : (b + 1) * batch_size]]).to(
                device
            )
            for b in range(batches)
        ]

    def ranker(name: str) -> Ranker:
        fn = RANKERS[name]

        def rank(alphas: Alphas) -> float:
            value = fn(net, data, {r: a.to(device) for r, a in alphas.items()})
            if not value == value or value in (float("inf"), float("-inf")) or value == 0.0:
                raise MlonasError(
                    f"search.prune_rankers: ranker {name} gave {value} on the scoring"
                    " network (a degenerate score cannot rank ops)"
                )
            return value

        return rank

    k = num_edges(steps)
    ops_active = torch.tensor([n != "none" for n in names])
    active = {r: ops_active.expand(k, len(names)).clone() for r in (False, True)}
    scores = op_importance(active, [ranker(r) for r in rankers], reinit, repeat)
    kept = {
        r: [keep_ops(names, scores[r][e].tolist(), keep) for e in range(k)] for r in (False, True)
    }
    as_lists = {
        r: [[None if v != v else float(v) for v in row] for row in scores[r].tolist()]
        for r in (False, True)
    }
    return PruneResult(kept[False], kept[True], as_lists[False], as_lists[True])
