"""Evaluation networks: a searched cell stacked into the DARTS CIFAR and ImageNet models.

The searched cell is only half of a result: the papers' error rates and parameter counts
are those of the *evaluation* network, a deep stack of the discrete cell trained from
scratch (DARTS, Liu et al. 2019, section 3.2 and appendix A.2). Its structure is
reproduced here exactly, because the published parameter counts (DARTS_V2: 3.3M at C=36
and 20 cells on CIFAR-10, 4.7M at C=48 and 14 cells on ImageNet) only come out when every
layer is as in the official code; ``tests/test_evalnet.py`` checks them.

Two deliberate, documented extensions keep the same code usable for the offline demo
(16x16 / 32x32 images and C=4):

* The auxiliary heads pool to a 2x2 map. At the maps they were designed for (8x8 on
  CIFAR, 7x7 on ImageNet) the DARTS average pool (5x5, stride 3 resp. 2) does exactly
  that and is used unchanged; on any other map size, which would make the fixed pool
  fail or produce a map the 2x2 convolution cannot reduce to 1x1, an adaptive average
  pool to 2x2 is used instead.
* The ImageNet network pools globally with an adaptive pool instead of ``AvgPool2d(7)``;
  at 224x224 the two are identical.

``pool_bn`` (``eval.<kind>.pool_bn``) follows each max/avg pool with
``BatchNorm2d(C, affine=False)``: DrNAS' ``operations.py`` builds its pools that way in
``OPS``, which its evaluation networks share with its search (DARTS' have bare pools).
The BN has no parameters, so counts are unchanged; it changes the forward, and its
running statistics are buffers of the state dict.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import torch
from torch import nn

from mlonas.errors import MlonasError
from mlonas.space.genotype import Edge, Genotype
from mlonas.space.ops import FactorizedReduce, ReLUConvBN, build_op, drop_path

AUX_PREFIX = "auxiliary_head"


def _eval_op(name: str, c: int, stride: int, pool_bn: bool) -> nn.Module:
    """The evaluation network's op; with ``pool_bn`` a pool is ``pool -> BN(affine=False)``
    (DrNAS' ``OPS``). Drop path then drops the pair, as it drops DrNAS' Sequential."""
    op = build_op(name, c, stride)
    if pool_bn and name in ("max_pool_3x3", "avg_pool_3x3"):
        return nn.Sequential(op, nn.BatchNorm2d(c, affine=False))
    return op


class Cell(nn.Module):
    """One discrete cell: two preprocessed inputs, ``steps`` nodes, concatenated output.

    ``reduction`` makes the edges leaving the two cell inputs stride 2 (and the cell's
    channel count is chosen by the caller); ``reduction_prev`` means the previous-previous
    output is twice the resolution of the previous one, so it is reduced with a
    :class:`FactorizedReduce` before use. ``use_reduce`` says which half of the genotype
    the cell is built from (None: the reduce half exactly in reduction cells, as DARTS);
    B-DARTS' broad network (:mod:`mlonas.space.broad`) decouples the two, building its
    stride-2 convolution cells from ``normal`` and its stride-1 enhancement cells from
    ``reduce``.
    """

    def __init__(
        self,
        genotype: Genotype,
        c_prev_prev: int,
        c_prev: int,
        c: int,
        reduction: bool,
        reduction_prev: bool,
        pool_bn: bool = False,
        use_reduce: bool | None = None,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        use_reduce = reduction if use_reduce is None else use_reduce
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(c_prev_prev, c)
        else:
            self.preprocess0 = ReLUConvBN(c_prev_prev, c, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(c_prev, c, 1, 1, 0)
        edges: tuple[Edge, ...] = genotype.reduce if use_reduce else genotype.normal
        concat = genotype.reduce_concat if use_reduce else genotype.normal_concat
        self.steps = len(edges) // 2
        self.concat: tuple[int, ...] = tuple(concat)
        self.multiplier = len(self.concat)
        self.indices: tuple[int, ...] = tuple(src for _, src in edges)
        self.ops = nn.ModuleList(
            _eval_op(name, c, 2 if reduction and src < 2 else 1, pool_bn) for name, src in edges
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        # Drop path regularises only the learned branches: dropping an identity would just
        # remove the residual path, which DARTS (and NASNet before it) leave untouched.
        use_drop = self.training and drop_prob > 0.0
        for i in range(self.steps):
            total: torch.Tensor | None = None
            for k in (2 * i, 2 * i + 1):
                op = self.ops[k]
                h = op(states[self.indices[k]])
                if use_drop and not isinstance(op, nn.Identity):
                    h = drop_path(h, drop_prob)
                total = h if total is None else total + h
            assert total is not None
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """The DARTS auxiliary classifier (ReLU, 5x5 avg-pool, 1x1 conv, 2x2 conv, linear).

    ``stride`` is the pool stride (3 for the CIFAR head on 8x8 maps, 2 for the ImageNet
    head on 7x7 maps). ``bn_after_conv2`` is True for CIFAR; the official DARTS ImageNet
    head omits that BatchNorm ("omitted ... due to a typo", kept out "for consistency
    with the experiments in the paper"), and so do we, to train the network the papers
    trained. The head is excluded from reported parameter counts either way.
    """

    def __init__(self, c: int, num_classes: int, stride: int, bn_after_conv2: bool) -> None:
        super().__init__()
        self.stride = stride
        self.relu = nn.ReLU(inplace=False)
        self.pool = nn.AvgPool2d(5, stride=stride, padding=0, count_include_pad=False)
        layers: list[nn.Module] = [
            nn.Conv2d(c, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
        ]
        if bn_after_conv2:
            layers.append(nn.BatchNorm2d(768))
        layers.append(nn.ReLU(inplace=True))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(768, num_classes)

    def _pooled_size(self, size: int) -> int:
        return (size - 5) // self.stride + 1 if size >= 5 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        h, w = x.shape[-2:]
        if self._pooled_size(h) == 2 and self._pooled_size(w) == 2:
            x = self.pool(x)  # the maps the head was designed for: exactly DARTS
        else:
            x = nn.functional.adaptive_avg_pool2d(x, 2)  # tiny/odd maps (demo), see module doc
        x = self.features(x)
        return self.classifier(x.flatten(1))


class _EvalNetwork(nn.Module):
    """Shared body of both evaluation networks: the cell stack, heads and forward."""

    drop_path_prob: float

    def _build_cells(
        self,
        genotype: Genotype,
        c: int,
        num_classes: int,
        layers: int,
        auxiliary: bool,
        c_stem: int,
        reduction_prev: bool,
        aux_stride: int,
        aux_bn: bool,
        pool_bn: bool,
    ) -> None:
        if layers < 3:
            raise MlonasError(f"evaluation network needs at least 3 layers, got {layers}")
        self.layers = layers
        self.auxiliary = auxiliary
        self.aux_index = 2 * layers // 3
        c_prev_prev, c_prev, c_curr = c_stem, c_stem, c
        self.cells = nn.ModuleList()
        c_aux = c_prev
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                c_curr *= 2
            cell = Cell(genotype, c_prev_prev, c_prev, c_curr, reduction, reduction_prev, pool_bn)
            self.cells.append(cell)
            reduction_prev = reduction
            c_prev_prev, c_prev = c_prev, cell.multiplier * c_curr
            if i == self.aux_index:
                c_aux = c_prev
        if auxiliary:
            self.auxiliary_head = AuxiliaryHead(c_aux, num_classes, aux_stride, aux_bn)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_prev, num_classes)

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(logits, aux_logits)``; ``aux_logits`` only in training with a head."""
        s0, s1 = self._stem(x)
        aux_logits = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.auxiliary and self.training:
                aux_logits = self.auxiliary_head(s1)
        out = self.global_pooling(s1).flatten(1)
        return self.classifier(out), aux_logits


class NetworkCIFAR(_EvalNetwork):
    """DARTS' CIFAR evaluation network (stem 3x3 conv to 3C, ``layers`` cells)."""

    def __init__(
        self,
        C: int,
        num_classes: int,
        layers: int,
        auxiliary: bool,
        genotype: Genotype,
        drop_path_prob: float = 0.0,
        pool_bn: bool = False,
    ) -> None:
        super().__init__()
        self.drop_path_prob = drop_path_prob
        c_stem = 3 * C  # DARTS' stem_multiplier
        self.stem = nn.Sequential(
            nn.Conv2d(3, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem)
        )
        self._build_cells(
            genotype,
            C,
            num_classes,
            layers,
            auxiliary,
            c_stem,
            reduction_prev=False,
            aux_stride=3,
            aux_bn=True,
            pool_bn=pool_bn,
        )

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.stem(x)
        return s, s


class NetworkImageNet(_EvalNetwork):
    """DARTS' ImageNet (mobile setting) network: three stride-2 stem convs, then cells.

    The two stems bring 224x224 to 28x28 before the first cell; because stem1 halves the
    resolution of stem0's output, the first cell treats its s0 input as coming from a
    reduction (``reduction_prev=True``), as in the official code.
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
    ) -> None:
        super().__init__()
        self.drop_path_prob = drop_path_prob
        self.stem0 = nn.Sequential(
            nn.Conv2d(3, C // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        # Not in-place (unlike the official code): stem0's output is also the first cell's
        # s0. Numerically the same, since that cell's FactorizedReduce starts with a ReLU.
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self._build_cells(
            genotype,
            C,
            num_classes,
            layers,
            auxiliary,
            C,
            reduction_prev=True,
            aux_stride=2,
            aux_bn=False,
            pool_bn=pool_bn,
        )

    def _stem(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a (Distributed)DataParallel wrapper, or the model itself."""
    return getattr(model, "module", model)


def count_params_m(model: nn.Module) -> float:
    """Trainable parameters in millions, auxiliary head excluded (as the papers report)."""
    net = unwrap(model)
    aux = getattr(net, AUX_PREFIX, None)
    skip = {id(p) for p in aux.parameters()} if aux is not None else set()
    return sum(p.numel() for p in net.parameters() if id(p) not in skip) / 1e6


def set_drop_path(model: nn.Module, p: float) -> None:
    """Set the drop-path probability the cells use in the next training forward passes."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"drop path probability must be in [0, 1), got {p}")
    unwrap(model).drop_path_prob = float(p)


@cache
def _published() -> dict[str, Any]:
    text = (
        resources.files("mlonas")
        .joinpath("reference/published_genotypes.json")
        .read_text(encoding="utf-8")
    )
    return json.loads(text)["genotypes"]


def published_genotype_names() -> tuple[str, ...]:
    """Names of the cells published by the official repositories (shipped with mlonas)."""
    return tuple(_published())


def published_genotype(name: str) -> Genotype:
    """A published cell (DARTS_V2, PC_DARTS_cifar, PDARTS, ...), validated like any genotype."""
    data = _published()
    if name not in data:
        raise MlonasError(f"published genotype {name!r} is unknown (known: {', '.join(data)})")
    return Genotype.from_dict(data[name], where=f"published genotype {name}")
