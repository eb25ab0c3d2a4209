"""Atomic writes and content hashes.

Snakemake and DVC both take the *existence* of an output as proof that it is complete.
Every artifact is therefore written to a temporary file in the same directory and
renamed into place (rename is atomic on POSIX), so a killed job never leaves a file
that either driver could mistake for a finished one.

torch is imported inside the two functions that need it, so that jobs which only read
JSON/CSV and draw figures (``mlonas figures``) start in a fraction of a second.

Atomic files do not stop two *jobs* from writing one output directory (two Snakemake or
DVC invocations, a cluster job resubmitted while the first still runs): each would finish
"successfully" with the other's checkpoint under its digest. :func:`hold_output_dir` makes
the second one refuse to start.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlonas.errors import MlonasError

LOCK_NAME = ".lock"
# Descriptors of the output locks this process holds (see _close_locks_in_child).
_HELD_LOCKS: set[int] = set()


def _close_locks_in_child() -> None:
    """Close inherited lock descriptors in a forked child (DataLoader workers fork).

    An ``flock`` lives as long as any descriptor of its open file, and a fork shares them:
    a worker orphaned by ``kill -9`` of its job would keep the job's output directory
    locked until it noticed. Closing the child's copy leaves the parent's lock in place
    (``LOCK_UN`` would not).
    """
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_close_locks_in_child)


def _create_temp(dest: Path) -> Path:
    """Create an empty, uniquely named ``.<name>.<random>.tmp`` next to ``dest``.

    Not :func:`tempfile.mkstemp`: that creates the file 0600, and the rename would carry
    the mode onto the artifact, so results shared through a group directory or served by
    a web server would be unreadable to everyone else. ``os.open(..., 0o666)`` lets the
    umask decide, exactly as a plain ``open(path, "w")`` would (and honours default ACLs),
    while ``O_EXCL`` keeps concurrent writers of the same artifact apart.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = dest.parent / f".{dest.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name next to {dest}")


@contextlib.contextmanager
def _atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success."""
    dest = Path(path)
    if dest.is_dir():
        raise MlonasError(f"{dest} is a directory; expected the path of a file to write")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise MlonasError(f"{dest}: a file stands where a folder of this path belongs") from None
    tmp_path = _create_temp(dest)
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


def ensure_out_dir(path: str | os.PathLike[str], what: str = "--out") -> None:
    """Refuse an output directory that cannot be one, before a stage starts computing.

    A search or a training run first writes into ``path`` when its first checkpoint is
    saved, after a whole epoch; if ``path`` (or a folder above it) is a regular file, that
    is where it would crash. Nothing is created here: a stage that later fails on other
    bad input must not leave an empty output directory behind either.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise MlonasError(f"{what} {p} is an existing file, expected a directory")
    ancestor = p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise MlonasError(f"{what} {p}: {ancestor} is a file, so {p} cannot be a directory")
    if not os.access(p if p.exists() else ancestor, os.W_OK | os.X_OK):
        raise MlonasError(f"{what} {p}: {p if p.exists() else ancestor} is not writable")


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
        # not torch's text: it advises weights_only=False, i.e. unpickling the file
        raise MlonasError(
            f"{what} {p} cannot be read as tensors and plain data ({type(exc).__name__}):"
            " it is damaged or not a file mlonas wrote"
        ) from None


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


# Set by `mlonas train-imagenet`'s torchrun launcher to the output directory it holds, so
# its workers do not try to take the lock their own parent has.
LAUNCHER_HOLDS_ENV = "MLONAS_LAUNCHER_HOLDS"


@contextlib.contextmanager
def hold_output_dir(directory: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<directory>/.lock`` while a stage writes there.

    Non-blocking: a second job on the same directory is a mistake, so it stops at once
    with one line (:class:`MlonasError`, naming the directory and the holder's pid and
    host, which the holder writes into the file) instead of waiting and then redoing the
    work. The kernel releases the lock when the holder exits, however it dies (``kill
    -9`` included), so a dead job never leaves a stale lock (forked children, such as
    DataLoader workers, do not hold it: see :func:`_close_locks_in_child`). The file is
    never deleted: removing it while another process opens it would let a third lock a
    new file and run beside the second. flock works across processes on a local disk and
    on NFS (Linux emulates it with POSIX locks there).
    """
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise MlonasError(f"output directory {out} cannot be used: {exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode("utf-8", "replace").split()
            who = f" (pid {holder[0]} on {holder[1]})" if len(holder) == 2 else ""
            raise MlonasError(
                f"output directory {out} is in use by another running mlonas job{who};"
                " not starting a second one on it"
            ) from None
        _HELD_LOCKS.add(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        _HELD_LOCKS.discard(fd)
        os.close(fd)  # closing the descriptor releases the lock
