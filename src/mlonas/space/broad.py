"""B-DARTS' broad convolutional neural network (BCNN): its search supernet and its
evaluation network (Ding et al., BNAS-v2 / B-DARTS; official code zixiangding/BNASv2 @
d649dfd, ``BNASv2CLR/model_search_b.py:63-237`` and ``BNASv2CLR/model_b.py:61-223``).

A BCNN is shallow and broad instead of deep: a few *convolution* cells (stride 2 where the
resolution halves), then *enhancement* cells (stride 1) whose first one reads two earlier
convolution blocks, and a classifier over the global average pool of the concatenated
outputs of every block (each brought to the final resolution by 1x1 ReLUConvBNs and
FactorizedReduces), so shallow features reach the classifier directly. The two cell types
keep the genotype's two fields, with new meanings:

- ``normal`` is the **convolution cell**: in the search supernet it is searched at stride 2
  with ``alpha_normal``; the evaluation network uses it at stride 2 in its pool layers and
  at stride 1 elsewhere;
- ``reduce`` is the **enhancement cell**: stride 1, searched with ``alpha_reduce``.

Derivation is DARTS' (``model_search_b.py:263-292``, rule ``darts``). Neither network has an
auxiliary head (``model_b.py``; the PC variant accepts the flag and builds none).

The official code indexes its FactorizedReduce lists with running counters; the modules are
built here in the same order and registered under the same names in the same order, so a
seed initialises the same weights and the parameter lists and state dicts line up with the
official networks'.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mlonas.errors import MlonasError
from mlonas.space.evalnet import Cell
from mlonas.space.genotype import Genotype, num_edges
from mlonas.space.ops import FactorizedReduce, ReLUConvBN, relu, softplus
from mlonas.space.supernet import Draw, SearchCell, Supernet, SupernetSpec


@dataclass(frozen=True)
class BroadSpec(SupernetSpec):
    """A broad supernet's size: ``layers`` convolution cells (the official code works for
    2 only: its first enhancement cell reads the first two blocks' outputs and is sized for
    them), then ``en_layers`` enhancement cells (the CLR script's 1)."""

    en_layers: int = 1


class BroadSupernet(Supernet):
    """The broad search network (``model_search_b.py:63-237``), a :class:`Supernet` for the
    schemes: the same architecture parameters (``alpha_normal`` mixes the convolution cells,
    ``alpha_reduce`` the enhancement cells), weights, genotype and records.

    At C=16, 32x32 inputs: stem 48@32; convolution cells 128@16 and 256@8 (C 32, 64, both
    stride 2); the enhancement cell reads FR(ReLUConvBN(128->32)(cell 0)) and
    ReLUConvBN(256->256)(cell 1), giving 256@8; the classifier sees the concatenation of
    ReLUConvBN(48->16)(stem) reduced twice, ReLUConvBN(128->32)(cell 0) reduced once and
    ReLUConvBN(256->256)(enhancement cell): ``c_final`` 304.
    """

    def __init__(self, spec: BroadSpec) -> None:
        nn.Module.__init__(self)
        if spec.layers != 2:
            raise ValueError(f"the broad supernet has 2 convolution cells, got {spec.layers}")
        if spec.en_layers < 1:
            raise ValueError(f"the broad supernet needs an enhancement cell, got {spec.en_layers}")
        if (
            spec.partial_channels != 1
            or spec.edge_normalization
            or spec.aux_skip
            or spec.edge_ops_normal is not None
            or spec.edge_ops_reduce is not None
        ):
            raise ValueError("the broad supernet has none of PC-DARTS', DARTS-', P-DARTS' options")
        self.spec = spec
        self.skip_dropout = 0.0
        self.aux_beta = 0.0
        act = softplus if spec.smooth else relu
        m, c = spec.multiplier, spec.init_channels
        c_stem = spec.stem_multiplier * c
        self.stem = nn.Sequential(
            nn.Conv2d(3, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem)
        )
        # the official names: restricted = the 1x1 ReLUConvBN "knowledge" convs, reduction =
        # the FactorizedReduces bringing a block's feature to the next resolution
        self.conv_cells = nn.ModuleList()
        self.en_cells = nn.ModuleList()
        self.reduction_convs_gap = nn.ModuleList()
        self.reduction_convs_en = nn.ModuleList()
        self.restricted_convs_gap = nn.ModuleList()  # each convolution cell's input -> GAP
        self.restricted_convs_en = nn.ModuleList()  # each convolution cell's output -> enh.
        self.restricted_ens_gap = nn.ModuleList()  # each enhancement cell's output -> GAP

        def rcb(c_in: int, c_out: int) -> nn.Module:
            return ReLUConvBN(c_in, c_out, 1, 1, 0, act=act)

        def fr(ch: int) -> nn.Module:
            return FactorizedReduce(ch, ch, act=act)

        gap_channels: list[int] = []
        en_channels: list[int] = []
        c_pp, c_p, c_curr = c_stem, c_stem, c
        for i in range(spec.layers):
            c_in, c_out = (c_stem, c) if i == 0 else (m * c_curr, c_curr)
            self.restricted_convs_gap.append(rcb(c_in, c_out))
            gap_channels.append(c_out)
            self.reduction_convs_gap.extend(fr(ch) for ch in gap_channels[:-1])
            c_curr *= 2
            self.conv_cells.append(SearchCell(spec, c_pp, c_p, c_curr, True, i > 0))
            c_pp, c_p = c_p, m * c_curr
            c_en = m * c_curr if i + 1 == spec.layers else c_curr
            self.restricted_convs_en.append(rcb(c_p, c_en))
            en_channels.append(c_en)
            self.reduction_convs_en.extend(fr(ch) for ch in en_channels[:-1])
            if i + 1 == spec.layers:  # every GAP feature once more, to the final resolution
                self.reduction_convs_gap.extend(fr(ch) for ch in gap_channels)
        for j in range(spec.en_layers):
            # the first reads the first block's reduced output (C_curr // 2 channels)
            c_in0 = en_channels[0] if j == 0 else c_pp
            self.en_cells.append(SearchCell(spec, c_in0, c_p, c_curr, False, False))
            c_pp, c_p = c_p, m * c_curr
            self.restricted_ens_gap.append(rcb(c_p, c_p if j + 1 == spec.en_layers else c_curr))
        self.c_final = sum(gap_channels) + (spec.en_layers - 1) * c_curr + c_p
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.c_final, spec.num_classes)
        k, n_ops = num_edges(spec.steps), len(spec.primitives)
        # 1e-3 * N(0, 1) after the weights, as DARTS and model_search_b.py:249-258
        self.alpha_normal = nn.Parameter(1e-3 * torch.randn(k, n_ops))
        self.alpha_reduce = nn.Parameter(1e-3 * torch.randn(k, n_ops))
        self.arch_names = ["alpha_normal", "alpha_reduce"]

    def forward(self, x: torch.Tensor, draw: Draw | None = None) -> torch.Tensor:
        """Logits (``model_search_b.py:176-237``); ``draw`` as :meth:`Supernet.forward`."""
        w_conv, w_en = self.mixing_weights(False, draw), self.mixing_weights(True, draw)
        gap: list[torch.Tensor] = []
        en: list[torch.Tensor] = []
        gi = ei = 0
        s0 = s1 = self.stem(x)
        last = len(self.conv_cells) - 1
        for i, cell in enumerate(self.conv_cells):
            gap.append(self.restricted_convs_gap[i](s1))
            for k in range(len(gap) - 1):  # the earlier features to this resolution
                gap[k] = self.reduction_convs_gap[gi](gap[k])
                gi += 1
            if i == last:  # and all of them once more, to the final resolution
                for k in range(len(gap)):
                    gap[k] = self.reduction_convs_gap[gi](gap[k])
                    gi += 1
            s0, s1 = s1, cell(s0, s1, w_conv, None, 0.0, 0.0)
            en.append(self.restricted_convs_en[i](s1))
            for k in range(len(en) - 1):
                en[k] = self.reduction_convs_en[ei](en[k])
                ei += 1
        outs: list[torch.Tensor] = []
        for j, cell in enumerate(self.en_cells):
            a, b = (en[0], en[1]) if j == 0 else (s0, s1)
            s0, s1 = s1, cell(a, b, w_en, None, 0.0, 0.0)
            outs.append(self.restricted_ens_gap[j](s1))
        out = self.global_pooling(torch.cat(gap + outs, dim=1))
        return self.classifier(out.flatten(1))


def pool_layers(layers: int, pool_time: int) -> list[int]:
    """The evaluation network's stride-2 convolution cells: the last of each of
    ``pool_time`` equal blocks (``model_b.py:68-71``; 6 cells, 2 pools: cells 2 and 5)."""
    d = layers // pool_time
    return [(p + 1) * d - 1 for p in range(pool_time)]


class NetworkBroad(nn.Module):
    """The broad CIFAR evaluation network (``model_b.py:61-223``), called like
    :class:`mlonas.space.evalnet.NetworkCIFAR`; ``forward`` gives ``(logits, None)``.

    ``layers`` convolution cells with the ``normal`` cell, stride 2 (channels doubled) at
    :func:`pool_layers`; then ``en_layers`` stride-1 enhancement cells with the ``reduce``
    cell, the first reading the two pool cells' outputs; global pooling over the outputs of
    the cells before each pool cell (the first only from layer 1 on), of the enhancement
    cells, all at the final resolution. Drop path on every cell. At C=48, 6+2 cells:
    ``c_final`` 1104. ``pool_time`` must be 2: the first enhancement cell reads exactly two
    convolution blocks (the official code fails otherwise).
    """

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        auxiliary: bool,
        genotype: Genotype,
        drop_path_prob: float = 0.0,
        pool_bn: bool = False,
        en_layers: int = 2,
        pool_time: int = 2,
    ) -> None:
        super().__init__()
        if auxiliary:
            raise MlonasError(
                "the broad evaluation network has no auxiliary head: set auxiliary_weight 0"
            )
        if pool_time != 2 or layers < pool_time or en_layers < 1:
            raise MlonasError(
                "the broad evaluation network needs pool_time 2, layers >= 2 and en_layers"
                f" >= 1, got pool_time {pool_time}, layers {layers}, en_layers {en_layers}"
            )
        self.drop_path_prob = drop_path_prob
        self.pool_layers = pool_layers(layers, pool_time)
        c_stem = 3 * C
        self.stem = nn.Sequential(
            nn.Conv2d(3, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem)
        )
        self.conv_cells = nn.ModuleList()
        self.en_cells = nn.ModuleList()
        self.reduction_convs_gap = nn.ModuleList()
        self.reduction_convs_en = nn.ModuleList()
        self.restricted_convs_gap = nn.ModuleList()  # the input of each pool cell -> GAP
        self.restricted_convs_en = nn.ModuleList()  # each pool cell's output -> enhancement
        self.restricted_ens_gap = nn.ModuleList()  # each enhancement cell's output -> GAP
        gap_channels: list[int] = []
        en_channels: list[int] = []
        c_pp, c_p, c_curr = c_stem, c_stem, C
        reduction_prev = False
        for i in range(layers):
            reduction = i in self.pool_layers
            if reduction:
                c_curr *= 2
            cell = Cell(genotype, c_pp, c_p, c_curr, reduction, reduction_prev, pool_bn, False)
            m = cell.multiplier
            if i + 1 in self.pool_layers:
                self.restricted_convs_gap.append(ReLUConvBN(m * c_curr, c_curr, 1, 1, 0))
                gap_channels.append(c_curr)
                self.reduction_convs_gap.extend(
                    FactorizedReduce(ch, ch) for ch in gap_channels[:-1]
                )
            reduction_prev = reduction
            self.conv_cells.append(cell)
            c_pp, c_p = c_p, m * c_curr
            if reduction:
                c_en = m * c_curr if i == self.pool_layers[-1] else c_curr
                self.restricted_convs_en.append(ReLUConvBN(c_p, c_en, 1, 1, 0))
                en_channels.append(c_en)
                self.reduction_convs_en.extend(FactorizedReduce(ch, ch) for ch in en_channels[:-1])
            if i + 1 == layers:  # every GAP feature once more, to the final resolution
                self.reduction_convs_gap.extend(FactorizedReduce(ch, ch) for ch in gap_channels)
        for j in range(en_layers):
            c_in0 = en_channels[0] if j == 0 else c_pp
            cell = Cell(genotype, c_in0, c_p, c_curr, False, False, pool_bn, True)
            self.en_cells.append(cell)
            c_pp, c_p = c_p, cell.multiplier * c_curr
            c_out = c_p if j + 1 == en_layers else c_curr
            self.restricted_ens_gap.append(ReLUConvBN(c_p, c_out, 1, 1, 0))
        self.c_final = sum(gap_channels) + (en_layers - 1) * c_curr + c_p
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.c_final, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        gap: list[torch.Tensor] = []
        en: list[torch.Tensor] = []
        gi = ei = 0
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.conv_cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i + 1 in self.pool_layers:
                gap.append(self.restricted_convs_gap[len(gap)](s1))
                for k in range(len(gap) - 1):
                    gap[k] = self.reduction_convs_gap[gi](gap[k])
                    gi += 1
            if i in self.pool_layers:
                en.append(self.restricted_convs_en[len(en)](s1))
                for k in range(len(en) - 1):
                    en[k] = self.reduction_convs_en[ei](en[k])
                    ei += 1
                if i == self.pool_layers[-1]:
                    for k in range(len(gap)):
                        gap[k] = self.reduction_convs_gap[gi](gap[k])
                        gi += 1
        outs: list[torch.Tensor] = []
        for j, cell in enumerate(self.en_cells):
            a, b = (en[0], en[1]) if j == 0 else (s0, s1)
            s0, s1 = s1, cell(a, b, self.drop_path_prob)
            outs.append(self.restricted_ens_gap[j](s1))
        out = self.global_pooling(torch.cat(gap + outs, dim=1)).flatten(1)
        return self.classifier(out), None
