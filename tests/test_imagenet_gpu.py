"""ImageNet decoding and augmentation on the run's device (``eval.imagenet.decode: device``).

The tests write small JPEGs in ImageNet's on-disk layout (``train/<wnid>/*.JPEG``, one of
them a PNG under a .JPEG name, as n02105855_2933.JPEG is in the real train set) and run
the device path on the CPU, which is the same code as on CUDA except for the decoder.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.datasets import ImageFolder
from torchvision.transforms.v2 import functional as TF

from mlonas.config import Config, load_config
from mlonas.data import imagenet_gpu as G
from mlonas.data import loaders
from mlonas.data.splits import write_split

REPO = Path(__file__).resolve().parents[1]
WNIDS = ("n01440764", "n01443537", "n01484850")
SIZES = ((50, 37), (37, 60), (48, 48), (30, 90))  # (width, height): both orientations, extreme


def write_tree(root: Path, per_class: int = 4) -> Path:
    """``root/{train,val}/<wnid>/*.JPEG`` of smooth random images (quality 90)."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c, wnid in enumerate(WNIDS):
            (root / split / wnid).mkdir(parents=True)
            for k in range(per_class):
                w, h = SIZES[k % len(SIZES)]
                small = rng.integers(0, 256, (h // 6 + 1, w // 6 + 1, 3), dtype=np.uint8)
                img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
                buf = io.BytesIO()
                fmt = "PNG" if (split, c, k) == ("train", 1, 2) else "JPEG"
                img.save(buf, format=fmt, quality=90)
                (root / split / wnid / f"{wnid}_{k}.JPEG").write_bytes(buf.getvalue())
    return root


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "imagenet")


def _ds(root: Path, image_size: int = 24) -> dict[str, Any]:
    return {"source": "imagenet", "root": str(root), "download": False, "image_size": image_size}


def test_color_ops_match_torchvision() -> None:
    """Per-image factors give what torchvision's scalar colour ops give image by image."""
    torch.manual_seed(0)
    x = torch.rand(5, 3, 9, 11)
    x[0] = 0.5  # grey: hue undefined, saturation 0
    x[1, :, :2] = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)  # pure red, on the hue seam
    factors = torch.tensor([0.6, 1.0, 1.37, 0.9, 1.4])
    hues = torch.tensor([-0.2, 0.13, 0.0, 0.19, -0.05])
    ops = (
        (G.adjust_brightness, TF.adjust_brightness, factors),
        (G.adjust_contrast, TF.adjust_contrast, factors),
        (G.adjust_saturation, TF.adjust_saturation, factors),
        (G.adjust_hue, TF.adjust_hue, hues),
    )
    for ours, ref, f in ops:
        want = torch.stack([ref(x[i], float(f[i])) for i in range(len(x))])
        torch.testing.assert_close(ours(x.clone(), f), want, atol=2e-6, rtol=0)


def test_color_jitter_applies_each_images_order() -> None:
    """Image i gets the four ops in its own drawn order (non-commuting: order matters)."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 8, 8, generator=gen)
    factors, order = G.jitter_params(6, gen)
    assert ((factors[:, :3] >= 0.6) & (factors[:, :3] <= 1.4)).all()
    assert (factors[:, 3].abs() <= 0.2).all()
    assert (order.sort(dim=1).values == torch.arange(4)).all()
    out = G.color_jitter(x.clone(), factors, order)
    for i in range(6):
        want = x[i : i + 1]
        for k in order[i].tolist():
            want = G.COLOR_OPS[k](want, factors[i : i + 1, k])
        torch.testing.assert_close(out[i : i + 1], want)


def test_crop_boxes_follow_random_resized_crop() -> None:
    gen = torch.Generator().manual_seed(0)
    sizes = [(375, 500), (500, 333), (64, 64)] * 200 + [(1, 400), (400, 2)]
    boxes = G.crop_boxes(sizes, gen)
    fractions = []
    for (height, width), (top, left, h, w) in zip(sizes, boxes, strict=True):
        assert top >= 0 and top + h <= height and left >= 0 and left + w <= width
        assert h > 0 and w > 0
        if min(height, width) > 10:
            fractions.append(h * w / (height * width))
            assert 0.7 <= w / h <= 1.4  # ratio in [3/4, 4/3] up to rounding
    # the same distribution as torchvision's own draw (global RNG): mean area fraction
    torch.manual_seed(0)
    ref = []
    for height, width in sizes[:600]:
        _, _, h, w = T.RandomResizedCrop.get_params(
            torch.empty(1, height, width), G.CROP_SCALE, G.CROP_RATIO
        )
        ref.append(h * w / (height * width))
    assert min(fractions) > 0.07 and abs(float(np.mean(fractions)) - float(np.mean(ref))) < 0.05
    assert boxes[-2] == (0, 199, 1, 1)  # no try fits: centred, width clamped to 4/3 height
    assert boxes[-1] == (198, 0, 3, 2)  # ratio 2/400 < 3/4: full width, height w / (3/4)


def test_device_path_matches_workers_path(tree: Path) -> None:
    """Same order and labels as the workers path; train tensors normalised [0, 1] images;
    the deterministic test transform close to PIL's."""
    ds = _ds(tree)
    train_tf, test_tf = loaders.imagenet_transforms(ds)
    train, test = (
        ImageFolder(str(tree / "train"), train_tf),
        ImageFolder(str(tree / "val"), test_tf),
    )
    enc_train, enc_test, factory = G.device_datasets(train, test, ds, "cpu")
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    kw: dict[str, Any] = {"shuffle": True, "seed": 3, "epoch": 2}
    ref = loaders.epoch_loader(train, 5, **kw)
    dev = factory(enc_train, 5, **kw)
    assert len(dev) == len(ref) == 3
    for (x, y), (rx, ry) in zip(dev, ref, strict=True):
        assert torch.equal(y, ry)
        assert x.shape == rx.shape == (len(y), 3, 24, 24) and x.dtype == torch.float32
        pixels = x * std + mean
        assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    ref_test = loaders.epoch_loader(test, 4, shuffle=False, seed=0, epoch=0)
    for (x, y), (rx, ry) in zip(
        factory(enc_test, 4, shuffle=False, seed=0, epoch=0), ref_test, strict=True
    ):
        assert torch.equal(y, ry)
        # PIL's bilinear filter vs torch's antialiased bilinear, uint8 vs float
        assert float(((x - rx) * std).abs().mean()) < 0.02


def test_seeded_epoch_is_reproducible(tree: Path) -> None:
    ds = _ds(tree)
    train = ImageFolder(str(tree / "train"))
    enc, _, factory = G.device_datasets(train, train, ds, "cpu")

    def epoch(e: int) -> list[torch.Tensor]:
        return [x for x, _ in factory(enc, 4, shuffle=True, seed=7, epoch=e, num_workers=0)]

    first = epoch(1)
    torch.manual_seed(123)  # the global RNG plays no part
    again = epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    loader = factory(enc, 4, shuffle=True, seed=7, epoch=1)
    assert all(torch.equal(a, b) for a, b in zip(first, [x for x, _ in loader], strict=True))
    assert not torch.equal(first[0], epoch(2)[0])


def test_decode_batch_reads_jpeg_and_png(tree: Path) -> None:
    data = [p.read_bytes() for p in sorted((tree / "train" / WNIDS[1]).iterdir())]
    assert sum(b[:2] == b"\xff\xd8" for b in data) == 3  # one PNG named .JPEG
    images = G.decode_batch(data, torch.device("cpu"))
    for img, b in zip(images, data, strict=True):
        pil = np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
        assert img.dtype == torch.uint8 and img.shape == (3, *pil.shape[:2])
        # libjpeg-turbo in both, possibly other IDCT settings
        assert np.abs(img.permute(1, 2, 0).numpy().astype(int) - pil).mean() < 2


def test_run_train_imagenet_decodes_on_device(tree: Path, tmp_path: Path) -> None:
    """The stage runs with ``decode: device`` and gives the same epoch twice."""
    from mlonas.space.evalnet import published_genotype
    from mlonas.train.imagenet import run_train_imagenet

    base = load_config(REPO / "params.yaml", "demo")
    params = copy.deepcopy(base.params)
    params["root"] = f"{tmp_path}/"
    params["datasets"]["imagenet"] = _ds(tree, 32)
    params["eval"]["imagenet"].update(
        epochs=1, batch_size=4, num_workers=0, decode="device", layers=3, init_channels=4
    )
    cfg = Config(params)
    split = tmp_path / "split.json"
    write_split(cfg, "imagenet", split)
    genotype = tmp_path / "cell.json"
    published_genotype("DARTS_V2").save(genotype)
    runs = [
        run_train_imagenet(
            cfg, "cifar10", "darts-1st", 0, str(genotype), str(split), str(tmp_path / o), "cpu"
        )
        for o in ("a", "b")
    ]
    assert runs[0]["dataset"] == "imagenet"
    lines = [(tmp_path / o / "history.csv").read_text().splitlines() for o in ("a", "b")]
    assert len(lines[0]) == 2  # header + one epoch
    # train_loss and train_top1 (wall time differs)
    assert [r.split(",")[2:4] for r in lines[0]] == [r.split(",")[2:4] for r in lines[1]]
