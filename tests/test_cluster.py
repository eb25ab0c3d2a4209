"""The cluster paths: the SLURM profile, and results shared through a DVC remote.

No SLURM cluster is needed: tests/fake_slurm.py stands in for sbatch, srun, sacct, ...,
so snakemake-executor-plugin-slurm builds and submits exactly what it would on a
cluster, and the test reads the submissions back. The slow tests (about one and three
minutes on 2 CPU cores) render every rule's sbatch call, and run docs/cluster.md's cluster
path end to end: Snakemake executes through the profile, `dvc commit`, `dvc push` to a
local remote, `git clone` + `dvc pull` elsewhere, where nothing needs recomputing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import BIN, REPO, copy_workflow, snakemake, tool_env
from test_e2e import demo_sized_paper_checkout

from mlonas.config import load_raw
from mlonas.dryrun import parse_dry_run

PROFILE_DIR = "profiles/slurm"
FAKE_SLURM = Path(__file__).with_name("fake_slurm.py")
SLURM_TOOLS = ("sbatch", "srun", "sacct", "sacctmgr", "sshare", "sinfo", "scontrol", "squeue")
# The plugin waits 40 s before its first status query and 10 s more after each query
# that finds nothing finished; here jobs finish during sbatch, so poll at once.
FAST_POLLING = (
    "--slurm-init-seconds-before-status-checks",
    "1",
    "--seconds-between-status-checks",
    "1",
)
# How snakemake-executor-plugin-slurm 2.8 passes each resource the profile may set
# (submit_string.get_submit_command, utils.set_gres_string).
SBATCH_FLAG = {
    "runtime": "-t",
    "mem_mb": "--mem",
    "gpu": "--gpus",
    "cpus_per_gpu": "--cpus-per-gpu",
    "cpus_per_task": "--cpus-per-task",
    "nodes": "--nodes",
    "slurm_partition": "-p",
    "slurm_account": "-A",
    "constraint": "-C",
}
# sbatch options the plugin passes as two words; the others are `--name=value` or flags
TWO_WORD = {"--job-name", "--output", "--comment", "-A", "-p", "-t", "--mem", "-D", "-C"}
GPU_RULES = ("search", "train_cifar", "train_imagenet")


def profile() -> dict:
    return yaml.safe_load((REPO / PROFILE_DIR / "config.yaml").read_text())


def sbatch_options(argv: list[str]) -> dict[str, str | bool]:
    opts: dict[str, str | bool] = {}
    it = iter(argv)
    for a in it:
        if a in TWO_WORD:
            opts[a] = next(it)
        elif "=" in a:
            key, value = a.split("=", 1)
            opts[key] = value
        else:
            opts[a] = True
    return opts


def rule_of(comment: str) -> str:
    """The rule of a submission: the plugin's comment is rule_<rule>[_wildcards_<values>]."""
    return comment.removeprefix("rule_").split("_wildcards_")[0]


def use_fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> Path:
    """Put the fake SLURM tools first on PATH; returns the folder their calls go to."""
    bindir, state = tmp_path / "fake-slurm-bin", tmp_path / "fake-slurm-state"
    bindir.mkdir()
    for tool in SLURM_TOOLS:
        script = bindir / tool
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_SLURM}" {tool} "$@"\n')
        script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    monkeypatch.setenv("FAKE_SLURM_MODE", mode)
    monkeypatch.delenv("FAKE_SLURM_TIMEOUT", raising=False)
    for var in [v for v in os.environ if v.startswith(("SLURM_", "SBATCH_", "SRUN_"))]:
        monkeypatch.delenv(var)
    return state


def slurm_calls(state: Path, tool: str) -> list[list[str]]:
    lines = (state / "calls.jsonl").read_text().splitlines()
    return [c["argv"] for c in map(json.loads, lines) if c["tool"] == tool]


def wrapped_command(opts: dict[str, str | bool]) -> str:
    return str(opts["--wrap"])


def sh(cwd: Path, *cmd: str) -> subprocess.CompletedProcess:
    """Run a tool of this environment; fail the test, with its output, if it fails."""
    exe = str(BIN / cmd[0]) if (BIN / cmd[0]).exists() else cmd[0]
    res = subprocess.run(
        [exe, *cmd[1:]], cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=900
    )
    assert res.returncode == 0, f"{' '.join(cmd)}:\n{res.stdout[-3000:]}{res.stderr[-3000:]}"
    return res


def git(cwd: Path, *args: str) -> None:
    sh(cwd, "git", "-c", "user.name=t", "-c", "user.email=t@t", *args)


# -- the profile's numbers against the protocol (fast) -----------------------------------


def rule_resources() -> dict[str, dict[str, str]]:
    """``{rule: {resource: value}}`` the rules declare for the papers' params (a dry run
    without the profile; the first job of each rule)."""
    found: dict[str, dict[str, str]] = {}
    for job in parse_dry_run(snakemake("-n", "-F").stdout):
        if job.resources and job.rule not in found:
            found[job.rule] = job.resources
    return found


def test_slurm_profile_gives_each_rule_the_resources_the_protocol_needs() -> None:
    prof, params = profile(), load_raw(REPO / "params.yaml")
    assert prof["executor"] == "slurm"
    assert prof["slurm-requeue"] is True
    rules_text = "".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    rules = set(re.findall(r"^rule (\w+):", rules_text, flags=re.MULTILINE))
    per_rule = prof["set-resources"]
    # Snakemake silently ignores set-resources of a rule that does not exist
    assert set(per_rule) <= rules, set(per_rule) - rules
    for rule, res in [("defaults", prof["default-resources"]), *per_rule.items()]:
        assert set(res) <= set(SBATCH_FLAG), f"{rule}: no sbatch flag known for {set(res)}"

    # One owner per resource (workflow/rules/common.smk): the rules say what a job needs
    # (gpu, mem_mb), the profile the cluster's policy (runtime, CPUs per GPU, nodes).
    for rule, res in per_rule.items():
        assert not {"gpu", "mem_mb"} & set(res), f"{rule}: the rule declares gpu/mem_mb"
    assert "runtime=" not in rules_text, "runtime is the profile's (with retries)"
    needs = rule_resources()
    nproc = params["eval"]["imagenet"]["nproc"]
    assert [needs[r].get("gpu") for r in GPU_RULES] == ["1", "1", str(nproc)]
    assert not any(needs[r].get("gpu", "0") != "0" for r in set(needs) - set(GPU_RULES))
    for rule in GPU_RULES:
        assert int(needs[rule]["mem_mb"]) >= 32000, rule
    # ImageNet: all GPUs on one node, one task (torchrun starts the nproc processes)
    assert per_rule["train_imagenet"].get("nodes") == 1
    assert "tasks" not in per_rule["train_imagenet"]

    # data-loading processes per GPU; cpus_per_task would silently win over cpus_per_gpu
    workers = {
        "search": max(
            [params["search"]["num_workers"]]
            + [m["search"].get("num_workers", 0) for m in params["methods"].values()]
        ),
        "train_cifar": params["eval"]["cifar"]["num_workers"],
        "train_imagenet": params["eval"]["imagenet"]["num_workers"],
    }
    for rule, n in workers.items():
        assert per_rule[rule]["cpus_per_gpu"] >= n, rule
        assert "cpus_per_task" not in per_rule[rule], rule

    # A run longer than one job's time limit continues in the next attempt from its
    # checkpoint: the attempts must cover the papers' costs with 50% to spare.
    reported = pd.read_csv(resources.files("mlonas") / "reference" / "reported.csv")
    search_days = reported.loc[reported["dataset"] != "imagenet", "search_cost_gpu_days"].max()
    assert search_days >= 2.0  # SGL-P-DARTS, 2.1 GPU-days
    need_days = {"search": search_days, "train_cifar": 3.0, "train_imagenet": 4.0}
    attempts = prof["retries"] + 1
    for rule, days in need_days.items():
        assert attempts * per_rule[rule]["runtime"] >= 1.5 * days * 24 * 60, rule


# -- every rule's submission, rendered by the plugin (slow) ------------------------------


def paper_checkout(dest: Path) -> dict:
    """The papers' params (GPU-sized resources) with one seed and one method per table."""
    copy_workflow(dest)
    params = load_raw(REPO / "params.yaml")
    transfer = params["tables"]["table4"]["transfers"][0]
    params["seeds"] = params["seeds"][:1]
    for spec in params["tables"].values():
        if "baselines" in spec:  # table5: a row of table3's run, no runs of its own
            spec.update(baselines=[transfer["method"]], methods=[], transfers=[])
        elif "methods" in spec:
            spec["methods"] = [transfer["method"]]
        else:
            spec["transfers"] = [transfer]
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def planned_jobs(workdir: Path) -> dict[str, int]:
    """Jobs per rule of the default target, from the dry run's job stats."""
    res = snakemake("-n", cwd=workdir)
    out = res.stdout + res.stderr
    table = out.split("Job stats:")[1].split("total")[0]
    rows = [line.split() for line in table.splitlines()[3:] if line.strip()]
    return {rule: int(n) for rule, n in rows}


@pytest.mark.slow
def test_slurm_profile_submits_every_rule_with_its_resources_and_retries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "checkout"
    params = paper_checkout(work)
    planned = planned_jobs(work)
    state = use_fake_slurm(tmp_path, monkeypatch, "touch")
    monkeypatch.setenv("FAKE_SLURM_TIMEOUT", "train_imagenet")  # its first job hits the limit

    res = snakemake("--profile", PROFILE_DIR, *FAST_POLLING, cwd=work, check=False)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (work / "results" / "table4.csv").exists()

    submissions: dict[str, list[dict]] = defaultdict(list)
    for argv in slurm_calls(state, "sbatch"):
        opts = sbatch_options(argv)
        submissions[rule_of(str(opts["--comment"]))].append(opts)
    # one job per planned job (`all` only collects and runs on the login node), plus
    # the resubmission of the ImageNet job that ran out of time
    expected = {rule: n for rule, n in planned.items() if rule != "all"}
    expected["train_imagenet"] += 1
    assert {rule: len(subs) for rule, subs in submissions.items()} == expected

    prof = profile()
    for rule, subs in submissions.items():
        declared = prof["set-resources"].get(rule, {})
        for opts in subs:
            assert opts.get("--requeue") is True, rule
            assert str(opts["--output"]).startswith(str(work / "logs" / "slurm")), rule
            for key, value in declared.items():
                assert opts.get(SBATCH_FLAG[key]) == str(value), (rule, key, opts)
            for key in prof["default-resources"]:  # the rule's own value or the default
                assert SBATCH_FLAG[key] in opts, (rule, key, opts)
            if rule in GPU_RULES:
                assert "--cpus-per-gpu" in opts and "--ntasks-per-gpu" not in opts, opts
                assert "--ntasks" not in opts, opts  # one task: sbatch's default
            else:
                assert "--gpus" not in opts, (rule, opts)
    gpus = {rule: {opts["--gpus"] for opts in submissions[rule]} for rule in GPU_RULES}
    nproc = params["eval"]["imagenet"]["nproc"]
    assert gpus == {"search": {"1"}, "train_cifar": {"1"}, "train_imagenet": {str(nproc)}}
    assert {opts["--nodes"] for opts in submissions["train_imagenet"]} == {"1"}

    # Inside the job, one srun task holds all of ImageNet's GPUs (torchrun runs in it).
    srun = slurm_calls(state, "srun")
    steps = [a for a in srun if any(x.startswith("train_imagenet:") for x in a)]
    assert steps and all("-n1" in a and f"--gpus={nproc}" in a for a in steps), steps

    # retries: the job that ran out of time was submitted again as attempt 2 and finished
    attempts = [
        re.search(r"--attempt (\d+)", wrapped_command(o))[1] for o in submissions["train_imagenet"]
    ]
    assert attempts == ["1", "2"]
    assert sorted(p.read_text() for p in state.glob("job*")).count("TIMEOUT") == 1


# -- Snakemake on the cluster, DVC records and shares (slow) -----------------------------


def _without_empty(node: object) -> object:
    """``node`` without nulls and empty mappings: DVC's metrics view leaves them out (an
    evaluation's provenance records its settings, with nulls for the broad network's keys,
    and its method's tracked ``eval`` block, ``{}`` for most methods)."""
    if isinstance(node, dict):
        return {k: _without_empty(v) for k, v in node.items() if v is not None and v != {}}
    return node


def _files(root: Path, rels: list[str]) -> dict[str, bytes]:
    return {rel: (root / rel).read_bytes() for rel in rels}


@pytest.mark.slow
def test_cluster_results_pushed_to_a_remote_pull_into_a_fresh_clone_without_recomputing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README, "Running on a SLURM cluster" and "DVC": one table, end to end."""
    a, b, remote = tmp_path / "a", tmp_path / "b", tmp_path / "remote"
    demo_sized_paper_checkout(a)
    shutil.copy(REPO / ".gitignore", a / ".gitignore")
    git(a, "add", "-A")
    git(a, "commit", "-q", "-m", "checkout")
    state = use_fake_slurm(tmp_path, monkeypatch, "run")

    # clone A, on the cluster's login node: Snakemake submits, DVC records and pushes
    sh(a, "snakemake", "--profile", PROFILE_DIR, *FAST_POLLING, "--retries", "0",
       "results/table3.csv")  # fmt: skip
    submitted = {rule_of(str(sbatch_options(c)["--comment"])) for c in slurm_calls(state, "sbatch")}
    assert submitted == {"split", "search", "export", "train_cifar", "table"}
    sh(a, "dvc", "commit", "-f", "--with-deps", "table@table3")
    assert "up to date" in sh(a, "dvc", "status", "--with-deps", "table@table3").stdout
    # the hardlink cache (.dvc/config) keeps the files' times: Snakemake has nothing to redo
    again = snakemake("-n", "results/table3.csv", cwd=a)
    assert "Nothing to be done" in again.stdout + again.stderr
    sh(a, "dvc", "remote", "add", "-d", "local", str(remote))
    tracked = ["dvc.lock", ".dvc/config", "results/table3.csv", "results/table3.md"]
    git(a, "add", *tracked, "*.gitignore")  # the .gitignore files DVC wrote beside outputs
    git(a, "commit", "-q", "-m", "table 3")
    assert "files pushed" in sh(a, "dvc", "push").stdout
    assert not sh(a, "git", "status", "--porcelain", "--untracked-files=no").stdout

    # clone B, anywhere: git clone + dvc pull brings back every artifact behind table 3
    sh(tmp_path, "git", "clone", "-q", str(a), str(b))
    sh(b, "dvc", "pull", "--with-deps", "table@table3")
    assert "up to date" in sh(b, "dvc", "status", "--with-deps", "table@table3").stdout
    run_files = [
        "data/splits/cifar10.json",
        "results/search/cifar10/darts-1st/seed0/alphas.json",
        "results/search/cifar10/darts-1st/seed0/checkpoint.pt",
        "results/search/cifar10/darts-1st/seed0/metrics.json",
        "results/cells/cifar10/darts-1st/seed0.json",
        "results/eval/cifar10/darts-1st/seed0/metrics.json",
        "results/eval/cifar10/darts-1st/seed0/model.pt",
    ]
    assert _files(b, run_files) == _files(a, run_files)

    # DVC's views of the pulled runs
    search_metrics = "results/search/cifar10/darts-1st/seed0/metrics.json"
    eval_metrics = "results/eval/cifar10/darts-1st/seed0/metrics.json"
    shown = json.loads(sh(b, "dvc", "metrics", "show", "--json").stdout)[""]["data"]
    for rel in (search_metrics, eval_metrics):
        assert shown[rel]["data"] == _without_empty(json.loads((b / rel).read_text()))
    plots_dir = tmp_path / "plots"
    sh(b, "dvc", "plots", "show", "--out", str(plots_dir))
    html = (plots_dir / "index.html").read_text()
    for rel, y in [
        ("results/search/cifar10/darts-1st/seed0/history.csv", "val_acc"),
        ("results/eval/cifar10/darts-1st/seed0/history.csv", "test_top1"),
    ]:
        assert rel in html and y in html
    rows = json.loads(sh(b, "dvc", "exp", "show", "--json").stdout)
    committed = next(r["data"] for r in rows if r["data"]["rev"] != "workspace")
    top1_error = json.loads((a / eval_metrics).read_text())["top1_error"]
    assert committed["metrics"][eval_metrics]["data"]["top1_error"] == top1_error

    # the table rebuilds from the pulled artifacts; nothing upstream runs again
    table = (a / "results" / "table3.csv").read_bytes()
    (b / "results" / "table3.csv").unlink()
    out = sh(b, "dvc", "repro", "table@table3").stdout
    assert re.findall(r"Running stage '([^']+)'", out) == ["table@table3"]
    assert (b / "results" / "table3.csv").read_bytes() == table
    # Snakemake in the fresh clone: checkout order decides the mtimes, so mark the pulled
    # files up to date once (README); then it has nothing to run either
    sh(b, "snakemake", "--touch", "--cores", "1", "results/table3.csv")
    again = snakemake("-n", "results/table3.csv", cwd=b)
    assert "Nothing to be done" in again.stdout + again.stderr
    assert "up to date" in sh(b, "dvc", "status", "--with-deps", "table@table3").stdout
