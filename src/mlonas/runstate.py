"""What a run carries from one epoch to the next: the one mechanism of search and training.

Both the search loop and evaluation training must survive a kill and resume, on CPU, to
the bits of an uninterrupted run, and must tell the user the same things the same way.
:class:`RunState` is that part of both; what is genuinely different (the scheme and its
supernets; the model, optimizer, scheduler and DDP) stays in the loops, which hand it over
as their *own* checkpoint entries and a ``restore`` callback.

* **Epochs done.** The checkpoint's ``epoch`` is the number of epochs finished (3 after
  the third), the history has exactly that many rows, and a resumed run goes on with the
  0-based epoch ``done``. Everything a user sees numbers epochs from 1.
* **RNG.** Torch's CPU RNG and, on CUDA, the run device's, of *every* rank (DDP gathers
  them; rank ``r`` restores entry ``r``), captured at the epoch boundary and restored
  after the loop's own state, so the next epoch draws what an uninterrupted run draws.
* **Files.** :class:`mlonas.checkpoint.Checkpointer` writes and verifies (fingerprint,
  digests, fallback to the previous checkpoint); only rank 0 writes, and in DDP every
  rank waits until the checkpoint is on disk.
* **Messages.** One logger (``logging.getLogger(__name__)``; ``mlonas.cli`` configures
  it): why a checkpoint is not used, where the run resumes, one progress line per epoch
  with an ETA. In DDP only rank 0 speaks.
* **Wall time** accumulates over the segments of a killed and resumed run.

Old checkpoints: training's layout is unchanged (format 1); a search checkpoint written
before this module (0-based ``epoch``, no ``format``) is reported and not resumed, because
reading its epoch the new way would redo an epoch with the wrong RNG state.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from mlonas.checkpoint import Checkpointer
from mlonas.errors import MlonasError
from mlonas.io import atomic_write_text

log = logging.getLogger(__name__)

FORMAT = 1
SHARED_KEYS = frozenset({"format", "epoch", "history", "rng", "cuda_rng", "wall_time_s"})
# What a checkpoint that verified but does not fit the rebuilt objects raises on restore.
RESTORE_ERRORS = (RuntimeError, KeyError, ValueError, TypeError, IndexError)


def eta(wall_s: float, done: int, total: int) -> str:
    """h:mm:ss left when ``done`` of ``total`` epochs took ``wall_s`` (for progress lines)."""
    left = round(wall_s / max(done, 1) * max(total - done, 0))
    return f"{left // 3600}:{left % 3600 // 60:02d}:{left % 60:02d}"


def step_bar(iterable: Iterable[Any], total: int | None, desc: str, main: bool = True) -> Any:
    """One epoch's steps as a transient bar on stderr: only on a terminal, only on rank 0.

    Messages logged while it is live go above it (``mlonas.cli``'s handler writes through
    ``tqdm.write``); the epoch's progress line replaces it when the epoch ends.
    """
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        file=sys.stderr,
        leave=False,
        disable=None if main else True,
    )


def capture_rng(device: torch.device, world_size: int = 1) -> tuple[list[Any], list[Any]]:
    """Every rank's torch RNG state (CPU, and CUDA where used), gathered on all ranks."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    if world_size == 1:
        return [cpu], [cuda]
    cpus: list[Any] = [None] * world_size
    cudas: list[Any] = [None] * world_size
    dist.all_gather_object(cpus, cpu)
    dist.all_gather_object(cudas, cuda)
    return cpus, cudas


def restore_rng(state: dict[str, Any], device: torch.device, rank: int = 0) -> None:
    """Set this rank's torch RNG state(s) from a checkpoint written by :class:`RunState`."""
    torch.set_rng_state(state["rng"][rank])
    if device.type == "cuda" and state["cuda_rng"][rank] is not None:
        torch.cuda.set_rng_state(state["cuda_rng"][rank], device)


def write_history(
    path: str | os.PathLike[str],
    rows: Sequence[dict[str, Any]],
    columns: Sequence[str] | None = None,
) -> None:
    """``history.csv``, one row per epoch, written atomically (``columns``: their order)."""
    import pandas as pd  # lazy: pandas is slow to import and only needed at the end

    frame = pd.DataFrame(list(rows), columns=list(columns) if columns is not None else None)
    atomic_write_text(path, frame.to_csv(index=False))


class RunState:
    """Epochs done, history, wall time and RNG of one run, checkpointed after each epoch.

    ``what`` names the run in messages (``search``, ``training``); ``rank``/``world_size``
    place this process in a DDP run (every rank holds a RunState; only rank 0 writes and
    speaks). Typical use, in both loops::

        run = RunState(out, definition, epochs, device=dev)
        if not run.resume(restore, own_keys):   # restore(state): the loop's own objects
            build_fresh()
        for epoch in range(run.done, run.epochs):
            run.start_clock()                   # (training: once, at the start of the job)
            ...train and evaluate...
            row = {..., "wall_time_s": run.lap()}
            run.end_epoch(row, progress_fields, **own_state)
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        definition: Any,
        epochs: int,
        *,
        device: torch.device,
        what: str,
        rank: int = 0,
        world_size: int = 1,
        label: str = "",
    ) -> None:
        self.checkpointer = Checkpointer(out_dir, definition)
        self.epochs = epochs
        self.device = device
        self.what = what
        self.rank, self.world_size = rank, world_size
        self.label = label  # progress lines: f"{label}epoch 3/50 ..."
        self.done = 0
        self.history: list[dict[str, Any]] = []
        self.wall_s = 0.0
        self._clock = time.perf_counter()

    @property
    def main(self) -> bool:
        return self.rank == 0

    def say(self, message: str, level: int = logging.INFO) -> None:
        """Log ``message`` from rank 0 only (the other ranks would repeat it)."""
        if self.main:
            log.log(level, message)

    # -- resuming -------------------------------------------------------------------------

    def _problem(self, own_keys: frozenset[str]) -> Callable[[dict[str, Any]], str | None]:
        """A validator for :meth:`Checkpointer.read`: is this a complete checkpoint of ours?"""

        def problem(state: dict[str, Any]) -> str | None:
            missing = (SHARED_KEYS | own_keys) - state.keys()
            if missing:
                lacks = ", ".join(sorted(missing))
                return f"is not a mlonas {self.what} checkpoint of this version (no {lacks})"
            if state["format"] != FORMAT:
                return f"has format {state['format']}"
            done = state["epoch"]
            if (
                not isinstance(done, int)
                or not 1 <= done <= self.epochs
                or not isinstance(state["history"], list)
                or len(state["history"]) != done
                or not isinstance(state["rng"], list)
                or len(state["rng"]) != self.world_size
                or not isinstance(state["cuda_rng"], list)
                or len(state["cuda_rng"]) != self.world_size
            ):
                return "is inconsistent"
            return None

        return problem

    def resume(self, restore: Callable[[dict[str, Any]], None], own_keys: Iterable[str]) -> bool:
        """Resume from the newest intact checkpoint of this run; ``False``: start afresh.

        ``restore(state)`` rebuilds the loop's own objects from ``state`` (keys
        ``own_keys``); then this rank's RNG state is restored. A checkpoint that verifies
        but cannot be restored is reported and the run starts over: the loop must then
        build its objects fresh (a restore that failed halfway leaves them unusable).
        """
        state, why = self.checkpointer.read(self._problem(frozenset(own_keys)))
        path = self.checkpointer.path
        if why:
            self.say(why, logging.WARNING)
        if state is not None:
            try:
                restore(state)
                restore_rng(state, self.device, self.rank)
            except RESTORE_ERRORS as exc:
                self.say(
                    f"checkpoint {path} cannot be restored ({type(exc).__name__}: {exc});"
                    " starting over",
                    logging.WARNING,
                )
                state = None
        if state is not None:
            self.done = int(state["epoch"])
            self.history = [dict(r) for r in state["history"]]
            self.wall_s = float(state["wall_time_s"])
            source = self.checkpointer.source
            if self.done < self.epochs:
                self.say(
                    f"resuming from epoch {self.done + 1} of {self.epochs}"
                    f" ({source} after epoch {self.done})"
                )
            else:
                self.say(f"all {self.epochs} epochs done in {source}; writing the outputs")
        self._agree(path)
        return state is not None

    def _agree(self, path: os.PathLike[str]) -> None:
        """In DDP every rank read the checkpoint; they must agree, or collectives mismatch.

        (All ranks have finished reading before rank 0 may replace it: the first save
        gathers the RNG states of every rank first.)
        """
        if self.world_size == 1:
            return
        done: list[Any] = [None] * self.world_size
        dist.all_gather_object(done, self.done)
        if len(set(done)) > 1:
            raise MlonasError(
                f"ranks disagree on the checkpoint {path} (epochs done: {done});"
                " out_dir must be on a file system all processes share"
            )

    # -- one epoch --------------------------------------------------------------------------

    def start_clock(self, at: float | None = None) -> None:
        """Start timing here (or at ``at``, a ``time.perf_counter()`` value)."""
        self._clock = time.perf_counter() if at is None else at

    def lap(self) -> float:
        """Add the time since the clock started (or the last lap) to the wall time; return it."""
        now = time.perf_counter()
        self.wall_s += now - self._clock
        self._clock = now
        return self.wall_s

    def end_epoch(self, row: dict[str, Any], progress: dict[str, str], **own: Any) -> None:
        """Record a finished epoch: its history row, the checkpoint, the progress line.

        ``progress``: the line's fields, formatted (``{"train_loss": "2.3026", ...}``);
        ``own``: the loop's own checkpoint entries (the keys it passes to :meth:`resume`).
        """
        self.history.append(row)
        self.done += 1
        self.save(**own)
        fields = " ".join(f"{k} {v}" for k, v in progress.items())
        self.say(
            f"{self.label}epoch {self.done}/{self.epochs} {fields}"
            f" ({self.wall_s:.1f}s, ETA {eta(self.wall_s, self.done, self.epochs)})"
        )

    def save(self, **own: Any) -> None:
        """Checkpoint the epochs done (collective in DDP: call it on every rank)."""
        rng, cuda_rng = capture_rng(self.device, self.world_size)
        if self.main:
            self.checkpointer.save(
                {
                    "format": FORMAT,
                    "epoch": self.done,
                    **own,
                    "history": self.history,
                    "rng": rng,
                    "cuda_rng": cuda_rng,
                    "wall_time_s": self.wall_s,
                }
            )
        if self.world_size > 1:
            dist.barrier()  # the checkpoint is on disk before any rank can stop or resume
