"""What Snakemake schedules is what the jobs run, and both drivers agree on what is stale.

Overrides given to Snakemake (``--config``, ``--configfile``) reach the jobs that read
them as ``--set`` arguments and are recorded in provenance, or are refused with one line
that blames the override. Every params key a job reads is tracked by its Snakemake rule
and its dvc.yaml stage, and a change to each kind of setting makes both drivers want to
rerun the same jobs: the ones this file lists by hand.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import BIN, REPO, copy_workflow, snakemake, tool_env

from mlonas.cli import main
from mlonas.config import (
    STAGE_PARAMS,
    load_config,
    load_raw,
    override_args,
    overrides_of,
    parse_overrides,
)
from mlonas.errors import MlonasError

# -- the override mechanics ------------------------------------------------------------


def test_snakemake_config_strings_are_read_as_yaml_and_only_changes_count() -> None:
    raw = load_raw(REPO / "params.yaml")
    # what Snakemake's config holds after `--config 'search={lr: 0.5}' seeds=[5]`: its
    # BaseLoader keeps nested scalars as strings
    config = {**raw, "search": {**raw["search"], "lr": "0.5", "epochs": 50}, "seeds": ["5"]}
    delta = overrides_of(config, raw)
    assert delta == {"search": {"lr": 0.5}, "seeds": [5]}
    args = override_args(delta)
    assert args == ["seeds=[5]", "search.lr=0.5"]  # in params.yaml's order
    assert parse_overrides(args) == delta


def test_override_wins_over_the_preset_and_is_recorded() -> None:
    cfg = load_config(REPO / "params.yaml", "demo", ["search.epochs=1", "search.lr=0.5"])
    m = cfg.method("darts-1st")
    assert (m.search.epochs, m.search.lr) == (1, 0.5)  # demo alone has 2 epochs
    assert cfg.overrides == ["search.epochs=1", "search.lr=0.5"]
    # a method's own search settings still win over the shared ones it does not name
    assert cfg.method("pcdarts").search.lr == 0.025  # demo's pcdarts lr
    # an override of presets.<name> changes the preset
    cfg = load_config(REPO / "params.yaml", "demo", ["presets.demo.search.epochs=3"])
    assert cfg.method("darts-1st").search.epochs == 3


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["search.lr=-1"], ["override", "search.lr"]),
        (["serch.lr=1"], ["override", "unknown key serch"]),
        (["search.lr"], ["--set 'search.lr'", "KEY=VALUE"]),
        (["search.lr=[1"], ["--set search.lr", "not a YAML value"]),
    ],
)
def test_bad_set_is_one_line_blaming_the_override(
    args: list[str], words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["validate", "--params", str(REPO / "params.yaml")]
    for a in args:
        argv += ["--set", a]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err
    assert "params.yaml:" not in err[0]  # the override is at fault, not the file


def test_job_overrides_are_the_ones_on_keys_the_job_reads() -> None:
    cfg = load_config(
        REPO / "params.yaml",
        "paper",
        [
            "search.lr=0.5",
            "eval.cifar.epochs=3",
            "seeds=[5]",
            "methods.pdarts.label=PD",
            "methods.darts-2nd.eval.cifar.drop_path=0.3",
        ],
    )
    assert cfg.job_overrides("search", dataset="cifar10", method="darts-1st") == ["search.lr=0.5"]
    # the label rides along with the composition keys a search reads
    assert cfg.job_overrides("search", dataset="cifar10", method="pdarts") == [
        "search.lr=0.5",
        'methods.pdarts.label="PD"',
    ]
    assert cfg.job_overrides("train-cifar", dataset="cifar10", method="darts-1st") == [
        "eval.cifar.epochs=3"
    ]
    assert cfg.job_overrides("split", dataset="cifar10") == []
    # a method's evaluation settings reach its evaluations (CIFAR and ImageNet), not its
    # search (which they would rerun), and no other method's
    eval_2nd = "methods.darts-2nd.eval.cifar.drop_path=0.3"
    assert cfg.job_overrides("train-cifar", dataset="cifar10", method="darts-2nd") == [
        "eval.cifar.epochs=3",
        eval_2nd,
    ]
    assert cfg.job_overrides("train-imagenet", method="darts-2nd") == [eval_2nd]
    assert cfg.job_overrides("train-imagenet", method="darts-1st") == []
    assert cfg.job_overrides("search", dataset="cifar10", method="darts-2nd") == ["search.lr=0.5"]
    assert cfg.eval_settings("cifar", "darts-2nd").drop_path == 0.3
    assert cfg.eval_settings("cifar", "darts-1st").drop_path == 0.2
    assert cfg.job_overrides("table", table="table2") == [
        "seeds=[5]",
        'methods.pdarts.label="PD"',
        eval_2nd,
    ]


def test_a_method_added_by_an_override_reaches_its_jobs_whole() -> None:
    """A new composition's blocks all ride along (its search validates the whole method)."""
    new = [
        'methods.x.label="X"',
        'methods.x.base="darts"',
        'methods.x.order="first"',
        'methods.x.scheme="plain"',
        "methods.x.search={}",
        "methods.x.options={}",
        "methods.x.eval.cifar.drop_path=0.3",
    ]
    cfg = load_config(REPO / "params.yaml", "paper", new)
    assert cfg.job_overrides("search", dataset="cifar10", method="x") == new
    assert cfg.job_overrides("train-cifar", dataset="cifar10", method="x") == new
    assert cfg.job_overrides("search", dataset="cifar10", method="darts-1st") == []


# -- both drivers: the overrides in the commands, and the tracked keys --------------------


def dry_run_commands(*args: str, cwd: Path = REPO) -> list[str]:
    out = snakemake("-n", "-p", "-F", *args, cwd=cwd).stdout
    return [" ".join(m.split()) for m in re.findall(r"Shell command: (.*)", out) if m != "None"]


def test_configfile_overrides_reach_exactly_the_jobs_that_read_them(tmp_path: Path) -> None:
    ov = tmp_path / "ov.yaml"
    ov.write_text(
        "search: {lr: 0.5}\nseeds: [5]\neval: {cifar: {epochs: 3}}\ntables:\n"
        "  table3: {methods: [darts-1st]}\n"
        "  table4: {transfers: [{source: cifar10, method: darts-1st}]}\n"
        "  table5: {baselines: [darts-1st]}\n"
        "methods: {darts-1st: {eval: {cifar: {drop_path: 0.3}}}}\n"
    )
    cmds = dry_run_commands("results/table3.csv", "--configfile", str(ov))
    searches = [c for c in cmds if c.startswith("mlonas search")]
    assert [re.search(r"--method (\S+) --seed (\d+)", c).groups() for c in searches] == [
        ("darts-1st", "5")
    ]
    assert "--set search.lr=0.5 " in searches[0] and "drop_path" not in searches[0]
    (table,) = [c for c in cmds if c.startswith("mlonas table")]
    assert "--set 'seeds=[5]'" in table and "--set 'tables.table3.methods=[\"darts-1st\"]'" in table
    (train,) = [c for c in cmds if c.startswith("mlonas train-cifar")]
    assert "--set eval.cifar.epochs=3 " in train and "search.lr" not in train
    assert "--set methods.darts-1st.eval.cifar.drop_path=0.3 " in train
    assert all("--set" not in c for c in cmds if c.startswith(("mlonas split", "mlonas export")))


def test_demo_preset_with_config_override_carries_it(tmp_path: Path) -> None:
    cmds = dry_run_commands("--config", "preset=demo", "search={unrolled_mode: exact}")
    second = [c for c in cmds if c.startswith("mlonas search") and "darts-2nd" in c]
    assert second and all("--set 'search.unrolled_mode=\"exact\"'" in c for c in second)


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (["search={lr: -1}"], ["override", "search.lr"]),
        (["serch={lr: 1}"], ["override", "unknown key serch"]),
        (["preset=demo", "search={epochs: 0}"], ["override", "search.epochs"]),
    ],
)
def test_snakemake_refuses_a_bad_override_blaming_it(config: list[str], words: list[str]) -> None:
    res = snakemake("-n", "--config", *config, check=False)
    assert res.returncode != 0
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
    assert lines[-1].startswith("mlonas: error: override (") and "Traceback" not in res.stderr
    assert all(w in lines[-1] for w in words), lines[-1]


def stage_of(cmd: str) -> tuple[str, dict[str, str]]:
    """``mlonas <stage> ... --dataset d --method m`` -> (stage, wildcards)."""
    words = cmd.split()
    stage = words[1]
    wildcards = {}
    for flag, name in (("--dataset", "dataset"), ("--method", "method"), ("--table", "table")):
        if flag in words:
            wildcards[name] = words[words.index(flag) + 1]
    return stage, wildcards


def test_dvc_stages_track_exactly_the_keys_each_job_reads() -> None:
    from dvc.repo import Repo

    cfg = load_config(REPO / "params.yaml")
    seen = set()
    with Repo(str(REPO)) as repo:
        for stage in repo.index.stages:
            name, wildcards = stage_of(" ".join(stage.cmd.split()))
            keys = sorted(k for dep in stage.params for k in dep.params)
            assert keys == sorted(cfg.tracked_keys(name, **wildcards)), stage.addressing
            seen.add(name)
    assert seen == set(STAGE_PARAMS) - {"figures"}


def test_every_rule_tracks_what_its_job_reads() -> None:
    """Each rule's `tracked` param is Config.tracked of its stage (report-only rules too)."""
    text = "".join(p.read_text() for p in sorted((REPO / "workflow/rules").glob("*.smk")))
    rules = re.split(r"\n\s*rule\b", text)[1:]  # `rule x:` and the loop-made `rule:`
    assert len(rules) >= 7
    for rule in rules:
        stage = re.search(r'"mlonas ([a-z-]+)', rule).group(1)
        if stage == "export":
            assert STAGE_PARAMS["export"] == ()
            continue
        assert f'CFG.tracked("{stage}"' in rule, rule
        assert f'overrides("{stage}"' in rule, rule


# -- both drivers agree on what a change to each kind of setting makes stale ------------

FAKE_MLONAS = '''#!{python}
"""Stand-in for `mlonas`: writes each declared output, so both drivers record a run."""
import sys
from pathlib import Path

args = sys.argv[1:]
stage = args[0]
files = {{
    "search": ["alphas.json", "history.csv", "metrics.json", "provenance.json", "checkpoint.pt"],
    "train-cifar": ["metrics.json", "history.csv", "model.pt", "checkpoint.pt"],
    "train-imagenet": ["metrics.json", "history.csv", "model.pt", "checkpoint.pt"],
}}
outs = []
for flag in ("--out", "--out-csv", "--out-md"):
    if flag in args:
        outs.append(Path(args[args.index(flag) + 1]))
if stage == "figures":  # its outputs are the table's report files, named by params.yaml
    from mlonas.config import load_config
    from mlonas.report.figures import report_files

    cfg = load_config("params.yaml", args[args.index("--preset") + 1])
    outs = [Path(f.path) for f in report_files(cfg, args[args.index("--table") + 1])]
for out in outs:
    if stage in files and len(outs) == 1:
        out.mkdir(parents=True, exist_ok=True)
        for name in files[stage]:
            (out / name).write_text("{{}}")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("{{}}")
        if stage == "export":
            out.with_suffix(".png").write_text("png")
'''

SMALL_TABLES = {
    "table2": {"dataset": "cifar100", "methods": ["darts-1st", "sgl-darts-1st"]},
    "table3": {"dataset": "cifar10", "methods": ["darts-1st", "lease-r18-darts-2nd"]},
    "table4": {"dataset": "imagenet", "transfers": [{"source": "cifar10", "method": "darts-1st"}]},
    "table5": {"dataset": "cifar10", "baselines": ["darts-1st"], "methods": [], "transfers": []},
}
S100 = ("search", "cifar100", "darts-1st"), ("search", "cifar100", "sgl-darts-1st")
S10 = ("search", "cifar10", "darts-1st"), ("search", "cifar10", "lease-r18-darts-2nd")
T100 = ("train-cifar", "cifar100", "darts-1st"), ("train-cifar", "cifar100", "sgl-darts-1st")
T10 = ("train-cifar", "cifar10", "darts-1st"), ("train-cifar", "cifar10", "lease-r18-darts-2nd")
TABLES = tuple(("table", t, "") for t in ("table2", "table3", "table4", "table5"))
IMAGENET = (("train-imagenet", "", "darts-1st"),)

# (key, new value, the jobs that must rerun because they read it), by hand from what each
# job reads. Tables read every method's label, so any method change reruns them too (as it
# does through their inputs); DVC cannot pick a scheme's block by a method's scheme, so
# every search tracks all of `schemes`.
CHANGES: list[tuple[str, Any, set[tuple[str, str, str]]]] = [
    ("methods.darts-1st.order", "second", {S100[0], S10[0], *TABLES}),
    ("methods.darts-1st.label", "DARTS (first order)", set(TABLES)),
    ("methods.sgl-darts-1st.options", {"lambda": 0.2}, {S100[1], *TABLES}),
    ("schemes.lease.gamma", 0.5, {*S100, *S10}),
    ("search.lr", 0.05, {*S100, *S10}),
    ("eval.cifar.epochs", 300, {*T100, *T10}),
    ("eval.imagenet.lr", 0.25, set(IMAGENET)),
    # a method's own evaluation settings: its evaluations (both kinds: DVC cannot track
    # methods.<m>.eval.cifar of a method whose eval is {}), and the tables (all methods)
    (
        "methods.darts-1st.eval",
        {"cifar": {"drop_path": 0.3}},
        {T100[0], T10[0], *IMAGENET, *TABLES},
    ),
    ("methods.lease-r18-darts-2nd.eval", {"imagenet": {"lr": 0.25}}, {T10[1], *TABLES}),
    (
        "datasets.cifar10.n_train",
        20000,
        {("split", "cifar10", ""), *S10, *S100, *T10},  # cifar100's searches: SGL's unlabeled
    ),
    ("tables.table3.methods", ["lease-r18-darts-2nd", "darts-1st"], {TABLES[1]}),
]


def job_key(cmd: str) -> tuple[str, str, str]:
    stage, wc = stage_of(cmd)
    if stage == "table":
        return (stage, wc["table"], "")
    return (stage, wc.get("dataset", ""), wc.get("method", ""))


def set_key(params: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = params
    for p in parents:
        node = node[p]
    node[leaf] = value


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small paper-preset project both drivers have run once (with a stand-in mlonas)."""
    root = tmp_path_factory.mktemp("rerun")
    copy_workflow(root, "dvc.yaml")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params |= {"seeds": [1], "tables": SMALL_TABLES}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    fake = root / "bin" / "mlonas"
    fake.parent.mkdir()
    fake.write_text(FAKE_MLONAS.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    env = fake_env(root)
    for cmd in (
        [str(BIN / "snakemake"), "--cores", "1", "-q"],
        [str(BIN / "dvc"), "init", "--no-scm", "-q"],
        [str(BIN / "dvc"), "repro", "-q"],
    ):
        res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
    return root


def fake_env(root: Path) -> dict[str, str]:
    return {**tool_env(), "PATH": f"{root / 'bin'}:{tool_env()['PATH']}"}


def snakemake_wants(root: Path) -> set[tuple[str, str, str]]:
    """Jobs Snakemake would rerun because their own params changed.

    ``--detailed-summary`` gives, per output file, the status Snakemake's rerun triggers
    see (``params changed`` is the params trigger: the same check as a dry run's "Params
    have changed", but reported whether or not an upstream job reruns too) and the command
    that made the file. Report-only rules (figures) have no DVC stage to agree with; their
    tracking is test_every_rule_tracks_what_its_job_reads's.
    """
    out = snakemake("--detailed-summary", cwd=root).stdout
    wants = set()
    for row in csv.DictReader(io.StringIO(out), delimiter="\t"):
        if row["status"] == "params changed":
            wants.add(job_key(" ".join(row["shellcmd"].split())))
    return {key for key in wants if key[0] != "figures"}


def dvc_wants(root: Path) -> set[tuple[str, str, str]]:
    """Stages whose params changed according to `dvc status`."""
    from dvc.repo import Repo

    res = subprocess.run(
        [str(BIN / "dvc"), "status", "--json"], cwd=root, capture_output=True, text=True
    )
    status = json.loads(res.stdout or "{}")
    with Repo(str(root)) as repo:
        cmds = {s.name: " ".join(s.cmd.split()) for s in repo.index.stages}
    wants = set()
    for name, changes in status.items():
        for change in changes:
            if isinstance(change, dict) and "params.yaml" in change.get("changed deps", {}):
                wants.add(job_key(cmds[name]))
    return wants


@pytest.mark.slow
def test_nothing_is_stale_after_a_run(recorded: Path) -> None:
    assert snakemake_wants(recorded) == set() == dvc_wants(recorded)
    again = snakemake("-n", cwd=recorded)
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("key", "value", "expected"), CHANGES, ids=[c[0] for c in CHANGES])
def test_both_drivers_rerun_exactly_the_jobs_that_read_a_changed_setting(
    recorded: Path, tmp_path: Path, key: str, value: Any, expected: set[tuple[str, str, str]]
) -> None:
    root = tmp_path / "project"
    shutil.copytree(recorded, root, symlinks=True)
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    set_key(params, key, value)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    dvc, smk = dvc_wants(root), snakemake_wants(root)
    assert smk == expected, sorted(smk ^ expected)
    assert dvc == expected, sorted(dvc ^ expected)


# -- a real job run through Snakemake records the override it ran with -----------------


@pytest.mark.slow
def test_overrides_reach_the_job_and_its_provenance(tmp_path: Path) -> None:
    copy_workflow(tmp_path)
    target = "demo/results/search/cifar10/darts-1st/seed0/provenance.json"

    def run(*args: str) -> dict[str, Any]:
        snakemake("--cores", "2", target, *args, cwd=tmp_path)
        return json.loads((tmp_path / target).read_text())

    (tmp_path / "ov.yaml").write_text("search: {lr: 0.5, epochs: 1}\n")
    prov = run("--configfile", "ov.yaml", "--config", "preset=demo")
    assert prov["params"]["settings"]["lr"] == 0.5 and prov["params"]["settings"]["epochs"] == 1
    assert prov["overrides"] == ["search.lr=0.5", "search.epochs=1"]
    assert prov["tracked_params"]["search"]["lr"] == 0.5
    # a different override through --config: the search is stale and reruns with it
    prov = run("--config", "preset=demo", "search={lr: 0.3, epochs: 1}")
    assert prov["params"]["settings"]["lr"] == 0.3
    assert prov["overrides"] == ["search.lr=0.3", "search.epochs=1"]
    # the preset alone: no overrides, the demo's settings
    prov = run("--config", "preset=demo")
    assert "overrides" not in prov and prov["params"]["settings"]["lr"] == 0.025
    assert prov["params"]["settings"]["epochs"] == 2
    shutil.rmtree(tmp_path / "demo", ignore_errors=True)


def test_set_of_a_key_never_read_is_still_validated() -> None:
    with pytest.raises(MlonasError, match="override"):
        load_config(REPO / "params.yaml", "paper", ["eval.cifar.epochs=0"])
