"""The weight-sharing supernet searched by every base of the DARTS family.

One supernet class serves every base: what distinguishes DARTS, PC-DARTS, P-DARTS and
DARTS- at the level of the network is a handful of options on :class:`SupernetSpec`
(which candidate operations each edge has, ...), not a different class. Schemes
(plain, LeaSE, SGL) only see the :class:`Supernet` interface: ``forward``,
``arch_parameters()``, ``weight_parameters()`` and ``genotype()``.

Architecture parameters (alphas) are registered as parameters of the module so that
``torch.func.functional_call`` can substitute them, but are kept out of
``weight_parameters()`` so the weight optimizer never touches them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mlonas.space.genotype import Genotype, derive_genotype, num_edges
from mlonas.space.ops import PRIMITIVES, FactorizedReduce, ReLUConvBN, build_op, relu, softplus


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

    @property
    def reduction_layers(self) -> tuple[int, ...]:
        """DARTS places reduction cells at 1/3 and 2/3 of the depth."""
        return (self.layers // 3, 2 * self.layers // 3)


class MixedOp(nn.Module):
    """An edge of the supernet: the softmax(alpha)-weighted sum of all candidate ops."""

    def __init__(self, channels: int, stride: int, primitives: Sequence[str], smooth: bool) -> None:
        super().__init__()
        # Search-time BN has no affine parameters (DARTS): they would rescale op outputs and
        # confound the architecture weights.
        self.ops = nn.ModuleList(
            build_op(p, channels, stride, affine=False, smooth=smooth) for p in primitives
        )

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return sum(w * op(x) for w, op in zip(weights, self.ops, strict=True))


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
        for node in range(spec.steps):
            for j in range(node + 2):
                stride = 2 if reduction and j < 2 else 1
                self.edges.append(MixedOp(channels, stride, spec.primitives, spec.smooth))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self.steps):
            node = sum(self.edges[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(node)
        return torch.cat(states[-self.multiplier :], dim=1)


class Supernet(nn.Module):
    """DARTS search network: stem, ``layers`` search cells, global pooling, classifier."""

    def __init__(self, spec: SupernetSpec) -> None:
        super().__init__()
        self.spec = spec
        c = spec.init_channels
        c_curr = spec.stem_multiplier * c
        self.stem = nn.Sequential(
            nn.Conv2d(3, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr)
        )
        c_pp, c_p, c_curr = c_curr, c_curr, c
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(spec.layers):
            reduction = i in spec.reduction_layers
            if reduction:
                c_curr *= 2
            cell = SearchCell(spec, c_pp, c_p, c_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            c_pp, c_p = c_p, spec.multiplier * c_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, spec.num_classes)
        k, n_ops = num_edges(spec.steps), len(spec.primitives)
        # DARTS initialises alphas to 1e-3 * N(0, 1); drawn from the global RNG that the
        # caller seeded, so the same seed gives the same supernet.
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(k, n_ops))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(k, n_ops))

    ARCH_NAMES = ("alpha_normal", "alpha_reduce")

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha_normal, self.alpha_reduce]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n not in self.ARCH_NAMES]

    def named_weight_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if n not in self.ARCH_NAMES]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w_normal = torch.softmax(self.alpha_normal, dim=-1)
        w_reduce = torch.softmax(self.alpha_reduce, dim=-1)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, w_reduce if cell.reduction else w_normal)
        out = self.global_pooling(s1)
        return self.classifier(out.flatten(1))

    def genotype(self) -> Genotype:
        return derive_genotype(
            self.alpha_normal,
            self.alpha_reduce,
            self.spec.steps,
            self.spec.multiplier,
            self.spec.primitives,
        )
