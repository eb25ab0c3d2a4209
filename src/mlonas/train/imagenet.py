"""The ``train-imagenet`` stage: a cell searched on CIFAR transferred to ImageNet.

DARTS' mobile setting (14 cells, C=48, < 600M multiply-adds) with the training schedule
PC-DARTS and P-DARTS use and the LeaSE/SGL papers follow: 250 epochs, global batch 1024
over 8 GPUs, lr 0.5 with 5 linear warm-up epochs then linear decay, label smoothing 0.1,
auxiliary weight 0.4. The CLI starts it under ``torchrun`` when ``eval.imagenet.nproc``
> 1; :func:`mlonas.train.loop.fit` then joins the process group and trains with DDP.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from mlonas.config import Config
from mlonas.space.evalnet import NetworkImageNet
from mlonas.space.genotype import Genotype
from mlonas.train.loop import TrainJob, imagenet_factor, train_cell


def run_train_imagenet(
    cfg: Config,
    source: str,
    method: str,
    seed: int,
    genotype_path: str,
    split_path: str,
    out_dir: str,
    device: str = "auto",
) -> dict[str, Any]:
    """Train the cell ``method`` found on ``source`` on ImageNet; write outputs to ``out_dir``."""
    from mlonas.data.loaders import imagenet_datasets  # lazy: data is a sibling stage's module
    from mlonas.data.splits import load_split

    cfg.dataset(source)  # an unknown source dataset stops here with a one-line error
    settings = cfg.eval_settings("imagenet", method)  # the method's own protocol, if any
    genotype = Genotype.load(genotype_path)
    split = load_split(split_path, cfg, "imagenet")
    train_ds, test_ds, num_classes = imagenet_datasets(cfg, split)
    make_loader = None
    if settings.decode == "device":  # decode and augment on the run's device
        from mlonas.data.imagenet_gpu import device_datasets

        train_ds, test_ds, make_loader = device_datasets(
            train_ds, test_ds, cfg.dataset("imagenet"), device
        )
    job = TrainJob(
        stage="train-imagenet",
        dataset="imagenet",
        method=method,
        seed=seed,
        settings=settings,
        genotype=genotype,
        genotype_path=str(genotype_path),
        split_path=str(split_path),
        out_dir=str(out_dir),
        tracked=cfg.tracked("train-imagenet", method=method),
        overrides=cfg.overrides,
        lr_factor=partial(
            imagenet_factor,
            epochs=int(settings.epochs),
            schedule=str(settings.lr_schedule),
            warmup_epochs=int(settings.warmup_epochs),
        ),
        extra={"source": source},
    )
    return train_cell(
        job, NetworkImageNet, num_classes, train_ds, test_ds, device, make_loader=make_loader
    )
