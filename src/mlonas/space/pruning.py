"""P-DARTS' and DrNAS' rules for pruning an edge's candidate ops between stages.

Kept apart from :mod:`mlonas.space.genotype` because it needs no torch: the report's figure
jobs recover intermediate stages' op names with it and stay free of the 3 s torch import.
"""

from __future__ import annotations

from collections.abc import Sequence


def prune_ops(names: Sequence[str], probs: Sequence[float], keep: int) -> list[str]:
    """P-DARTS between stages: drop all but ``keep`` of an edge's ops, in their order.

    The official code (``get_min_k`` in P-DARTS' ``train_search.py``) drops the least
    probable op, then the next, each time the *first* minimum: so among equally probable ops
    the lower index goes first and the higher index is kept.
    """
    drop_order = sorted(range(len(names)), key=lambda k: (float(probs[k]), k))
    dropped = set(drop_order[: max(len(names) - keep, 0)])
    return [n for k, n in enumerate(names) if k not in dropped]


def top_ops(names: Sequence[str], values: Sequence[float], keep: int) -> list[str]:
    """DrNAS between stages: the ``keep`` ops of largest eta (``utils.prune``: ``topk`` of
    the raw parameters), in their original order. torch's ``topk`` leaves ties unordered;
    here the lower index is kept."""
    best = sorted(range(len(names)), key=lambda k: (-float(values[k]), k))[:keep]
    return [names[k] for k in sorted(best)]
