"""Per-epoch checkpoints that resume bitwise-identically, shared by search and training.

Why a module of its own: a 600-epoch evaluation or a 50-epoch search that is killed must
resume, on CPU, to exactly the result an uninterrupted run gives. That needs the same
three things in both stages: (1) every piece of state, RNG included, saved atomically
after each epoch; (2) a *fingerprint* of everything that defines the run (params, input
hashes, seed), so a stale checkpoint of a different run is never resumed; (3) loading
with ``weights_only=True`` only.

Snakemake deletes a rule's declared outputs before it runs a job, so the checkpoint lives
at a path that is *not* a declared output (DVC declares it with ``persist: true``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mlonas.errors import MlonasError
from mlonas.io import atomic_torch_save, torch_load

CHECKPOINT_NAME = "checkpoint.pt"


def fingerprint(definition: Any) -> str:
    """sha256 of the canonical JSON of everything that defines a run."""
    blob = json.dumps(definition, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def rng_state() -> dict[str, Any]:
    """Torch's global RNG state(s); the project draws randomness from torch only."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def log(msg: str) -> None:
    print(f"mlonas: {msg}", file=sys.stderr, flush=True)


class Checkpointer:
    """Save/load ``<dir>/checkpoint.pt`` guarded by a run fingerprint."""

    def __init__(self, directory: str | os.PathLike[str], definition: Any) -> None:
        self.path = Path(directory) / CHECKPOINT_NAME
        self.fingerprint = fingerprint(definition)

    def read(
        self, validate: Callable[[dict[str, Any]], str | None] | None = None
    ) -> tuple[dict[str, Any] | None, str]:
        """``(state, "")`` for a checkpoint of *this* run, else ``(None, why not)``.

        ``why`` is empty when there is simply no checkpoint yet. ``validate`` may reject a
        checkpoint of the right run whose contents are inconsistent (it returns a reason).
        Callers decide where to say why (in DDP only rank 0 speaks).
        """
        if not self.path.exists():
            return None, ""
        try:
            state = torch_load(self.path)
        except MlonasError as exc:
            return None, f"{exc}; starting over"
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            return None, (
                f"checkpoint {self.path} belongs to a different run"
                " (params, inputs or seed changed); starting over"
            )
        problem = validate(state) if validate is not None else None
        if problem:
            return None, f"checkpoint {self.path} {problem}; starting over"
        return state, ""

    def load(self) -> dict[str, Any] | None:
        """:meth:`read`, saying on stderr why a checkpoint is not used or where it resumes."""
        state, why = self.read()
        if why:
            log(why)
        if state is not None:
            log(f"resuming from {self.path} after epoch {state['epoch'] + 1}")
        return state

    def save(self, state: dict[str, Any]) -> None:
        atomic_torch_save({**state, "fingerprint": self.fingerprint}, self.path)


def check_finite(
    loss: torch.Tensor,
    epoch: int,
    step: int,
    seed: int,
    what: str = "training loss",
    context: str = "",
) -> None:
    """Stop a diverging run with a message naming where it diverged (1-based epoch/step)."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise MlonasError(
            f"non-finite {what} ({value}) at epoch {epoch} step {step} (seed {seed}){context}"
        )
