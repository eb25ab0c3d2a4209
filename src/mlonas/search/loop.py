"""The one search loop every method runs (``mlonas search``).

It owns epochs, the learning-rate schedule, data order, progress, history, checkpoints
and provenance; what happens inside a step belongs to the scheme, and what the supernet
looks like to the base. Adding a base or a scheme therefore never touches this file.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm import tqdm

from mlonas import provenance
from mlonas.checkpoint import Checkpointer, rng_state, set_rng_state
from mlonas.config import Config
from mlonas.errors import MlonasError
from mlonas.io import atomic_write_json, atomic_write_text, sha256_file
from mlonas.runtime import resolve_device
from mlonas.search.bases import get_base, hypergradient_mode
from mlonas.search.schemes import SCHEMES

# The search-val loader draws its order from a stream separate from the search-train one.
VAL_SEED_OFFSET = 1_000_003


def alpha_record(model: Any) -> dict[str, Any]:
    return {
        "normal": torch.softmax(model.alpha_normal.detach(), -1).cpu().tolist(),
        "reduce": torch.softmax(model.alpha_reduce.detach(), -1).cpu().tolist(),
    }


def run_search(
    cfg: Config,
    dataset: str,
    method: str,
    seed: int,
    split_path: str,
    out_dir: str,
    device: str = "auto",
) -> dict[str, Any]:
    """Search ``method`` on ``dataset`` with ``seed``; write alphas, history and provenance."""
    from mlonas.data.loaders import epoch_loader, search_datasets
    from mlonas.data.splits import load_split

    m = cfg.method(method)
    base = get_base(m.base)
    mode = hypergradient_mode(m.order, m.search)
    if m.scheme not in SCHEMES:
        raise MlonasError(f"methods.{method}.scheme: unknown scheme {m.scheme!r}")
    settings = m.search
    dev = resolve_device(device)
    split = load_split(split_path, cfg, dataset)
    train_ds, val_ds, num_classes = search_datasets(cfg, dataset, split)

    scheme_cls = SCHEMES[m.scheme]

    def make_scheme(states: dict[str, Any]) -> Any:
        return scheme_cls(base, settings, num_classes, mode, dev, seed, states)

    definition = {
        "stage": "search",
        "dataset": dataset,
        "method": method,
        "seed": seed,
        "base": m.base,
        "order": m.order,
        "scheme": m.scheme,
        "settings": settings,
        "split_sha256": sha256_file(split_path),
        "device": dev.type,
    }
    out = Path(out_dir)
    ckpt = Checkpointer(out, definition)
    history: list[dict[str, Any]] = []
    trajectory: list[dict[str, Any]] = []
    wall = 0.0
    start_epoch = 0
    state = ckpt.load()
    # A resumed run rebuilds the supernet of the stage it was in; its weights and RNG
    # state then come from the checkpoint.
    if state is None:
        states = {name: base.initial_state(settings) for name in scheme_cls.ARCHITECTURES}
    else:
        states = state["arch_states"]
    torch.manual_seed(seed)
    scheme = make_scheme(states)
    if state is not None:
        scheme.load_state_dict(state["scheme"])
        history, trajectory, wall = state["history"], state["trajectory"], state["wall_time_s"]
        start_epoch = state["epoch"] + 1
        set_rng_state(state["rng"])

    epochs = base.total_epochs(settings)
    bs = settings["batch_size"]
    nw = settings["num_workers"]
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        stage = base.stage_of(epoch, settings)[0]
        if stage != next(iter(states.values()))["stage"]:
            # P-DARTS: a new, deeper supernet with each edge's weakest ops pruned
            states = {
                name: base.next_state(model, stage, settings)
                for name, model in scheme.architectures().items()
            }
            scheme = make_scheme(states)
        for model in scheme.architectures().values():
            base.set_epoch(model, epoch, settings)
        lr = base.lr(epoch, settings)
        scheme.set_lr(lr)
        update_arch = base.updates_architecture(epoch, settings)
        train_loader = epoch_loader(
            train_ds, bs, shuffle=True, seed=seed, epoch=epoch, num_workers=nw, drop_last=True
        )
        val_loader = epoch_loader(
            val_ds,
            bs,
            shuffle=True,
            seed=seed + VAL_SEED_OFFSET,
            epoch=epoch,
            num_workers=nw,
            drop_last=True,
        )
        totals = {"loss_sum": 0.0, "correct": 0, "n": 0}
        bar = tqdm(
            zip(train_loader, val_loader, strict=False),
            total=min(len(train_loader), len(val_loader)),
            desc=f"search {dataset}/{method}/seed{seed} epoch {epoch + 1}/{epochs}",
            file=sys.stderr,
            disable=None,
            leave=False,
        )
        for step, (tb, vb) in enumerate(bar):
            r = scheme.step(tb, vb, update_arch=update_arch, epoch=epoch, step=step)
            for k in totals:
                totals[k] += r[k]
            bar.set_postfix(loss=f"{totals['loss_sum'] / totals['n']:.3f}")
        if totals["n"] == 0:
            raise MlonasError(
                f"datasets.{dataset}.n_train: fewer search-train images than one batch ({bs})"
            )
        ev = scheme.evaluate(
            epoch_loader(val_ds, bs, shuffle=False, seed=seed, epoch=epoch, num_workers=nw)
        )
        wall += time.perf_counter() - t0
        models = scheme.architectures()
        row = {
            "epoch": epoch + 1,
            "stage": stage + 1,
            "lr": lr,
            "arch_updated": update_arch,
            "train_loss": totals["loss_sum"] / totals["n"],
            "train_acc": 100.0 * totals["correct"] / totals["n"],
            **ev,
            "wall_time_s": wall,
        }
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
            f"val_acc {ev['val_acc']:.2f} ({wall:.1f}s)",
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
        cfg, out, scheme, base, history, trajectory, wall, definition, split_path, dev, seed
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
    split_path: str,
    dev: torch.device,
    seed: int,
) -> dict[str, Any]:
    models = scheme.architectures()
    alphas = {
        "base": base.name,
        "architectures": {
            name: {**mod.arch_record(), "genotype": mod.genotype().to_dict()}
            for name, mod in models.items()
        },
        "selected": next(iter(models)),
        "trajectory": trajectory,
    }
    atomic_write_json(out / "alphas.json", alphas)
    atomic_write_text(out / "history.csv", pd.DataFrame(history).to_csv(index=False))
    final = history[-1]
    record = provenance.record(
        stage="search",
        inputs={"split": split_path},
        params=definition,
        seed=seed,
        device=provenance.device_description(dev),
        wall_time_s=wall,
        final={k: final[k] for k in ("train_loss", "train_acc", "val_loss", "val_acc")},
        dataset=definition["dataset"],
        method=definition["method"],
    )
    atomic_write_json(out / "provenance.json", record)
    return record
