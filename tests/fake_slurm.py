"""Stand-ins for sbatch, sacct, srun, sinfo, ... that answer like SLURM on one machine.

Used by tests/test_cluster.py as ``python fake_slurm.py <tool> <args>`` (one wrapper
script per tool on PATH). The executor plugin (snakemake-executor-plugin-slurm) then runs
unchanged: it builds the same sbatch calls it would on a cluster, and the job scripts it
submits run here. Every call is appended to ``$FAKE_SLURM_DIR/calls.jsonl``.

- sbatch runs the job script (``--wrap``) to its end before it answers with the job id,
  as ``--parsable`` does, so the plugin's first status query finds the job finished;
  ``$FAKE_SLURM_TIMEOUT=<rule>`` ends that rule's first attempt in TIMEOUT without
  running it (a job that outlived its partition's time limit).
- srun, which the job script calls for the job step, runs the step for real
  (``$FAKE_SLURM_MODE=run``) or only creates the job's outputs (``touch``), which it reads
  from the description of the job the job script has printed to the job's log.
- sacct answers the plugin's status query (``JobIdRaw|State``) and its account guess.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import sys
from pathlib import Path

STATE = Path(os.environ["FAKE_SLURM_DIR"])


def option(args: list[str], name: str) -> str | None:
    """Value of ``name`` given as ``name=value`` or ``name value``."""
    for i, a in enumerate(args):
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(args):
            return args[i + 1]
    return None


def new_job_id() -> int:
    with open(STATE / "counter", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        last = int(f.read() or 999)
        f.seek(0)
        f.truncate()
        f.write(str(last + 1))
    return last + 1


def sbatch(args: list[str]) -> int:
    job_id = new_job_id()
    script = option(args, "--wrap") or ""
    comment = option(args, "--comment") or ""
    timeout_rule = os.environ.get("FAKE_SLURM_TIMEOUT")
    first_attempt = re.search(r"--attempt 1\b", script) is not None
    if timeout_rule and re.match(rf"rule_{timeout_rule}(_wildcards_|$)", comment) and first_attempt:
        state = "TIMEOUT"
    else:
        log = Path((option(args, "--output") or "slurm-%j.out").replace("%j", str(job_id)))
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "SLURM_JOB_ID": str(job_id), "FAKE_SLURM_LOG": str(log.resolve())}
        if option(args, "--gpus"):
            env["SLURM_GPUS"] = option(args, "--gpus") or ""
        with open(log, "w") as out:
            rc = subprocess.run(
                script,
                shell=True,
                env=env,
                cwd=option(args, "-D"),
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            ).returncode
        state = "COMPLETED" if rc == 0 else "FAILED"
    (STATE / f"job{job_id}").write_text(state)
    print(job_id)
    return 0


def srun(args: list[str]) -> int:
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 1
    step = args[i:]
    if os.environ.get("FAKE_SLURM_MODE") == "run":
        return subprocess.run(step, check=False).returncode
    # The job script (snakemake) printed the job's description before it called srun.
    made = 0
    for line in Path(os.environ["FAKE_SLURM_LOG"]).read_text().splitlines():
        key, _, value = line.strip().partition(": ")
        if key in ("output", "benchmark"):
            for path in value.split(", "):
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                Path(path).touch()
                made += 1
    if not made:
        sys.stderr.write("fake srun: no outputs found in the job's log\n")
        return 1
    return 0


def sacct(args: list[str]) -> int:
    if "--name" in args:  # the plugin's status query of its jobs
        for p in sorted(STATE.glob("job*")):
            print(f"{p.name[3:]}|{p.read_text()}")
    elif any(a.startswith("Account") for a in args):  # the plugin guessing the account
        print("fakeaccount")
    return 0


ANSWERS = {
    "sacctmgr": "fakeaccount",
    "sshare": "fakeaccount",
    "sinfo": "PARTITION\nfakegpu*\nfakecpu",
    "scontrol": "MaxArraySize = 1001\nMinJobAge = 300 sec",
}


def main(argv: list[str]) -> int:
    tool, args = argv[0], argv[1:]
    STATE.mkdir(parents=True, exist_ok=True)
    with open(STATE / "calls.jsonl", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps({"tool": tool, "argv": args}) + "\n")
    if tool == "sbatch":
        return sbatch(args)
    if tool == "srun":
        return srun(args)
    if tool == "sacct":
        return sacct(args)
    if tool in ANSWERS:
        print(ANSWERS[tool])
    return 0  # squeue, scancel: nothing to say


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
