"""The two drivers declare the same jobs: Snakefile <-> dvc.yaml, and both lint clean."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import BIN, REPO, copy_workflow, snakemake, tool_env

from mlonas.config import PATHS, TABLES
from mlonas.dryrun import parse_dry_run

# Rules that only draw the Snakemake report's figures and table pages
# (workflow/rules/report.smk). DVC shows the same histories with `dvc plots`, so these
# have no dvc.yaml twin; the comparison below excludes exactly these and checks them.
REPORT_ONLY_RULES = tuple(f"figures_{t}" for t in TABLES)


def snakemake_rule_jobs(*extra: str) -> dict[str, tuple[str, set[str]]]:
    """``{shell command: (rule, declared outputs)}`` of every job of a forced dry run."""
    return {
        job.command: (job.rule, set(job.outputs))
        for job in parse_dry_run(snakemake("-n", "-p", "-F", *extra).stdout)
        if job.command is not None  # rule `all` has no command
    }


def snakemake_jobs(*extra: str) -> dict[str, set[str]]:
    """``{shell command: declared outputs}`` of every job of a forced dry run."""
    return {cmd: outs for cmd, (_, outs) in snakemake_rule_jobs(*extra).items()}


def dvc_stages() -> dict[str, tuple[set[str], set[str]]]:
    """``{command: (outputs, persisted outputs)}`` of every resolved dvc.yaml stage."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        stages = {}
        for stage in repo.index.stages:
            outs = {str(o.def_path) for o in stage.outs if not o.persist}
            persisted = {str(o.def_path) for o in stage.outs if o.persist}
            stages[" ".join(stage.cmd.split())] = (outs, persisted)
    return stages


def test_snakefile_and_dvc_yaml_declare_the_same_commands_and_outputs() -> None:
    jobs = snakemake_rule_jobs()
    smk = {c: outs for c, (rule, outs) in jobs.items() if rule not in REPORT_ONLY_RULES}
    report_only = {c: outs for c, (rule, outs) in jobs.items() if rule in REPORT_ONLY_RULES}
    # every listed rule is in the default DAG (no stale names), and draws report files only
    assert {rule for rule, _ in jobs.values()} >= set(REPORT_ONLY_RULES)
    for cmd, outs in report_only.items():
        assert cmd.startswith("mlonas figures "), cmd
        assert outs and all(
            o.startswith("results/report/") and o.endswith((".png", ".html")) for o in outs
        ), cmd
    dvc = dvc_stages()
    smk_cmds = set(smk)
    assert smk_cmds == set(dvc), (
        f"only in Snakefile: {sorted(smk_cmds - set(dvc))}\n"
        f"only in dvc.yaml: {sorted(set(dvc) - smk_cmds)}"
    )
    for cmd in smk_cmds:
        outs, persisted = dvc[cmd]
        assert smk[cmd] == outs, cmd
        # The only outputs Snakemake does not declare are the resumable checkpoints.
        if cmd.startswith(("mlonas search", "mlonas train-")):
            out_dir = re.search(r"--out (\S+)", cmd).group(1)
            assert persisted == {f"{out_dir}/checkpoint.pt"}, cmd
        else:
            assert not persisted, cmd


def template_regex(template: str) -> str:
    """A PATHS template as a regex: each ``{field}`` one path component's worth."""
    parts = re.split(r"(\{\w+\})", template)
    return "".join(r"[^/]+" if re.fullmatch(r"\{\w+\}", p) else re.escape(p) for p in parts)


def test_dvc_yaml_paths_are_the_templates_of_mlonas_config() -> None:
    """dvc.yaml is static YAML, so it spells out the paths that mlonas.config.PATHS defines
    (and the Snakefile's rules use): every file it names must be one of those templates
    (a directory template's files, or a table stage's directory of them)."""
    from dvc.repo import Repo

    files = [
        template_regex(t) + (r"(/[^/]+)?" if "." not in t.rsplit("/", 1)[-1] else "")
        for t in PATHS.values()
    ]
    dirs = [r"(results/eval|results/search)(/[^/]+)?"]  # the table stages' deps
    with Repo(str(REPO)) as repo:
        stages = list(repo.index.stages)
        for stage in stages:
            paths = [str(o.def_path) for o in stage.outs] + [
                str(d.def_path) for d in stage.deps if not d.def_path.endswith(".yaml")
            ]
            patterns = files + (dirs if stage.cmd.startswith("mlonas table") else [])
            for path in paths:
                assert any(re.fullmatch(p, path) for p in patterns), (stage.addressing, path)
            for flag in ("--out", "--log", "--split", "--genotype", "--alphas", "--out-csv"):
                for value in re.findall(rf"{flag} (\S+)", stage.cmd):
                    assert any(re.fullmatch(p, value) for p in files), (stage.addressing, value)
    assert {s.cmd.split()[1] for s in stages} >= {"split", "search", "export", "train-cifar"}


def test_dvc_stages_depend_on_what_the_snakemake_jobs_read() -> None:
    """The commands and outputs agree (above); the inputs must too, or one driver would
    rerun a job after a change the other one does not see."""
    from dvc.repo import Repo

    inputs = {
        job.command: set(job.inputs)
        for job in parse_dry_run(snakemake("-n", "-p", "-F").stdout)
        if job.command is not None
    }
    with Repo(str(REPO)) as repo:
        for stage in repo.index.stages:
            cmd = " ".join(stage.cmd.split())
            deps = {str(d.def_path) for d in stage.deps if not d.def_path.endswith(".yaml")}
            if cmd.startswith("mlonas table"):
                # DVC depends on the results directories; each file Snakemake reads is in one
                assert all(any(i.startswith(f"{d}/") for d in deps) for i in inputs[cmd]), cmd
            else:
                assert deps == inputs[cmd], cmd


def test_paper_dag_has_every_stage_with_papers_settings() -> None:
    smk = snakemake_jobs("results/table2.csv")
    stages = sorted({cmd.split()[1] for cmd in smk})
    assert stages == ["export", "search", "split", "table", "train-cifar"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    searches = [c for c in smk if c.startswith("mlonas search") and "--dataset cifar100" in c]
    assert len(searches) == len(params["seeds"]) * len(params["tables"]["table2"]["methods"])
    assert all("--preset paper" in c for c in smk)


def test_demo_dag_lives_under_demo_root() -> None:
    smk = snakemake_jobs("--config", "preset=demo")
    assert smk
    for cmd, outs in smk.items():
        assert "--preset demo" in cmd
        assert all(o.startswith("demo/") for o in outs), cmd


def test_snakemake_lint_is_clean() -> None:
    res = snakemake("--lint", check=False)
    assert "Lints for" not in res.stdout + res.stderr, res.stdout
    assert res.returncode == 0


BAD_PARAMS = [
    # (old text, new text, what the one-line error must name)
    (
        "    dataset: cifar100\n    methods: [darts-2nd,",
        "    dataset: cifar100\n    methods: [darts-3rd,",
        "tables.table2.methods",
    ),
    ("    lambda: 0.1 ", "    lambda: -0.1 ", "schemes.sgl.lambda"),
    ("    explanation_direction: ascent", "    explanation_direction: up", "schemes.lease"),
    ("  epochs: 50\n", "  epochs: -5\n", "search.epochs"),
    ("  grad_clip: 5.0\n  arch_lr", "  grad_clipp: 5.0\n  arch_lr", "search.grad_clipp"),
]


def write_bad_params(dest: Path, old: str, new: str) -> Path:
    text = (REPO / "params.yaml").read_text()
    assert old in text, old
    text = text.replace(old, new, 1)
    path = dest / "params.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("old", "new", "key"), BAD_PARAMS)
def test_bad_params_stop_both_drivers_with_one_line_naming_the_key(
    tmp_path: Path, old: str, new: str, key: str
) -> None:
    copy_workflow(tmp_path)
    write_bad_params(tmp_path, old, new)
    res = snakemake("-n", cwd=tmp_path, check=False)
    assert res.returncode != 0
    assert key in res.stdout + res.stderr
    cli = subprocess.run(
        [str(BIN / "mlonas"), "validate"],
        cwd=tmp_path,
        env=tool_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert cli.returncode == 2
    lines = cli.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0], cli.stderr


def test_job_code_needs_neither_snakemake_nor_dvc() -> None:
    """A job's environment installs the package without the `workflow` extra (pyproject):
    every module of mlonas must import with snakemake and dvc absent."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    drivers = ("snakemake", "dvc")
    assert not [d for d in project["dependencies"] if d.startswith(drivers)]
    extras = project["optional-dependencies"]
    assert {d.split("==")[0] for d in extras["workflow"]} == set(drivers)
    assert "mlonas[workflow,cluster]" in extras["dev"]
    code = (
        "import importlib, pkgutil, sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {drivers!r}:\n"
        "            raise ImportError(f'{name} is not installed')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import mlonas\n"
        "for m in pkgutil.walk_packages(mlonas.__path__, 'mlonas.'):\n"
        "    importlib.import_module(m.name)\n"
        "print('ok')\n"
    )
    res = subprocess.run(
        [str(BIN / "python"), "-c", code], env=tool_env(), capture_output=True, text=True
    )
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
