"""Damaged checkpoints: detected by size + sha256, fall back to the previous one or start over.

Each case states what is damaged and what the run must do about it. The last test drives a
real (tiny) search in-process through a damaged checkpoint to the same bits as an
uninterrupted search.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_config

from mlonas import checkpoint
from mlonas.checkpoint import DIGESTS_NAME, PREVIOUS_NAME, Checkpointer
from mlonas.data.splits import write_split
from mlonas.io import torch_load
from mlonas.search.loop import run_search

from .conftest import assert_same_outputs

DEFINITION = {"stage": "test", "seed": 0}


def state(epoch: int) -> dict[str, Any]:
    """A checkpoint-like state whose tensors depend on ``epoch`` (so versions differ)."""
    g = torch.Generator().manual_seed(epoch)
    return {"epoch": epoch, "weights": torch.randn(64, 64, generator=g), "history": [epoch]}


def saved(tmp_path: Path, epochs: int) -> Checkpointer:
    ck = Checkpointer(tmp_path, DEFINITION)
    for e in range(epochs):
        ck.save(state(e))
    return ck


def read(tmp_path: Path) -> tuple[dict[str, Any] | None, str, Checkpointer]:
    ck = Checkpointer(tmp_path, DEFINITION)
    got, why = ck.read()
    return got, why, ck


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_byte(path: Path) -> None:
    """Same size, one byte changed deep inside the tensor data: only the hash can tell."""
    blob = bytearray(path.read_bytes())
    blob[len(blob) * 2 // 3] ^= 0x01
    path.write_bytes(bytes(blob))


def test_save_keeps_the_previous_checkpoint_and_records_both(tmp_path: Path) -> None:
    ck = saved(tmp_path, 3)
    assert torch_load(ck.path)["epoch"] == 2
    assert torch_load(ck.previous)["epoch"] == 1
    files = json.loads((tmp_path / DIGESTS_NAME).read_text())["files"]
    assert set(files) == {"checkpoint.pt", PREVIOUS_NAME}
    assert files["checkpoint.pt"]["bytes"] == ck.path.stat().st_size
    got, why, reader = read(tmp_path)
    assert got is not None and got["epoch"] == 2 and why == "" and reader.source == ck.path


# (damage applied to checkpoint.pt / checkpoint.prev.pt, expected epoch or None, words)
CASES: dict[
    str, tuple[Callable[[Path], None] | None, Callable[[Path], None] | None, int | None, list[str]]
] = {
    "truncated current": (truncate, None, 1, ["bytes but", "truncated", "falling back to"]),
    "bit-flipped current": (flip_byte, None, 1, ["sha256", "corrupted", "falling back to"]),
    "current missing": (Path.unlink, None, 1, ["does not exist", "falling back to"]),
    "current replaced by garbage": (
        lambda p: p.write_bytes(b"not a checkpoint"),
        None,
        1,
        ["16 bytes", "falling back to"],
    ),
    "both damaged": (truncate, flip_byte, None, ["truncated", "corrupted", "starting over"]),
    "current missing, previous truncated": (Path.unlink, truncate, None, ["starting over"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_checkpoint_falls_back_or_starts_over(tmp_path: Path, case: str) -> None:
    damage_current, damage_previous, epoch, words = CASES[case]
    ck = saved(tmp_path, 3)
    if damage_current:
        damage_current(ck.path)
    if damage_previous:
        damage_previous(ck.previous)
    got, why, reader = read(tmp_path)
    assert "\n" not in why
    for w in words:
        assert w in why, (w, why)
    if epoch is None:
        assert got is None and reader.source is None
        return
    assert got is not None and got["epoch"] == epoch and reader.source == ck.previous
    assert str(ck.previous) in why
    assert torch.equal(got["weights"], state(epoch)["weights"])
    # the run goes on from there: its next save must not keep the damaged file as "previous"
    reader.save(state(epoch + 1))
    again, why2, _ = read(tmp_path)
    assert again is not None and again["epoch"] == epoch + 1 and why2 == ""
    assert torch_load(ck.previous)["epoch"] == epoch  # the good one, not the damaged one


def test_foreign_checkpoint_is_not_resumed_and_not_kept(tmp_path: Path) -> None:
    saved(tmp_path, 2)
    other = Checkpointer(tmp_path, {**DEFINITION, "seed": 1})
    got, why = other.read()
    assert got is None and "belongs to a different run" in why and "starting over" in why
    other.save(state(0))
    assert not other.previous.exists()  # the other run's checkpoint is not a fallback
    got, why = Checkpointer(tmp_path, {**DEFINITION, "seed": 1}).read()
    assert got is not None and got["epoch"] == 0 and why == ""


def test_checkpoint_without_digests_loads_unverified(tmp_path: Path) -> None:
    """A checkpoint written before digests existed still resumes (and is kept from then on)."""
    ck = saved(tmp_path, 1)
    (tmp_path / DIGESTS_NAME).unlink()
    got, why, reader = read(tmp_path)
    assert got is not None and got["epoch"] == 0 and why == ""
    reader.save(state(1))
    assert "checkpoint.prev.pt" in json.loads((tmp_path / DIGESTS_NAME).read_text())["files"]
    truncate(ck.path)
    got, why, _ = read(tmp_path)
    assert got is not None and got["epoch"] == 0 and "falling back" in why


class Crash(BaseException):
    """SIGKILL at a given point inside Checkpointer.save (BaseException: nothing catches it)."""


STEPS = ["rename to previous", "write checkpoint", "after write", "record digests"]


@pytest.mark.parametrize("step", STEPS)
def test_save_killed_at_each_step_leaves_a_verifiable_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    """Kill the third save at each of its steps: epoch 1 or 2 resumes, never a bad file."""
    ck = saved(tmp_path, 2)
    real_replace, real_save, real_json = (
        os.replace,
        checkpoint.atomic_torch_save,
        checkpoint.atomic_write_json,
    )

    def replace(src: Any, dst: Any) -> None:
        if step == "rename to previous" and Path(dst).name == PREVIOUS_NAME:
            raise Crash
        real_replace(src, dst)

    def torch_save(obj: Any, path: Any) -> None:
        if step == "write checkpoint":  # killed while writing: a temporary file is left
            Path(path).with_name(f".{Path(path).name}.abc123.tmp").write_bytes(b"half")
            raise Crash
        real_save(obj, path)
        if step == "after write":
            raise Crash

    def write_json(path: Any, obj: Any) -> None:
        if step == "record digests":
            Path(path).with_name(f".{Path(path).name}.abc123.tmp").write_bytes(b"{")
            raise Crash
        real_json(path, obj)

    monkeypatch.setattr(checkpoint.os, "replace", replace)
    monkeypatch.setattr(checkpoint, "atomic_torch_save", torch_save)
    monkeypatch.setattr(checkpoint, "atomic_write_json", write_json)
    with pytest.raises(Crash):
        ck.save(state(2))
    monkeypatch.undo()

    got, why, reader = read(tmp_path)
    assert got is not None, why
    assert got["epoch"] == 1  # the killed save's state is never trusted without its digest
    assert torch.equal(got["weights"], state(1)["weights"])
    if step == "rename to previous":
        assert why == ""
    else:
        assert "falling back to" in why and "\n" not in why
    reader.save(state(2))  # the rerun redoes epoch 2 and sweeps the killed save's leftovers
    assert not list(tmp_path.glob(".*.tmp"))
    again, why, _ = read(tmp_path)
    assert again is not None and again["epoch"] == 2 and why == ""


def test_damaged_checkpoint_of_a_real_search_resumes_to_the_same_bits(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    guard_threads: None,
) -> None:
    """A darts-1st search killed after its 2nd epoch, checkpoint.pt bit-flipped, rerun."""
    cfg = tiny_config(tmp_path)
    split = cfg.split_path("cifar10")
    write_split(cfg, "cifar10", split)

    def search(out: Path) -> None:
        run_search(cfg, "cifar10", "darts-1st", 0, split, str(out), device="cpu")

    search(tmp_path / "straight")
    real_save = Checkpointer.save
    saves = {"n": 0}

    def save_then_die(self: Checkpointer, st: dict[str, Any]) -> None:
        real_save(self, st)
        saves["n"] += 1
        if saves["n"] == 2:
            raise Crash

    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    with pytest.raises(Crash):
        search(tmp_path / "resumed")
    monkeypatch.undo()
    flip_byte(tmp_path / "resumed" / "checkpoint.pt")
    capsys.readouterr()
    search(tmp_path / "resumed")
    err = capsys.readouterr().err
    assert "does not match the sha256" in err and "falling back to" in err
    assert "resuming from" in err and "checkpoint.prev.pt after epoch 1" in err
    assert_same_outputs(
        tmp_path / "straight",
        tmp_path / "resumed",
        json_files=["alphas.json", "metrics.json", "provenance.json"],
        torch_files=["checkpoint.pt"],
    )
