"""ImageNet input throughput per process: decode + DARTS train augmentation; print one table.

Why: the ImageNet evaluation (eval.imagenet) trains on 8 GPUs; the official loop decodes
every JPEG with PIL and augments it in DataLoader workers on the CPU. Whether the CPUs can
feed the GPUs is a division: images/s one CPU process delivers against what 8 GPUs consume.
This script writes ``--images`` synthetic JPEGs at ImageNet-typical sizes (500x375,
375x500, 500x333 ...; quality 90; multi-scale noise so the files come near ImageNet's
~110 kB (140 GB / 1.28M files) and decode costs what a real photo costs) in ImageNet's
layout (``train/<wnid>/*.JPEG``) in a temp dir, then times, in this one process with 1
torch thread:

* ``PIL (official)``: ``ImageFolder`` + :func:`mlonas.data.loaders.imagenet_transforms`
  (PIL decode, RandomResizedCrop, flip, ColorJitter(0.4, 0.4, 0.4, 0.2), ToTensor,
  Normalize) -- ``eval.imagenet.decode: workers``, the official train_imagenet.py;
* ``decode_jpeg CPU + torch ops``: :mod:`mlonas.data.imagenet_gpu` on the CPU
  (``decode: device`` on a CPU run);
* ``decode_jpeg CUDA + torch ops``: the same on CUDA, batched nvJPEG (CUDA only).

"decode only" is the decoder alone. The last columns are the CPU processes (1 thread each)
that 8 GPUs need at ``--gpu-rate`` images/s per GPU, to compare with the cores of the node
(``--cores``, the device machine's 16); for the CUDA row, the share of one GPU's time the
input takes at that rate.

    python benchmarks/imagenet_input.py
    python benchmarks/imagenet_input.py --images 512 --gpu-rate 1500 3000
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
#: (width, height): ImageNet train photos are mostly 500 on the long side, 4:3 or 3:2
SHAPES = ((500, 375), (375, 500), (500, 333), (500, 400), (333, 500), (400, 300), (500, 500))
GPUS = 8


def synthetic_photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Octaves of smooth noise (edges and texture at every scale) plus sensor noise: a JPEG
    of it is as large, hence as slow to decode, as a photo's."""
    img = np.zeros((height, width, 3), np.float32)
    for cells, weight in ((3, 90.0), (12, 50.0), (48, 30.0), (160, 18.0)):
        small = rng.normal(0, 1, (max(cells * height // width, 2), cells, 3)).astype(np.float32)
        for c in range(3):
            layer = Image.fromarray(small[..., c], mode="F").resize((width, height), Image.BICUBIC)
            img[..., c] += weight * np.asarray(layer)
    img += rng.normal(0, 16, img.shape).astype(np.float32)
    return Image.fromarray(np.clip(img + 128, 0, 255).astype(np.uint8))


def write_tree(root: Path, n: int, classes: int = 8) -> float:
    """``n`` JPEGs in ``root/train/<wnid>/<wnid>_<k>.JPEG``; returns the mean file size (kB)."""
    rng = np.random.default_rng(0)
    total = 0
    for k in range(n):
        wnid = f"n{1440764 + k % classes:08d}"
        folder = root / "train" / wnid
        folder.mkdir(parents=True, exist_ok=True)
        w, h = SHAPES[k % len(SHAPES)]
        buf = io.BytesIO()
        synthetic_photo(rng, w, h).save(buf, format="JPEG", quality=90)
        (folder / f"{wnid}_{k}.JPEG").write_bytes(buf.getvalue())
        total += buf.tell()
    return total / n / 1000


def rate(n: int, fn: Callable[[], None], sync: Callable[[], None] = lambda: None) -> float:
    """Images/s of ``fn`` (which handles ``n`` images), best of 3 passes after a warm-up."""
    fn()
    sync()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return n / best


def measure(root: Path, size: int, batch: int) -> list[tuple[str, float | None, float | None]]:
    """(path, decode-only images/s, decode+augmentation images/s) per pipeline."""
    from torchvision.datasets import ImageFolder

    from mlonas.data import imagenet_gpu as G
    from mlonas.data.loaders import imagenet_transforms
    from mlonas.data.sources import normalization

    ds = {"source": "imagenet", "root": str(root), "image_size": size}
    train_tf, _ = imagenet_transforms(ds)
    folder = ImageFolder(str(root / "train"), transform=train_tf)
    paths = [p for p, _ in folder.samples]
    data = [Path(p).read_bytes() for p in paths]  # the page cache, as a warm epoch sees it
    n = len(paths)
    mean, std = normalization("imagenet", ds)

    def pil_decode() -> None:
        for b in data:
            Image.open(io.BytesIO(b)).convert("RGB").load()

    def pil_full() -> None:
        for b in data:
            train_tf(Image.open(io.BytesIO(b)).convert("RGB"))

    def torch_path(device: torch.device, augment: bool) -> Callable[[], None]:
        gen = torch.Generator().manual_seed(0)

        def run() -> None:
            for i in range(0, n, batch):
                images = G.decode_batch(data[i : i + batch], device)
                if augment:
                    G.train_batch(images, gen, size, mean, std)

        return run

    cpu = torch.device("cpu")
    rows: list[tuple[str, float | None, float | None]] = [
        ("PIL (official, decode: workers)", rate(n, pil_decode), rate(n, pil_full)),
        (
            "decode_jpeg CPU + torch ops",
            rate(n, torch_path(cpu, False)),
            rate(n, torch_path(cpu, True)),
        ),
    ]
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        sync = torch.cuda.synchronize
        rows.append(
            (
                f"decode_jpeg CUDA + torch ops (batch {batch})",
                rate(n, torch_path(dev, False), sync),
                rate(n, torch_path(dev, True), sync),
            )
        )
    else:
        rows.append(("decode_jpeg CUDA + torch ops", None, None))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=128, help="per-GPU batch (eval.imagenet)")
    parser.add_argument(
        "--gpu-rate",
        type=float,
        nargs="+",
        default=[1000.0, 2000.0, 4000.0],
        help="images/s one GPU trains at (no GPU measurement yet: candidates)",
    )
    parser.add_argument("--cores", type=int, default=16, help="CPU cores of the 8-GPU node")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="imagenet-input-") as tmp:
        kb = write_tree(Path(tmp), args.images)
        rows = measure(Path(tmp), args.image_size, args.batch)
    print(
        f"ImageNet input, {args.images} synthetic JPEGs (mean {kb:.0f} kB vs ImageNet's ~110,"
        f" quality 90), {args.image_size}px train augmentation, 1 thread per process; "
        f"{GPUS} GPUs vs {args.cores} cores"
    )
    rates = [f"{GPUS}x{r:g}/s" for r in args.gpu_rate]
    print(
        f"{'path':<44} {'decode img/s':>12} {'full img/s':>10}  "
        + " ".join(f"{h:>11}" for h in rates)
    )
    for name, dec, full in rows:
        if full is None or dec is None:
            print(f"{name:<44} {'not measured (no CUDA)':>24}")
            continue
        if "CUDA" in name:  # share of one GPU's time spent on input at the target rate
            need = [f"{r / full:>10.0%}G" for r in args.gpu_rate]
        else:  # CPU processes for 8 GPUs
            need = [f"{GPUS * r / full:>10.0f}p" for r in args.gpu_rate]
        print(f"{name:<44} {dec:>12.0f} {full:>10.0f}  " + " ".join(need))
    print(
        "p = CPU processes (1 thread) needed for 8 GPUs at that rate, to compare with the "
        f"{args.cores} cores; G = share of one GPU's time the input takes"
    )


if __name__ == "__main__":
    main()
