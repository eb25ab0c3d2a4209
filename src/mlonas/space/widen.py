"""DrNAS' stage change: carry a supernet into the next, wider and pruned one.

DrNAS (Chen et al., ICLR 2021; official code xiangning-chen/DrNAS @ f2caa4d) searches in
two stages: partial channels K = 6, then K = 4 with each edge's four strongest ops. Between
them it prunes (``utils.prune``: the top-4 eta per edge keep their values) and widens every
candidate op from C/6 to C/4 channels (``model.wider`` -> ``net2wider.py``): each conv
grows by copies of randomly chosen existing channels, BatchNorm statistics follow their
conv's new channels, and the SGD momentum buffers are widened with the same indices
(``configure_optimizer``). There is no Net2Net rescaling, and the second depthwise conv of
a separable conv draws a fresh index rather than its BN's, so the widened network is not
the same function: it is a warm start. Everything outside the candidate ops (stem, cell
preprocessing, classifier) keeps its shape and is copied.

:func:`carry_supernet` does the same into a freshly built next-stage supernet: the kept
ops' weights widened as above, the kept ops' alphas (columns of the pruned edge sets) and
the optimizers' per-parameter state (SGD momentum, Adam moments) mapped the same way.
Unlike the official code the pruned ops are not kept (masked) in the network: mixing a
Dirichlet sample over the kept ops is the official masked-and-renormalised sample in
distribution (the Dirichlet aggregation property).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from mlonas.space.ops import FactorizedReduce
from mlonas.space.supernet import Supernet

Transform = Callable[[torch.Tensor], torch.Tensor]


def _fresh(old: int, new: int) -> torch.Tensor:
    """Indices of the old channels the new ones copy (``torch.randint``, as net2wider)."""
    return torch.randint(0, old, (new - old,))


def _grow(dim: int, index: torch.Tensor) -> Transform:
    """Append copies of ``index`` along ``dim`` (net2wider's In/OutChannelWider, BNWider)."""
    return lambda t: torch.cat([t, t.index_select(dim, index.to(t.device))], dim=dim)


def _then(f: Transform, g: Transform) -> Transform:
    return lambda t: g(f(t))


def _widen_op(old: nn.Module, new: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, Transform]]:
    """(old tensor, new tensor, transform) for every parameter and buffer of one candidate
    op, with the official widening rules: a depthwise conv draws the index of its new
    output channels, the pointwise conv after it reuses that index for its inputs and
    draws its own outputs', a BatchNorm follows the conv before it, a pool's BN draws its
    own, and a FactorizedReduce draws inputs and outputs of both convs (its BN follows
    their outputs, appended after both halves as the official code does)."""
    out: list[tuple[torch.Tensor, torch.Tensor, Transform]] = []
    skip: set[int] = set()
    dw_index: torch.Tensor | None = None  # the last depthwise conv's new output channels
    last: torch.Tensor | None = None  # the last conv's new output channels
    for om, nm in zip(old.modules(), new.modules(), strict=True):
        if id(nm) in skip:
            continue
        if isinstance(nm, FactorizedReduce):
            assert isinstance(om, FactorizedReduce)
            halves = []
            for oc, nc in ((om.conv_1, nm.conv_1), (om.conv_2, nm.conv_2)):
                i = _fresh(oc.in_channels, nc.in_channels)
                o = _fresh(oc.out_channels, nc.out_channels)
                halves.append(o)
                out.append((oc.weight, nc.weight, _then(_grow(1, i), _grow(0, o))))
                skip.add(id(nc))
            out += _bn(om.bn, nm.bn, torch.cat(halves))
            skip.add(id(nm.bn))
        elif isinstance(nm, nn.Conv2d):
            assert isinstance(om, nn.Conv2d)
            o = _fresh(om.out_channels, nm.out_channels)
            if nm.groups > 1 and nm.groups == nm.in_channels:  # depthwise: [C, 1, k, k]
                out.append((om.weight, nm.weight, _grow(0, o)))
                dw_index = o
            else:
                i = dw_index if dw_index is not None else _fresh(om.in_channels, nm.in_channels)
                out.append((om.weight, nm.weight, _then(_grow(1, i), _grow(0, o))))
                dw_index = None
            last = o
        elif isinstance(nm, nn.BatchNorm2d):
            assert isinstance(om, nn.BatchNorm2d)
            index = last if last is not None else _fresh(om.num_features, nm.num_features)
            out += _bn(om, nm, index)
            last = None
    return out


def _bn(
    old: nn.BatchNorm2d, new: nn.BatchNorm2d, index: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor, Transform]]:
    grow = _grow(0, index)
    pairs = [(old.running_mean, new.running_mean, grow), (old.running_var, new.running_var, grow)]
    if old.num_batches_tracked is not None and new.num_batches_tracked is not None:
        pairs.append((old.num_batches_tracked, new.num_batches_tracked, lambda t: t))
    if old.affine and new.affine:
        pairs += [(old.weight, new.weight, grow), (old.bias, new.bias, grow)]
    return pairs


def _columns(old_ops: Sequence[Sequence[str]], new_ops: Sequence[Sequence[str]]) -> Transform:
    """Each edge's alpha row restricted to the ops the new supernet keeps."""
    cols = [[list(o).index(n) for n in ns] for o, ns in zip(old_ops, new_ops, strict=True)]

    def pick(t: torch.Tensor) -> torch.Tensor:
        return torch.stack([t[e, c] for e, c in enumerate(cols)])

    return pick


def carry_supernet(
    old: Supernet,
    new: Supernet,
    optimizers: Sequence[tuple[torch.optim.Optimizer, torch.optim.Optimizer]],
    carry_arch: bool = True,
) -> None:
    """Write ``old``'s weights, buffers and (``carry_arch``) architecture into ``new``, a
    supernet of the next stage (fewer ops per edge, wider ops), and each ``(old, new)``
    optimizer pair's per-parameter state with the same mapping. SGL's second weight set
    shares its learner's alphas: carry them once (``carry_arch=False`` for the other)."""
    if len(old.cells) != len(new.cells):
        raise ValueError("DrNAS' stages keep the number of cells")
    pairs: list[tuple[torch.Tensor, torch.Tensor, Transform]] = []
    done: set[int] = set()
    for oc, nc in zip(old.cells, new.cells, strict=True):
        r = nc.reduction
        old_ops, new_ops = old.spec.edge_ops(r), new.spec.edge_ops(r)
        for e, (oe, ne) in enumerate(zip(oc.edges, nc.edges, strict=True)):
            for i, name in enumerate(new_ops[e]):
                op_pairs = _widen_op(oe.ops[list(old_ops[e]).index(name)], ne.ops[i])
                pairs += op_pairs
                done.update(id(t) for _, t, _ in op_pairs)
                done.update(id(t) for t in ne.ops[i].parameters())
                done.update(id(t) for t in ne.ops[i].buffers())
    arch_ids = {id(p) for p in new.arch_parameters()}
    if carry_arch:
        for name in new.arch_names:
            kind = "reduce" if name.endswith("reduce") else "normal"
            r = kind == "reduce"
            if name.startswith("alpha"):
                pick = _columns(old.spec.edge_ops(r), new.spec.edge_ops(r))
            else:  # PC-DARTS' edge betas: one per edge, unchanged by pruning ops
                pick = lambda t: t  # noqa: E731
            pairs.append((getattr(old, name), getattr(new, name), pick))
    old_tensors = {**dict(old.named_parameters()), **dict(old.named_buffers())}
    for name, t in [*new.named_parameters(), *new.named_buffers()]:
        if id(t) in done or id(t) in arch_ids:
            continue
        pairs.append((old_tensors[name], t, lambda x: x))
    with torch.no_grad():
        for o, n, f in pairs:
            value = f(o.detach())
            if value.shape != n.shape:
                raise ValueError(f"cannot carry a {tuple(o.shape)} tensor into {tuple(n.shape)}")
            n.copy_(value)
    by_new = {id(n): (o, f) for o, n, f in pairs}
    for old_opt, new_opt in optimizers:
        for group in new_opt.param_groups:
            for p in group["params"]:
                if id(p) not in by_new:
                    continue
                o, f = by_new[id(p)]
                state = old_opt.state.get(o)
                if not state:
                    continue
                new_opt.state[p] = {
                    k: f(v) if torch.is_tensor(v) and v.shape == o.shape else _copy(v)
                    for k, v in state.items()
                }


def _copy(v: object) -> object:
    return v.clone() if torch.is_tensor(v) else v
