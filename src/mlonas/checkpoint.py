"""Per-epoch checkpoints that resume bitwise-identically, shared by search and training.

Why a module of its own: a 600-epoch evaluation or a 50-epoch search that is killed must
resume, on CPU, to exactly the result an uninterrupted run gives. That needs the same
things in both stages: (1) every piece of state, RNG included, saved atomically after each
epoch; (2) a *fingerprint* of everything that defines the run (params, input hashes,
seed), so a stale checkpoint of a different run is never resumed; (3) loading with
``weights_only=True`` only; (4) a checkpoint that was damaged on disk (truncated copy,
flipped bits, a file system that lost its tail) is *detected* and never resumed.

Damage detection and fallback. Next to ``checkpoint.pt`` the checkpointer keeps the
previous good checkpoint, ``checkpoint.prev.pt``, and ``checkpoint.sha256.json``, the
size and sha256 of both, written atomically *after* the checkpoint itself. On resume a
file is used only if its size and sha256 equal one of the recorded ones; otherwise the
run falls back to the previous checkpoint, or starts over, and says which and why in one
line. A digest is checked against *every* recorded entry rather than the one filed under
its name, because a job killed between the steps of :meth:`Checkpointer.save` can leave
the previous checkpoint under the new name's slot; with that rule every point at which a
save can be interrupted leaves at least one verifiable checkpoint (``checkpoint.pt``
killed before its digest was recorded reads as unverified and the previous one is used:
one epoch is redone, and the result is still bitwise the same). A checkpoint without any
digest file (written by an older version) is loaded unverified, as before. A digest file
that exists but cannot be read (garbage bytes, truncated JSON, entries that are not
``{bytes, sha256}``) is damage, not absence: its intact entries are still used, a file
without one is not trusted, and the message says the digest file is damaged. (Treating it
as absent would load unverified exactly the files it guards, and a damaged RNG state in
them would then fail every rerun.) A file that verifies but does not load is reported in
our words: torch's text advises re-loading with ``weights_only=False``, which we never do.

Cost: one sha256 pass over the new file per save, read back from the page cache. For a
300 MB checkpoint on this project's CPU machine: 0.21-0.26 s (about 1.2 GB/s), next to
1.1-1.2 s for ``torch.save`` + fsync of the same state, i.e. a quarter of a second per
epoch; a resume verifies (0.25 s) before it loads. The previous checkpoint is kept by a
rename, not a copy, and doubles the disk space (DVC tracks only ``checkpoint.pt``).

What goes *into* a checkpoint (epochs done, history, every rank's RNG state, wall time)
and what a resumed run is told is :mod:`mlonas.runstate`'s; this module is the file.

Snakemake deletes a rule's declared outputs before it runs a job, so the checkpoint lives
at a path that is *not* a declared output (DVC declares it with ``persist: true``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mlonas.errors import MlonasError
from mlonas.io import atomic_torch_save, atomic_write_json, sha256_file

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_NAME = "checkpoint.prev.pt"
DIGESTS_NAME = "checkpoint.sha256.json"
DIGESTS_FORMAT = 1

# A file's identity for verification: its size (catches truncation without hashing) and sha256.
FileRecord = dict[str, Any]
_SHA256 = re.compile(r"[0-9a-f]{64}")


def fingerprint(definition: Any) -> str:
    """sha256 of the canonical JSON of everything that defines a run."""
    blob = json.dumps(definition, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _file_record(path: Path) -> FileRecord:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _load(path: Path) -> tuple[Any, str]:
    """``(state, "")``: ``path`` loaded with ``weights_only=True``; else ``(None, why)``.

    ``why`` is ours, not torch's: torch's message for a file it refuses advises loading it
    again with ``weights_only=False``, i.e. unpickling arbitrary objects from a file that
    is damaged or not ours, which is the one thing a resume must never do.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True), ""
    except pickle.UnpicklingError:
        return None, "is damaged: it cannot be read as tensors and plain data, so it is not used"
    except Exception as exc:  # a damaged zip archive, a short read, ... raise many types
        text = str(exc).strip()
        detail = text.splitlines()[0][:200] if text and "weights_only" not in text else ""
        cause = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
        return None, f"is damaged: it cannot be read ({cause}), so it is not used"


class Checkpointer:
    """Save/load ``<dir>/checkpoint.pt`` guarded by a run fingerprint and recorded digests.

    ``path`` is the current checkpoint; ``previous`` the one before it; ``digests`` the
    JSON file with their sizes and sha256. After :meth:`read`, ``source`` is the file the
    returned state came from (``path`` or ``previous``), or ``None``.
    """

    def __init__(self, directory: str | os.PathLike[str], definition: Any) -> None:
        self.path = Path(directory) / CHECKPOINT_NAME
        self.previous = self.path.with_name(PREVIOUS_NAME)
        self.digests = self.path.with_name(DIGESTS_NAME)
        self.fingerprint = fingerprint(definition)
        self.source: Path | None = None
        # Files of *this* run that this process verified or wrote, by name: only these are
        # kept as the previous checkpoint (a damaged or foreign file never is).
        self._good: dict[str, FileRecord] = {}
        self._swept = False

    # -- reading ------------------------------------------------------------------------

    def _recorded(self) -> tuple[list[FileRecord] | None, str]:
        """The recorded ``{bytes, sha256}`` entries, and what is wrong with the digest file.

        ``(None, "")`` only when there is no digest file at all (an older version's
        checkpoint, loaded unverified). A digest file that cannot be read yields ``[]``
        (nothing verifies) and malformed entries are left out; either way the second item
        says so, for the one-line message.
        """
        if not self.digests.exists():
            return None, ""
        try:
            data = json.loads(self.digests.read_bytes().decode("utf-8"))
        except (OSError, ValueError) as exc:  # UnicodeDecodeError, JSONDecodeError
            return [], f"{self.digests} is unreadable ({type(exc).__name__}: {exc})"
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(files, dict):
            return [], f"{self.digests} is damaged (it has no table of files)"
        records: list[FileRecord] = []
        bad: list[str] = []
        for name, r in files.items():
            size = r.get("bytes") if isinstance(r, dict) else None
            digest = r.get("sha256") if isinstance(r, dict) else None
            if (
                isinstance(size, int)
                and not isinstance(size, bool)
                and isinstance(digest, str)
                and _SHA256.fullmatch(digest)
            ):
                records.append({"bytes": size, "sha256": digest})
            else:
                bad.append(str(name))
        if bad:
            return records, f"{self.digests} is damaged (unreadable entry for {', '.join(bad)})"
        return records, ""

    def _verify(
        self, path: Path, recorded: list[FileRecord] | None
    ) -> tuple[FileRecord | None, str]:
        """``(record, "")`` when ``path`` equals a recorded checkpoint, else ``(None, why)``.

        Without any recorded digests (an older version's checkpoint) the file is accepted
        unverified and its record computed here, so it can still become the previous one.
        """
        if recorded is None:
            return _file_record(path), ""
        if not recorded:
            return None, f"cannot be verified (no intact digest in {self.digests.name})"
        size = path.stat().st_size
        if not any(r["bytes"] == size for r in recorded):
            sizes = " or ".join(sorted({str(r["bytes"]) for r in recorded})) or "none"
            return None, (
                f"is {size} bytes but {self.digests.name} records {sizes}"
                " (truncated, or killed before its digest was recorded)"
            )
        record = {"bytes": size, "sha256": sha256_file(path)}
        if record not in recorded:
            return None, (
                f"does not match the sha256 recorded in {self.digests.name}"
                " (corrupted, or killed before its digest was recorded)"
            )
        return record, ""

    def _read_one(
        self,
        path: Path,
        recorded: list[FileRecord] | None,
        validate: Callable[[dict[str, Any]], str | None] | None,
    ) -> tuple[dict[str, Any] | None, str]:
        record, why = self._verify(path, recorded)
        if record is None:
            return None, why
        state, why = _load(path)
        if why:
            return None, why
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            return None, "belongs to a different run (params, inputs or seed changed)"
        problem = validate(state) if validate is not None else None
        if problem:
            return None, problem
        self._good[path.name] = record
        return state, ""

    def read(
        self, validate: Callable[[dict[str, Any]], str | None] | None = None
    ) -> tuple[dict[str, Any] | None, str]:
        """``(state, why)``: the newest intact checkpoint of *this* run, or ``None``.

        Tries ``checkpoint.pt``, then ``checkpoint.prev.pt``. ``why`` is empty when the
        current checkpoint is used or there is none yet; otherwise it is one line saying
        what was wrong and whether the run falls back to the previous checkpoint or starts
        over. ``validate`` may reject a checkpoint of the right run whose contents are
        inconsistent (it returns a reason). Callers decide where to say ``why`` (in DDP
        only rank 0 speaks): :meth:`mlonas.runstate.RunState.resume`.
        """
        self.source = None
        self._good.clear()
        if not self.path.exists() and not self.previous.exists():
            return None, ""
        recorded, damage = self._recorded()
        problems: list[str] = [damage] if damage else []
        for path in (self.path, self.previous):
            if not path.exists():
                if path == self.path:
                    problems.append(f"checkpoint {path} does not exist (killed while saving?)")
                continue
            state, why = self._read_one(path, recorded, validate)
            if state is not None:
                self.source = path
                if not problems:
                    return state, ""
                if path == self.path:  # only the digest file's other entries are damaged
                    return state, "; ".join(problems) + f"; {path} itself verifies"
                return state, "; ".join(problems) + f"; falling back to {path}"
            problems.append(f"checkpoint {path} {why}")
        return None, "; ".join(problems) + "; starting over"

    # -- writing ------------------------------------------------------------------------

    def _sweep(self) -> None:
        """Remove temporaries of saves that were killed mid-write (each as big as a checkpoint)."""
        if self._swept:
            return
        self._swept = True
        for name in (CHECKPOINT_NAME, DIGESTS_NAME):
            for tmp in self.path.parent.glob(f".{name}.*.tmp"):
                tmp.unlink(missing_ok=True)

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` as the new ``checkpoint.pt``; the last good one becomes previous.

        The order makes every interruption recoverable: (1) the current checkpoint, if it is
        a verified one of this run, is renamed to ``checkpoint.prev.pt`` (its digest is
        already recorded); (2) the new checkpoint is written atomically; (3) the digests of
        both are recorded atomically.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._sweep()
        current = self._good.pop(CHECKPOINT_NAME, None)
        if current is not None and self.path.exists():
            os.replace(self.path, self.previous)
            self._good[PREVIOUS_NAME] = current
        elif PREVIOUS_NAME not in self._good:
            # Not this run's verified checkpoint: nothing to fall back to must look like one.
            self.previous.unlink(missing_ok=True)
        atomic_torch_save({**state, "fingerprint": self.fingerprint}, self.path)
        self._good[CHECKPOINT_NAME] = _file_record(self.path)
        atomic_write_json(self.digests, {"format": DIGESTS_FORMAT, "files": dict(self._good)})


class Diverged(MlonasError):
    """A non-finite loss, with where it happened (1-based epoch and step) for the record.

    ``step`` is ``None`` for what is checked once per epoch, after its last step (the
    epoch's validation losses and the architecture parameters a search writes out).
    """

    def __init__(
        self, what: str, value: float, epoch: int, step: int | None, seed: int, context: str = ""
    ) -> None:
        self.what, self.value, self.epoch, self.step, self.seed = what, value, epoch, step, seed
        where = f"epoch {epoch}" if step is None else f"epoch {epoch} step {step}"
        super().__init__(f"non-finite {what} ({value}) at {where} (seed {seed}){context}")


def check_finite(
    loss: torch.Tensor,
    epoch: int,
    step: int,
    seed: int,
    what: str = "training loss",
    context: str = "",
) -> None:
    """Stop a diverging run with a message naming where it diverged (1-based epoch/step).

    Raises :class:`Diverged` (a :class:`MlonasError`): a search lets it stop the job with
    that one line; evaluation training catches it and records the run as diverged.
    """
    value = float(loss.detach())
    if not math.isfinite(value):
        raise Diverged(what, value, epoch, step, seed, context)
