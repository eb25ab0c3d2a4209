"""``kill -9`` of real long-running stages at seeded-random points; the rerun ends bitwise equal.

For each stage (a search of every scheme, and a CIFAR evaluation) the test

1. runs the command uninterrupted (the reference);
2. runs it again in a fresh directory and SIGKILLs it :data:`KILLS` times: each time it
   restarts the process, waits until that process has saved a new checkpoint (so every
   kill lands in a later epoch than the one before), sleeps a seeded-random fraction of
   an epoch and kills it, mid-step, mid-evaluation or mid-save, wherever that falls;
3. damages the newest checkpoint (truncation or one flipped byte, chosen by the seed);
4. reruns to completion and checks that the damage was detected (the run says it falls
   back to the previous checkpoint) and that every artifact equals the reference's bit
   for bit except wall times and timestamps: alphas.json byte-identical, history.csv
   column by column, metrics and provenance, and every tensor of model.pt and
   checkpoint.pt.

CPU, one thread per process: that is where the project promises bitwise equality.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import tiny_config, write_params

from mlonas.cli import main
from mlonas.data.splits import write_split
from mlonas.io import sha256_file, torch_load
from mlonas.space.evalnet import published_genotype

from .conftest import (
    assert_same_outputs,
    cli_args,
    recorded_digest,
    run_mlonas,
    sigkill,
    start_mlonas,
    wait_for,
)
from .test_checkpoint import flip_byte, truncate

#: One search method per scheme (plain: darts-2nd, which runs the unrolled hypergradient).
SEARCH_METHODS = ["darts-2nd", "lease-r18-darts-2nd", "sgl-darts-1st"]
KILLS = 3
#: Each restarted process gets one or two epochs further before it is killed (see
#: kill_repeatedly), so after KILLS kills the final rerun still has epochs to do.
EPOCHS = 2 * KILLS + 1

pytestmark = pytest.mark.slow


def resumable_epochs(out: Path) -> int:
    """Epochs in the newest checkpoint whose digest is recorded: where a rerun resumes.

    Measured as the checkpointer will judge it (a file killed before its digest was
    recorded does not count), so it only grows from one kill to the next.
    """
    try:
        records = json.loads((out / "checkpoint.sha256.json").read_text())["files"].values()
    except (OSError, ValueError, KeyError):
        return 0
    done = 0
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        path = out / name
        try:
            entry = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        except OSError:
            continue
        if entry in records:
            done = max(done, len(torch_load(path)["history"]))
    return done


def kill_repeatedly(args: list[str], out: Path, epoch_s: float, rng: random.Random) -> list[int]:
    """Start/kill ``mlonas args`` :data:`KILLS` times; returns the epochs done at each kill.

    Each process is killed a random fraction of an epoch after its first new checkpoint,
    or at once if it completes a second one meanwhile: every process gets one or two
    epochs further, so the kills land in later and later epochs and before the run's end.
    """
    out.mkdir(parents=True, exist_ok=True)
    landed: list[int] = []
    for _ in range(KILLS):
        before = recorded_digest(out)
        proc = start_mlonas(*args, stderr=out.parent / f"{out.name}.stderr")
        saved = wait_for(lambda b=before: recorded_digest(out) not in (None, b), proc)
        assert saved and proc.poll() is None, "the process ended before it saved a checkpoint"
        first = recorded_digest(out)
        deadline = time.monotonic() + rng.uniform(0.02, 0.98) * epoch_s
        wait_for(
            lambda d=deadline, f=first: time.monotonic() > d or recorded_digest(out) != f, proc
        )
        assert sigkill(proc) == -9, "the process finished before it was killed"
        landed.append(resumable_epochs(out))
    print(f"{out}: killed with {landed} epochs checkpointed, of {EPOCHS}")  # pytest -s
    return landed


def damage_and_finish(args: list[str], out: Path, rng: random.Random) -> str:
    """Damage the newest checkpoint, rerun to the end; returns the rerun's stderr."""
    damage = rng.choice([truncate, flip_byte])
    had_previous = (out / "checkpoint.prev.pt").exists()
    if (out / "checkpoint.pt").exists():
        damage(out / "checkpoint.pt")
    res = run_mlonas(*args)
    assert res.returncode == 0, res.stderr[-3000:]
    expected = "falling back to" if had_previous else "starting over"
    assert expected in res.stderr, res.stderr[-3000:]
    assert not list(out.glob(".checkpoint.*.tmp")), "killed saves left temporaries"
    return res.stderr


def epoch_seconds(history: Path) -> float:
    wall = pd.read_csv(history)["wall_time_s"].tolist()
    return max((wall[-1] - wall[0]) / max(len(wall) - 1, 1), 0.05)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("kill")
    small = {"n_train": 32, "n_val": 32}  # two search steps of 16 per epoch
    cfg = tiny_config(
        root,
        {
            "datasets": {"cifar10": small, "cifar100": small},
            "search": {"epochs": EPOCHS},
            "eval": {"cifar": {"epochs": EPOCHS, "batch_size": 128}},
        },
    )
    params = write_params(cfg, root / "params.yaml")
    for dataset in ("cifar10", "cifar100"):
        write_split(cfg, dataset, cfg.split_path(dataset))
    cell = root / "cell.json"
    published_genotype("DARTS_V2").save(cell)
    return {"root": root, "cfg": cfg, "params": params, "cell": cell}


@pytest.mark.parametrize("method", SEARCH_METHODS)
def test_killed_search_resumes_bitwise(
    world: dict[str, Any], method: str, guard_threads: None
) -> None:
    cfg, root = world["cfg"], world["root"]
    rng = random.Random(f"kill-search-{method}")

    def args(out: Path) -> list[str]:
        return cli_args(
            "search",
            params=world["params"],
            dataset="cifar10",
            method=method,
            seed=0,
            split=cfg.split_path("cifar10"),
            unlabeled_split=cfg.split_path("cifar100"),
            out=out,
            device="cpu",
        )

    ref, got = root / method / "straight", root / method / "killed"
    assert main(args(ref)) == 0  # the reference, in this process (saves a process start)
    landed = kill_repeatedly(args(got), got, epoch_seconds(ref / "history.csv"), rng)
    assert landed == sorted(set(landed)) and landed[0] > 0 and landed[-1] < EPOCHS, landed
    damage_and_finish(args(got), got, rng)
    assert_same_outputs(
        ref,
        got,
        json_files=["alphas.json", "metrics.json", "provenance.json"],
        torch_files=["checkpoint.pt"],
    )


def test_killed_cifar_training_resumes_bitwise(world: dict[str, Any], guard_threads: None) -> None:
    cfg, root = world["cfg"], world["root"]
    rng = random.Random("kill-train-cifar")

    def args(out: Path) -> list[str]:
        return cli_args(
            "train-cifar",
            params=world["params"],
            dataset="cifar10",
            method="darts-1st",
            seed=0,
            genotype=world["cell"],
            split=cfg.split_path("cifar10"),
            out=out,
            device="cpu",
        )

    ref, got = root / "train" / "straight", root / "train" / "killed"
    assert main(args(ref)) == 0  # the reference, in this process (saves a process start)
    landed = kill_repeatedly(args(got), got, epoch_seconds(ref / "history.csv"), rng)
    assert landed == sorted(set(landed)) and landed[0] > 0 and landed[-1] < EPOCHS, landed
    damage_and_finish(args(got), got, rng)
    assert_same_outputs(
        ref, got, json_files=["metrics.json"], torch_files=["model.pt", "checkpoint.pt"]
    )
