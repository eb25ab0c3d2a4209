"""Figures and table pages for ``snakemake --report``, drawn from the artifacts alone.

Every picture in the report is computed from files the pipeline already versions — a
search's ``alphas.json`` (its per-epoch ``trajectory`` of softmax(α) rows) and
``history.csv``, an evaluation's ``history.csv``, a table's ``.md`` rendering — never from
a live model. So a figure can be redrawn for any old run that ``dvc checkout`` brings
back, and a figure job needs neither torch nor a GPU: this module imports only
matplotlib (Agg), pandas, json and markdown-it; one job per table draws all of its files.

Why these renderings:

* **α trajectories, one line per operation *name*.** P-DARTS prunes each edge's ops
  between stages (8 → 5 → 3), so the softmax rows of different epochs have different
  lengths and position k means different ops in different stages. ``alphas.json``
  records the op names of the *final* stage (``edge_ops_normal/reduce``) and the full
  primitive list; the names of an intermediate stage are recovered with the rule that
  produced them (:func:`mlonas.space.pruning.prune_ops`, which
  :meth:`mlonas.search.bases.Base.next_state` applies: keep the ``n`` most probable ops of
  the last epoch of the previous stage, in the original order, ties as the official code)
  and checked against the next recorded stage. A line is drawn only while its op exists,
  so a pruned op's line simply ends at the stage boundary; stages
  are separated by dotted lines because each stage starts a new supernet with fresh α
  (the probabilities are a softmax over the surviving ops only). A stage whose names
  cannot be recovered consistently is left out and the figure says so, rather than
  labelling lines with guessed names.
* **Accuracy and loss curves from every column.** Search histories carry scheme-specific
  columns (``audience_val_acc``, ``learner2_val_loss``, ``pl_agreement``, ...); every
  ``*_acc`` / ``*_top1`` / ``*_top5`` column goes in the accuracy panel, every ``*_loss``
  column in the loss panel, and any other per-epoch number in a third panel, so a new
  scheme's columns show up without a code change.
* **Tables as HTML pages.** Snakemake's report shows images, HTML and PDF inline and
  offers every other file as a download; the tables' Markdown rendering (the same text a
  reader sees in ``results/tableN.md``) is therefore also written as a small standalone
  HTML page.
"""

from __future__ import annotations

import html
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from mlonas.errors import MlonasError
from mlonas.io import atomic_savefig, atomic_write_text, read_json
from mlonas.space.pruning import prune_ops

if TYPE_CHECKING:
    from mlonas.config import Config

# History columns that are bookkeeping rather than a learning curve.
_NOT_CURVES = {"epoch", "stage", "lr", "arch_updated", "wall_time_s"}
_ACC_SUFFIXES = ("_acc", "_top1", "_top5")
DPI = 80
MAX_COLS = 7


def _in_report(cfg: Config, path: str) -> str:
    """An artifact path of :class:`~mlonas.config.Config` (under ``results/``) moved under
    ``results/report/``: the report's files mirror the artifacts they are drawn from, so
    their layout is defined once, by config's path functions."""
    results = cfg.path("results/")
    if not path.startswith(results):
        raise ValueError(f"{path} is not under {results}")
    return cfg.path("results/report/") + path.removeprefix(results)


@dataclass(frozen=True)
class ReportFile:
    """One file of the Snakemake report: what it shows, where it goes, what it is drawn from.

    ``kind`` is ``trajectory`` / ``search_curves`` (a search), ``eval_curves`` (an
    evaluation; ``dataset="imagenet"`` with the ``source`` its cell was searched on) or
    ``table`` (a table's page). ``table`` is the table whose report job draws it.
    """

    kind: str
    path: str
    inputs: tuple[str, ...]
    table: str
    dataset: str = ""
    method: str = ""
    seed: int = 0
    source: str = ""


def report_files(cfg: Config, table: str | None = None) -> list[ReportFile]:
    """Every report file of the preset's DAG (of ``table``'s report job only, if given).

    One report job per table draws its figures in one process: a process per figure cost
    more in start-up (Python, pandas, matplotlib) than the drawing. A search used by two
    tables (CIFAR-10's row and its ImageNet transfer) is drawn once, by the first table in
    params.yaml that needs it, so each file has exactly one producing job.
    """
    files: dict[str, ReportFile] = {}

    def add(f: ReportFile) -> None:
        files.setdefault(f.path, f)

    for name, spec in cfg.tables().items():
        md = cfg.table_path(name, "md")
        add(ReportFile("table", _in_report(cfg, cfg.table_path(name, "html")), (md,), name))
        searches = [(spec["dataset"], m) for m in spec.get("methods", [])]
        searches += [(tr["source"], tr["method"]) for tr in spec.get("transfers", [])]
        for (dataset, method), seed in itertools.product(searches, cfg.seeds):
            run = cfg.search_dir(dataset, method, seed)
            inputs = (f"{run}/alphas.json", f"{run}/history.csv")
            where = _in_report(cfg, run)
            for kind, file in (("trajectory", "trajectory.png"), ("search_curves", "curves.png")):
                add(ReportFile(kind, f"{where}/{file}", inputs, name, dataset, method, seed))
        for method, seed in itertools.product(spec.get("methods", []), cfg.seeds):
            run = cfg.eval_dir(spec["dataset"], method, seed)
            path = f"{_in_report(cfg, run)}/curves.png"
            add(
                ReportFile(
                    "eval_curves",
                    path,
                    (f"{run}/history.csv",),
                    name,
                    spec["dataset"],
                    method,
                    seed,
                )
            )
        for tr, seed in itertools.product(spec.get("transfers", []), cfg.seeds):
            run = cfg.imagenet_eval_dir(tr["source"], tr["method"], seed)
            path = f"{_in_report(cfg, run)}/curves.png"
            inputs = (f"{run}/history.csv",)
            add(
                ReportFile(
                    "eval_curves", path, inputs, name, "imagenet", tr["method"], seed, tr["source"]
                )
            )
    return [f for f in files.values() if table is None or f.table == table]


def report_targets(cfg: Config) -> list[str]:
    """Every report-only file of the preset's DAG (rule ``all`` requests them)."""
    return [f.path for f in report_files(cfg)]


# --------------------------------------------------------------------------- reading


def load_history(path: str | os.PathLike[str], what: str = "history") -> pd.DataFrame:
    """A history.csv with at least one row and an ``epoch`` column, or a one-line error."""
    p = Path(path)
    if not p.is_file():
        raise MlonasError(f"{what} {p} does not exist")
    try:
        df = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise MlonasError(f"{what} {p} is not a readable CSV file: {exc}") from None
    if "epoch" not in df.columns:
        raise MlonasError(f"{what} {p} has no 'epoch' column (columns: {', '.join(df.columns)})")
    if df.empty:
        raise MlonasError(f"{what} {p} has no epochs")
    return df


def curve_columns(df: pd.DataFrame) -> tuple[list[str], list[str], list[str]]:
    """(accuracy, loss, other) numeric per-epoch columns of a history, in file order."""
    acc: list[str] = []
    loss: list[str] = []
    other: list[str] = []
    for col in df.columns:
        if col in _NOT_CURVES or not pd.api.types.is_numeric_dtype(df[col]):
            continue
        if pd.api.types.is_bool_dtype(df[col]):
            continue
        if col.endswith(_ACC_SUFFIXES) or col == "acc":
            acc.append(col)
        elif col.endswith("_loss") or col == "loss":
            loss.append(col)
        else:
            other.append(col)
    return acc, loss, other


def edge_labels(steps: int) -> list[str]:
    """Edge k of a DARTS cell as ``source → node`` (node i takes c_{k-2}, c_{k-1}, 0..i-1)."""
    names = ["$c_{k-2}$", "$c_{k-1}$"]
    labels = []
    for node in range(steps):
        for src in range(node + 2):
            labels.append(f"{names[src] if src < 2 else src - 2} → {node}")
    return labels


def stage_op_names(
    arch: dict[str, Any],
    trajectory: Sequence[dict[str, Any]],
    name: str,
    kind: str,
    where: str = "alphas",
) -> dict[int, list[list[str]] | None]:
    """``{stage: op names per edge}`` for architecture ``name``'s ``kind`` ("normal"/"reduce").

    The last stage's names are the recorded ``edge_ops_<kind>``; the first stage's are the
    recorded ``primitives`` when every edge has that many ops; stages in between are
    recovered by P-DARTS' pruning rule from the previous stage's last epoch (see the
    module docstring). A stage whose names are not consistent with the next recorded
    ones maps to ``None``.
    """
    final = [list(o) for o in arch[f"edge_ops_{kind}"]]
    primitives = list(arch.get("primitives", []))
    last_rows: dict[int, list[list[float]]] = {}
    lengths: dict[int, list[int]] = {}
    for entry in trajectory:
        st = int(entry["stage"])
        last_rows[st] = entry[name][kind]
        lengths[st] = [len(r) for r in entry[name][kind]]
    stages = sorted(last_rows)
    if [len(n) for n in final] != lengths[stages[-1]]:
        raise MlonasError(
            f"{where}: architecture {name!r}: edge_ops_{kind} does not match the number of"
            f" ops per edge of the last trajectory entry ({lengths[stages[-1]]})"
        )
    names: dict[int, list[list[str]] | None] = {stages[-1]: final}
    if len(stages) == 1:
        return names
    first = stages[0]
    chain: list[list[str]] | None = None
    if set(lengths[first]) == {len(primitives)}:
        chain = [primitives] * len(lengths[first])
    names[first] = chain
    for prev, st in itertools.pairwise(stages):
        predicted = None
        if chain is not None and len(chain) == len(lengths[st]):
            predicted = [
                prune_ops(n, r, k)
                for n, r, k in zip(chain, last_rows[prev], lengths[st], strict=True)
            ]
        if st != stages[-1]:
            names[st] = chain = predicted
        elif predicted != final:
            # The recovered names do not lead to the recorded ones: trust only records.
            for s in stages[1:-1]:
                names[s] = None
    return names


# --------------------------------------------------------------------------- drawing


def _pyplot() -> Any:
    """pyplot on the Agg backend (imported here: matplotlib is only needed to draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _stage_bounds(epochs: Sequence[int], stages: Sequence[int]) -> list[tuple[float, int]]:
    """(x, new stage) at every stage change, halfway between the two epochs."""
    out = []
    for k in range(1, len(stages)):
        if stages[k] != stages[k - 1]:
            out.append(((epochs[k - 1] + epochs[k]) / 2.0, int(stages[k])))
    return out


def _frozen_spans(df: pd.DataFrame | None) -> list[tuple[float, float]]:
    """Epoch ranges in which the architecture was not updated (PC-DARTS' warm-up)."""
    if df is None or "arch_updated" not in df.columns:
        return []
    flags = df["arch_updated"].astype(str).str.lower().isin(["false", "0"])
    return [(float(e) - 0.5, float(e) + 0.5) for e, f in zip(df["epoch"], flags, strict=True) if f]


def _decorate(ax: Any, bounds: list[tuple[float, int]], frozen: list[tuple[float, float]]) -> None:
    """Stage boundaries (dotted) and epochs without architecture updates (grey)."""
    for k, (x, _) in enumerate(bounds):
        ax.axvline(x, color="#777777", ls=":", lw=1, label="stage boundary" if k == 0 else None)
    for k, (a, b) in enumerate(frozen):
        ax.axvspan(a, b, color="#dddddd", alpha=0.6, lw=0, label="no α update" if k == 0 else None)


def plot_trajectory(
    alphas_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    history_path: str | os.PathLike[str] | None = None,
    title: str = "",
) -> None:
    """softmax(α) per edge over epochs for every architecture of a search (one PNG); for
    MSR-DARTS (derivation ``min_stable_rank``) the mean stable ranks it records instead.

    Rows: each architecture (the selected one first) x normal / reduction cell; columns:
    the cell's edges. Lines: one per op name, coloured the same in every panel.
    """
    where = f"alphas file {alphas_path}"
    # Only the trajectory and the op names are drawn: a partial record (no raw alphas) still
    # draws, so this reads the file as it is rather than against the alphas schema.
    record = read_json(alphas_path, "alphas file")
    try:
        archs: dict[str, Any] = record["architectures"]
        traj: list[dict[str, Any]] = record["trajectory"]
        selected = record["selected"]
    except (KeyError, TypeError):
        raise MlonasError(
            f"{where} lacks 'architectures', 'selected' or 'trajectory'"
            " (written by an older mlonas search?)"
        ) from None
    if not traj:
        raise MlonasError(f"{where} has an empty trajectory")
    names = [selected, *sorted(n for n in archs if n != selected)]
    for n in names:
        if n not in archs or any(n not in e for e in traj):
            raise MlonasError(f"{where}: architecture {n!r} missing from the trajectory")
    history = load_history(history_path, "search history") if history_path else None

    epochs = [int(e["epoch"]) for e in traj]
    stages = [int(e["stage"]) for e in traj]
    bounds = _stage_bounds(epochs, stages)
    # MSR-DARTS learns no alpha: its trajectory holds each cell type's mean stable rank
    # (the smallest wins), and no epoch "updates" an architecture, so none is greyed.
    stable_rank = archs[selected].get("derivation") == "min_stable_rank"
    frozen = [] if stable_rank else _frozen_spans(history)
    primitives = list(archs[selected].get("primitives", []))
    plt = _pyplot()
    from matplotlib import ticker

    cmap = plt.get_cmap("tab10")
    colors: dict[str, Any] = {op: cmap(i % 10) for i, op in enumerate(primitives)}

    panels: list[tuple[str, str, list[str], dict[int, list[list[str]] | None]]] = []
    try:
        for n in names:
            steps = int(archs[n]["steps"])
            for kind in ("normal", "reduce"):
                op_names = stage_op_names(archs[n], traj, n, kind, where)
                n_edges = len(archs[n][f"edge_ops_{kind}"])
                if n_edges != len(edge_labels(steps)):
                    raise MlonasError(
                        f"{where}: architecture {n!r} has {n_edges} {kind} edges, a cell of"
                        f" {steps} steps has {len(edge_labels(steps))}"
                    )
                panels.append((n, kind, edge_labels(steps), op_names))
    except (KeyError, TypeError, IndexError) as exc:
        raise MlonasError(f"{where} is malformed: {type(exc).__name__}: {exc}") from None
    # Each (architecture, cell) block has one panel per edge, wrapped after MAX_COLS edges
    # (a paper cell has 14) so that the figure stays readable at the report's width.
    n_cols = min(max(len(p[2]) for p in panels), MAX_COLS)
    block_rows = [math.ceil(len(p[2]) / n_cols) for p in panels]
    fig, axes = plt.subplots(
        sum(block_rows),
        n_cols,
        figsize=(1.9 * n_cols + 1.0, 1.6 * sum(block_rows) + 1.4),
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    marker = "o" if len(epochs) <= 20 else None
    missing: list[str] = []
    top = 0
    for b, (n, kind, labels, op_names) in enumerate(panels):
        for st, ops in op_names.items():
            if ops is None:
                missing.append(f"{n} {kind} stage {st}")
        for slot in range(block_rows[b] * n_cols):
            ax = axes[top + slot // n_cols][slot % n_cols]
            if slot >= len(labels):
                ax.axis("off")
                continue
            c = slot
            _decorate(ax, bounds, frozen)
            for st, ops in op_names.items():
                if ops is None:
                    continue
                idx = [k for k, s in enumerate(stages) if s == st]
                for j, op in enumerate(ops[c]):
                    ys = [float(traj[k][n][kind][c][j]) for k in idx]
                    xs = [epochs[k] for k in idx]
                    colors.setdefault(op, cmap(len(colors) % 10))
                    ax.plot(xs, ys, color=colors[op], lw=1.3, marker=marker, ms=3, label=op)
            ax.set_title(labels[c], fontsize=8)
            if slot % n_cols == 0:
                cell = "normal" if kind == "normal" else "reduction"
                ax.set_ylabel(f"{n}\n{cell}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.set_ylim(bottom=0.0)
        top += block_rows[b]
    for ax in axes[-1]:
        ax.set_xlabel("epoch", fontsize=8)
    handles = [
        plt.Line2D([], [], color=col, lw=2, label=op)
        for op, col in colors.items()
        if any(
            ops is not None and any(op in e for e in ops)
            for _, _, _, on in panels
            for ops in on.values()
        )
    ]
    notes = []
    if stable_rank:
        notes.append("lines: mean stable rank over the cells of each type (no α; lowest wins)")
    if bounds:
        notes.append(
            "dotted lines: stage boundaries (ops pruned, α re-initialised; softmax over the"
            " remaining ops)"
        )
    if frozen:
        notes.append("grey: epochs without architecture updates")
    if missing:
        notes.append("op names not recoverable for: " + ", ".join(missing))
    head = "\n".join([t for t in (title, "; ".join(notes)) if t])
    height = fig.get_figheight()
    fig.suptitle(head, y=1 - 0.1 / height, fontsize=9, va="top")
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 8), fontsize=8)
    # Fixed margins in inches rather than tight_layout: with a panel per edge, tight_layout's
    # measuring of every tick label was half of the report job's time.
    width, top_in = fig.get_figwidth(), 0.45 + 0.18 * head.count("\n")
    fig.subplots_adjust(
        left=0.85 / width,
        right=1 - 0.12 / width,
        bottom=0.85 / height,
        top=1 - (top_in + 0.25) / height,
        wspace=0.12,
        hspace=0.55,
    )
    for ax in axes.flat:
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    atomic_savefig(fig, out, dpi=DPI)
    plt.close(fig)


def plot_curves(
    history_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    title: str = "",
    what: str = "history",
) -> None:
    """Accuracy, loss (and any other per-epoch number) against epoch, one panel each."""
    df = load_history(history_path, what)
    acc, loss, other = curve_columns(df)
    if not acc and not loss:
        raise MlonasError(f"{what} {history_path} has no accuracy or loss columns")
    groups = [
        (cols, label)
        for cols, label in (
            (acc, "accuracy (%)"),
            (loss, "loss"),
            (other, "other"),
        )
        if cols
    ]
    stages = df["stage"].tolist() if "stage" in df.columns else [1] * len(df)
    bounds = _stage_bounds(df["epoch"].tolist(), stages)
    frozen = _frozen_spans(df)
    plt = _pyplot()
    from matplotlib import ticker

    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 3.8), squeeze=False)
    marker = "o" if len(df) <= 20 else None
    for ax, (cols, label) in zip(axes[0], groups, strict=True):
        _decorate(ax, bounds, frozen)
        for col in cols:
            style = "--" if "train" in col else "-"
            ax.plot(df["epoch"], df[col], ls=style, marker=marker, ms=3, lw=1.3, label=col)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, out, dpi=DPI)
    plt.close(fig)


# --------------------------------------------------------------------------- tables

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; font-size: 14px; margin: 1.5em; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #bbb; padding: 0.25em 0.5em; text-align: left; }}
th {{ background: #f0f0f0; }}
</style></head>
<body>
{body}
<p style="color:#777">Rendered from {source}.</p>
</body></html>
"""


def write_table_html(md_path: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
    """A standalone HTML page of a table's Markdown rendering (no scripts, no links)."""
    from markdown_it import MarkdownIt

    p = Path(md_path)
    if not p.is_file():
        raise MlonasError(f"table {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        # `mlonas table` writes UTF-8; anything else is a foreign or damaged file
        raise MlonasError(f"table {p} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise MlonasError(f"table {p} cannot be read: {exc.strerror or exc}") from None
    # html=False: the Markdown is rendered, any raw HTML in it is escaped.
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(text)
    first = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("#")), "")
    atomic_write_text(
        out,
        _PAGE.format(title=html.escape(first or p.stem), body=body, source=html.escape(p.name)),
    )


# --------------------------------------------------------------------------- the stage


def _title(cfg: Config, method: str, where: str, seed: int) -> str:
    demo = " — DEMO stand-in data" if cfg.is_demo else ""
    return f"{cfg.method(method).label} ({method}), seed {seed}: {where}{demo}"


def draw(cfg: Config, f: ReportFile) -> None:
    """Draw one report file from its inputs."""
    if f.kind == "table":
        write_table_html(f.inputs[0], f.path)
        return
    if f.kind in ("trajectory", "search_curves"):
        alphas, history = f.inputs
        title = _title(cfg, f.method, f"searched on {f.dataset}", f.seed)
        if f.kind == "trajectory":
            plot_trajectory(alphas, f.path, history_path=history, title=title)
        else:
            plot_curves(history, f.path, title=title, what="search history")
        return
    where = f"trained on {f.dataset}" + (f" (cell searched on {f.source})" if f.source else "")
    df = load_history(f.inputs[0], "evaluation history")
    if "test_top1" in df.columns:
        where += f"; final test top-1 {float(df.iloc[-1]['test_top1']):.2f}%"
    title = _title(cfg, f.method, where, f.seed)
    plot_curves(f.inputs[0], f.path, title=title, what="evaluation history")


def draw_report(cfg: Config, table: str) -> list[str]:
    """The ``figures`` stage: every report file of ``table``'s report job; their paths."""
    files = report_files(cfg, table)
    for f in files:
        draw(cfg, f)
    return [f.path for f in files]
