"""Data layer: sources (CIFAR-10/100, ImageNet folder, offline demo), splits, loaders.

Import the submodules directly (``mlonas.data.sources``, ``.splits``, ``.loaders``); the
names below are re-exported for convenience.
"""

from mlonas.data.loaders import (
    Cutout,
    epoch_loader,
    eval_datasets,
    imagenet_datasets,
    search_datasets,
)
from mlonas.data.sources import (
    NORMALIZATION,
    ArrayImageDataset,
    demo_arrays,
    load_cifar,
    load_imagenet,
    load_source_train_test,
    materialize_demo_imagenet,
)
from mlonas.data.splits import load_split, make_split, write_split

__all__ = [
    "NORMALIZATION",
    "ArrayImageDataset",
    "Cutout",
    "demo_arrays",
    "epoch_loader",
    "eval_datasets",
    "imagenet_datasets",
    "load_cifar",
    "load_imagenet",
    "load_source_train_test",
    "load_split",
    "make_split",
    "materialize_demo_imagenet",
    "search_datasets",
    "write_split",
]
