"""`mlonas <stage>` through its entry point: a split with its log, torchrun for ImageNet.

User errors (one line on stderr, exit 2, no artifact) are fault cases: tests/faults/.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_config, write_params

from mlonas.cli import main


@pytest.fixture
def params(tmp_path: Path) -> Path:
    return write_params(tiny_config(tmp_path), tmp_path / "params.yaml")


def test_split_through_the_cli_writes_the_split_and_the_log(params: Path, tmp_path: Path) -> None:
    split = tmp_path / "split.json"
    log = tmp_path / "logs" / "split.log"
    assert (
        main(
            [
                "split",
                "--params",
                str(params),
                "--dataset",
                "cifar10",
                "--out",
                str(split),
                "--log",
                str(log),
            ]
        )
        == 0
    )
    assert json.loads(split.read_text())["n_train"] == 48
    assert log.exists()


def test_train_imagenet_launches_torchrun_and_logs_through_one_process(tmp_path: Path) -> None:
    """nproc > 1 outside torchrun: the CLI starts `torchrun` itself (2 CPU gloo workers)."""
    import subprocess

    from helpers import BIN, tool_env

    from mlonas.space.evalnet import published_genotype

    cfg = tiny_config(tmp_path)
    cfg.params["eval"]["imagenet"].update(nproc=2, epochs=1, batch_size=32, num_workers=0)
    params = write_params(cfg, tmp_path / "params.yaml")
    split, cell = tmp_path / "imagenet.json", tmp_path / "cell.json"
    assert (
        main(["split", "--params", str(params), "--dataset", "imagenet", "--out", str(split)]) == 0
    )
    published_genotype("DARTS_V2").save(cell)
    out, log = tmp_path / "eval", tmp_path / "train.log"
    res = subprocess.run(
        [
            str(BIN / "mlonas"),
            "train-imagenet",
            "--params",
            str(params),
            "--source",
            "cifar10",
            "--method",
            "darts-1st",
            "--seed",
            "0",
            "--genotype",
            str(cell),
            "--split",
            str(split),
            "--out",
            str(out),
            "--log",
            str(log),
            "--device",
            "cpu",
        ],
        env={**tool_env(), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["provenance"]["world_size"] == 2
    assert "epoch 1/1" in log.read_text()
