"""Two jobs on one output directory: the second refuses to start (``mlonas.io.hold_output_dir``).

Before, two ``mlonas search`` runs on one ``--out`` both "succeeded", interleaving their
checkpoints and digests. Now a stage holds ``<out>/.lock`` (an ``flock``) while it runs; a
second one exits 2 with one line naming the directory and the holder's pid, and writes
nothing. The kernel drops the lock when the holder dies, so a killed job (``kill -9``)
never blocks the rerun.

The holder here is a separate process holding the lock exactly as a running stage does.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_config, write_params

from mlonas.cli import main
from mlonas.errors import MlonasError
from mlonas.io import LOCK_NAME, hold_output_dir
from mlonas.space.evalnet import published_genotype

from .conftest import cli_args, cli_env, mlonas_cmd, sigkill

HOLDER = """
import sys
from mlonas.io import hold_output_dir
with hold_output_dir(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes stdin or kills this process
"""


def start_holder(script: str, out: Path) -> tuple[subprocess.Popen[str], str]:
    """Run ``script`` on ``out``; return the process and the first line it prints (once it
    holds the lock), so the test knows the lock is taken before it goes on."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=cli_env(),
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def hold(out: Path) -> subprocess.Popen[str]:
    """A live process holding ``out``'s lock (returns once it holds it)."""
    proc, said = start_holder(HOLDER, out)
    assert said == "held"
    return proc


def test_the_lock_is_exclusive_and_released_on_exit(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with hold_output_dir(out):
        with pytest.raises(MlonasError) as err, hold_output_dir(out):
            pass
        assert f"output directory {out} is in use" in str(err.value)
    with hold_output_dir(out):  # released: the next run proceeds
        pass
    assert [p.name for p in out.iterdir()] == [LOCK_NAME]


FORKING_HOLDER = """
import os, sys, time
from mlonas.io import hold_output_dir
with hold_output_dir(sys.argv[1]):
    r, w = os.pipe()
    child = os.fork()  # as a DataLoader worker is forked
    if child == 0:
        os.write(w, b"x")  # after the at-fork hooks ran in the child
        time.sleep(120)
        os._exit(0)
    os.read(r, 1)  # the child is running: a kill now tests the hook, not the scheduler
    print(child, flush=True)
    sys.stdin.read()
"""


def test_a_killed_holder_s_forked_children_do_not_keep_the_lock(tmp_path: Path) -> None:
    """``kill -9`` of a job whose DataLoader workers outlive it for a while: the rerun
    must not be refused because an orphaned worker inherited the lock's descriptor."""
    out = tmp_path / "out"
    holder, said = start_holder(FORKING_HOLDER, out)
    child = int(said)
    try:
        with pytest.raises(MlonasError), hold_output_dir(out):
            pass
        sigkill(holder)  # type: ignore[arg-type]
        os.kill(child, 0)  # the orphan still runs
        with hold_output_dir(out):
            pass
    finally:
        sigkill(holder)  # type: ignore[arg-type]
        os.kill(child, signal.SIGKILL)


def stage_argv(tmp_path: Path, stage: str) -> tuple[list[str], Path]:
    """A one-epoch tiny ``search`` or ``train-cifar`` command line and its output directory."""
    cfg = tiny_config(
        tmp_path, {"search": {"epochs": 1}, "eval": {"cifar": {"epochs": 1, "batch_size": 64}}}
    )
    params = write_params(cfg, tmp_path / "params.yaml")
    split = Path(cfg.split_path("cifar10"))
    assert main(cli_args("split", params=params, dataset="cifar10", out=split)) == 0
    common = {"params": params, "method": "darts-1st", "seed": 0, "split": split}
    if stage == "search":
        out = Path(cfg.search_dir("cifar10", "darts-1st", 0))
        return cli_args(stage, dataset="cifar10", **common, out=out, device="cpu"), out
    cell = tmp_path / "cell.json"
    published_genotype("DARTS_V2").save(cell)
    out = Path(cfg.eval_dir("cifar10", "darts-1st", 0))
    argv = cli_args(stage, dataset="cifar10", **common, genotype=cell, out=out, device="cpu")
    return argv, out


@pytest.mark.parametrize("stage", ["search", "train-cifar"])
def test_a_second_job_on_a_held_output_directory_refuses_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], stage: str
) -> None:
    argv, out = stage_argv(tmp_path, stage)
    holder = hold(out)
    try:
        lock_text = (out / LOCK_NAME).read_text()
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err.splitlines()
        assert code == 2, err
        assert len(err) == 1 and err[0].startswith(f"mlonas {stage}: error: "), err
        assert f"output directory {out} is in use" in err[0] and f"pid {holder.pid} " in err[0]
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]  # nothing written
        assert (out / LOCK_NAME).read_text() == lock_text  # the holder's record untouched
    finally:
        sigkill(holder)  # type: ignore[arg-type]
    # the holder died without unlocking anything: the kernel released its lock
    assert main(argv) == 0
    assert (out / "metrics.json").is_file()


@pytest.mark.parametrize("launch", ["mlonas", "torchrun"])
def test_ddp_run_on_a_held_output_directory_stops_on_every_rank(
    tmp_path: Path, launch: str
) -> None:
    """`mlonas train-imagenet` with nproc 2: its torchrun launcher holds the lock, so a
    held directory is refused with one line and exit 2 before any worker starts. Started
    by torchrun directly, only rank 0 takes the lock and tells rank 1, so both stop at
    once with the line (none waits in a collective for the other)."""
    cfg = tiny_config(tmp_path)
    cfg.params["eval"]["imagenet"].update(nproc=2, epochs=1, batch_size=32, num_workers=0)
    params = write_params(cfg, tmp_path / "params.yaml")
    split, cell = tmp_path / "imagenet.json", tmp_path / "cell.json"
    assert main(cli_args("split", params=params, dataset="imagenet", out=split)) == 0
    published_genotype("DARTS_V2").save(cell)
    out = tmp_path / "eval"
    argv = cli_args(
        "train-imagenet", params=params, source="cifar10", method="darts-1st", seed=0,
        genotype=cell, split=split, out=out, device="cpu",
    )  # fmt: skip
    cmd = mlonas_cmd(*argv)
    if launch == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += ["--nproc_per_node=2", "-m", "mlonas.cli", *argv]
    holder = hold(out)
    try:
        res = subprocess.run(
            cmd,
            env={**cli_env(), "GLOO_SOCKET_IFNAME": "lo"},
            capture_output=True,
            text=True,
            timeout=240,  # a rank left waiting for the other would hang here
            check=False,
        )
    finally:
        sigkill(holder)  # type: ignore[arg-type]
    said = [
        line
        for line in res.stderr.splitlines()
        if line.startswith("mlonas train-imagenet: error: output directory")
    ]
    assert all(f"pid {holder.pid} " in line for line in said), res.stderr
    if launch == "mlonas":
        assert res.returncode == 2 and res.stderr.strip().splitlines() == said, res.stderr
    else:
        # both ranks say it (their lines may interleave on the shared stream)
        line = "mlonas train-imagenet: error: output directory"
        assert res.returncode != 0 and res.stderr.count(line) == 2, res.stderr[-3000:]
        assert res.stderr.count(f"pid {holder.pid} on") == 2, res.stderr[-3000:]
    assert [p.name for p in out.iterdir()] == [LOCK_NAME]


def test_a_worker_s_user_error_under_the_launcher_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A bad input found inside the torchrun workers (here a genotype that is not JSON)
    reaches the user as the single-process command says it: one line, exit 2, without
    torchrun's report of a failed child (a Python traceback)."""
    cfg = tiny_config(tmp_path)
    cfg.params["eval"]["imagenet"].update(nproc=2, epochs=1, batch_size=32, num_workers=0)
    params = write_params(cfg, tmp_path / "params.yaml")
    split, cell = tmp_path / "imagenet.json", tmp_path / "cell.json"
    assert main(cli_args("split", params=params, dataset="imagenet", out=split)) == 0
    cell.write_text("not json")
    argv = cli_args(
        "train-imagenet", params=params, source="cifar10", method="darts-1st", seed=0,
        genotype=cell, split=split, out=tmp_path / "eval", device="cpu",
    )  # fmt: skip
    res = subprocess.run(
        mlonas_cmd(*argv),
        env={**cli_env(), "GLOO_SOCKET_IFNAME": "lo"},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    errors = [ln for ln in res.stderr.splitlines() if "error" in ln.lower()]
    assert res.returncode == 2, res.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith("mlonas train-imagenet: error: "), errors
    assert "cell.json" in errors[0] and "Traceback" not in res.stderr
