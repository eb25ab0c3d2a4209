"""Transforms, datasets and data loaders for search and evaluation, as in the DARTS code.

Reproducibility rules this module exists to enforce:

* All randomness (crop, flip, Cutout, colour jitter, shuffling, worker seeds) comes from
  torch's RNGs. Checkpoints save and restore torch's RNG state only, so nothing here may
  touch numpy's or Python's global RNG.
* The order of an epoch is a function of ``(seed, epoch)`` alone (:func:`epoch_loader`), so
  a job resumed at epoch ``e`` sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils.data
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from mlonas.config import Config
from mlonas.data import augment as T
from mlonas.data.device import DeviceImages, epoch_seed
from mlonas.data.sources import load_source_train_test, normalization
from mlonas.errors import MlonasError


class Cutout:
    """Zero one ``length`` x ``length`` square (clipped at the borders) of a CHW tensor.

    DeVries & Taylor's Cutout as used by DARTS' evaluation, except that the centre is drawn
    with ``torch.randint`` (torch's global RNG, or the worker's torch RNG in a DataLoader
    worker) instead of numpy, so a resumed run reproduces it bit for bit.
    """

    def __init__(self, length: int) -> None:
        if length < 0:
            raise ValueError(f"Cutout length must be >= 0, got {length}")
        self.length = int(length)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2], img.shape[-1]
        cy = int(torch.randint(h, (1,)).item())
        cx = int(torch.randint(w, (1,)).item())
        half = self.length // 2
        y1, y2 = max(cy - half, 0), min(cy + half, h)
        x1, x2 = max(cx - half, 0), min(cx + half, w)
        out = img.clone()
        out[..., y1:y2, x1:x2] = 0
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(length={self.length})"


def _normalize(name: str, ds: dict[str, Any]) -> T.Normalize:
    mean, std = normalization(name, ds)
    return T.Normalize(mean, std)


def cifar_train_transform(name: str, ds: dict[str, Any], cutout: int = 0) -> T.Compose:
    """DARTS' CIFAR training augmentation: pad-and-crop, flip, (Cutout after Normalize)."""
    size = int(ds["image_size"])
    steps: list[Any] = [
        T.RandomCrop(size, padding=size // 8),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        _normalize(name, ds),
    ]
    if cutout > 0:
        steps.append(Cutout(cutout))
    return T.Compose(steps)


def cifar_test_transform(name: str, ds: dict[str, Any]) -> T.Compose:
    return T.Compose([T.ToTensor(), _normalize(name, ds)])


def _check_split(name: str, split: dict[str, Any], n_images: int) -> None:
    if split.get("dataset") != name:
        raise MlonasError(f"split of {split.get('dataset')!r} given for datasets.{name}")
    used = list(split["train_indices"]) + list(split["val_indices"])
    if used and max(used) >= n_images:
        raise MlonasError(
            f"split of {name}: index {max(used)} out of range for the {n_images} training"
            " images on disk (rebuild the split)"
        )


class SearchTrainSet(Dataset):
    """Search-train examples as ``(x, y, i)``, or ``(x, y, i, x_plain)`` with a plain view.

    ``i`` is the example's position in the search-train half: per-example state of a scheme
    (LeaSE's explanations) is indexed by it. ``x_plain`` is the same image without the
    random crop/flip: an explanation is a per-pixel map of *its* image, which only means
    something if the image has the same pixels every time it is seen.
    """

    def __init__(self, augmented: Dataset, plain: Dataset | None = None) -> None:
        self.augmented = augmented
        self.plain = plain

    def __len__(self) -> int:
        return len(self.augmented)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        x, y = self.augmented[i]
        if self.plain is None:
            return x, y, i
        return x, y, i, self.plain[i][0]


class ImagesOnly(Dataset):
    """A labeled dataset with its labels dropped (SGL's unlabeled images)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i][0]


def search_datasets(
    cfg: Config, name: str, split: dict[str, Any], plain_view: bool = False
) -> tuple[SearchTrainSet, Dataset, int]:
    """(search-train, search-val, num_classes): the two halves of the training set.

    Both halves get the search augmentation (as in DARTS, the architecture step also sees
    augmented images). ``split`` is the record from :func:`mlonas.data.splits.load_split`.
    With ``plain_view`` the search-train examples also carry the un-augmented image.
    """
    ds = cfg.dataset(name)
    train = load_source_train_test(name, ds, train=True, transform=cifar_train_transform(name, ds))
    _check_split(name, split, len(train))  # type: ignore[arg-type]
    indices = list(split["train_indices"])
    plain = None
    if plain_view:
        raw = load_source_train_test(name, ds, train=True, transform=cifar_test_transform(name, ds))
        plain = Subset(raw, indices)
    return (
        SearchTrainSet(Subset(train, indices), plain),
        Subset(train, list(split["val_indices"])),
        int(split["num_classes"]),
    )


def search_train_images(cfg: Config, name: str, split: dict[str, Any]) -> Dataset:
    """The search-train half's images, un-augmented and without labels: what zero-shot
    pruning (mlonas.space.zeroshot) scores networks on before the search."""
    ds = cfg.dataset(name)
    raw = load_source_train_test(name, ds, train=True, transform=cifar_test_transform(name, ds))
    _check_split(name, split, len(raw))  # type: ignore[arg-type]
    return ImagesOnly(Subset(raw, list(split["train_indices"])))


def unlabeled_dataset(cfg: Config, name: str, other: str, other_split: dict[str, Any]) -> Dataset:
    """``other``'s training images without labels, as inputs of a search on ``name``.

    They get ``name``'s search augmentation and normalization: they are fed to networks
    trained on ``name``'s inputs. All of ``other``'s training images are used (SGL section
    3.1: "the input images (without labels) in CIFAR-100 are used as the unlabeled dataset").
    """
    ds = cfg.dataset(name)
    images = load_source_train_test(
        other, cfg.dataset(other), train=True, transform=cifar_train_transform(name, ds)
    )
    _check_split(other, other_split, len(images))  # type: ignore[arg-type]
    return ImagesOnly(images)


def eval_datasets(
    cfg: Config, name: str, split: dict[str, Any], cutout: int, loader: str = "workers"
) -> tuple[Dataset | DeviceImages, Dataset | DeviceImages, int]:
    """(full training set, test set, num_classes) for training a searched cell from scratch.

    The training set is the *whole* training set (all 50k CIFAR images, the papers'
    protocol), not only the search-train/val indices: with the paper sizes the two are the
    same, with the demo sizes the whole stand-in training set is used.

    ``loader`` (``eval.cifar.loader``): ``workers`` gives torchvision datasets with the
    PIL transforms (the official pipeline, batched by DataLoader workers); ``device``
    gives :class:`~mlonas.data.device.DeviceImages` (uint8 tensors, still on the CPU;
    the training loop moves them to its device) with the same augmentation as torch ops.
    """
    ds = cfg.dataset(name)
    if loader == "device":
        raw_train = load_source_train_test(name, ds, train=True)
        raw_test = load_source_train_test(name, ds, train=False)
        _check_split(name, split, len(raw_train))  # type: ignore[arg-type]
        mean, std = normalization(name, ds)
        size = int(ds["image_size"])
        train_set = DeviceImages.from_dataset(
            raw_train, mean, std, train=True, padding=size // 8, cutout=cutout
        )
        test_set = DeviceImages.from_dataset(raw_test, mean, std, train=False, padding=0, cutout=0)
        return train_set, test_set, int(split["num_classes"])
    if loader != "workers":
        raise MlonasError(f"params: eval.cifar.loader: unknown loader {loader!r}")
    train = load_source_train_test(
        name, ds, train=True, transform=cifar_train_transform(name, ds, cutout)
    )
    test = load_source_train_test(name, ds, train=False, transform=cifar_test_transform(name, ds))
    _check_split(name, split, len(train))  # type: ignore[arg-type]
    return train, test, int(split["num_classes"])


def imagenet_transforms(ds: dict[str, Any]) -> tuple[Any, Any]:
    """(train, test) transforms of the DARTS ImageNet evaluation at ``ds["image_size"]``:
    torchvision's (ImageNet jobs read JPEGs through torchvision anyway)."""
    from torchvision import transforms as TV

    size = int(ds["image_size"])
    mean, std = normalization("imagenet", ds)
    norm = TV.Normalize(mean, std)
    train = TV.Compose(
        [
            TV.RandomResizedCrop(size),
            TV.RandomHorizontalFlip(),
            TV.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2),
            TV.ToTensor(),
            norm,
        ]
    )
    test = TV.Compose(
        [TV.Resize(round(size * 256 / 224)), TV.CenterCrop(size), TV.ToTensor(), norm]
    )
    return train, test


def imagenet_datasets(cfg: Config, split: dict[str, Any]) -> tuple[Dataset, Dataset, int]:
    """(train/ folder, val/ folder as the test set, num_classes) for the ImageNet evaluation."""
    ds = cfg.dataset("imagenet")
    train_tf, test_tf = imagenet_transforms(ds)
    train = load_source_train_test("imagenet", ds, train=True, transform=train_tf)
    test = load_source_train_test("imagenet", ds, train=False, transform=test_tf)
    classes = list(train.classes)  # type: ignore[attr-defined]
    if list(test.classes) != classes:  # type: ignore[attr-defined]
        raise MlonasError(
            f"datasets.imagenet.root: {ds['root']}/val has other class folders than train/"
        )
    if classes != list(split["classes"]):
        raise MlonasError(
            f"datasets.imagenet.root: {ds['root']}/train classes differ from the split's"
            " (rebuild the split)"
        )
    return train, test, len(classes)


def epoch_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    num_workers: int = 0,
    drop_last: bool = False,
    sampler: Sampler[Any] | None = None,
) -> DataLoader:
    """A DataLoader for one epoch whose order depends only on ``(seed, epoch)``.

    The loader's own generator is seeded from :func:`epoch_seed`; it drives the shuffle
    and the base seed of worker processes (hence their augmentation RNG), so neither the
    global RNG state nor how many epochs ran in this process changes the batches. With a
    ``sampler`` (e.g. ``DistributedSampler``) the loader does not shuffle; the sampler's
    ``set_epoch(epoch)`` is called so its order is a function of its seed and the epoch.
    """
    gen = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    if sampler is not None:
        set_epoch = getattr(sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=gen,
        persistent_workers=False,
    )
