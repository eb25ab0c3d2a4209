"""What every metrics.json / provenance.json records about how it was produced.

A table cell is only auditable if each artifact behind it says which inputs (with
content hashes), which params, which code and which software produced it, on which
device and in how long. This module builds that record; the search and train stages
embed it, and ``mlonas audit`` (report) reads it back.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

import torch

import mlonas
from mlonas.io import hash_inputs


@cache
def code_version() -> dict[str, Any]:
    """Git commit (and whether the tree had local changes) or, outside git, the package version."""
    repo = Path(mlonas.__file__).resolve().parents[2]
    info: dict[str, Any] = {"package": mlonas.__version__}
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        info.update(git_commit=commit, git_dirty=bool(dirty))
    except (OSError, subprocess.SubprocessError):
        info.update(git_commit=None, git_dirty=None)
    return info


def device_description(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device), "count": 1}
    return {
        "type": "cpu",
        "name": platform.processor() or platform.machine(),
        "count": 1,
        "threads": torch.get_num_threads(),
    }


def software() -> dict[str, str]:
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        # the installed version, read without importing torchvision (seconds per job)
        "torchvision": importlib.metadata.version("torchvision"),
        "platform": platform.platform(),
    }


def record(
    stage: str,
    inputs: dict[str, str | os.PathLike[str]],
    params: dict[str, Any],
    seed: int | None,
    device: dict[str, Any],
    wall_time_s: float,
    **extra: Any,
) -> dict[str, Any]:
    """The provenance block shared by every stage's metadata file."""
    return {
        "stage": stage,
        "inputs": hash_inputs(inputs),
        "params": params,
        "seed": seed,
        "code": code_version(),
        "software": software(),
        "device": device,
        "host": socket.gethostname(),
        "wall_time_s": round(float(wall_time_s), 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }
