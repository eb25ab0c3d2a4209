"""Atomic writes and content hashes.

Snakemake and DVC both take the *existence* of an output as proof that it is complete.
Every artifact is therefore written to a temporary file in the same directory and
renamed into place (rename is atomic on POSIX), so a killed job never leaves a file
that either driver could mistake for a finished one.

torch is imported inside the two functions that need it, so that jobs which only read
JSON/CSV and draw figures (``mlonas figures``) start in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlonas.errors import MlonasError


@contextlib.contextmanager
def _atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, dest)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with _atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON with sorted keys and a trailing newline (stable bytes -> stable hashes)."""
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=False) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    import torch

    with _atomic_path(path) as tmp:
        torch.save(obj, tmp)


def atomic_savefig(fig: Any, path: str | os.PathLike[str], **kwargs: Any) -> None:
    """Save a matplotlib figure atomically (format taken from ``path``'s suffix)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    with _atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, **kwargs)


def atomic_copy(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    with _atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)


def read_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """Read JSON, turning a missing or malformed file into a one-line :class:`MlonasError`."""
    p = Path(path)
    if not p.is_file():
        raise MlonasError(f"{what} {p} does not exist")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MlonasError(f"{what} {p} is not valid JSON: {exc}") from None


def torch_load(path: str | os.PathLike[str], what: str = "checkpoint") -> Any:
    """Load a torch file with ``weights_only=True``: never unpickle arbitrary objects."""
    p = Path(path)
    if not p.is_file():
        raise MlonasError(f"{what} {p} does not exist")
    import torch

    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt/truncated files raise many different types
        raise MlonasError(f"{what} {p} cannot be loaded: {type(exc).__name__}: {exc}") from None


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hash_inputs(paths: dict[str, str | os.PathLike[str]]) -> dict[str, dict[str, str]]:
    """``{role: {"path": ..., "sha256": ...}}`` for provenance records."""
    return {role: {"path": str(p), "sha256": sha256_file(p)} for role, p in sorted(paths.items())}
