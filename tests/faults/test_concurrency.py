"""Concurrent jobs on one dataset root never corrupt it (sources.data_lock).

Real processes, released together by a barrier once their imports are done:

- two ``mlonas split`` of real-format CIFAR-10 that is not on disk yet, downloading from a
  slow mirror (``download: true``): both succeed with identical splits, the archive is
  transferred once, the extracted files pass their md5;
- then, the raw data gone again, a ``mlonas split`` and a ``mlonas search`` that reads
  the data while the split job (re)produces it: both succeed, one more transfer;
- two ``mlonas split`` of the demo ImageNet stand-in, whose tree is written on first use:
  identical splits, one complete tree, no temporaries left.

Without the lock the first case transfers twice, into the same file, and a job can read a
half-extracted folder (that is what the transfer count and the md5 checks detect).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import tiny_config, write_params
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import check_integrity

from mlonas.config import Config
from mlonas.data.sources import DEMO_IMAGENET_MANIFEST, _cifar_defect

from . import mirror
from .conftest import cli_args, cli_env

pytestmark = pytest.mark.slow
RUNNER = Path(mirror.__file__)


def run_together(spec: dict[str, Any], tmp: Path, name: str, *commands: list[str]) -> list[str]:
    """Run ``mlonas`` commands concurrently (barrier-released); returns their stderr."""
    spec = {**spec, "barrier": {"dir": str(tmp / f"{name}.barrier"), "parties": len(commands)}}
    spec_file = tmp / f"{name}.spec.json"
    spec_file.write_text(json.dumps(spec))
    procs = [
        subprocess.Popen(
            [sys.executable, str(RUNNER), str(spec_file), *cmd],
            env=cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for cmd in commands
    ]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    for p, cmd, err in zip(procs, commands, errs, strict=True):
        assert p.returncode == 0, (cmd[0], err[-3000:])
    return errs


def test_concurrent_cifar_producers_and_a_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(tmp_path)
    cfg.params["datasets"]["cifar10"].update(
        source="cifar10", image_size=32, download=True, n_train=12, n_val=12
    )
    cfg.params["datasets"]["cifar100"]["image_size"] = 32  # SGL's unlabeled data: same size
    cfg.params["search"].update(epochs=1, batch_size=8)
    params = write_params(Config(cfg.params), tmp_path / "params.yaml")
    log = tmp_path / "transfers.log"
    spec = mirror.build(tmp_path / "mirror", monkeypatch.setattr)
    spec.update(delay_s=1.5, log=str(log))
    raw = Path(cfg.dataset("cifar10")["root"])

    def split(out: Path) -> list[str]:
        return cli_args("split", params=params, dataset="cifar10", out=out)

    a, b, c = (tmp_path / f"{n}.json" for n in "abc")
    run_together(spec, tmp_path, "producers", split(a), split(b))
    assert len(log.read_text().splitlines()) == 1  # the second job found the data intact
    assert a.read_bytes() == b.read_bytes()
    assert _cifar_defect(CIFAR10, str(raw)) is None
    assert check_integrity(str(raw / CIFAR10.filename), spec["tgz_md5"])

    # a fresh node with the split from version control but no raw data yet
    for path in sorted(raw.glob("cifar-10*"), reverse=True):
        if path.is_dir():
            for f in path.iterdir():
                f.unlink()
            path.rmdir()
        else:
            path.unlink()
    search_out = tmp_path / "search"
    search = cli_args(
        "search", params=params, dataset="cifar10", method="darts-1st", seed=0,
        split=a, out=search_out, device="cpu",
    )  # fmt: skip
    run_together(spec, tmp_path, "reader", split(c), search)
    assert len(log.read_text().splitlines()) == 2
    assert c.read_bytes() == a.read_bytes()
    assert _cifar_defect(CIFAR10, str(raw)) is None
    assert (search_out / "alphas.json").is_file()


def test_concurrent_demo_imagenet_producers(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path)
    params = write_params(cfg, tmp_path / "params.yaml")
    outs = [tmp_path / f"imagenet{i}.json" for i in range(2)]
    spec = {"url": CIFAR10.url, "tgz_md5": CIFAR10.tgz_md5, "train_list": CIFAR10.train_list}
    spec |= {"test_list": CIFAR10.test_list, "meta": CIFAR10.meta, "archive": "", "log": None}
    spec |= {"truncate": False, "delay_s": 0.0}
    run_together(
        spec,
        tmp_path,
        "imagenet",
        *(cli_args("split", params=params, dataset="imagenet", out=o) for o in outs),
    )
    assert outs[0].read_bytes() == outs[1].read_bytes()
    root = Path(cfg.dataset("imagenet")["root"])
    manifest = json.loads((root / DEMO_IMAGENET_MANIFEST).read_text())
    for split, n in (("train", manifest["n_train"]), ("val", manifest["n_val"])):
        assert len(list((root / split).rglob("*.png"))) == n
    leftovers = [p.name for p in root.parent.iterdir() if p.name.startswith(".imagenet.")]
    assert leftovers == [".imagenet.lock"]
