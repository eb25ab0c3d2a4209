"""Candidate operations of the DARTS search space.

The eight primitives and their internal structure (ReLU-Conv-BN ordering, separable
convolutions applied twice, factorized reduction for strided identities) follow the
DARTS paper (Liu et al., ICLR 2019, section 3 and appendix A.1). Their exact structure
matters: the published parameter counts (DARTS_V2 = 3.3M at C=36, 20 cells) are only
reproduced when every layer is as specified, which ``tests/test_evalnet.py`` checks.

``smooth`` swaps ReLU for softplus and max- for average-pooling: the hypergradient tests
need a smooth surrogate network on which finite differences and exact autograd agree.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mlonas.space.genotype import PRIMITIVES

__all__ = ["PRIMITIVES"]  # defined with the genotypes that name them (torch-free)

ActFactory = Callable[[], nn.Module]


def relu() -> nn.Module:
    return nn.ReLU(inplace=False)


def softplus() -> nn.Module:
    return nn.Softplus()


class ReLUConvBN(nn.Sequential):
    """act -> conv -> BN, the preprocessing block of every cell input."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int,
        padding: int,
        affine: bool = True,
        act: ActFactory = relu,
    ) -> None:
        super().__init__(
            act(),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """act -> depthwise dilated conv -> pointwise conv -> BN."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int,
        padding: int,
        dilation: int,
        affine: bool = True,
        act: ActFactory = relu,
    ) -> None:
        super().__init__(
            act(),
            nn.Conv2d(
                c_in,
                c_in,
                kernel,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=c_in,
                bias=False,
            ),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked (dilation-1) DilConvs; only the first one strides."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int,
        padding: int,
        affine: bool = True,
        act: ActFactory = relu,
    ) -> None:
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, padding, 1, affine, act),
            DilConv(c_in, c_out, kernel, 1, padding, 1, affine, act),
        )


class Zero(nn.Module):
    """The ``none`` operation: a zero tensor of the output shape."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve the resolution without losing pixels: two offset stride-2 1x1 convs, concatenated."""

    def __init__(self, c_in: int, c_out: int, affine: bool = True, act: ActFactory = relu) -> None:
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even number of channels, got {c_out}")
        self.act = act()
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(x)
        # The second branch is shifted by one pixel so the two branches see all positions.
        shifted = nn.functional.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))


def build_op(
    name: str, channels: int, stride: int, affine: bool = True, smooth: bool = False
) -> nn.Module:
    """Instantiate primitive ``name`` mapping ``channels`` -> ``channels`` with ``stride``.

    ``smooth`` builds the surrogate used by the hypergradient tests: softplus instead of
    ReLU and average- instead of max-pooling, so the network is infinitely differentiable
    and finite differences of its second derivatives converge.
    """
    c = channels
    act = softplus if smooth else relu
    if name == "none":
        return Zero(stride)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    if name == "max_pool_3x3":
        if smooth:
            return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
        return nn.MaxPool2d(3, stride=stride, padding=1)
    if name == "skip_connect":
        return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine, act)
    if name == "sep_conv_3x3":
        return SepConv(c, c, 3, stride, 1, affine, act)
    if name == "sep_conv_5x5":
        return SepConv(c, c, 5, stride, 2, affine, act)
    if name == "dil_conv_3x3":
        return DilConv(c, c, 3, stride, 2, 2, affine, act)
    if name == "dil_conv_5x5":
        return DilConv(c, c, 5, stride, 4, 2, affine, act)
    raise ValueError(f"unknown operation {name!r}; known: {', '.join(PRIMITIVES)}")


def drop_path(
    x: torch.Tensor, drop_prob: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero whole samples of a branch with probability ``drop_prob`` (rescaling the rest).

    Under ``torch.compile`` the mask is ``rand < keep`` instead of ``bernoulli_(keep)``
    (the same distribution): ``bernoulli_`` makes the compiler specialise on the value of
    ``keep``, i.e. recompile the network every epoch of the drop-path ramp (and fall back
    to eager after 8); a comparison takes it as a graph input. Eager runs are unchanged.
    """
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    if torch.compiler.is_compiling():
        shape = (x.size(0), 1, 1, 1)
        draw = torch.rand(shape, device=x.device, dtype=x.dtype, generator=generator)
        return x / keep * (draw < keep)
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype)
    mask.bernoulli_(keep, generator=generator)
    return x / keep * mask
