"""DARTS' per-image CIFAR transforms as plain torch ops, bit for bit torchvision's.

The official CIFAR pipeline is ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``,
``ToTensor()``, ``Normalize(mean, std)`` from ``torchvision.transforms`` (and Cutout,
:class:`mlonas.data.loaders.Cutout`). Importing any part of torchvision imports all of
it, ``torch._dynamo`` included (through ``torchvision.ops``): 1.5–3 s on the project's
2-core machine, paid again by every search and evaluation job of the DAG, and the
largest cost of the demo's many small jobs after torch itself. These classes do the same
arithmetic and draw from torch's global RNG with the same calls in the same order as
torchvision's (``torch.randint`` for the crop's row, then its column; ``torch.rand(1)``
for the flip), so a seeded run gives the same tensors and the same RNG state
afterwards; ``tests/test_data.py`` checks that against torchvision itself. Inputs are
PIL images (what torchvision's CIFAR datasets and the demo's stand-in hand out) or uint8
``[H, W, C]`` arrays. Only what the CIFAR pipeline uses is here; ImageNet's transforms
(``RandomResizedCrop``, ``ColorJitter`` on decoded JPEGs) stay torchvision's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


class Compose:
    """Apply ``transforms`` in order."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self) -> str:
        return f"Compose({', '.join(map(repr, self.transforms))})"


def _chw_uint8(img: Any) -> torch.Tensor:
    """A PIL RGB image or a uint8 [H, W, C] array as a uint8 [C, H, W] tensor."""
    if isinstance(img, torch.Tensor):
        return img
    return torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1)


class RandomCrop:
    """Zero-pad ``padding`` pixels on every side, then crop ``size`` at a random offset."""

    def __init__(self, size: int, padding: int = 0) -> None:
        self.size, self.padding = int(size), int(padding)

    def __call__(self, img: Any) -> torch.Tensor:
        x = _chw_uint8(img)
        if self.padding:
            x = F.pad(x, [self.padding] * 4)
        h, w = x.shape[-2:]
        th = tw = self.size
        if h == th and w == tw:  # torchvision draws nothing then
            return x
        i = int(torch.randint(0, h - th + 1, size=(1,)).item())
        j = int(torch.randint(0, w - tw + 1, size=(1,)).item())
        return x[..., i : i + th, j : j + tw]

    def __repr__(self) -> str:
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: Any) -> torch.Tensor:
        x = _chw_uint8(img)
        if torch.rand(1) < self.p:
            return x.flip(-1)
        return x

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class ToTensor:
    """uint8 pixels as float32 in [0, 1], channels first."""

    def __call__(self, img: Any) -> torch.Tensor:
        return _chw_uint8(img).contiguous().to(torch.float32).div(255)

    def __repr__(self) -> str:
        return "ToTensor()"


class Normalize:
    """``(x - mean) / std`` per channel, in place on the float tensor ToTensor made."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.sub_(self.mean).div_(self.std)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"
