"""Shared fixtures: a tiny demo configuration whose artifacts live in a temp directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from helpers import REPO

from mlonas.config import Config, deep_merge, load_raw, resolve_preset

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One intra-op thread per pytest-xdist worker (set before any test imports torch; the
    # subprocesses tests start inherit it, as Snakemake's jobs get OMP_NUM_THREADS=1).
    # Torch's default, a thread per core in every worker, oversubscribes the cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY = {
    "seeds": [0],
    "datasets": {
        "cifar10": {"n_train": 48, "n_val": 48, "image_size": 8},
        "cifar100": {"n_train": 48, "n_val": 48, "image_size": 8},
    },
    "search": {
        "epochs": 3,
        "batch_size": 16,
        "init_channels": 4,
        "layers": 3,
        "steps": 2,
        "multiplier": 2,
    },
    # P-DARTS: one epoch per stage, so three epochs cross both stage boundaries
    "methods": {
        "pdarts": {"search": {"epochs": 1, "batch_size": 16}},
        "pcdarts": {"search": {"batch_size": 16}},
        "sgl-pdarts": {"search": {"epochs": 1, "batch_size": 16}},
        "sgl-pcdarts": {"search": {"batch_size": 16}},
        "drnas": {"search": {"epochs": 1, "batch_size": 16}},
        "sgl-drnas": {"search": {"epochs": 1, "batch_size": 16}},
        "msr-darts": {"search": {"batch_size": 16}},
        # half space: 2 scoring batches of 16 of the 48 search-train images
        "halfspace-darts-1st": {"search": {"prune_batch_size": 16}},
    },
}


def tiny_config(root: Path, overrides: dict | None = None) -> Config:
    """The demo preset shrunk to seconds, rooted at ``root`` (nothing lands in the repo)."""
    params = resolve_preset(load_raw(REPO / "params.yaml"), "demo")
    params = deep_merge(params, deep_merge(TINY, overrides or {}))
    params["root"] = f"{root}/"
    for ds in params["datasets"].values():
        ds["root"] = f"{root}/data/raw"
    params["datasets"]["imagenet"]["root"] = f"{root}/data/raw/imagenet"
    return Config(params)


def write_params(cfg: Config, path: Path) -> Path:
    """A params.yaml whose paper preset *is* ``cfg`` (so CLI calls use it)."""
    params = {k: v for k, v in cfg.params.items() if k != "preset"}
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> Config:
    return tiny_config(tmp_path)


# Files whose tests take longest, started first: pytest-xdist (--dist loadfile) hands out
# files in collection order, and the demo DAG test (about 6 minutes) used to start last,
# with the other worker idle for its whole run.
LONGEST_FIRST = ("test_e2e.py", "test_search.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in LONGEST_FIRST)  # stable otherwise
