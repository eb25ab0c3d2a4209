"""Snakemake's dry run (``snakemake -n``) as data: the jobs it would run, one record each.

One parser for everything that reads a dry run: ``mlonas plan`` (what would run, and what
it costs), tests/test_workflow.py (the commands against dvc.yaml) and tests/test_cluster.py
(the resources each rule declares). Snakemake prints each job as a block::

    rule search:                       (``localrule`` for local rules)
        input: a, b
        output: c, d
        wildcards: dataset=cifar10, method=darts-2nd, seed=1
        resources: tmpdir=/tmp, gpu=1, mem_mb=32000
    Shell command: mlonas search ...   (with -p / printshellcmds; "None" for rule all)

and a "Job stats" count table; this module reads only the blocks. Torch-free (``mlonas
plan`` must start in well under a second); it imports no Snakemake either, it runs the
``snakemake`` executable beside this Python.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlonas.errors import MlonasError

_RULE = re.compile(r"(?:local)?rule (\w+):$")
_FIELD = re.compile(r"\s+(\w+): (.*)$")
_SHELL = re.compile(r"Shell command: (.*)$")


@dataclass(frozen=True)
class DryRunJob:
    """One job of a dry run, as Snakemake printed it."""

    rule: str
    wildcards: dict[str, str] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    resources: dict[str, str] = field(default_factory=dict)
    command: str | None = None  # whitespace-normalised; None: no shell command (rule all)


def _pairs(text: str) -> dict[str, str]:
    """``a=1, b=x`` -> ``{"a": "1", "b": "x"}`` (wildcards and resources)."""
    return dict(kv.split("=", 1) for kv in text.split(", ") if "=" in kv)


def _files(text: str) -> tuple[str, ...]:
    return tuple(f.strip() for f in text.split(",") if f.strip())


def parse_dry_run(text: str) -> list[DryRunJob]:
    """The jobs of ``snakemake -n [-p]``'s output, in the order printed.

    A block starts at its ``rule NAME:`` line; its fields are the indented ``key: value``
    lines after it, and its ``Shell command:`` line (present with ``-p`` or the profile's
    ``printshellcmds``) ends it (the rules' commands are one line each).
    """
    jobs: list[DryRunJob] = []
    rule: str | None = None
    fields: dict[str, str] = {}
    command: str | None = None

    def close() -> None:
        nonlocal rule, fields, command
        if rule is not None:
            cmd = " ".join(command.split()) if command is not None else None
            jobs.append(
                DryRunJob(
                    rule=rule,
                    wildcards=_pairs(fields.get("wildcards", "")),
                    inputs=_files(fields.get("input", "")),
                    outputs=_files(fields.get("output", "")),
                    resources=_pairs(fields.get("resources", "")),
                    command=None if cmd == "None" else cmd,
                )
            )
        rule, fields, command = None, {}, None

    for line in text.splitlines():
        m = _RULE.match(line)
        if m:
            close()
            rule = m.group(1)
            continue
        if rule is None:
            continue
        m = _SHELL.match(line)
        if m:
            command = m.group(1)
            close()
            continue
        m = _FIELD.match(line)
        if m:
            fields.setdefault(m.group(1), m.group(2))
        elif line.strip() and not line.startswith(" "):
            close()  # "Job stats:", a timestamp ... ends a block without a command
    close()
    return jobs


def snakemake_executable() -> str:
    """The ``snakemake`` of this environment (beside this Python), else the one on PATH."""
    beside = Path(sys.executable).parent / "snakemake"
    if beside.exists():
        return str(beside)
    found = shutil.which("snakemake")
    if found is None:
        raise MlonasError(
            "snakemake: not installed here (pip install -e '.[workflow]'); mlonas plan"
            " reads its dry run"
        )
    return found


def dry_run(
    targets: Sequence[str],
    config: Sequence[str] = (),
    *,
    forceall: bool = False,
    cwd: str | Path = ".",
    timeout: float = 600,
) -> list[DryRunJob]:
    """The jobs ``snakemake -n -p TARGETS --config CONFIG`` would run in ``cwd``.

    Targets come before ``--config``: that option (like ``-q``) takes every following
    word as one of its values. ``forceall`` (``-F``) lists every job of the targets'
    DAG, as if nothing were built yet. A target no rule makes, or any other failure of
    Snakemake, is one line: Snakemake's own error line.
    """
    if not (Path(cwd) / "Snakefile").exists():
        raise MlonasError(f"{Path(cwd).resolve()}: no Snakefile here (run in the repository)")
    args = [snakemake_executable(), "-n", "-p", *(["-F"] if forceall else []), *targets]
    if config:
        args += ["--config", *config]
    res = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise MlonasError(_failure(res.stdout + "\n" + res.stderr, targets))
    return parse_dry_run(res.stdout)


def _failure(output: str, targets: Sequence[str]) -> str:
    """Snakemake's reason for a failed dry run, in one line."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if "No rule to produce" in line or line.startswith("MissingRuleException"):
            why = line if "No rule to produce" in line else lines[min(i + 1, len(lines) - 1)]
            return f"target {' '.join(targets)}: {why.rstrip('.')} (snakemake -n)"
        if line.startswith("mlonas: error:"):
            return line.removeprefix("mlonas: error:").strip()
    for line in lines:
        if "Error" in line or "error" in line:
            return f"snakemake -n failed: {line}"
    return f"snakemake -n failed: {lines[-1] if lines else 'no output'}"
