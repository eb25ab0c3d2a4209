"""Tiny float64 networks and batches for the hypergradient tests (test_mlo*.py).

Smooth activations (softplus, average pooling) make every unrolled objective infinitely
differentiable, so finite differences and autograd must agree; the real ReLU/max-pool
supernet is piecewise smooth and its two estimators legitimately differ.
"""

from __future__ import annotations

import torch
from torch import nn

from mlonas.mlo import VirtualStep
from mlonas.space.supernet import Supernet, SupernetSpec

LOSS = nn.CrossEntropyLoss()


def tiny_net(
    smooth: bool = True, seed: int = 0, num_classes: int = 3, **options: object
) -> Supernet:
    """``options``: further SupernetSpec fields (DrNAS' ``mixing`` and ``primitives``)."""
    torch.manual_seed(seed)
    spec = SupernetSpec(
        init_channels=2,
        num_classes=num_classes,
        layers=3,
        steps=2,
        multiplier=2,
        smooth=smooth,
        **options,  # type: ignore[arg-type]
    )
    net = Supernet(spec).double()
    with torch.no_grad():  # alphas away from uniform, so the ops are distinguishable
        for a in net.arch_parameters():
            a.normal_(0, 0.5)
    return net


def batches() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64)
    xv = torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64)
    return (x, torch.tensor([0, 1, 2, 0, 1, 2])), (xv, torch.tensor([2, 1, 0, 1, 0, 2]))


def weights_of(net: nn.Module) -> list[nn.Parameter]:
    return net.weight_parameters() if isinstance(net, Supernet) else list(net.parameters())


def momentum_step(net: nn.Module, lr: float = 0.1, seed: int = 3) -> VirtualStep:
    """The virtual step of an SGD optimizer that has already taken one real step."""
    params = weights_of(net)
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=3e-4)
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.01
    saved = [p.detach().clone() for p in params]
    opt.step()  # creates momentum buffers
    with torch.no_grad():  # but keep the weights where they were
        for p, s in zip(params, saved, strict=True):
            p.copy_(s)
            p.grad = None
    return VirtualStep.from_optimizer(opt)


class TinyAudience(nn.Module):
    """A smooth stand-in for LeaSE's ResNet audience: conv-BN-softplus, average pooling."""

    def __init__(self, num_classes: int = 3, width: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.Softplus(),
            nn.AvgPool2d(2),
            nn.Conv2d(width, width, 3, padding=1),
            nn.Softplus(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def tiny_audience(seed: int = 5) -> TinyAudience:
    torch.manual_seed(seed)
    return TinyAudience().double()


def images(seed: int, n: int = 6, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64)


def flat(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def cosine(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(torch.nn.functional.cosine_similarity(flat(a), flat(b), dim=0))


def rel_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float((flat(a) - flat(b)).norm() / flat(b).norm())
