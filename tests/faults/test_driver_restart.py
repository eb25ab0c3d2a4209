"""The README's restart promise, with a real Snakemake driver killed mid-search.

"If the Snakemake process itself dies, start the same command again" must hold as
written: stopped with Ctrl-C or `kill` (INT, TERM), the same command finishes; killed
hard (`kill -9`, a lost login node), Snakemake's lock stays, so the README says to run
`snakemake --unlock` first. The orphaned job may still be running then: a second start
on its output directory is refused with one line, and once it is gone the same command
finishes (the default profile's rerun-incomplete; the search resumes from its
checkpoint).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import BIN, copy_workflow, tool_env

pytestmark = pytest.mark.slow

OUT = "demo/results/search/cifar10/darts-1st/seed0"
# the README's demo command, on one search (and the two splits it needs)
COMMAND = [str(BIN / "snakemake"), "--cores", "2", f"{OUT}/provenance.json"]
EPOCHS = 4  # long enough to stop it mid-search (the demo has 2)
CONFIG = ["--config", "preset=demo", f"search={{epochs: {EPOCHS}}}"]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc), so the test can wait for orphans."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            children = (task / "children").read_text().split() if task.exists() else []
            for c in map(int, children):
                out.append(c)
                todo.append(c)
    return out


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def start_and_wait_for_first_epoch(root: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [*COMMAND, *CONFIG],
        cwd=root,
        env=tool_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not (root / OUT / "checkpoint.pt").exists():
        assert proc.poll() is None, "the driver ended before the search checkpointed"
        assert time.monotonic() < deadline
        time.sleep(0.2)
    return proc


def run_again(root: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*COMMAND, *extra, *CONFIG],
        cwd=root,
        env=tool_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def finished(root: Path) -> dict:
    prov = json.loads((root / OUT / "provenance.json").read_text())
    assert prov["stage"] == "search" and prov["final"]["epoch"] == EPOCHS
    assert prov["overrides"] == [f"search.epochs={EPOCHS}"]
    return prov


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_driver_stopped_restarts_with_the_same_command(tmp_path: Path, sig: int) -> None:
    copy_workflow(tmp_path)
    proc = start_and_wait_for_first_epoch(tmp_path)
    orphans = descendants(proc.pid)
    proc.send_signal(sig)  # INT stops the job with it; TERM lets it finish first
    proc.wait(timeout=300)
    assert not any(alive(p) for p in orphans)
    res = run_again(tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    finished(tmp_path)


def test_driver_killed_hard_restarts_after_unlock(tmp_path: Path) -> None:
    copy_workflow(tmp_path)
    proc = start_and_wait_for_first_epoch(tmp_path)
    orphans = descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)  # the driver only: its job runs on, orphaned
    proc.wait(timeout=60)
    assert any(alive(p) for p in orphans)
    # the stale lock: Snakemake refuses and says how to remove it
    res = run_again(tmp_path)
    assert res.returncode != 0 and "--unlock" in res.stdout + res.stderr
    unlock = subprocess.run(
        [*COMMAND, "--unlock", *CONFIG], cwd=tmp_path, env=tool_env(), capture_output=True
    )
    assert unlock.returncode == 0
    if any(alive(p) for p in orphans):
        # while the orphan runs, a second search on its directory is refused with one line
        res = run_again(tmp_path)
        if any(alive(p) for p in orphans):
            log = (tmp_path / "demo/logs/search/cifar10/darts-1st/seed0.log").read_text()
            assert res.returncode != 0
            assert "in use by another running mlonas job" in log, log
    deadline = time.monotonic() + 300
    while any(alive(p) for p in orphans):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    res = run_again(tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    finished(tmp_path)
