"""Damaged checkpoints: detected by size + sha256, fall back to the previous one or start over.

Each case states what is damaged and what the run must do about it. The last test drives a
real (tiny) search in-process through a damaged checkpoint to the same bits as an
uninterrupted search.
"""

from __future__ import annotations

import json
import logging
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


def straight_and_killed_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[Path], None]:
    """Run a darts-1st search through into ``straight/``, and the same search into
    ``resumed/`` killed right after it saved its 2nd epoch; return the search, to rerun."""
    cfg = tiny_config(tmp_path)
    split = cfg.split_path("cifar10")
    write_split(cfg, "cifar10", split)

    def search(out: Path) -> None:
        run_search(cfg, "cifar10", "darts-1st", 0, split, str(out), device="cpu")

    search(tmp_path / "straight")
    real_save = Checkpointer.save

    def save_then_die(self: Checkpointer, st: dict[str, Any]) -> None:
        real_save(self, st)
        if st["epoch"] == 2:  # epochs done
            raise Crash

    monkeypatch.setattr(Checkpointer, "save", save_then_die)
    with pytest.raises(Crash):
        search(tmp_path / "resumed")
    monkeypatch.undo()
    return search


def test_damaged_checkpoint_of_a_real_search_resumes_to_the_same_bits(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    guard_threads: None,
) -> None:
    """A darts-1st search killed after its 2nd epoch, checkpoint.pt bit-flipped, rerun."""
    search = straight_and_killed_search(tmp_path, monkeypatch)
    flip_byte(tmp_path / "resumed" / "checkpoint.pt")
    caplog.set_level(logging.INFO, logger="mlonas")
    search(tmp_path / "resumed")
    err = caplog.text
    assert "does not match the sha256" in err and "falling back to" in err
    assert "resuming from" in err and "checkpoint.prev.pt after epoch 1" in err
    assert_same_outputs(
        tmp_path / "straight",
        tmp_path / "resumed",
        json_files=["alphas.json", "metrics.json", "provenance.json"],
        torch_files=["checkpoint.pt"],
    )


# -- a damaged digest file is a damaged checkpoint -----------------------------------------


def _digests(tmp_path: Path) -> dict[str, Any]:
    return json.loads((tmp_path / DIGESTS_NAME).read_text())


def _edit_entries(edit: Callable[[str, dict[str, Any]], None]) -> Callable[[Path], None]:
    """Damage that keeps the file valid JSON: ``edit(name, entry)`` on each recorded entry."""

    def damage(path: Path) -> None:
        data = json.loads(path.read_text())
        for name, entry in data["files"].items():
            edit(name, entry)
        path.write_text(json.dumps(data))

    return damage


def _sizes_as_text(name: str, entry: dict[str, Any]) -> None:
    entry["bytes"] = f"{entry['bytes']} bytes"


def _current_without_sha256(name: str, entry: dict[str, Any]) -> None:
    if name == "checkpoint.pt":
        del entry["sha256"]


# damage applied to checkpoint.sha256.json, expected epoch (None: starts over), words
DIGEST_CASES: dict[str, tuple[Callable[[Path], None], int | None, list[str]]] = {
    "garbage bytes": (
        lambda p: p.write_bytes(b"\x00\xff\xfe garbage \x80"),
        None,
        ["unreadable", "UnicodeDecodeError"],
    ),
    "truncated JSON": (truncate, None, ["unreadable", "JSONDecodeError"]),
    "a list": (lambda p: p.write_text("[]\n"), None, ["damaged", "no table of files"]),
    "no files": (lambda p: p.write_text('{"format": 1}'), None, ["no table of files"]),
    "sizes not numbers": (
        _edit_entries(_sizes_as_text),
        None,
        ["unreadable entry for checkpoint.prev.pt, checkpoint.pt"],
    ),
    "current's entry lacks its sha256": (
        _edit_entries(_current_without_sha256),
        1,
        ["unreadable entry for checkpoint.pt", "does not match", "falling back to"],
    ),
}


@pytest.mark.parametrize("case", list(DIGEST_CASES))
@pytest.mark.parametrize("flip_current", [False, True])
def test_unreadable_digest_file_is_a_damaged_checkpoint(
    tmp_path: Path, case: str, flip_current: bool
) -> None:
    """Before: any of these read as "no digest file", so checkpoint.pt was loaded
    unverified without a word, bit-flipped weights included."""
    damage, epoch, words = DIGEST_CASES[case]
    ck = saved(tmp_path, 3)
    if flip_current:
        flip_byte(ck.path)
    damage(tmp_path / DIGESTS_NAME)
    got, why, reader = read(tmp_path)
    assert "\n" not in why
    for w in [str(tmp_path / DIGESTS_NAME), *words]:
        assert w in why, (w, why)
    if epoch is None:
        assert got is None and reader.source is None and why.endswith("; starting over")
        reader.save(state(0))
        assert not ck.previous.exists()  # nothing unverified becomes the fallback
        again, why, _ = read(tmp_path)
        assert again is not None and again["epoch"] == 0 and why == ""
        return
    assert got is not None and got["epoch"] == epoch and reader.source == ck.previous
    reader.save(state(epoch + 1))  # the digest file is whole again, with the good previous
    assert set(_digests(tmp_path)["files"]) == {"checkpoint.pt", PREVIOUS_NAME}
    again, why, _ = read(tmp_path)
    assert again is not None and again["epoch"] == epoch + 1 and why == ""


class NotPlainData:
    """An object a ``weights_only`` load refuses (as a damaged or foreign pickle would be)."""


def test_a_checkpoint_that_does_not_load_is_named_without_torch_s_advice(
    tmp_path: Path,
) -> None:
    """torch's UnpicklingError text tells the reader to load with ``weights_only=False``;
    our line names the file and what happens instead (fall back, or start over)."""
    ck = saved(tmp_path, 2)
    ck.save({**state(2), "extra": NotPlainData()})  # recorded, so it verifies
    got, why, reader = read(tmp_path)
    assert got is not None and got["epoch"] == 1 and reader.source == ck.previous
    assert f"checkpoint {ck.path} is damaged" in why and f"falling back to {ck.previous}" in why
    assert "weights_only" not in why and "False" not in why and "\n" not in why

    for name in ("checkpoint.pt", PREVIOUS_NAME, DIGESTS_NAME):
        (tmp_path / name).unlink()
    ck.path.write_bytes(b"not a checkpoint")  # no digest file: loaded unverified, and fails
    got, why, _ = read(tmp_path)
    assert got is None and f"checkpoint {ck.path} is damaged" in why
    assert why.endswith("; starting over") and "weights_only" not in why


def test_unreadable_digests_and_a_damaged_rng_state_start_over_to_the_same_bits(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    guard_threads: None,
) -> None:
    """The issue's case: the checkpoint's RNG state is damaged and the digest file garbage.
    Before: loaded unverified, every rerun died with "Invalid mt19937 state" (exit 1) until
    the file was removed by hand. Now: one line, start over, the uninterrupted result."""
    search = straight_and_killed_search(tmp_path, monkeypatch)
    out = tmp_path / "resumed"
    for name in ("checkpoint.pt", PREVIOUS_NAME):
        st = torch_load(out / name)
        st["rng"][0] = torch.zeros_like(st["rng"][0])
        torch.save(st, out / name)
    (out / DIGESTS_NAME).write_bytes(b"\x00\x01 not json")
    caplog.set_level(logging.INFO, logger="mlonas")
    search(out)
    err = caplog.text
    said = [line for line in err.splitlines() if DIGESTS_NAME in line]
    assert len(said) == 1 and "unreadable" in said[0] and "starting over" in said[0], err
    assert "resuming from" not in err
    assert_same_outputs(
        tmp_path / "straight",
        out,
        json_files=["alphas.json", "metrics.json", "provenance.json"],
        torch_files=["checkpoint.pt"],
    )
