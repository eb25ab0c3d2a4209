"""Helpers shared by the tests that drive the workflow tools (snakemake, dvc, mlonas)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool_env() -> dict[str, str]:
    """PATH with this interpreter's scripts first, so rules find this `mlonas`."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def snakemake(
    *args: str, cwd: Path = REPO, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "snakemake"), *args],
        cwd=cwd,
        env=tool_env(),
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
    )


def copy_workflow(dest: Path, *extra: str) -> None:
    """The files a user's checkout has, with the schema link resolved."""
    dest.mkdir(exist_ok=True)
    for name in ("Snakefile", "workflow", "profiles", "params.yaml", *extra):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, symlinks=False)
        else:
            shutil.copy(src, dest / name)
