"""The weight-sharing supernet searched by every base of the DARTS family.

One supernet class serves every base: what distinguishes DARTS, PC-DARTS, P-DARTS and
DARTS- at the level of the network is a handful of options on :class:`SupernetSpec`,
not a different class:

- ``partial_channels`` (PC-DARTS, Xu et al. 2020): an edge runs its candidate ops on
  1/K of the channels, passes the rest through (max-pooled on reduction edges) and
  shuffles channels;
- ``edge_normalization`` (PC-DARTS): a weight beta per edge, softmax-ed over the edges
  into each node, multiplies the edge's mixed output;
- ``aux_skip`` (DARTS-, Chu et al. 2021): every edge gets an extra skip connection
  (FactorizedReduce on reduction edges) scaled by ``aux_beta``, which the schedule decays
  from 1 to 0; it is not an architecture choice and never enters the genotype;
- ``edge_ops`` (P-DARTS, Chen et al. 2019): each edge's own candidate set (a stage keeps
  fewer ops per edge), and ``skip_dropout``: dropout on the skip-connect op's output;
- ``mixing`` (DrNAS, Chen et al. 2021): ``dirichlet`` mixes an edge's ops with a draw
  theta ~ Dir(ELU(alpha) + 1) instead of softmax(alpha), differentiated pathwise.

DrNAS' draws: a plain forward draws afresh (the official code samples in every forward,
training and evaluation alike); a hypergradient draws once and passes the same draw to
every forward pass it makes (:class:`mlonas.mlo.core.Functional`), so the +eps and -eps
passes of a finite difference and the passes of LeaSE's and SGL's chains all differentiate
the same function of the weights, not the sampling noise.

Schemes (plain, LeaSE, SGL) only see the :class:`Supernet` interface: ``forward``,
``arch_parameters()``, ``weight_parameters()`` and ``genotype()``. Architecture parameters
are registered on the module (so ``torch.func.functional_call`` can substitute them) but
kept out of ``weight_parameters()``, so the weight optimizer never touches them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.distributions.dirichlet import _Dirichlet_backward
from torch.nn import functional as F

from mlonas.space.genotype import Genotype, derive_genotype, num_edges
from mlonas.space.ops import PRIMITIVES, FactorizedReduce, ReLUConvBN, build_op, relu, softplus

EdgeOps = tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class SupernetSpec:
    """Size and options of a supernet (search-time network)."""

    init_channels: int
    num_classes: int
    layers: int
    steps: int = 4
    multiplier: int = 4
    stem_multiplier: int = 3
    primitives: tuple[str, ...] = PRIMITIVES
    smooth: bool = False  # the softplus/avg-pool surrogate of the hypergradient tests
    partial_channels: int = 1  # PC-DARTS' K (1 = all channels)
    edge_normalization: bool = False  # PC-DARTS' beta per edge
    aux_skip: bool = False  # DARTS-' auxiliary skip connection on every edge
    edge_ops_normal: EdgeOps | None = None  # P-DARTS: candidate ops per edge (None = all)
    edge_ops_reduce: EdgeOps | None = None
    max_skip_normal: int | None = None  # P-DARTS: skip-connects allowed in the normal cell
    # tie-breaking and edge order of genotype(): darts | pdarts (| min_stable_rank: MSR-DARTS'
    # mlonas.space.msr.StableRankSupernet, which has no alphas)
    derivation: str = "darts"
    mixing: str = "softmax"  # softmax(alpha) | dirichlet: theta ~ Dir(ELU(alpha) + 1) (DrNAS)

    @property
    def reduction_layers(self) -> tuple[int, ...]:
        """DARTS places reduction cells at 1/3 and 2/3 of the depth."""
        return (self.layers // 3, 2 * self.layers // 3)

    def edge_ops(self, reduction: bool) -> EdgeOps:
        ops = self.edge_ops_reduce if reduction else self.edge_ops_normal
        return ops if ops is not None else (self.primitives,) * num_edges(self.steps)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave ``groups`` channel groups, so the next edge samples other channels."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


#: One Dirichlet draw per cell type: {reduction: theta of shape [edges, ops]}.
Draw = dict[bool, torch.Tensor]


class DirichletPathwise(torch.autograd.Function):
    """theta = a given Dirichlet draw ``x``, differentiable in the concentration.

    The backward is torch's own pathwise (implicit reparameterisation) gradient of
    ``Dirichlet(concentration).rsample()`` at that sample, so a draw made once and reused
    has the gradient the official code's ``rsample`` would have had for it. Like torch's,
    it is once differentiable: the unrolled hypergradients need d theta / d alpha once
    (their second derivatives are in the weights), and a second derivative raises."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x, concentration):  # type: ignore[override]
        ctx.save_for_backward(x, concentration)
        return x.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, concentration = ctx.saved_tensors
        return None, _Dirichlet_backward(x, concentration, grad)


def dirichlet_concentration(alpha: torch.Tensor) -> torch.Tensor:
    """DrNAS' concentration ELU(alpha) + 1 (> 0, and 1 at alpha = 0)."""
    return F.elu(alpha) + 1.0


def search_op(name: str, channels: int, stride: int, smooth: bool) -> nn.Module:
    """Candidate op ``name`` as the search supernet runs it.

    Every official DARTS-family search code (DARTS, PC-DARTS, P-DARTS, DARTS-) appends a
    ``BatchNorm2d(C, affine=False)`` to the pooling candidates inside its MixedOp, so that
    the parameter-free pools are normalised like the convolutions they compete with. It has
    no parameters, so parameter counts cannot see it, but without it the supernet's logits
    and architecture gradients are not DARTS' (the golden fixtures of tests/test_parity.py
    fail on every forward). Evaluation networks use the bare pools, as the official codes do.
    """
    op = build_op(name, channels, stride, affine=False, smooth=smooth)
    if "pool" in name:
        return nn.Sequential(op, nn.BatchNorm2d(channels, affine=False))
    return op


class MixedOp(nn.Module):
    """An edge of the supernet: the softmax(alpha)-weighted sum of its candidate ops."""

    def __init__(
        self, channels: int, stride: int, ops: Sequence[str], smooth: bool, partial: int = 1
    ) -> None:
        super().__init__()
        if channels % partial:
            raise ValueError(f"{channels} channels cannot be split into {partial} parts")
        self.partial = partial
        self.stride = stride
        # Search-time BN has no affine parameters (DARTS): they would rescale op outputs and
        # confound the architecture weights.
        self.ops = nn.ModuleList(search_op(p, channels // partial, stride, smooth) for p in ops)
        # P-DARTS drops out the identity (stride-1 skip) only.
        self.skip_index = ops.index("skip_connect") if "skip_connect" in ops else None
        if stride != 1:
            self.skip_index = None
        self.bypass_pool = nn.MaxPool2d(2, 2) if partial > 1 and stride == 2 else None

    def forward(
        self, x: torch.Tensor, weights: torch.Tensor, skip_dropout: float = 0.0
    ) -> torch.Tensor:
        if self.partial > 1:
            k = x.size(1) // self.partial
            x, bypass = x[:, :k], x[:, k:]
        out: torch.Tensor | float = 0.0
        for i, (w, op) in enumerate(zip(weights, self.ops, strict=True)):
            y = op(x)
            if i == self.skip_index and skip_dropout > 0:
                y = F.dropout(y, p=skip_dropout, training=self.training)
            out = out + w * y
        assert isinstance(out, torch.Tensor)
        if self.partial > 1:
            bypass = bypass if self.bypass_pool is None else self.bypass_pool(bypass)
            out = channel_shuffle(torch.cat([out, bypass], dim=1), self.partial)
        return out


class SearchCell(nn.Module):
    def __init__(
        self,
        spec: SupernetSpec,
        c_pp: int,
        c_p: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        self.steps = spec.steps
        self.multiplier = spec.multiplier
        act = softplus if spec.smooth else relu
        self.preprocess0 = (
            FactorizedReduce(c_pp, channels, affine=False, act=act)
            if reduction_prev
            else ReLUConvBN(c_pp, channels, 1, 1, 0, affine=False, act=act)
        )
        self.preprocess1 = ReLUConvBN(c_p, channels, 1, 1, 0, affine=False, act=act)
        self.edges = nn.ModuleList()
        self.aux = nn.ModuleList() if spec.aux_skip else None
        edge_ops = spec.edge_ops(reduction)
        e = 0
        for node in range(spec.steps):
            for j in range(node + 2):
                stride = 2 if reduction and j < 2 else 1
                # DARTS- builds each edge's auxiliary skip before its ops: in that order the
                # same torch seed gives bitwise the official initial weights.
                if self.aux is not None:
                    self.aux.append(
                        nn.Identity()
                        if stride == 1
                        else FactorizedReduce(channels, channels, affine=False, act=act)
                    )
                self.edges.append(
                    MixedOp(channels, stride, edge_ops[e], spec.smooth, spec.partial_channels)
                )
                e += 1

    def forward(
        self,
        s0: torch.Tensor,
        s1: torch.Tensor,
        weights: torch.Tensor,
        edge_weights: torch.Tensor | None,
        skip_dropout: float,
        aux_beta: float,
    ) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.steps):
            node: torch.Tensor | float = 0.0
            for j, h in enumerate(states):
                e = offset + j
                y = self.edges[e](h, weights[e], skip_dropout)
                if edge_weights is not None:
                    y = edge_weights[e] * y
                if self.aux is not None and aux_beta != 0.0:
                    y = y + aux_beta * self.aux[e](h)
                node = node + y
            offset += len(states)
            states.append(node)  # type: ignore[arg-type]
        return torch.cat(states[-self.multiplier :], dim=1)


class Supernet(nn.Module):
    """DARTS search network: stem, ``layers`` search cells, global pooling, classifier."""

    def __init__(self, spec: SupernetSpec) -> None:
        super().__init__()
        self.spec = spec
        # Set by the base's schedule each epoch (P-DARTS, DARTS-); not learned.
        self.skip_dropout = 0.0
        self.aux_beta = 1.0 if spec.aux_skip else 0.0
        c = spec.init_channels
        c_curr = spec.stem_multiplier * c
        self.stem = nn.Sequential(
            nn.Conv2d(3, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr)
        )
        c_pp, c_p, c_curr = c_curr, c_curr, c
        self.cells = nn.ModuleList()
        self.cell_channels: list[int] = []  # each cell's C (its output: multiplier x C)
        reduction_prev = False
        for i in range(spec.layers):
            reduction = i in spec.reduction_layers
            if reduction:
                c_curr *= 2
            cell = SearchCell(spec, c_pp, c_p, c_curr, reduction, reduction_prev)
            self.cells.append(cell)
            self.cell_channels.append(c_curr)
            reduction_prev = reduction
            c_pp, c_p = c_p, spec.multiplier * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, spec.num_classes)
        k = num_edges(spec.steps)
        n_normal = {len(o) for o in spec.edge_ops(False)}
        n_reduce = {len(o) for o in spec.edge_ops(True)}
        if len(n_normal) != 1 or len(n_reduce) != 1:
            raise ValueError("every edge of a cell type must have the same number of ops")
        # DARTS initialises alphas (and PC-DARTS its betas) to 1e-3 * N(0, 1), drawn from
        # the global RNG the caller seeded: the same seed gives the same supernet.
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(k, n_normal.pop()))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(k, n_reduce.pop()))
        self.arch_names = ["alpha_normal", "alpha_reduce"]
        if spec.edge_normalization:
            self.beta_normal = nn.Parameter(1e-3 * torch.randn(k))
            self.beta_reduce = nn.Parameter(1e-3 * torch.randn(k))
            self.arch_names += ["beta_normal", "beta_reduce"]

    def arch_parameters(self) -> list[nn.Parameter]:
        return [getattr(self, n) for n in self.arch_names]

    def tie_architecture(self, source: Supernet) -> Supernet:
        """Use ``source``'s architecture tensors (the same Parameter objects) instead of
        this network's own: SGL's two weight sets of one learner share one architecture."""
        if self.spec != source.spec:
            raise ValueError("cannot tie the architectures of differently shaped supernets")
        for name in self.arch_names:
            setattr(self, name, getattr(source, name))
        return self

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_weight_parameters()]

    def named_weight_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if n not in self.arch_names]

    def _edge_weights(self, reduction: bool) -> torch.Tensor | None:
        if not self.spec.edge_normalization:
            return None
        beta = self.beta_reduce if reduction else self.beta_normal
        # PC-DARTS' edge normalisation: a softmax over the edges into each node
        # (mlonas.space.genotype.node_softmax is the same for derivation, in NumPy)
        parts, start = [], 0
        for node in range(self.spec.steps):
            parts.append(torch.softmax(beta[start : start + node + 2], dim=-1))
            start += node + 2
        return torch.cat(parts)

    def draw(self) -> Draw | None:
        """A Dirichlet draw of both cell types' mixing weights at the current alphas (one
        per cell type, shared by all its cells, as DrNAS samples); None for softmax mixing."""
        if self.spec.mixing != "dirichlet":
            return None
        with torch.no_grad():
            return {
                r: torch.distributions.Dirichlet(dirichlet_concentration(a)).sample()
                for r, a in ((False, self.alpha_normal), (True, self.alpha_reduce))
            }

    def mixing_weights(self, reduction: bool, draw: Draw | None = None) -> torch.Tensor:
        """Each edge's weights over its ops: softmax(alpha), or DrNAS' Dirichlet sample (the
        given ``draw``, else a fresh one)."""
        alpha = self.alpha_reduce if reduction else self.alpha_normal
        if self.spec.mixing != "dirichlet":
            return torch.softmax(alpha, dim=-1)
        concentration = dirichlet_concentration(alpha)
        if draw is None:
            with torch.no_grad():
                x = torch.distributions.Dirichlet(concentration).sample()
        else:
            x = draw[reduction]
        return DirichletPathwise.apply(x, concentration)

    def stage_ends(self) -> list[int]:
        """The cells whose outputs :meth:`stage_outputs` returns: the last cell of each
        resolution stage (the one before each reduction cell) and the last cell."""
        ends = {r - 1 for r in self.spec.reduction_layers if r > 0} | {self.spec.layers - 1}
        return sorted(ends)

    def stage_channels(self) -> list[int]:
        """The channels of each of :meth:`stage_outputs`' tensors (multiplier x the cell's C)."""
        return [self.spec.multiplier * self.cell_channels[i] for i in self.stage_ends()]

    def stage_outputs(self, x: torch.Tensor, draw: Draw | None = None) -> list[torch.Tensor]:
        """The output of the last cell of each resolution stage, finest first (the last is
        the final cell's, which :meth:`forward` pools and classifies): what MAE-NAS'
        multi-scale decoder reads (mlonas.space.mae). ``draw`` as in :meth:`forward`."""
        w = {False: self.mixing_weights(False, draw), True: self.mixing_weights(True, draw)}
        ew = {False: self._edge_weights(False), True: self._edge_weights(True)}
        ends = set(self.stage_ends())
        outputs = []
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            r = cell.reduction
            s0, s1 = s1, cell(s0, s1, w[r], ew[r], self.skip_dropout, self.aux_beta)
            if i in ends:
                outputs.append(s1)
        return outputs

    def forward(self, x: torch.Tensor, draw: Draw | None = None) -> torch.Tensor:
        """Logits; ``draw`` fixes DrNAS' mixing weights (:meth:`draw`), else a forward of a
        Dirichlet supernet samples its own."""
        out = self.global_pooling(self.stage_outputs(x, draw)[-1])
        return self.classifier(out.flatten(1))

    def arch_record(self) -> dict[str, object]:
        """What ``alphas.json`` stores of this architecture (and derivation reads back)."""
        record: dict[str, object] = {
            "primitives": list(self.spec.primitives),
            "steps": self.spec.steps,
            "multiplier": self.spec.multiplier,
            "edge_ops_normal": [list(o) for o in self.spec.edge_ops(False)],
            "edge_ops_reduce": [list(o) for o in self.spec.edge_ops(True)],
            "max_skip_normal": self.spec.max_skip_normal,
            "derivation": self.spec.derivation,
        }
        for name in self.arch_names:
            record[name] = getattr(self, name).detach().cpu().tolist()
        return record

    def trajectory_record(self) -> dict[str, Any]:
        """What the search's per-epoch ``trajectory`` stores of this architecture: the
        softmax(alpha) rows per cell type (a base without alphas records its own)."""
        return {
            "normal": torch.softmax(self.alpha_normal.detach(), -1).cpu().tolist(),
            "reduce": torch.softmax(self.alpha_reduce.detach(), -1).cpu().tolist(),
        }

    def genotype(self) -> Genotype:
        s = self.spec
        return derive_genotype(
            self.alpha_normal,
            self.alpha_reduce,
            s.steps,
            s.multiplier,
            edge_ops_normal=s.edge_ops(False),
            edge_ops_reduce=s.edge_ops(True),
            edge_weights_normal=self._edge_weights(False),
            edge_weights_reduce=self._edge_weights(True),
            max_skip_normal=s.max_skip_normal,
            rule=s.derivation,
        )
