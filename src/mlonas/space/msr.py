"""MSR-DARTS' supernet: spectrally normalised ops mixed by softmax(-stable rank).

MSR-DARTS (minimum stable rank DARTS; official code mtaecchhi/msrdarts @ d5e77f6) learns
no architecture parameters. Its search network is DARTS' supernet with three changes, each
kept here as the official code runs it (citations are to that repo):

- **Four candidate ops**, ``PRIMITIVES_SPECTRAL`` = sep_conv_3x3, sep_conv_5x5,
  dil_conv_3x3, dil_conv_5x5 (genotypes.py:7-12): no skip, pool or none.
- **Every conv inside them is spectrally normalised** (operations_spectral_norm.py:37-129,
  spectral_norm_conv_inplace.py): in training mode each forward estimates the conv
  operator's spectral norm sigma on a ``(1, C, h, w)`` input by 5 power iterations and
  uses ``W / (sigma / coeff + 1e-5)`` with coeff 1 (the "soft" ``max(1, sigma)`` factor the
  code computes is overwritten before use, :279-291); depthwise convs re-draw their power
  vectors before every forward (:240-242), pointwise ones keep them; eval mode reuses the
  weight of the last training forward (:302-304). The stem and the cell preprocessing are
  not normalised. :class:`SpectralNormConv` is that hook.
- **Mixing by stable rank, per edge of each cell**: edge ``e`` of cell ``i`` outputs
  ``sum_o softmax(-srank[i, e])_o * o(x)`` where ``srank`` is the stable rank
  (:mod:`mlonas.space.stable_rank`) of each op's last conv, refreshed once at the start of
  every epoch (model_search.py:24-37, train_search_cifar.py:202-203). Not learned, not
  shared between the cells of a type.

The (h, w) each conv is measured at follows the official rule
(:func:`cell_input_sizes`, :func:`edge_size`), including its quirk: in a reduction cell
the stride-1 edges out of intermediate nodes are measured at the cell's *input* size,
twice their real resolution, so their stable ranks are ~4x too large
(model_search.py:16,138-151).

Derivation (model_search.py:173-220): the stable ranks of each cell are averaged over the
cells of its type, and DARTS' rule is applied to ``-mean_srank``
(:func:`mlonas.space.genotype.derive_min_stable_rank`): per node the two edges of smallest
minimum stable rank, on each the op of smallest stable rank.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mlonas.space.genotype import PRIMITIVES_SPECTRAL, Genotype, derive_min_stable_rank
from mlonas.space.stable_rank import stable_rank
from mlonas.space.supernet import Supernet, SupernetSpec

N_POWER_ITERATIONS = 5  # operations_spectral_norm.py:39,80 (n_power_iter=5)
COEFF = 1.0  # operations_spectral_norm.py:39,80 (coeff=1.)
SIGMA_EPS = 1e-5  # spectral_norm_conv_inplace.py:291 ("for stability")
NORMALIZE_EPS = 1e-12  # spectral_norm_conv_inplace.py:391 (eps of F.normalize)

Size = tuple[int, int]
__all__ = ["PRIMITIVES_SPECTRAL", "SpectralNormConv", "StableRankSupernet"]


class SpectralNormConv(nn.Module):
    """A conv whose training-mode weight is ``W / (sigma(W) / coeff + 1e-5)``, sigma the
    spectral norm of the conv *operator* on a ``(1, C_in, h, w)`` input, estimated by power
    iteration (Gouk et al. 2018, as MSR-DARTS' spectral_norm_conv_inplace.py applies it).

    The power iteration runs without gradient; sigma = u . conv(v, W) keeps W's gradient,
    so the normalisation is differentiated through, as in the official hook. Its adjoint
    step is :func:`torch.nn.grad.conv2d_input` for the declared input size, the exact
    transpose the official ``conv_transpose2d(..., output_padding)`` computes for the sizes
    it is used at. ``weight_sn`` holds the last training-mode weight: eval mode and the
    stable rank use it (the official ``module.weight`` attribute, set only in training).
    """

    u: torch.Tensor
    v: torch.Tensor
    weight_sn: torch.Tensor

    def __init__(
        self,
        conv: nn.Conv2d,
        size: Size,
        n_power_iterations: int = N_POWER_ITERATIONS,
        coeff: float = COEFF,
    ) -> None:
        super().__init__()
        if conv.bias is not None:
            raise ValueError("spectral normalisation of a conv with a bias is not MSR-DARTS'")
        self.conv = conv
        self.input_shape = (1, conv.in_channels, int(size[0]), int(size[1]))
        self.n_power_iterations = n_power_iterations
        self.coeff = coeff
        # The official hook re-draws u and v before every forward of a grouped conv.
        self.redraw = conv.groups != 1
        w = conv.weight
        with torch.no_grad():
            probe = torch.zeros(self.input_shape, dtype=w.dtype, device=w.device)
            self.output_shape = tuple(self._conv(probe, w).shape)
        n_in, n_out = int(np.prod(self.input_shape)), int(np.prod(self.output_shape))
        # v then u drawn from the global RNG, as the official apply() does
        v = F.normalize(torch.randn(n_in, dtype=w.dtype), dim=0, eps=NORMALIZE_EPS)
        u = F.normalize(torch.randn(n_out, dtype=w.dtype), dim=0, eps=NORMALIZE_EPS)
        self.register_buffer("u", u.to(w.device))
        self.register_buffer("v", v.to(w.device))
        self.register_buffer("weight_sn", w.detach().clone())

    def _conv(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        c = self.conv
        return F.conv2d(x, w, None, c.stride, c.padding, c.dilation, c.groups)

    def sigma(self) -> torch.Tensor:
        """The power-iteration estimate of the operator norm (u, v updated in place)."""
        c, w = self.conv, self.conv.weight
        with torch.no_grad():
            if self.redraw:
                self.u.copy_(F.normalize(torch.randn_like(self.u), dim=0, eps=NORMALIZE_EPS))
                self.v.copy_(F.normalize(torch.randn_like(self.v), dim=0, eps=NORMALIZE_EPS))
            u, v = self.u, self.v
            for _ in range(self.n_power_iterations):
                vt = torch.nn.grad.conv2d_input(
                    self.input_shape, w, u.view(self.output_shape),
                    c.stride, c.padding, c.dilation, c.groups,
                )  # fmt: skip
                v = F.normalize(vt.flatten(), dim=0, eps=NORMALIZE_EPS)
                ut = self._conv(v.view(self.input_shape), w)
                u = F.normalize(ut.flatten(), dim=0, eps=NORMALIZE_EPS)
            self.u.copy_(u)
            self.v.copy_(v)
        u, v = self.u.clone(), self.v.clone()  # the official hook's clones
        return torch.dot(u, self._conv(v.view(self.input_shape), w).flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            w = self.conv.weight / (self.sigma() / self.coeff + SIGMA_EPS)
            with torch.no_grad():
                self.weight_sn.copy_(w)
        else:
            w = self.weight_sn
        return self._conv(x, w)

    def stable_rank(self, size: Size) -> float:
        c = self.conv
        return stable_rank(self.weight_sn, size, groups=c.groups, dilation=c.dilation[0])


def spectralise(op: nn.Module, size: Size, stride: int) -> list[SpectralNormConv]:
    """Replace every conv of candidate op ``op`` (input ``size``) by its spectrally
    normalised version, in place; the wrapped convs in order.

    Input sizes as the official SepConv/DilConv declare them: the first conv at ``size``,
    every later one at ``size // stride`` (operations_spectral_norm.py:48-53, 89-94).
    """
    later = (size[0] // stride, size[1] // stride)
    out: list[SpectralNormConv] = []

    def visit(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.Conv2d):
                sn = SpectralNormConv(child, size if not out else later)
                setattr(module, name, sn)
                out.append(sn)
            else:
                visit(child)

    visit(op)
    if not out:
        raise ValueError(f"{type(op).__name__} has no conv to normalise")
    return out


def cell_input_sizes(image_size: int, layers: int) -> list[Size]:
    """(h, w) of each cell's input as the official code records it (``in_shapes``,
    model_search.py:138-151): halved after every reduction cell."""
    h = w = image_size
    sizes: list[Size] = []
    reduction_prev = False
    for i in range(layers):
        if reduction_prev:
            h, w = h // 2, w // 2
        sizes.append((h, w))
        reduction_prev = i in (layers // 3, 2 * layers // 3)
    return sizes


def edge_size(cell_input: Size, stride: int) -> Size:
    """Where an edge's last conv is measured: the cell's input size, halved on stride-2
    edges (model_search.py:16). A reduction cell's stride-1 edges keep the input size."""
    return cell_input if stride == 1 else (cell_input[0] // 2, cell_input[1] // 2)


class StableRankSupernet(Supernet):
    """DARTS' supernet with MSR-DARTS' ops and stable-rank mixing (module docstring).

    ``arch_parameters()`` is empty: nothing here is learned but the weights. The mixing
    weights are buffers ``[layers, edges, ops]`` set by :meth:`update_stable_ranks`.
    """

    stable_ranks: torch.Tensor
    mixing: torch.Tensor

    def __init__(self, spec: SupernetSpec, image_size: int) -> None:
        if tuple(spec.primitives) != PRIMITIVES_SPECTRAL:
            raise ValueError(f"MSR-DARTS searches {PRIMITIVES_SPECTRAL}, not {spec.primitives}")
        super().__init__(spec)
        # DARTS' alphas are built (and drawn) by the parent; MSR-DARTS has none.
        for name in self.arch_names:
            delattr(self, name)
        self.arch_names = []
        self.cell_sizes = cell_input_sizes(image_size, spec.layers)
        self.edge_sizes: list[list[Size]] = []
        for cell, size in zip(self.cells, self.cell_sizes, strict=True):
            sizes = []
            for edge in cell.edges:
                for op in edge.ops:
                    spectralise(op, size, edge.stride)
                sizes.append(edge_size(size, edge.stride))
            self.edge_sizes.append(sizes)
        k, n = len(self.cells[0].edges), len(spec.primitives)
        self.register_buffer("stable_ranks", torch.zeros(spec.layers, k, n, dtype=torch.float64))
        self.register_buffer("mixing", torch.zeros(spec.layers, k, n))
        self.update_stable_ranks()

    def compute_stable_ranks(self) -> np.ndarray:
        """``[layers, edges, ops]`` stable ranks of each op's last conv, now (float64)."""
        out = np.empty(tuple(self.stable_ranks.shape))
        for i, cell in enumerate(self.cells):
            for e, edge in enumerate(cell.edges):
                for o, op in enumerate(edge.ops):
                    last = [m for m in op.modules() if isinstance(m, SpectralNormConv)][-1]
                    out[i, e, o] = last.stable_rank(self.edge_sizes[i][e])
        return out

    @torch.no_grad()
    def update_stable_ranks(self) -> None:
        """Refresh the mixing weights (the official ``update_stable_ranks()``, called at
        the start of every epoch): softmax(-srank) in float32, as
        ``F.softmax(-torch.Tensor(stable_ranks))`` computes it."""
        ranks = torch.from_numpy(self.compute_stable_ranks())
        self.stable_ranks.copy_(ranks)
        self.mixing.copy_(torch.softmax(-ranks.float(), dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell, weights in zip(self.cells, self.mixing, strict=True):
            s0, s1 = s1, cell(s0, s1, weights, None, 0.0, 0.0)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def _means(self, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean stable rank over the normal cells and over the reduction cells."""
        normal = [ranks[i] for i, c in enumerate(self.cells) if not c.reduction]
        reduce = [ranks[i] for i, c in enumerate(self.cells) if c.reduction]
        return np.mean(normal, axis=0), np.mean(reduce, axis=0)

    def arch_record(self) -> dict[str, object]:
        ranks = self.compute_stable_ranks()
        normal, reduce = self._means(ranks)
        record = super().arch_record()
        record.update(
            srank_normal=normal.tolist(),
            srank_reduce=reduce.tolist(),
            srank_cells=ranks.tolist(),
            reduction_cells=[i for i, c in enumerate(self.cells) if c.reduction],
            srank_sizes=[[list(s) for s in sizes] for sizes in self.edge_sizes],
        )
        return record

    def trajectory_record(self) -> dict[str, Any]:
        normal, reduce = self._means(self.compute_stable_ranks())
        return {"normal": normal.tolist(), "reduce": reduce.tolist()}

    def genotype(self) -> Genotype:
        s = self.spec
        normal, reduce = self._means(self.compute_stable_ranks())
        return derive_min_stable_rank(
            normal,
            reduce,
            s.steps,
            s.multiplier,
            edge_ops_normal=s.edge_ops(False),
            edge_ops_reduce=s.edge_ops(True),
        )
