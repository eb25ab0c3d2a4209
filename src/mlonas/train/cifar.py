"""The ``train-cifar`` stage: a searched cell trained from scratch on CIFAR-10/100.

DARTS' evaluation protocol (appendix A.2): 20 cells at C=36 trained on all 50k training
images (search-train + search-val) with cutout, drop path ramped to 0.2 and a 0.4-weighted
auxiliary head, SGD with a per-epoch cosine schedule; the error is measured on the 10k
test images. The numbers come from ``eval.cifar`` in params.yaml; the loop is
:func:`mlonas.train.loop.fit`, shared with ImageNet. ``eval.cifar.loader: device`` holds
the images on the training device and augments them there (:mod:`mlonas.data.device`).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from mlonas.config import CIFAR_DATASETS, Config
from mlonas.errors import MlonasError
from mlonas.settings import CifarEvalSettings
from mlonas.space.broad import NetworkBroad
from mlonas.space.evalnet import NetworkCIFAR
from mlonas.space.genotype import Genotype
from mlonas.train.loop import TrainJob, cosine_factor, train_cell


def run_train_cifar(
    cfg: Config,
    dataset: str,
    method: str,
    seed: int,
    genotype_path: str,
    split_path: str,
    out_dir: str,
    device: str = "auto",
) -> dict[str, Any]:
    """Train ``genotype_path``'s cell on ``dataset``; write metrics/history/model to ``out_dir``."""
    from mlonas.data.loaders import eval_datasets  # lazy: data is a sibling stage's module
    from mlonas.data.splits import load_split

    if dataset not in CIFAR_DATASETS:
        known = ", ".join(CIFAR_DATASETS)
        raise MlonasError(f"train-cifar: dataset must be one of {known}, got {dataset!r}")
    # an unknown method stops here, with the list of known ones
    settings = cfg.eval_settings("cifar", method)
    assert isinstance(settings, CifarEvalSettings)
    genotype = Genotype.load(genotype_path)
    split = load_split(split_path, cfg, dataset)
    train_ds, test_ds, num_classes = eval_datasets(
        cfg, dataset, split, cutout=int(settings.cutout), loader=str(settings.loader)
    )
    job = TrainJob(
        stage="train-cifar",
        dataset=dataset,
        method=method,
        seed=seed,
        settings=settings,
        genotype=genotype,
        genotype_path=str(genotype_path),
        split_path=str(split_path),
        out_dir=str(out_dir),
        tracked=cfg.tracked("train-cifar", dataset=dataset, method=method),
        overrides=cfg.overrides,
        lr_factor=partial(
            cosine_factor,
            epochs=int(settings.epochs),
            lr=float(settings.lr),
            lr_min=float(settings.lr_min),
            step_first=bool(settings.scheduler_step_first),
        ),
    )
    # B-DARTS' cells are evaluated in its broad network (eval.cifar.network: broad)
    network: Any = NetworkCIFAR
    if settings.network == "broad":
        network = partial(NetworkBroad, en_layers=settings.en_layers, pool_time=settings.pool_time)
    return train_cell(job, network, num_classes, train_ds, test_ds, device)
