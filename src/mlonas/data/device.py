"""CIFAR images resident on the training device, augmented there by seeded torch ops.

Why: at the papers' size an H100/H200 trains the DARTS evaluation network faster than
two DataLoader workers can run PIL crop/flip/Cutout for it, so the official loop is bound
by the host, not by the GPU. The whole CIFAR training set is 150 MB of uint8; held as one
tensor on the device, a batch is one gather plus a few element-wise ops.

The augmentation is DARTS' CIFAR training transform (``RandomCrop(32, padding=4)``,
``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize``, then DeVries & Taylor's Cutout
after normalisation: centre uniform over the image, square clipped at the borders, set to
0), done on whole batches:

* crop: the image zero-padded by ``padding`` on every side (torchvision's ``fill=0`` on
  the uint8 image, i.e. black before normalisation), then the window at offset
  ``(oy, ox)``, each uniform in ``[0, 2 * padding]``;
* flip with probability 1/2, folded into the crop's column index;
* ``x.float() / 255`` then ``(x - mean) / std``, the very ops of ``ToTensor`` and
  ``Normalize`` (so a batch equals torchvision's result for the same draws bit for bit);
* Cutout: rows ``[clip(cy - L//2), clip(cy + L//2))`` x the same for columns set to 0.

Reproducibility: every draw of an epoch (order, offsets, flips, Cutout centres) comes
from one CPU ``torch.Generator`` seeded from :func:`epoch_seed` ``(seed, epoch)``, drawn
for *all* images in a fixed order and indexed by image. So an epoch's batches depend on
``(seed, epoch)`` only (a resumed run sees exactly what an uninterrupted one saw, with no
RNG state to restore), they are the same on CPU and on GPU, and an image's augmentation
does not depend on the rank that holds it. No global RNG is touched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any, Self

import numpy as np
import torch
from torch.utils.data import Sampler


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed that depends on ``(seed, epoch)`` only; distinct pairs never collide
    in practice (SHA-256), unlike ``seed * K + epoch`` schemes."""
    digest = hashlib.sha256(f"mlonas-epoch:{int(seed)}:{int(epoch)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class EpochDraws:
    """One epoch's random draws for ``n`` images of ``h`` x ``w`` (indexed by image).

    ``order``: a permutation (or ``arange`` when not shuffling); ``offset``: ``[n, 2]``
    crop offsets (row, column) in ``[0, 2 * padding]``; ``flip``: ``[n]`` bool;
    ``centre``: ``[n, 2]`` Cutout centres, row in ``[0, h)`` and column in ``[0, w)``.
    Drawn in this order from one generator, so each is a fixed function of the seed.
    """

    def __init__(
        self, n: int, h: int, w: int, padding: int, *, shuffle: bool, generator: torch.Generator
    ) -> None:
        g = generator
        self.order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
        self.offset = torch.randint(0, 2 * padding + 1, (n, 2), generator=g)
        self.flip = torch.rand(n, generator=g) < 0.5
        self.centre = torch.stack(
            (torch.randint(0, h, (n,), generator=g), torch.randint(0, w, (n,), generator=g)), 1
        )


def augment(
    images: torch.Tensor,
    offset: torch.Tensor,
    flip: torch.Tensor,
    centre: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    padding: int,
    cutout: int,
) -> torch.Tensor:
    """Pad-crop, flip, ``ToTensor``, ``Normalize`` and Cutout for a uint8 NHWC batch.

    ``offset``/``flip``/``centre`` are the batch's draws (:class:`EpochDraws`), all on
    ``images.device``; ``mean``/``std`` are ``[3]`` float tensors. Returns float NCHW
    (strided as channels_last: the gather produces NHWC, the caller picks the layout).
    """
    b, h, w, _ = images.shape
    dev = images.device
    padded = torch.nn.functional.pad(images, (0, 0, padding, padding, padding, padding))
    rows = offset[:, :1] + torch.arange(h, device=dev)  # [b, h]
    cols = torch.arange(w, device=dev)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + offset[:, 1:]  # [b, w]
    batch = torch.arange(b, device=dev)[:, None, None]
    x = padded[batch, rows[:, :, None], cols[:, None, :]]  # [b, h, w, 3]
    x = x.permute(0, 3, 1, 2).float().div(255)
    x = x.sub(mean[:, None, None]).div(std[:, None, None])
    if cutout > 0:
        half = cutout // 2
        y1 = (centre[:, 0] - half).clamp(0, h)[:, None]
        y2 = (centre[:, 0] + half).clamp(0, h)[:, None]
        x1 = (centre[:, 1] - half).clamp(0, w)[:, None]
        x2 = (centre[:, 1] + half).clamp(0, w)[:, None]
        ys = torch.arange(h, device=dev)[None, :]
        xs = torch.arange(w, device=dev)[None, :]
        in_rows = (ys >= y1) & (ys < y2)  # [b, h]
        in_cols = (xs >= x1) & (xs < x2)  # [b, w]
        cut = in_rows[:, :, None] & in_cols[:, None, :]
        x = x.masked_fill(cut[:, None], 0.0)
    return x


class DeviceImages:
    """A CIFAR-style set (uint8 NHWC images, int64 labels) held as tensors on one device.

    ``train=True`` applies the training augmentation (:func:`augment`) with ``padding``
    and ``cutout``; ``train=False`` only ``ToTensor`` + ``Normalize`` (the test
    transform). ``len()`` is the number of images, so a ``DistributedSampler`` can
    shard it like any dataset.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float] | torch.Tensor,
        std: Sequence[float] | torch.Tensor,
        *,
        train: bool,
        padding: int,
        cutout: int,
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            got = f"{images.dtype} {tuple(images.shape)}"
            raise ValueError(f"expected uint8 [N, H, W, 3] images, got {got}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.to(torch.int64)
        dev = images.device
        self.mean = torch.as_tensor(mean, dtype=torch.float32).to(dev)
        self.std = torch.as_tensor(std, dtype=torch.float32).to(dev)
        self.train, self.padding, self.cutout = bool(train), int(padding), int(cutout)

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        train: bool,
        padding: int,
        cutout: int,
    ) -> Self:
        """From a torchvision-CIFAR-like dataset (``data`` uint8 NHWC, ``targets``)."""
        images = torch.from_numpy(np.ascontiguousarray(dataset.data))
        labels = torch.as_tensor(list(dataset.targets), dtype=torch.int64)
        return cls(images, labels, mean, std, train=train, padding=padding, cutout=cutout)

    def __len__(self) -> int:
        return len(self.labels)

    def _like(self, images: torch.Tensor, labels: torch.Tensor) -> Self:
        return type(self)(
            images, labels, self.mean, self.std,
            train=self.train, padding=self.padding, cutout=self.cutout,
        )  # fmt: skip

    def to(self, device: torch.device) -> Self:
        """The same set on ``device`` (itself when already there)."""
        if self.images.device == device:
            return self
        return self._like(self.images.to(device), self.labels.to(device))

    def subset(self, indices: Sequence[int]) -> Self:
        """The images at ``indices`` (e.g. one rank's shard of the test set)."""
        idx = torch.as_tensor(list(indices), dtype=torch.int64, device=self.images.device)
        return self._like(self.images[idx], self.labels[idx])

    def epoch_batches(
        self,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        epoch: int,
        drop_last: bool = False,
        sampler: Sampler[int] | None = None,
    ) -> DeviceBatches:
        """One epoch's batches (see the module docstring for what they depend on).

        With a ``sampler`` (DDP's ``DistributedSampler``, its ``set_epoch(epoch)``
        called here) the order is the sampler's: this rank's shard of its seeded
        permutation, exactly as the DataLoader path shards.
        """
        n, h, w = self.images.shape[0], self.images.shape[1], self.images.shape[2]
        g = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        draws = EpochDraws(n, h, w, self.padding, shuffle=shuffle and sampler is None, generator=g)
        order = draws.order
        if sampler is not None:
            set_epoch = getattr(sampler, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(epoch)
            order = torch.as_tensor(list(iter(sampler)), dtype=torch.int64)
        return DeviceBatches(self, order, draws, batch_size, drop_last)


class DeviceBatches:
    """An epoch of ``(x, y)`` batches on the images' device; ``len()`` like a DataLoader."""

    def __init__(
        self,
        data: DeviceImages,
        order: torch.Tensor,
        draws: EpochDraws,
        batch_size: int,
        drop_last: bool,
    ) -> None:
        dev = data.images.device
        self.data, self.batch_size = data, int(batch_size)
        n = len(order)
        self.n = n - n % self.batch_size if drop_last else n
        self.order = order[: self.n].to(dev)
        self.offset = draws.offset.to(dev)
        self.flip = draws.flip.to(dev)
        self.centre = draws.centre.to(dev)

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        d = self.data
        for start in range(0, self.n, self.batch_size):
            idx = self.order[start : start + self.batch_size]
            images = d.images[idx]
            if d.train:
                x = augment(
                    images, self.offset[idx], self.flip[idx], self.centre[idx],
                    d.mean, d.std, d.padding, d.cutout,
                )  # fmt: skip
            else:
                x = images.permute(0, 3, 1, 2).float().div(255)
                x = x.sub(d.mean[:, None, None]).div(d.std[:, None, None])
            yield x, d.labels[idx]
