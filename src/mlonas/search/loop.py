"""The one search loop every method runs (``mlonas search``).

It owns epochs, the learning-rate schedule, data order, progress, history, checkpoints
and provenance; what happens inside a step belongs to the scheme, and what the supernet
looks like to the base. Adding a base or a scheme therefore never touches this file.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from mlonas import provenance
from mlonas.checkpoint import Diverged
from mlonas.config import Config
from mlonas.errors import MlonasError
from mlonas.io import atomic_write_json, hash_inputs, hold_output_dir, sha256_file
from mlonas.runstate import RunState, step_bar, write_history
from mlonas.runtime import resolve_device
from mlonas.search.bases import get_base, hypergradient_mode
from mlonas.search.common import Scheme, SchemeSetup, StepBatch
from mlonas.search.schemes import SCHEMES

# The search-val and unlabeled loaders draw their orders from streams separate from the
# search-train one.
VAL_SEED_OFFSET = 1_000_003
UNLABELED_SEED_OFFSET = 2_000_003

log = logging.getLogger(__name__)


def alpha_record(model: Any) -> dict[str, Any]:
    """One epoch's ``trajectory`` entry of an architecture: the supernet says what it is
    (softmax(alpha) rows; MSR-DARTS' mean stable ranks, having no alpha)."""
    record: dict[str, Any] = model.trajectory_record()
    return record


def check_epoch_finite(
    row: dict[str, Any], models: dict[str, Any], seed: int, context: str = ""
) -> None:
    """Raise :class:`Diverged` if the epoch's ``row`` or an architecture parameter is not finite.

    The steps check each loss they compute, but the epoch's validation losses (one pass in
    eval mode after the last step) and the architecture parameters are only seen here: an
    alpha can go to -inf while every loss stays finite (softmax gives that op weight 0).
    Checked before the epoch is logged or checkpointed, so a diverged state is never saved
    (a rerun resumes from the last finite epoch and diverges again, deterministically) and
    nothing non-finite reaches alphas.json, history.csv or metrics.json.
    """
    epoch = int(row["epoch"])
    for key, value in row.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise Diverged(key, value, epoch, None, seed, context)
    for name, model in models.items():
        for pname, param in zip(model.arch_names, model.arch_parameters(), strict=True):
            bad = ~torch.isfinite(param.detach())
            if bool(bad.any()):
                value = float(param.detach()[bad][0])
                raise Diverged(
                    f"architecture parameter {name}.{pname}", value, epoch, None, seed, context
                )


def run_search(
    cfg: Config,
    dataset: str,
    method: str,
    seed: int,
    split_path: str,
    out_dir: str,
    device: str = "auto",
    unlabeled_split: str | None = None,
) -> dict[str, Any]:
    """Search ``method`` on ``dataset`` with ``seed``; write alphas, history, metrics and
    provenance. ``unlabeled_split`` is the split of the dataset whose training images SGL
    uses unlabeled (``datasets.<dataset>.unlabeled``); other schemes ignore it.

    ``out_dir`` is held (:func:`mlonas.io.hold_output_dir`) from just before the
    checkpoint is read until the outputs are written, so a second search on it stops with
    one line instead of interleaving its checkpoints with this one's; it is taken after
    the inputs are checked, so bad input leaves no output directory behind."""
    search = _Search(cfg, dataset, method, seed, split_path, device, unlabeled_split)
    with hold_output_dir(out_dir):
        run = RunState(
            out_dir, search.definition, search.epochs, device=search.dev, what="search",
            label="search ",
        )  # fmt: skip
        search.resume(run)
        for epoch in range(run.done, run.epochs):
            search.epoch(run, epoch)
        return search.write_outputs(Path(out_dir), run)


class _Search:
    """One search job: its checked inputs, then the scheme it trains epoch by epoch.

    What every run shares (epochs done, history, wall time, RNG, checkpoint files,
    progress lines) is the :class:`RunState`; this class holds what only a search has:
    the scheme, the architecture states it was built from, and the alpha trajectory.
    """

    def __init__(
        self,
        cfg: Config,
        dataset: str,
        method: str,
        seed: int,
        split_path: str,
        device: str,
        unlabeled_split: str | None,
    ) -> None:
        from mlonas.data.loaders import search_datasets
        from mlonas.data.splits import load_split

        self.cfg, self.dataset, self.method, self.seed = cfg, dataset, method, seed
        m = cfg.method(method)
        self.base = get_base(m.base)
        if m.scheme not in SCHEMES:
            raise MlonasError(f"methods.{method}.scheme: unknown scheme {m.scheme!r}")
        self.scheme_cls = SCHEMES[m.scheme]
        self.settings, self.options = m.search, m.options
        self.dev = resolve_device(device)
        split = load_split(split_path, cfg, dataset)
        self.split = split
        self.train_ds, self.val_ds, num_classes = search_datasets(
            cfg, dataset, split, plain_view=self.scheme_cls.PLAIN_VIEW
        )
        self.inputs = {"split": split_path}
        self.unlabeled_ds = self._unlabeled(unlabeled_split)
        self.epochs = self.base.total_epochs(self.settings)
        self.steps_per_epoch = self._steps_per_epoch()
        self.setup = SchemeSetup(
            base=self.base,
            settings=self.settings,
            options=self.options,
            num_classes=num_classes,
            mode=hypergradient_mode(m.order, m.search),
            device=self.dev,
            seed=seed,
            n_train=len(self.train_ds),
            image_shape=tuple(self.train_ds[0][0].shape),
        )
        self.definition = {
            "stage": "search",
            "dataset": dataset,
            "method": method,
            "seed": seed,
            "base": m.base,
            "order": m.order,
            "scheme": m.scheme,
            "settings": self.settings.to_params(),
            "options": self.options.to_params(),
            **{f"{k}_sha256": sha256_file(v) for k, v in self.inputs.items()},
            "device": self.dev.type,
        }
        self.states: dict[str, Any] = {}
        self.scheme: Scheme  # built by resume()
        self.trajectory: list[dict[str, Any]] = []
        # half search space: the pruner's record (kept ops and scores), checkpointed so a
        # resumed search never prunes again
        self.prune: dict[str, Any] | None = None

    def _unlabeled(self, unlabeled_split: str | None) -> Any:
        """SGL's and LBT's unlabeled images (another dataset's training images), else None."""
        from mlonas.data.loaders import unlabeled_dataset
        from mlonas.data.splits import load_split

        if not self.scheme_cls.UNLABELED:
            return None
        dataset, method = self.dataset, self.method
        other = self.cfg.unlabeled_source(dataset)
        if other is None:
            raise MlonasError(
                f"datasets.{dataset}.unlabeled: method {method} (scheme {self.scheme_cls.name})"
                " needs unlabeled data"
            )
        if unlabeled_split is None:
            raise MlonasError(
                f"mlonas search --unlabeled-split: method {method} needs the split of {other}"
            )
        self.inputs["unlabeled_split"] = unlabeled_split
        return unlabeled_dataset(
            self.cfg, dataset, other, load_split(unlabeled_split, self.cfg, other)
        )

    def _steps_per_epoch(self) -> int:
        bs = self.settings.batch_size
        steps = min(len(self.train_ds), len(self.val_ds)) // bs
        if self.unlabeled_ds is not None and len(self.unlabeled_ds) < steps * bs:
            raise MlonasError(
                f"datasets.{self.dataset}.unlabeled: {len(self.unlabeled_ds)} unlabeled images"
                f" are fewer than the {steps * bs} one search epoch draws"
            )
        return steps

    # -- building or resuming the scheme ------------------------------------------------

    def _build(self, states: dict[str, Any]) -> None:
        """The scheme's supernet(s) for ``states``, initialised from the run's seed."""
        self.states = states
        torch.manual_seed(self.seed)
        self.scheme = self.scheme_cls(self.setup, states)

    def _restore(self, state: dict[str, Any]) -> None:
        # A resumed run rebuilds the supernet(s) of the stage it was in; the weights come
        # from the checkpoint (and the RNG state, restored by the RunState after this).
        self._build(state["arch_states"])
        self.scheme.load_state_dict(state["scheme"])
        self.trajectory = state["trajectory"]
        self.prune = state.get("prune")

    def _own_keys(self) -> tuple[str, ...]:
        """The checkpoint entries of this search (``prune`` only where it prunes: older
        checkpoints of the other methods stay valid)."""
        keys = ("scheme", "trajectory", "arch_states")
        return (*keys, "prune") if self.settings.prune is not None else keys

    def resume(self, run: RunState) -> None:
        if not run.resume(self._restore, self._own_keys()):
            initial = self.base.initial_state(self.settings)
            if self.settings.prune is not None:
                # Half search space: prune before the supernet is built; the time counts
                # in the search's wall time (its cost), the kept ops become the initial state
                t0 = time.perf_counter()
                self.prune = self._prune_space()
                initial = {
                    **initial,
                    "edge_ops_normal": self.prune["edge_ops_normal"],
                    "edge_ops_reduce": self.prune["edge_ops_reduce"],
                }
                seconds = time.perf_counter() - t0
                run.wall_s += seconds
                log.info("search space pruned (%s) in %.1fs", self.settings.prune, seconds)
            names = self.scheme_cls.architecture_names(self.options)
            self._build({name: dict(initial) for name in names})
            self.trajectory = []

    def _prune_space(self) -> dict[str, Any]:
        """The zero-shot pruner's record (mlonas.space.zeroshot), from the seed alone."""
        from mlonas.data.loaders import search_train_images
        from mlonas.space.zeroshot import etenas_prune

        s = self.settings
        assert s.prune == "etenas" and s.prune_keep is not None and s.prune_rankers is not None
        assert s.prune_repeat and s.prune_batch_size and s.prune_batches and s.prune_channels
        result = etenas_prune(
            search_train_images(self.cfg, self.dataset, self.split),
            primitives=self.base.primitives,
            steps=s.steps,
            multiplier=s.multiplier,
            num_classes=self.setup.num_classes,
            keep=s.prune_keep,
            rankers=s.prune_rankers,
            repeat=s.prune_repeat,
            batch_size=s.prune_batch_size,
            batches=s.prune_batches,
            channels=s.prune_channels,
            seed=self.seed,
            device=self.dev,
        )
        keys = ("prune", "prune_keep", "prune_rankers", "prune_repeat", "prune_batch_size",
                "prune_batches", "prune_channels")  # fmt: skip
        settings = {k: v for k, v in s.to_params().items() if k in keys}
        return result.record(self.base.primitives, settings)

    # -- one epoch ----------------------------------------------------------------------

    def _loader(self, ds: Any, offset: int, epoch: int, shuffle: bool = True) -> Any:
        """This epoch's batches of ``ds``, in an order set by (seed + offset, epoch) only."""
        from mlonas.data.loaders import epoch_loader

        return epoch_loader(
            ds, self.settings.batch_size, shuffle=shuffle, seed=self.seed + offset,
            epoch=epoch, num_workers=self.settings.num_workers, drop_last=shuffle,
        )  # fmt: skip

    def _enter_stage(self, epoch: int) -> int:
        """The 0-based stage of ``epoch``; P-DARTS: new, deeper supernets when it changes,
        with each edge's weakest ops pruned."""
        stage = self.base.stage_of(epoch, self.settings)[0]
        if stage != next(iter(self.states.values()))["stage"]:
            states = {
                name: self.base.next_state(model, stage, self.settings)
                for name, model in self.scheme.architectures().items()
            }
            previous, self.states = self.scheme, states  # not reseeded: the RNG runs on
            self.scheme = self.scheme_cls(self.setup, states)
            self.scheme.carry_over(previous)
        return stage

    def _steps(self, epoch: int, update_arch: bool) -> dict[str, float]:
        """Train one epoch's steps; the scheme's summed step results."""
        streams = [
            self._loader(self.train_ds, 0, epoch),
            self._loader(self.val_ds, VAL_SEED_OFFSET, epoch),
        ]
        if self.unlabeled_ds is not None:
            streams.append(self._loader(self.unlabeled_ds, UNLABELED_SEED_OFFSET, epoch))
        totals: dict[str, float] = {}
        where = f"search {self.dataset}/{self.method}/seed{self.seed}"
        bar = step_bar(
            zip(*streams, strict=False),
            self.steps_per_epoch,
            f"{where} epoch {epoch + 1}/{self.epochs}",
        )
        for step, (tb, vb, *rest) in enumerate(bar):
            batch = StepBatch(
                x=tb[0],
                y=tb[1],
                index=tb[2],
                val=(vb[0], vb[1]),
                x_plain=tb[3] if len(tb) > 3 else None,
                unlabeled=rest[0] if rest else None,
            ).to(self.dev)
            r = self.scheme.step(batch, update_arch=update_arch, epoch=epoch, step=step)
            for k, v in r.items():
                totals[k] = totals.get(k, 0.0) + v
            bar.set_postfix(loss=f"{totals['loss_sum'] / totals['n']:.3f}")
        if not totals.get("n"):
            raise MlonasError(
                f"datasets.{self.dataset}.n_train: fewer search-train images than one batch"
                f" ({self.settings.batch_size})"
            )
        return totals

    def epoch(self, run: RunState, epoch: int) -> None:
        """Search one (0-based) epoch: steps, validation, checks, history, checkpoint."""
        run.start_clock()
        stage = self._enter_stage(epoch)
        for model in self.scheme.supernets():
            self.base.set_epoch(model, epoch, self.settings)
        lr = self.base.lr(epoch, self.settings)
        self.scheme.start_epoch(epoch, lr)
        self.scheme.set_arch_confidence(self.base.arch_confidence(epoch, self.settings))
        update_arch = self.base.updates_architecture(epoch, self.settings)
        metrics = self.scheme.train_metrics(self._steps(epoch, update_arch))
        ev = self.scheme.evaluate(self._loader(self.val_ds, 0, epoch, shuffle=False))
        row = {
            "epoch": epoch + 1,
            "stage": stage + 1,
            "lr": lr,
            "arch_updated": update_arch,
            **metrics,
            **ev,
            "wall_time_s": run.lap(),
        }
        models = self.scheme.architectures()
        check_epoch_finite(row, models, self.seed, f" in search {self.dataset}/{self.method}")
        for name, model in models.items():
            prefix = "" if len(models) == 1 else f"{name}_"
            row[f"{prefix}genotype"] = _genotype_json(model)
        self.trajectory.append(
            {
                "epoch": epoch + 1,
                "stage": stage + 1,
                **{name: alpha_record(mod) for name, mod in models.items()},
            }
        )
        # the accuracies where the objective has labels (search.objective mae has none)
        progress = {
            key: f"{row[key]:{fmt}}"
            for key, fmt in (
                ("train_loss", ".4f"),
                ("train_acc", ".2f"),
                ("val_loss", ".4f"),
                ("val_acc", ".2f"),
            )
            if key in row
        }
        run.end_epoch(
            row,
            progress,
            scheme=self.scheme.state_dict(),
            trajectory=self.trajectory,
            arch_states=self.states,
            **({"prune": self.prune} if self.settings.prune is not None else {}),
        )

    # -- outputs ------------------------------------------------------------------------

    def write_outputs(self, out: Path, run: RunState) -> dict[str, Any]:
        """alphas.json, history.csv, metrics.json, then provenance.json (hashing them)."""
        history = run.history
        models = self.scheme.architectures()
        # Also the epochs of a checkpoint written before every epoch was checked: nothing
        # non-finite is written, and nothing at all is when something is.
        where = f" in search {self.dataset}/{self.method}"
        for row in history:
            check_epoch_finite(row, models if row is history[-1] else {}, self.seed, where)
        selected = self.scheme.select(history)
        alphas = {
            "base": self.base.name,
            "architectures": {
                name: {**mod.arch_record(), "genotype": mod.genotype().to_dict()}
                for name, mod in models.items()
            },
            "selected": selected,
            "trajectory": self.trajectory,
            **({"prune": self.prune} if self.prune is not None else {}),
        }
        final = {
            k: v
            for k, v in history[-1].items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "stage"
        }
        # flat numbers of the final epoch (DVC metrics), and which architecture is reported
        metrics = {**final, "selected": selected, "epochs": len(history)}
        atomic_write_json(out / "alphas.json", alphas)
        write_history(out / "history.csv", history)
        atomic_write_json(out / "metrics.json", metrics)
        record = provenance.record(
            stage="search",
            inputs=self.inputs,
            params=self.definition,
            seed=self.seed,
            device=provenance.device_description(self.dev),
            wall_time_s=run.wall_s,
            final=final,
            selected=selected,
            outputs=hash_inputs(
                {name: out / name for name in ("alphas.json", "history.csv", "metrics.json")}
            ),
            dataset=self.dataset,
            method=self.method,
            tracked_params=self.cfg.tracked("search", dataset=self.dataset, method=self.method),
            **({"overrides": self.cfg.overrides} if self.cfg.overrides else {}),  # absent when none
        )
        atomic_write_json(out / "provenance.json", record)
        return record


def _genotype_json(model: Any) -> str:
    return json.dumps(model.genotype().to_dict(), separators=(",", ":"))
