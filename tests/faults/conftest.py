"""The fault-injection suite: what goes wrong, and what each fault must yield.

Every fault case the project promises to survive or to report lives in this directory:

- ``test_kill.py`` (slow): ``kill -9`` of real ``mlonas search`` (one method per scheme,
  :data:`SEARCH_METHODS`) and ``mlonas train-cifar`` processes at seeded-random points,
  several times per run, then a damaged checkpoint, then a rerun; the final artifacts are
  bitwise those of an uninterrupted run.
- ``test_checkpoint.py``: truncated, bit-flipped, missing and foreign checkpoints, and a
  save interrupted at each of its steps: detected by size + sha256, the run falls back
  to the previous good checkpoint or starts over, and says which in one line. An
  unreadable ``checkpoint.sha256.json`` is damage too (never "no digests"), and a file
  that does not load is named without torch's advice to retry with ``weights_only=False``.
- ``test_bad_input.py``: corrupt or truncated dataset archives, wrong checksums,
  missing CIFAR/ImageNet folders, malformed genotypes, unknown ops, unknown methods,
  typo'd params keys, bad splits: each exits 2 with one stderr line naming the file or
  key, and writes no artifact.
- ``test_divergence.py``: NaN/inf losses. A search stops with one line naming epoch and
  step and writes nothing (the table then has n < requested), also for a non-finite
  end-of-epoch validation loss or architecture parameter, which is never checkpointed;
  evaluation training records the seed as diverged (exit 0) and the table row says so.
- ``test_output_lock.py``: a second ``search``/``train-*`` on an output directory that a
  live job holds exits 2 with one line and writes nothing; a killed holder blocks nothing.
- ``test_concurrency.py`` (slow): concurrent producers and readers of one dataset root
  (CIFAR download + extraction, the demo ImageNet tree) never corrupt it.
- ``test_overrides.py``: what Snakemake schedules is what the jobs run. ``--config`` /
  ``--configfile`` overrides reach the jobs that read them (``--set``) and their
  provenance, or are refused with one line blaming the override; both drivers track
  exactly the keys each job reads, and (slow) a change to each kind of setting makes
  Snakemake and DVC want the same reruns.
- ``test_driver_restart.py`` (slow): a real Snakemake driver killed mid-search (INT, TERM,
  KILL) and restarted as docs/cluster.md says.

Tampered artifacts (each kind edited, ``mlonas audit`` exits 1 naming it) are tested in
``tests/test_audit.py``, beside the audit's fixtures.

Helpers here are shared by those modules; the tiny configuration is ``tests/conftest.py``'s.
``pytest tests/faults`` runs the suite (``-m "faults and not slow"``: the fast part).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from helpers import BIN, REPO, tool_env

from mlonas.io import sha256_file, torch_load

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/faults/ is marked ``faults`` (``pytest -m faults``)."""
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.faults)


# -- processes ----------------------------------------------------------------------------


def cli_args(stage: str, **options: Any) -> list[str]:
    """``cli_args("search", seed=0, out=p)`` -> ``["search", "--seed", "0", "--out", "p"]``."""
    argv = [stage]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def cli_env() -> dict[str, str]:
    """One thread per process: the runs are tiny, and bitwise results need a fixed count."""
    return {**tool_env(), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def mlonas_cmd(*args: str) -> list[str]:
    return [str(BIN / "mlonas"), *args]


def run_mlonas(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        mlonas_cmd(*args),
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_mlonas(*args: str, stderr: Path) -> subprocess.Popen[bytes]:
    """Start ``mlonas`` with stderr into a file (a pipe nobody reads could block it)."""
    with open(stderr, "ab") as err:
        return subprocess.Popen(
            mlonas_cmd(*args),
            cwd=REPO,
            env=cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def wait_for(predicate: Any, proc: subprocess.Popen[bytes], timeout: float = 240.0) -> bool:
    """Poll ``predicate()`` until true (True) or until ``proc`` exits first (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return bool(predicate())
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"timed out after {timeout}s waiting on {proc.args}")


def sigkill(proc: subprocess.Popen[bytes]) -> int | None:
    """``kill -9``; returns the exit status (``-9`` when it was still running)."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    return proc.wait(timeout=60)


def recorded_digest(out_dir: Path) -> str | None:
    """The sha256 recorded for ``checkpoint.pt`` (changes exactly when a save completes)."""
    try:
        data = json.loads((out_dir / "checkpoint.sha256.json").read_text())
        return str(data["files"]["checkpoint.pt"]["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- comparing runs ---------------------------------------------------------------------


def volatile(key: str) -> bool:
    """Keys that measure *when* or *how long*, not *what*: they differ between any two runs."""
    return key == "finished_at" or "wall_time" in key or key.startswith("search_cost")


def strip_volatile(obj: Any) -> Any:
    """``obj`` without volatile keys and without provenance ``outputs`` blocks.

    An ``outputs`` block records paths (which differ between two output directories) and
    hashes of files that hold wall times; :func:`assert_same_outputs` checks instead that
    each recorded hash matches the file next to it.
    """
    if isinstance(obj, dict):
        return {
            k: strip_volatile(v) for k, v in obj.items() if not volatile(str(k)) and k != "outputs"
        }
    if isinstance(obj, list | tuple):
        return [strip_volatile(v) for v in obj]
    return obj


def assert_same_state(a: Any, b: Any, where: str = "") -> None:
    """Bitwise equality of nested checkpoint/state objects (tensors: dtype, shape, bits)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8)), where
    elif isinstance(a, dict):
        keys = {k for k in a if not volatile(str(k))}
        assert keys == {k for k in b if not volatile(str(k))}, where
        for k in keys:
            assert_same_state(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_csv(a: Path, b: Path) -> None:
    fa, fb = pd.read_csv(a), pd.read_csv(b)
    assert list(fa.columns) == list(fb.columns), a.name
    keep = [c for c in fa.columns if not volatile(c)]
    pd.testing.assert_frame_equal(fa[keep], fb[keep], check_exact=True)


def assert_same_outputs(
    ref: Path, got: Path, json_files: Sequence[str], torch_files: Sequence[str]
) -> None:
    """``got`` holds bitwise the artifacts of ``ref`` except wall times and timestamps.

    JSON artifacts without timing (alphas.json) must be byte-identical files; the others
    equal after dropping volatile keys. History CSVs: every column but wall time, exact.
    Torch files: every tensor bit for bit (the files' bytes embed a temporary file name).
    """
    for name in json_files:
        ra, ga = (ref / name).read_bytes(), (got / name).read_bytes()
        da, db = json.loads(ra), json.loads(ga)
        if strip_volatile(da) == da:
            assert ra == ga, f"{name} differs"
        else:
            assert strip_volatile(da) == strip_volatile(db), f"{name} differs"
        for folder, record in ((ref, da), (got, db)):
            outputs = record.get("outputs", {}) if isinstance(record, dict) else {}
            for out_name, entry in outputs.items():
                assert entry["sha256"] == sha256_file(folder / out_name), (name, out_name)
    for csv in sorted(p.name for p in ref.glob("*.csv")):
        assert_same_csv(ref / csv, got / csv)
    for name in torch_files:
        assert_same_state(torch_load(ref / name), torch_load(got / name), name)


# -- fixtures ----------------------------------------------------------------------


@pytest.fixture
def guard_threads() -> Iterator[None]:
    """In-process runs on one thread, like the ``OMP_NUM_THREADS=1`` subprocesses they are
    compared with (the thread count is part of what makes CPU results bitwise equal)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
