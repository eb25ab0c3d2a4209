"""The device-resident CIFAR loader (mlonas.data.device) against independent references.

The reference for the augmentation is torchvision's own functional ops on PIL images
(what the official DARTS ``train.py`` runs: pad 4 + crop, horizontal flip, ToTensor,
Normalize) and Cutout written out by hand as DeVries & Taylor's code does it, applied
with the very draws the device loader made. Distributions are checked against exact
enumerations over many draws.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DistributedSampler

from mlonas.data.device import DeviceImages, EpochDraws, augment, epoch_seed

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), generator=g, dtype=torch.uint8)


def reference(
    img: np.ndarray, oy: int, ox: int, flip: bool, cy: int, cx: int, padding: int, cutout: int
) -> torch.Tensor:
    """The official pipeline on one HWC uint8 image, with the given draws."""
    h, w = img.shape[:2]
    pil = TF.pad(Image.fromarray(img), padding, fill=0)  # RandomCrop(size, padding)
    pil = TF.crop(pil, oy, ox, h, w)
    if flip:
        pil = TF.hflip(pil)
    x = TF.normalize(TF.to_tensor(pil), list(MEAN), list(STD))
    if cutout > 0:  # DARTS utils.Cutout: np.clip(c -/+ length // 2, 0, size), then zero
        y1, y2 = np.clip(cy - cutout // 2, 0, h), np.clip(cy + cutout // 2, 0, h)
        x1, x2 = np.clip(cx - cutout // 2, 0, w), np.clip(cx + cutout // 2, 0, w)
        x[:, y1:y2, x1:x2] = 0.0
    return x


@pytest.mark.parametrize(("size", "padding", "cutout"), [(16, 2, 6), (12, 4, 5), (8, 1, 0)])
def test_augment_equals_the_official_pipeline_bit_for_bit(
    size: int, padding: int, cutout: int
) -> None:
    n = 64
    raw = images(n, size)
    draws = EpochDraws(
        n, size, size, padding, shuffle=True, generator=torch.Generator().manual_seed(3)
    )
    # the borders of the draws' ranges are hit, so clipping and padding are exercised
    assert {int(draws.offset.min()), int(draws.offset.max())} == {0, 2 * padding}
    out = augment(
        raw, draws.offset, draws.flip, draws.centre,
        torch.tensor(MEAN), torch.tensor(STD), padding, cutout,
    )  # fmt: skip
    assert out.shape == (n, 3, size, size) and out.dtype == torch.float32
    for i in range(n):
        (oy, ox), (cy, cx) = draws.offset[i].tolist(), draws.centre[i].tolist()
        want = reference(raw[i].numpy(), oy, ox, bool(draws.flip[i]), cy, cx, padding, cutout)
        assert torch.equal(out[i], want), i


def test_draw_statistics() -> None:
    """Flip rate 1/2, offsets uniform, and Cutout's mean zeroed area as enumerated exactly."""
    n, size, padding, length = 20000, 32, 4, 16
    draws = EpochDraws(
        n, size, size, padding, shuffle=True, generator=torch.Generator().manual_seed(5)
    )
    # binomial sd of the flip rate: 0.5 / sqrt(20000) = 0.0035; 0.015 is > 4 sd
    assert abs(draws.flip.float().mean().item() - 0.5) < 0.015
    counts = torch.bincount(draws.offset.flatten(), minlength=2 * padding + 1).float()
    assert len(counts) == 2 * padding + 1
    assert (counts / counts.sum() - 1 / (2 * padding + 1)).abs().max() < 0.01
    assert sorted(draws.order.tolist()) == list(range(n))
    # all-255 images with mean 0.5: image pixels -> 0.5/std, padding -> -0.5/std, cutout -> 0
    raw = torch.full((2000, size, size, 3), 255, dtype=torch.uint8)
    out = augment(
        raw, draws.offset[:2000], draws.flip[:2000], draws.centre[:2000],
        torch.full((3,), 0.5), torch.ones(3), padding, length,
    )  # fmt: skip
    zero_area = (out[:, 0] == 0).sum(dim=(1, 2)).float()

    def extent(c: int) -> int:
        return min(c + length // 2, size) - max(c - length // 2, 0)

    expected = np.mean(
        [extent(cy) * extent(cx) for cy, cx in itertools.product(range(size), repeat=2)]
    )
    # per-image area ranges 64..256 (sd ~ 50): the mean of 2000 has sd ~ 1.2; allow 5
    assert abs(zero_area.mean().item() - expected) < 5.0
    per_image = [extent(cy) * extent(cx) for cy, cx in draws.centre[:2000].tolist()]
    assert zero_area.tolist() == per_image  # and exactly the drawn squares


def test_epoch_batches_depend_on_seed_and_epoch_only() -> None:
    data = DeviceImages(
        images(50, 8), torch.arange(50) % 10, MEAN, STD, train=True, padding=1, cutout=3
    )

    def epoch(seed: int, e: int) -> list[torch.Tensor]:
        return [
            torch.cat([x.flatten(), y.float()])
            for x, y in data.epoch_batches(16, shuffle=True, seed=seed, epoch=e)
        ]

    a = epoch(0, 3)
    torch.manual_seed(123)  # the global RNG plays no part
    torch.rand(10)
    b = epoch(0, 3)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[0], epoch(0, 4)[0]) and not torch.equal(a[0], epoch(1, 3)[0])
    assert len(data.epoch_batches(16, shuffle=True, seed=0, epoch=0)) == 4
    assert len(data.epoch_batches(16, shuffle=True, seed=0, epoch=0, drop_last=True)) == 3
    assert epoch_seed(0, 3) != epoch_seed(3, 0)


def test_test_set_batches_are_the_plain_images_in_order() -> None:
    raw = images(10, 8)
    data = DeviceImages(raw, torch.arange(10), MEAN, STD, train=False, padding=0, cutout=0)
    xs, ys = zip(*data.epoch_batches(4, shuffle=False, seed=0, epoch=0), strict=True)
    assert torch.equal(torch.cat(ys), torch.arange(10))
    want = torch.stack(
        [
            TF.normalize(TF.to_tensor(Image.fromarray(im.numpy())), list(MEAN), list(STD))
            for im in raw
        ]
    )
    assert torch.equal(torch.cat(xs), want)
    shard = data.subset(range(1, 10, 2))
    assert torch.equal(
        torch.cat([y for _, y in shard.epoch_batches(4, shuffle=False, seed=0, epoch=0)]),
        torch.arange(1, 10, 2),
    )


def test_ranks_take_their_shard_of_the_seeded_permutation() -> None:
    """Under DDP the order is DistributedSampler's (as in the DataLoader path): the two
    ranks' shards are disjoint and cover the set; an image's augmentation does not depend
    on which rank holds it."""
    n = 20
    data = DeviceImages(images(n, 8), torch.arange(n), MEAN, STD, train=True, padding=1, cutout=2)
    seen: dict[int, torch.Tensor] = {}
    for rank in (0, 1):
        sampler = DistributedSampler(range(n), num_replicas=2, rank=rank, shuffle=True, seed=7)
        batches = data.epoch_batches(3, shuffle=False, seed=7, epoch=2, sampler=sampler)
        sampler.set_epoch(2)
        assert torch.equal(torch.cat([y for _, y in batches]), torch.tensor(list(sampler)))
        for x, y in batches:
            seen.update(zip(y.tolist(), x, strict=True))
    assert sorted(seen) == list(range(n))
    whole = data.epoch_batches(n, shuffle=False, seed=7, epoch=2)
    x_all, y_all = next(iter(whole))
    assert all(torch.equal(seen[int(i)], x_all[k]) for k, i in enumerate(y_all))
