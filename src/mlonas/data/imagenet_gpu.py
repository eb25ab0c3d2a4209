"""ImageNet input decoded and augmented on the run's device (``eval.imagenet.decode: device``).

Why: the official ImageNet loop decodes every JPEG with PIL and augments it in DataLoader
workers. ``benchmarks/imagenet_input.py`` measures that at a few hundred images/s per CPU
process, so 8 GPUs at thousands of images/s each need far more cores than a node has. Here
the workers only read the files' bytes; the batch is decoded in one call
(``torchvision.io.decode_jpeg`` accepts a list, on CUDA through nvJPEG) and the DARTS
training augmentation — RandomResizedCrop(224), horizontal flip, ColorJitter(0.4, 0.4,
0.4, 0.2), Normalize — runs as torch ops on the decoded batch. On CPU the same code runs
with CPU decoding, which is what the tests exercise.

Reproducibility: every random number (crop box, flip, jitter factors and their order) is
drawn on the CPU from a generator seeded by ``(seed, epoch, rank)`` and only then applied on
the device, so an epoch's augmentation does not depend on the device, on how many epochs
ran in this process, or on the global RNG (a resumed run sees the same batches). The
arithmetic is float32 from the decoded uint8 image on (the PIL path rounds to uint8 after
each jitter op), so the two settings are the same protocol, not the same bits.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.datasets import ImageFolder
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from mlonas.data.loaders import epoch_loader, epoch_seed
from mlonas.data.sources import normalization
from mlonas.runtime import resolve_device

#: torchvision's RandomResizedCrop defaults, as in DARTS' train_imagenet.py
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
#: DARTS' train_imagenet.py: ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2)
JITTER = (0.4, 0.4, 0.4, 0.2)
_JPEG_MAGIC = b"\xff\xd8"


class EncodedImages(Dataset):
    """An ImageFolder's samples as ``(file bytes, label)``: all a worker does is read.

    ``pipeline`` (``train`` or ``test``) says which device transform the loader applies.
    The bytes are returned as ``bytes`` so the default collate keeps them as a list.
    """

    def __init__(self, folder: ImageFolder, pipeline: str) -> None:
        if pipeline not in ("train", "test"):
            raise ValueError(f"pipeline must be train or test, got {pipeline!r}")
        self.samples: list[tuple[str, int]] = list(folder.samples)
        self.classes: list[str] = list(folder.classes)
        self.targets = [y for _, y in self.samples]
        self.pipeline = pipeline

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[bytes, int]:
        path, label = self.samples[i]
        return Path(path).read_bytes(), label


def decode_batch(data: Sequence[bytes], device: torch.device) -> list[torch.Tensor]:
    """Decode encoded images to RGB uint8 CHW tensors on ``device``.

    JPEGs are decoded in one batched ``decode_jpeg`` call on ``device`` (nvJPEG on CUDA);
    anything else (the demo tree's PNGs, the one PNG in ImageNet's train set) and a batch
    that nvJPEG refuses (CMYK) is decoded on the CPU image by image and moved.
    """
    raw = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in data]
    out: list[torch.Tensor | None] = [None] * len(raw)
    jpeg = [i for i, b in enumerate(data) if b[:2] == _JPEG_MAGIC]
    if jpeg:
        try:
            dev = device if device.type == "cuda" else "cpu"
            decoded = decode_jpeg([raw[i] for i in jpeg], mode=ImageReadMode.RGB, device=dev)
            for i, img in zip(jpeg, decoded, strict=True):
                out[i] = img
        except RuntimeError:
            pass  # decoded one by one below
    for i, img in enumerate(out):
        if img is None:
            out[i] = decode_image(raw[i], mode=ImageReadMode.RGB).to(device)
    return [img.to(device) for img in out if img is not None]


# -- random parameters, drawn on the CPU ------------------------------------------------


def crop_boxes(
    sizes: Sequence[tuple[int, int]], gen: torch.Generator, tries: int = 10
) -> list[tuple[int, int, int, int]]:
    """RandomResizedCrop's ``(top, left, h, w)`` per ``(height, width)``, from ``gen``.

    torchvision's rule (area fraction in ``CROP_SCALE``, log-uniform aspect ratio in
    ``CROP_RATIO``, the first of ``tries`` boxes that fits, else the centre crop clamped to
    the ratio range), vectorised over the batch: all tries are drawn at once.
    """
    n = len(sizes)
    hw = torch.tensor(sizes, dtype=torch.float64).reshape(n, 2)
    area = (hw[:, 0] * hw[:, 1]).unsqueeze(1)
    scale = torch.rand(n, tries, generator=gen, dtype=torch.float64)
    log_r = torch.rand(n, tries, generator=gen, dtype=torch.float64)
    pos = torch.rand(n, 2, generator=gen, dtype=torch.float64)
    target = area * (CROP_SCALE[0] + scale * (CROP_SCALE[1] - CROP_SCALE[0]))
    lo, hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    ratio = torch.exp(lo + log_r * (hi - lo))
    w = torch.round(torch.sqrt(target * ratio))
    h = torch.round(torch.sqrt(target / ratio))
    fits = (w > 0) & (h > 0) & (w <= hw[:, 1:2]) & (h <= hw[:, 0:1])
    boxes = []
    for k, (height, width) in enumerate(sizes):
        hit = fits[k].nonzero()
        if len(hit):
            t = int(hit[0, 0])
            bh, bw = int(h[k, t]), int(w[k, t])
            top = int(pos[k, 0] * (height - bh + 1))
            left = int(pos[k, 1] * (width - bw + 1))
        else:  # centre crop within the ratio range
            in_ratio = width / height
            if in_ratio < CROP_RATIO[0]:
                bw, bh = width, round(width / CROP_RATIO[0])
            elif in_ratio > CROP_RATIO[1]:
                bh, bw = height, round(height * CROP_RATIO[1])
            else:
                bh, bw = height, width
            top, left = (height - bh) // 2, (width - bw) // 2
        boxes.append((top, left, bh, bw))
    return boxes


def jitter_params(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """ColorJitter's factors ``(n, 4)`` (brightness, contrast, saturation in [1-j, 1+j],
    hue in [-j, j]) and each image's random order of the four ops ``(n, 4)``."""
    u = torch.rand(n, 4, generator=gen)
    j = torch.tensor(JITTER)
    factors = torch.cat([1 - j[:3] + 2 * j[:3] * u[:, :3], -j[3:] + 2 * j[3:] * u[:, 3:]], 1)
    order = torch.rand(n, 4, generator=gen).argsort(dim=1)
    return factors, order


# -- the colour ops, per image factors, float images in [0, 1] ---------------------------


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, torchvision's rgb_to_grayscale weights; ``(n, 1, H, W)``."""
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = f.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp(0, 1)


def adjust_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, torch.zeros_like(x), f)


def adjust_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x).mean(dim=(-3, -2, -1), keepdim=True), f)


def adjust_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x), f)


def adjust_hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``f`` turns (RGB -> HSV -> RGB), per image."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), 0)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    h = (h + f.view(-1, 1, 1)) % 1.0
    # HSV -> RGB without branches: channel n (r=5, g=3, b=1) is v - v s clamp(min(k, 4 - k), 0, 1)
    # with k = (n + 6 h) mod 6
    v = maxc.unsqueeze(1)
    k = (torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1) + 6.0 * h.unsqueeze(1)) % 6
    return v - v * s.unsqueeze(1) * torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)


COLOR_OPS: tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ...] = (
    adjust_brightness,
    adjust_contrast,
    adjust_saturation,
    adjust_hue,
)


def color_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """ColorJitter with per-image factors and op order (both CPU tensors from
    :func:`jitter_params`). In round ``r`` each image gets its ``r``-th op; the images of
    one op are gathered by indices computed on the CPU, so CUDA never synchronises here."""
    dev = x.device
    f_dev = factors.to(dev, non_blocking=True)
    for r in range(4):
        for k, op in enumerate(COLOR_OPS):
            sel = (order[:, r] == k).nonzero().flatten()
            if len(sel):
                idx = sel.to(dev, non_blocking=True)
                x[idx] = op(x[idx], f_dev[idx, k])
    return x


def _resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 or float CHW -> float (1, C, h, w) in [0, 1], bilinear with antialiasing
    (what torchvision's tensor Resize does, and close to PIL's bilinear filter)."""
    x = img.unsqueeze(0).float().div_(255.0)
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)


def _normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    return (x - m) / torch.tensor(std, device=x.device).view(1, 3, 1, 1)


def train_batch(
    images: Sequence[torch.Tensor],
    gen: torch.Generator,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """DARTS' ImageNet training augmentation of decoded uint8 CHW images, as a batch
    ``(n, 3, size, size)`` float32 on the images' device."""
    n = len(images)
    dev = images[0].device
    boxes = crop_boxes([(int(im.shape[-2]), int(im.shape[-1])) for im in images], gen)
    flip = torch.rand(n, generator=gen) < 0.5
    factors, order = jitter_params(n, gen)
    x = torch.cat(
        [
            _resize(im[:, t : t + h, left : left + w], (size, size))
            for im, (t, left, h, w) in zip(images, boxes, strict=True)
        ]
    )
    flip_dev = flip.to(dev, non_blocking=True).view(-1, 1, 1, 1)
    x = torch.where(flip_dev, x.flip(-1), x)
    x = color_jitter(x, factors, order)
    return _normalize(x, mean, std)


def test_batch(
    images: Sequence[torch.Tensor], size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """DARTS' ImageNet test transform: shorter side to ``size * 256 / 224``, centre crop."""
    short = round(size * 256 / 224)
    out = []
    for im in images:
        h, w = int(im.shape[-2]), int(im.shape[-1])
        if h <= w:
            rh, rw = short, int(short * w / h)
        else:
            rh, rw = int(short * h / w), short
        x = _resize(im, (rh, rw))
        top, left = round((rh - size) / 2.0), round((rw - size) / 2.0)
        out.append(x[..., top : top + size, left : left + size])
    return _normalize(torch.cat(out), mean, std)


# -- the loader ---------------------------------------------------------------------------


def _encoded(dataset: Dataset[Any]) -> EncodedImages:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    if not isinstance(dataset, EncodedImages):
        raise TypeError(f"device decoding needs EncodedImages, got {type(dataset).__name__}")
    return dataset


class DeviceBatches:
    """Iterate ``(x, y)`` batches decoded and transformed on ``device`` from a DataLoader of
    encoded bytes. Re-iterable: each pass reseeds its augmentation generator from
    ``aug_seed``, so two passes (or a resumed epoch) give the same batches."""

    def __init__(
        self,
        loader: DataLoader[Any],
        pipeline: str,
        device: torch.device,
        aug_seed: int,
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.loader, self.pipeline, self.device = loader, pipeline, device
        self.aug_seed, self.size, self.mean, self.std = aug_seed, size, mean, std

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.aug_seed)
        for data, y in self.loader:
            images = decode_batch(data, self.device)
            if self.pipeline == "train":
                x = train_batch(images, gen, self.size, self.mean, self.std)
            else:
                x = test_batch(images, self.size, self.mean, self.std)
            yield x, y.to(self.device, non_blocking=True)


class DeviceLoaderFactory:
    """A :data:`mlonas.train.loop.LoaderFactory` for :class:`EncodedImages`: the same
    arguments and epoch order as :func:`mlonas.data.loaders.epoch_loader` (which it
    uses for the bytes), decoding on the run's device.

    ``device`` is the run's device string (``auto``, ``cpu``, ``cuda``); it is resolved
    when a loader is made, after the training loop has joined its process group, exactly
    as the loop resolves it (the local rank's GPU under torchrun).
    """

    def __init__(self, device: str, ds: dict[str, Any]) -> None:
        self.device = device
        self.size = int(ds["image_size"])
        self.mean, self.std = normalization("imagenet", ds)

    def __call__(
        self, dataset: Dataset[Any], batch_size: int, *, seed: int, epoch: int, **order: Any
    ) -> DeviceBatches:
        pipeline = _encoded(dataset).pipeline
        loader = epoch_loader(dataset, batch_size, seed=seed, epoch=epoch, **order)
        rank = 0
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank = torch.distributed.get_rank()
        dev = resolve_device(self.device, int(os.environ.get("LOCAL_RANK", "0")))
        # (seed, epoch, rank): every rank its own augmentation stream, never the shuffle's
        aug_seed = epoch_seed(epoch_seed(seed, epoch), rank)
        return DeviceBatches(loader, pipeline, dev, aug_seed, self.size, self.mean, self.std)


def device_datasets(
    train: ImageFolder, test: ImageFolder, ds: dict[str, Any], device: str
) -> tuple[EncodedImages, EncodedImages, DeviceLoaderFactory]:
    """The train and test folders of :func:`mlonas.data.loaders.imagenet_datasets` as
    encoded bytes, and the loader factory that decodes them on ``device``."""
    return (
        EncodedImages(train, "train"),
        EncodedImages(test, "test"),
        DeviceLoaderFactory(device, ds),
    )
