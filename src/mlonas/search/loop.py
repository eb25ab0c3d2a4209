"""The one search loop every method runs (``mlonas search``).

It owns epochs, the learning-rate schedule, data order, progress, history, checkpoints
and provenance; what happens inside a step belongs to the scheme, and what the supernet
looks like to the base. Adding a base or a scheme therefore never touches this file.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from mlonas import provenance
from mlonas.checkpoint import Checkpointer, Diverged, rng_state, set_rng_state
from mlonas.config import Config
from mlonas.errors import MlonasError
from mlonas.io import (
    atomic_write_json,
    atomic_write_text,
    hash_inputs,
    hold_output_dir,
    sha256_file,
)
from mlonas.runtime import eta, resolve_device
from mlonas.search.bases import get_base, hypergradient_mode
from mlonas.search.common import SchemeSetup, StepBatch
from mlonas.search.schemes import SCHEMES

# The search-val and unlabeled loaders draw their orders from streams separate from the
# search-train one.
VAL_SEED_OFFSET = 1_000_003
UNLABELED_SEED_OFFSET = 2_000_003


def alpha_record(model: Any) -> dict[str, Any]:
    return {
        "normal": torch.softmax(model.alpha_normal.detach(), -1).cpu().tolist(),
        "reduce": torch.softmax(model.alpha_reduce.detach(), -1).cpu().tolist(),
    }


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
    with contextlib.ExitStack() as held:
        return _run_search(
            cfg, dataset, method, seed, split_path, out_dir, device, unlabeled_split, held
        )


def _run_search(
    cfg: Config,
    dataset: str,
    method: str,
    seed: int,
    split_path: str,
    out_dir: str,
    device: str,
    unlabeled_split: str | None,
    held: contextlib.ExitStack,
) -> dict[str, Any]:
    from mlonas.data.loaders import epoch_loader, search_datasets, unlabeled_dataset
    from mlonas.data.splits import load_split

    m = cfg.method(method)
    base = get_base(m.base)
    mode = hypergradient_mode(m.order, m.search)
    if m.scheme not in SCHEMES:
        raise MlonasError(f"methods.{method}.scheme: unknown scheme {m.scheme!r}")
    scheme_cls = SCHEMES[m.scheme]
    settings = m.search
    dev = resolve_device(device)
    split = load_split(split_path, cfg, dataset)
    train_ds, val_ds, num_classes = search_datasets(
        cfg, dataset, split, plain_view=scheme_cls.PLAIN_VIEW
    )
    inputs = {"split": split_path}
    unlabeled_ds = None
    if scheme_cls.UNLABELED:
        other = cfg.unlabeled_source(dataset)
        if other is None:
            raise MlonasError(
                f"datasets.{dataset}.unlabeled: method {method} (scheme sgl) needs unlabeled data"
            )
        if unlabeled_split is None:
            raise MlonasError(
                f"mlonas search --unlabeled-split: method {method} needs the split of {other}"
            )
        unlabeled_ds = unlabeled_dataset(
            cfg, dataset, other, load_split(unlabeled_split, cfg, other)
        )
        inputs["unlabeled_split"] = unlabeled_split
    x0 = train_ds[0][0]
    setup = SchemeSetup(
        base=base,
        settings=settings,
        options=m.options,
        num_classes=num_classes,
        mode=mode,
        device=dev,
        seed=seed,
        n_train=len(train_ds),
        image_shape=tuple(x0.shape),
    )

    definition = {
        "stage": "search",
        "dataset": dataset,
        "method": method,
        "seed": seed,
        "base": m.base,
        "order": m.order,
        "scheme": m.scheme,
        "settings": settings.to_params(),
        "options": m.options.to_params(),
        **{f"{k}_sha256": sha256_file(v) for k, v in inputs.items()},
        "device": dev.type,
    }
    out = Path(out_dir)
    held.enter_context(hold_output_dir(out))  # released when run_search returns or raises
    ckpt = Checkpointer(out, definition)
    history: list[dict[str, Any]] = []
    trajectory: list[dict[str, Any]] = []
    wall = 0.0
    start_epoch = 0
    state = ckpt.load()
    # A resumed run rebuilds the supernet(s) of the stage it was in; weights and RNG
    # state then come from the checkpoint.
    if state is None:
        names = scheme_cls.architecture_names(m.options)
        states = {name: base.initial_state(settings) for name in names}
    else:
        states = state["arch_states"]
    torch.manual_seed(seed)
    scheme = scheme_cls(setup, states)
    if state is not None:
        scheme.load_state_dict(state["scheme"])
        history, trajectory, wall = state["history"], state["trajectory"], state["wall_time_s"]
        start_epoch = state["epoch"] + 1
        set_rng_state(state["rng"])

    epochs = base.total_epochs(settings)
    bs = settings.batch_size
    nw = settings.num_workers
    steps_per_epoch = min(len(train_ds), len(val_ds)) // bs
    if unlabeled_ds is not None and len(unlabeled_ds) < steps_per_epoch * bs:
        raise MlonasError(
            f"datasets.{dataset}.unlabeled: {len(unlabeled_ds)} unlabeled images are fewer than"
            f" the {steps_per_epoch * bs} one search epoch draws"
        )

    def loader(ds: Any, offset: int, epoch: int, shuffle: bool = True) -> Any:
        """This epoch's batches of ``ds``, in an order set by (seed + offset, epoch) only."""
        return epoch_loader(
            ds, bs, shuffle=shuffle, seed=seed + offset, epoch=epoch, num_workers=nw,
            drop_last=shuffle,
        )  # fmt: skip

    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        stage = base.stage_of(epoch, settings)[0]
        if stage != next(iter(states.values()))["stage"]:
            # P-DARTS: new, deeper supernets with each edge's weakest ops pruned
            states = {
                name: base.next_state(model, stage, settings)
                for name, model in scheme.architectures().items()
            }
            previous, scheme = scheme, scheme_cls(setup, states)
            scheme.carry_over(previous)
        for model in scheme.supernets():
            base.set_epoch(model, epoch, settings)
        lr = base.lr(epoch, settings)
        scheme.start_epoch(epoch, lr)
        update_arch = base.updates_architecture(epoch, settings)

        streams = [loader(train_ds, 0, epoch), loader(val_ds, VAL_SEED_OFFSET, epoch)]
        if unlabeled_ds is not None:
            streams.append(loader(unlabeled_ds, UNLABELED_SEED_OFFSET, epoch))
        totals: dict[str, float] = {}
        bar = tqdm(
            zip(*streams, strict=False),
            total=steps_per_epoch,
            desc=f"search {dataset}/{method}/seed{seed} epoch {epoch + 1}/{epochs}",
            file=sys.stderr,
            disable=None,
            leave=False,
        )
        for step, (tb, vb, *rest) in enumerate(bar):
            batch = StepBatch(
                x=tb[0],
                y=tb[1],
                index=tb[2],
                val=(vb[0], vb[1]),
                x_plain=tb[3] if len(tb) > 3 else None,
                unlabeled=rest[0] if rest else None,
            ).to(dev)
            r = scheme.step(batch, update_arch=update_arch, epoch=epoch, step=step)
            for k, v in r.items():
                totals[k] = totals.get(k, 0.0) + v
            bar.set_postfix(loss=f"{totals['loss_sum'] / totals['n']:.3f}")
        if not totals.get("n"):
            raise MlonasError(
                f"datasets.{dataset}.n_train: fewer search-train images than one batch ({bs})"
            )
        metrics = scheme.train_metrics(totals)
        ev = scheme.evaluate(loader(val_ds, 0, epoch, shuffle=False))
        wall += time.perf_counter() - t0
        models = scheme.architectures()
        row = {
            "epoch": epoch + 1,
            "stage": stage + 1,
            "lr": lr,
            "arch_updated": update_arch,
            **metrics,
            **ev,
            "wall_time_s": wall,
        }
        check_epoch_finite(row, models, seed, f" in search {dataset}/{method}")
        for name, model in models.items():
            prefix = "" if len(models) == 1 else f"{name}_"
            row[f"{prefix}genotype"] = _genotype_json(model)
        history.append(row)
        trajectory.append(
            {
                "epoch": epoch + 1,
                "stage": stage + 1,
                **{name: alpha_record(mod) for name, mod in models.items()},
            }
        )
        print(
            f"mlonas: search epoch {epoch + 1}/{epochs} train_loss {row['train_loss']:.4f} "
            f"train_acc {row['train_acc']:.2f} val_loss {ev['val_loss']:.4f} "
            f"val_acc {ev['val_acc']:.2f} ({wall:.1f}s, ETA {eta(wall, epoch + 1, epochs)})",
            file=sys.stderr,
            flush=True,
        )
        ckpt.save(
            {
                "epoch": epoch,
                "scheme": scheme.state_dict(),
                "history": history,
                "trajectory": trajectory,
                "arch_states": states,
                "wall_time_s": wall,
                "rng": rng_state(),
            }
        )

    return _write_outputs(
        cfg, out, scheme, base, history, trajectory, wall, definition, inputs, dev, seed
    )


def _genotype_json(model: Any) -> str:
    return json.dumps(model.genotype().to_dict(), separators=(",", ":"))


def _write_outputs(
    cfg: Config,
    out: Path,
    scheme: Any,
    base: Any,
    history: list[dict[str, Any]],
    trajectory: list[dict[str, Any]],
    wall: float,
    definition: dict[str, Any],
    inputs: dict[str, str],
    dev: torch.device,
    seed: int,
) -> dict[str, Any]:
    models = scheme.architectures()
    # Also the epochs of a checkpoint written before every epoch was checked: nothing
    # non-finite is written, and nothing at all is when something is.
    where = f" in search {definition['dataset']}/{definition['method']}"
    for row in history:
        check_epoch_finite(row, models if row is history[-1] else {}, seed, where)
    selected = scheme.select(history)
    alphas = {
        "base": base.name,
        "architectures": {
            name: {**mod.arch_record(), "genotype": mod.genotype().to_dict()}
            for name, mod in models.items()
        },
        "selected": selected,
        "trajectory": trajectory,
    }
    final = {
        k: v
        for k, v in history[-1].items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "stage"
    }
    # flat numbers of the final epoch (DVC metrics), and which architecture is reported
    metrics = {**final, "selected": selected, "epochs": len(history)}
    atomic_write_json(out / "alphas.json", alphas)
    atomic_write_text(out / "history.csv", pd.DataFrame(history).to_csv(index=False))
    atomic_write_json(out / "metrics.json", metrics)
    record = provenance.record(
        stage="search",
        inputs=inputs,
        params=definition,
        seed=seed,
        device=provenance.device_description(dev),
        wall_time_s=wall,
        final=final,
        selected=selected,
        outputs=hash_inputs(
            {name: out / name for name in ("alphas.json", "history.csv", "metrics.json")}
        ),
        dataset=definition["dataset"],
        method=definition["method"],
        tracked_params=cfg.tracked(
            "search", dataset=definition["dataset"], method=definition["method"]
        ),
        **({"overrides": cfg.overrides} if cfg.overrides else {}),  # absent when none
    )
    atomic_write_json(out / "provenance.json", record)
    return record
