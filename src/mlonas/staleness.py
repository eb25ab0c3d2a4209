"""Which code an artifact was made with, against the code that would make it now.

Neither driver reruns a job when mlonas' code changes: dvc.yaml's stages have no code
dependencies, and Snakemake's ``code`` trigger compares a rule's own shell command, not
the package it calls. That is deliberate: a dependency on ``src/mlonas`` would rerun
every 600-epoch training after a docstring edit or a refactor of the report. Instead each
artifact records the git commit it was made at (:func:`mlonas.provenance.code_version`),
and :func:`code_changes` says whether the code *that stage runs* has changed since then
in a way that can change its result: the Python modules the stage's entry point imports
(transitively, read from the source, lazy imports included), compared as syntax trees
without docstrings, so comments, docstrings and formatting never count. Deciding to rerun
stays with the researcher (``snakemake -R <rule>`` / ``dvc repro -f <stage>``).
"""

from __future__ import annotations

import ast
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import mlonas

# The module each `mlonas <stage>` command calls (mlonas.cli), plus the CLI and params.
STAGE_ENTRY: dict[str, tuple[str, ...]] = {
    "split": ("mlonas.data.splits",),
    "search": ("mlonas.search.loop",),
    "export": ("mlonas.report.cells",),
    "train-cifar": ("mlonas.train.cifar",),
    "train-imagenet": ("mlonas.train.imagenet",),
    "table": ("mlonas.report.tables",),
}
COMMON = ("mlonas.cli", "mlonas.config")


def _module_file(src: Path, module: str) -> Path | None:
    base = src.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imports(path: Path) -> set[str]:
    """Every ``mlonas`` module ``path`` imports, at the top or inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "mlonas"}
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").split(".")[0] == "mlonas"
        ):
            found.add(node.module)
            # `from mlonas.data import splits` imports a module, not a name
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def stage_files(stage: str, src: Path) -> set[Path]:
    """The source files of ``stage``'s code under ``src`` (the folder holding ``mlonas``)."""
    todo = [*STAGE_ENTRY[stage], *COMMON]
    seen: set[str] = set()
    files: set[Path] = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        # importing a.b.c runs a/__init__.py and a/b/__init__.py first
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        path = _module_file(src, module)
        if path is not None:
            files.add(path)
            todo += sorted(_imports(path))
    return files


def _behaviour(text: str) -> str | None:
    """The syntax tree of a module without its docstrings (None: not Python any more)."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            first = body[0].value if body and isinstance(body[0], ast.Expr) else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=60, check=False
    )


@cache
def _default_repo() -> Path:
    return Path(mlonas.__file__).resolve().parents[2]


def code_changes(code: Any, stage: str, repo: Path | None = None) -> list[str]:
    """Why ``stage``'s code now may not make what a record's ``code`` block describes.

    ``code`` is a provenance ``code`` block (``git_commit``, ``git_dirty``). Returns one
    line per reason, empty when the stage's code is the same as at that commit (up to
    comments, docstrings and formatting) in the checkout at ``repo`` (its working tree,
    i.e. what a rerun would execute).
    """
    repo = repo or _default_repo()
    commit = code.get("git_commit") if isinstance(code, dict) else None
    if not commit:
        return ["no git commit recorded: the code it was made with is unknown"]
    notes = []
    if code.get("git_dirty"):
        notes.append(f"made from a checkout of {commit[:12]} with local changes")
    if _git(repo, "cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        return [*notes, f"commit {commit[:12]} is not in the repository at {repo}"]
    src = repo / "src"
    changed = _git(repo, "diff", "--name-only", commit, "--", "src/mlonas").stdout.split()
    files = {p.relative_to(repo).as_posix() for p in stage_files(stage, src)}
    for rel in sorted(set(changed) & files):
        old = _git(repo, "show", f"{commit}:{rel}")
        before = _behaviour(old.stdout) if old.returncode == 0 else None
        now_path = repo / rel
        after = _behaviour(now_path.read_text(encoding="utf-8")) if now_path.is_file() else None
        if before is None or after is None or before != after:
            notes.append(f"{rel} changed since {commit[:12]}")
    return notes
