"""Tables 2-4 of the papers, rebuilt from per-seed artifacts, with the papers' numbers beside
ours; and table 5, the methods of their related-work list, the same way.

One row per method (tables 2 and 3) or per transferred cell (table 4), in the order
params.yaml lists them, so that a table diffs cleanly across revisions. Table 5 has both:
its CIFAR-10 rows (``baselines``, then ``methods``), then its ImageNet ``transfers``; each
row's ``dataset`` says which. Each row says
how many of the requested seeds it is built from (``n`` of ``n_requested``): a seed
whose ``metrics.json`` is missing is never silently dropped, it shows up as a smaller
``n``, and a method with no results at all still gets its row with ``n = 0``.

Choices a reader of the tables should know about (they are also footnoted in the
Markdown rendering):

- ``n`` counts the seeds whose ``metrics.json`` was found, diverged runs included. A
  diverged seed is listed in ``seeds`` and counted in ``diverged`` but excluded from the
  error statistics, because its "error" measures the blow-up, not the architecture.
  Parameter counts and search costs do not depend on how evaluation training went, so
  they average over every found seed.
- ``top1_error_std`` is the sample standard deviation (ddof=1) over the non-diverged
  seeds and is left empty below two of them: a spread of one number is not zero.
- The search cost is *measured*, not quoted: ``wall_time_s * device.count / 86400``
  from each search run's ``provenance.json``. The unit follows the device, so a CPU
  run is reported in CPU-days and never passes for GPU-days. For ImageNet transfers the
  cost is that of the CIFAR search that produced the transferred cell.
- Reported numbers come from the packaged ``reference/reported.csv`` (copied from the
  papers), looked up by (table number, method label); transfer labels carry the source
  dataset, e.g. ``"P-DARTS (CIFAR-100)"``. Table 5's rows name their source and version
  as the ``paper`` (``drnas-iclr2021``, ``drnas-arxiv-v1``), each cited in its note.
  When both papers report a method the values are taken once and both papers are
  credited; where they disagree the first paper's value is shown and ``reported_note``
  says so.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from io import StringIO
from pathlib import Path
from typing import Any

import pandas as pd

from mlonas.artifacts import load_artifact
from mlonas.config import TABLE_DATASET, TABLES, Config, table_methods
from mlonas.errors import MlonasError
from mlonas.io import atomic_write_text, read_json
from mlonas.report.stats import CONFIDENCE, MIN_SEEDS, mean, std, welch_compare

DISPLAY = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet"}
NOT_REPORTED = "not reported in the papers"
DEMO_DATA = "DEMO: offline stand-in (scikit-learn digits), not {name}"

#: CSV columns, in order. ``source`` is the dataset the cell was searched on (the table's
#: dataset for tables 2/3, the CIFAR source for table 4), so a row leads back to its
#: search runs without parsing the label.
COLUMNS = [
    "method",
    "slug",
    "dataset",
    "source",
    "data",
    "n",
    "n_requested",
    "seeds",
    "top1_error_mean",
    "top1_error_std",
    "top5_error_mean",
    "top5_error_std",
    "params_m_mean",
    "search_cost_days_mean",
    "search_device",
    "diverged",
    "reported_error_mean",
    "reported_error_std",
    "reported_top5_error",
    "reported_params_m",
    "reported_search_cost_gpu_days",
    "reported_by",
    "reported_note",
    # scheme rows (LeaSE, SGL) against their plain base row; see mlonas.report.stats
    "scheme",
    "vs_base",
    "diff_mean",
    "diff_ci_low",
    "diff_ci_high",
    "welch_t",
    "welch_df",
    "p_value",
    "stats_note",
]

#: reported.csv column -> our column; the order is the order disagreements are noted in.
_REPORTED_VALUES = {
    "error_mean": ("reported_error_mean", "top-1 error"),
    "error_std": ("reported_error_std", "top-1 error std"),
    "top5_error": ("reported_top5_error", "top-5 error"),
    "params_m": ("reported_params_m", "params (M)"),
    "search_cost_gpu_days": ("reported_search_cost_gpu_days", "search cost (GPU-days)"),
}
_REPORTED_COLUMNS = ["paper", "table", "dataset", "method", *_REPORTED_VALUES, "note"]


# --------------------------------------------------------------------------- reported


@cache
def _reported_text() -> str:
    return resources.files("mlonas").joinpath("reference/reported.csv").read_text("utf-8")


def load_reported() -> pd.DataFrame:
    """The papers' numbers, from the copy shipped in the package (no ``../shared`` needed).

    Numeric columns are floats (NaN where a paper gives no value), ``table`` is an int
    and ``note`` is a string ("" where there is none).
    """
    where = "packaged reference/reported.csv"
    try:
        df = pd.read_csv(
            StringIO(_reported_text()),
            dtype={"paper": str, "dataset": str, "method": str, "note": str},
            keep_default_na=False,
            na_values={k: [""] for k in ("table", *_REPORTED_VALUES)},
        )
    except (ValueError, pd.errors.ParserError) as exc:
        raise MlonasError(f"{where} cannot be parsed: {exc}") from None
    missing = [c for c in _REPORTED_COLUMNS if c not in df.columns]
    if missing:
        raise MlonasError(f"{where}: missing column(s) {', '.join(missing)}")
    df = df[_REPORTED_COLUMNS].copy()
    df["table"] = df["table"].astype(int)
    for col in _REPORTED_VALUES:
        df[col] = df[col].astype(float)
    return df


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def reported_row(reported: pd.DataFrame, table_no: int, label: str) -> dict[str, Any]:
    """The papers' values for one (table, method label), merged over the papers.

    For each value the first paper (file order) that gives one wins; a second paper
    giving a *different* value is named in the note, so no disagreement is hidden.
    """
    rows = reported[(reported["table"] == table_no) & (reported["method"] == label)]
    out: dict[str, Any] = {col: math.nan for col, _ in _REPORTED_VALUES.values()}
    if rows.empty:
        out.update(reported_by="", reported_note=NOT_REPORTED)
        return out
    papers = list(dict.fromkeys(rows["paper"]))
    notes: list[str] = []
    for src, (col, what) in _REPORTED_VALUES.items():
        given = [
            (p, float(v))
            for p, v in zip(rows["paper"], rows[src], strict=True)
            if not math.isnan(v)
        ]
        if not given:
            continue
        first_paper, first = given[0]
        out[col] = first
        others = [(p, v) for p, v in given[1:] if not _same(v, first)]
        if others:
            alt = ", ".join(f"{p} reports {v:g}" for p, v in others)
            notes.append(
                f"papers disagree on {what}: {first_paper} reports {first:g}, {alt};"
                f" {first_paper}'s value shown"
            )
    paper_notes = [(p, n) for p, n in zip(rows["paper"], rows["note"], strict=True) if n]
    if len({n for _, n in paper_notes}) == 1 and len(paper_notes) == len(rows):
        notes.insert(0, paper_notes[0][1])
    else:
        notes[:0] = [f"{p}: {n}" for p, n in paper_notes]
    out.update(reported_by=";".join(papers), reported_note="; ".join(notes))
    return out


# --------------------------------------------------------------------------- our runs


@dataclass(frozen=True)
class TableRow:
    """What one table row is built from: a method and where its runs live."""

    slug: str
    label: str
    dataset: str  # the dataset the error is measured on
    source: str  # the dataset the cell was searched on


@dataclass(frozen=True)
class SeedRun:
    seed: int
    top1: float | None
    top5: float | None
    params_m: float
    diverged: bool


def table_rows(cfg: Config, table: str) -> list[TableRow]:
    if table not in TABLES:
        raise MlonasError(f"unknown table {table!r} (expected one of {', '.join(TABLES)})")
    spec = cfg.tables().get(table)
    if spec is None:
        raise MlonasError(f"params: tables.{table}: not configured in preset {cfg.preset!r}")
    dataset = spec["dataset"]
    rows = [
        TableRow(slug, cfg.method(slug).label, dataset, dataset) for slug in table_methods(spec)
    ]
    # transfers: the cell searched on a CIFAR dataset, evaluated on ImageNet
    rows += [
        TableRow(
            tr["method"],
            f"{cfg.method(tr['method']).label} ({DISPLAY[tr['source']]})",
            "imagenet",
            tr["source"],
        )
        for tr in spec.get("transfers", [])
    ]
    return rows


def metrics_path(cfg: Config, row: TableRow, seed: int) -> str:
    if row.dataset == "imagenet":
        return os.path.join(cfg.imagenet_eval_dir(row.source, row.slug, seed), "metrics.json")
    return os.path.join(cfg.eval_dir(row.dataset, row.slug, seed), "metrics.json")


def _number(obj: dict[str, Any], key: str, where: str) -> float:
    """A finite number from a JSON record, or a one-line error naming the file and key."""
    val = obj.get(key)
    if isinstance(val, bool) or not isinstance(val, int | float) or not math.isfinite(val):
        raise MlonasError(f"{where}: {key} must be a finite number, got {val!r}")
    return float(val)


def _optional_number(obj: dict[str, Any], key: str, where: str) -> float | None:
    """Like :func:`_number`, but null/absent means "not measured" (e.g. CIFAR top-5)."""
    return None if obj.get(key) is None else _number(obj, key, where)


def read_metrics(path: str, slug: str, seed: int) -> SeedRun:
    where = f"metrics file {path}"
    m = load_artifact(path, "metrics")  # its shape: mlonas/schemas/metrics.schema.json
    diverged = m.get("diverged", False)
    # A record filed under the wrong seed/method would corrupt a table silently.
    if "seed" in m and m["seed"] != seed:
        raise MlonasError(f"{where}: records seed {m['seed']!r} but lies under seed {seed}")
    if "method" in m and m["method"] != slug:
        raise MlonasError(f"{where}: records method {m['method']!r} but lies under {slug!r}")
    if diverged:
        # The error of a diverged run is excluded from every statistic, so whatever the
        # trainer managed to write there (null, NaN, a huge number) is not an error.
        return SeedRun(seed, None, None, _number(m, "params_m", where), True)
    return SeedRun(
        seed=seed,
        top1=_number(m, "top1_error", where),
        top5=_optional_number(m, "top5_error", where),
        params_m=_number(m, "params_m", where),
        diverged=False,
    )


def _search_cost(cfg: Config, row: TableRow, seed: int) -> tuple[float, str] | None:
    """(device-days, device string) of the search behind ``seed``; None if never recorded."""
    path = os.path.join(cfg.search_dir(row.source, row.slug, seed), "provenance.json")
    if not Path(path).is_file():
        return None
    where = f"search provenance {path}"
    prov = read_json(path, "search provenance")
    dev = prov.get("device") if isinstance(prov, dict) else None
    if not isinstance(dev, dict) or not isinstance(dev.get("type"), str):
        raise MlonasError(f"{where}: device must be an object with a type")
    count = dev.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise MlonasError(f"{where}: device.count must be a positive integer, got {count!r}")
    wall = _number(prov, "wall_time_s", where)
    if wall < 0:
        raise MlonasError(f"{where}: wall_time_s must be >= 0, got {wall!r}")
    kind = dev["type"]
    name = dev.get("name")
    device = kind if kind == "cpu" or not name else f"{kind}:{name}"
    return wall * count / 86400.0, device


def _data_words(cfg: Config, dataset: str) -> str:
    name = DISPLAY[dataset]
    if cfg.is_demo or cfg.dataset(dataset)["source"] == "demo":
        return DEMO_DATA.format(name=name)
    return name


def _requested_paths(cfg: Config, rows: list[TableRow]) -> set[str]:
    return {os.path.normpath(metrics_path(cfg, r, s)) for r in rows for s in cfg.seeds}


def build_table(
    cfg: Config, table: str, metrics_paths: Sequence[str] | None = None
) -> pd.DataFrame:
    """Assemble ``table`` (a name of :data:`~mlonas.config.TABLES`) as a DataFrame with
    :data:`COLUMNS`.

    ``metrics_paths`` restricts which ``metrics.json`` files are read (a Snakemake rule
    passes its declared inputs, so the table depends on exactly those): each must be one
    of the table's per-seed paths, and an expected path not listed counts as missing.
    Without it, every requested seed whose ``metrics.json`` exists is read.
    """
    rows = table_rows(cfg, table)
    allowed: set[str] | None = None
    if metrics_paths is not None:
        expected = _requested_paths(cfg, rows)
        allowed = {os.path.normpath(str(p)) for p in metrics_paths}
        stray = sorted(allowed - expected)
        if stray:
            raise MlonasError(f"{stray[0]}: not a metrics file of {table} in preset {cfg.preset!r}")
    reported = load_reported()
    table_no = int(table.removeprefix("table"))
    records = []
    errors: list[list[float]] = []  # per row: the top-1 errors its mean is taken over
    for row in rows:
        runs: list[SeedRun] = []
        for seed in cfg.seeds:
            path = metrics_path(cfg, row, seed)
            wanted = allowed is None or os.path.normpath(path) in allowed
            if wanted and (allowed is not None or Path(path).is_file()):
                runs.append(read_metrics(path, row.slug, seed))
        good = [r for r in runs if not r.diverged]
        top1 = [r.top1 for r in good if r.top1 is not None]
        top5 = [r.top5 for r in good if r.top5 is not None]
        costs = [c for c in (_search_cost(cfg, row, r.seed) for r in runs) if c is not None]
        rec: dict[str, Any] = {
            "method": row.label,
            "slug": row.slug,
            "dataset": row.dataset,
            "source": row.source,
            "data": _data_words(cfg, row.dataset),
            "n": len(runs),
            "n_requested": len(cfg.seeds),
            "seeds": ";".join(str(r.seed) for r in runs),
            "top1_error_mean": mean(top1),
            "top1_error_std": std(top1),
            "top5_error_mean": mean(top5),
            "top5_error_std": std(top5),
            "params_m_mean": mean([r.params_m for r in runs]),
            "search_cost_days_mean": mean([c for c, _ in costs]),
            "search_device": ";".join(sorted({d for _, d in costs})),
            "diverged": sum(r.diverged for r in runs),
        }
        rec.update(reported_row(reported, table_no, row.label))
        records.append(rec)
        errors.append(top1)
    _compare_with_base(cfg, rows, records, errors)
    df = pd.DataFrame.from_records(records, columns=COLUMNS)
    for col in ("n", "n_requested", "diverged"):
        df[col] = df[col].astype(int)
    return df


def base_row_index(cfg: Config, rows: Sequence[TableRow], i: int) -> int | None:
    """The row a scheme row is compared with: the first plain row of the same table with
    the same base and order (and, in table 4, cells searched on the same dataset).

    ``None`` for plain rows and for scheme rows whose base is not in the table.
    """
    m = cfg.method(rows[i].slug)
    if m.scheme == "plain":
        return None
    for j, other in enumerate(rows):
        o = cfg.method(other.slug)
        if (o.scheme, o.base, o.order, other.source) == ("plain", m.base, m.order, rows[i].source):
            return j
    return None


#: CSV column -> field of :class:`mlonas.report.stats.Comparison` it shows.
_STATS = {
    "diff_mean": "diff_mean",
    "diff_ci_low": "ci_low",
    "diff_ci_high": "ci_high",
    "welch_t": "t",
    "welch_df": "df",
    "p_value": "p_value",
    "stats_note": "note",
}


def _compare_with_base(
    cfg: Config, rows: Sequence[TableRow], records: list[dict[str, Any]], errors: list[list[float]]
) -> None:
    """Fill the statistics columns of every scheme row in place (see mlonas.report.stats)."""
    for i, rec in enumerate(records):
        m = cfg.method(rows[i].slug)
        rec.update(dict.fromkeys(_STATS, math.nan), scheme=m.scheme, vs_base="", stats_note="")
        if m.scheme == "plain":
            continue
        j = base_row_index(cfg, rows, i)
        if j is None:
            where = f", searched on {rows[i].source}" if rows[i].dataset != rows[i].source else ""
            rec["stats_note"] = (
                f"no plain row with base {m.base} and order {m.order}{where} in this table"
            )
            continue
        c = welch_compare(errors[i], errors[j])
        rec.update({col: getattr(c, field) for col, field in _STATS.items()}, vs_base=rows[j].label)


# --------------------------------------------------------------------------- rendering


def cost_unit(search_device: str) -> str:
    """The unit a measured search cost is in: GPU-days only when every run used CUDA."""
    kinds = {d.split(":", 1)[0] for d in search_device.split(";") if d}
    if kinds == {"cuda"}:
        return "GPU-days"
    if kinds == {"cpu"}:
        return "CPU-days"
    return "device-days (mixed devices)" if kinds else ""


def _fmt(x: Any, digits: int = 2) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pm(mean: float, std: float, digits: int = 2) -> str:
    if math.isnan(mean):
        return "—"
    return _fmt(mean, digits) if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


OURS_HEADER = "Ours: top-1 (mean ± std, n=found/requested)"
DIFF_HEADER = "Ours vs base: Δ top-1 [95% CI], Welch's t-test"
STATS_HEADER = (
    "Statistics: ours are the mean ± sample std (ddof=1) of the top-1 error over the seeds"
    " found. For each multi-level scheme row (LeaSE, SGL, LBT, IL), Δ is its mean top-1 error minus"
    " that of its base row (the plain method with the same base and order; in table 4 also"
    " searched on the same dataset), in percentage points (negative: the scheme's cells"
    f" err less), with a {CONFIDENCE:.0%} confidence interval (Welch–Satterthwaite) and the"
    " p-value of Welch's two-sided t-test (unequal variances) over seeds; diverged seeds"
    f" are excluded and the test needs at least {MIN_SEEDS} seeds on each side."
)


def _diff_cell(r: Any) -> str:
    """The Δ column: the comparison with the base row, or why there is none."""
    if r.scheme == "plain":
        return "—"
    if not r.vs_base:
        return f"— ({r.stats_note})"
    vs = f"vs {r.vs_base}"
    if math.isnan(r.diff_mean):
        return f"— {vs} ({r.stats_note})"
    if math.isnan(r.p_value):
        return f"{r.diff_mean:+.2f} {vs} ({r.stats_note})"
    p = "p < 0.001" if r.p_value < 0.001 else f"p = {r.p_value:.3f}"
    return (
        f"{r.diff_mean:+.2f} [{r.diff_ci_low:+.2f}, {r.diff_ci_high:+.2f}] {vs};"
        f" t({r.welch_df:.1f}) = {r.welch_t:.2f}, {p}"
    )


def render_markdown(cfg: Config, table: str, df: pd.DataFrame) -> str:
    """GitHub-style Markdown of a table built by :func:`build_table` (tabulate's pipe format)."""
    # top-5 where ImageNet rows are (table 4; table 5's transfers)
    top5 = table == "table4" or bool((df["dataset"] == "imagenet").any())
    header = [
        "Method",
        OURS_HEADER,
        "Papers: top-1",
        DIFF_HEADER,
    ]
    if top5:
        header += ["Ours: top-5", "Papers: top-5"]
    header += [
        "Params (M) ours",
        "Params (M) papers",
        "Search cost ours",
        "Search cost papers (GPU-days)",
        "Reported by",
    ]
    notes: dict[str, int] = {}
    body = []
    for r in df.itertuples(index=False):
        ours = f"{_pm(r.top1_error_mean, r.top1_error_std)} (n={r.n}/{r.n_requested})"
        if r.diverged:
            ours += f", {r.diverged} diverged (excluded)"
        if r.n < r.n_requested:
            ours += f"; {r.n} of {r.n_requested} requested seeds"
        method = r.method
        if r.reported_note:
            k = notes.setdefault(r.reported_note, len(notes) + 1)
            method = f"{method} [{k}]"
        cost = _fmt(r.search_cost_days_mean, 4)
        if cost != "—":
            cost = f"{r.search_cost_days_mean:.3g} {cost_unit(r.search_device)} ({r.search_device})"
        line = [method, ours, _pm(r.reported_error_mean, r.reported_error_std), _diff_cell(r)]
        if top5:
            line += [_pm(r.top5_error_mean, r.top5_error_std), _fmt(r.reported_top5_error, 1)]
        line += [
            # 3 significant digits: 3.35 M at paper size, 0.00618 M for the demo's tiny nets
            "—" if _fmt(r.params_m_mean) == "—" else f"{r.params_m_mean:.3g}",
            _fmt(r.reported_params_m, 1),
            cost,
            _fmt(r.reported_search_cost_gpu_days, 1),
            r.reported_by.replace(";", ", ") or "—",
        ]
        body.append(line)
    lines: list[str] = []
    if cfg.is_demo or any(str(d).startswith("DEMO") for d in df["data"]):
        lines += [
            "**DEMO numbers: computed on the offline stand-in data (scikit-learn digits)"
            " with tiny networks and a few epochs; they are NOT comparable to the papers'"
            " numbers.**",
            "",
        ]
    lines += [f"# {TABLES[table][1]}", ""]
    data = ", ".join(dict.fromkeys(df["data"])) or DISPLAY[TABLE_DATASET[table]]
    seeds = ", ".join(str(s) for s in cfg.seeds)
    lines += [f"Data: {data}. Preset: `{cfg.preset}`, seeds {seeds}.", "", STATS_HEADER, ""]
    baselines = cfg.tables()[table].get("baselines", [])
    if baselines:
        shown = ", ".join(cfg.method(slug).label for slug in baselines)
        lines += [
            f"Baseline rows ({shown}) show the runs of the {DISPLAY[TABLE_DATASET[table]]}"
            " table that declares them (the same searches and evaluations).",
            "",
        ]
    grid = pd.DataFrame([[_cell(str(c)) for c in line] for line in body], columns=header)
    # disable_numparse: every cell is already formatted text; tabulate must not reformat
    # "0.00618" as a number or right-align the numeric-looking columns
    grid.columns = [_cell(h) for h in header]
    lines.append(grid.to_markdown(index=False, disable_numparse=True))
    lines += [
        "",
        "Diverged seeds are counted in n but excluded from every statistic. Search cost is"
        " measured:"
        " wall time × device count / 86400, in the unit of the device it ran on"
        + (" (the CIFAR search that produced the transferred cell)." if top5 else "."),
    ]
    if notes:
        lines += ["", "Notes:", ""]
        lines += [f"{k}. {_cell(text)}" for text, k in notes.items()]
    return "\n".join(lines) + "\n"


def to_csv_text(df: pd.DataFrame) -> str:
    """CSV bytes of a table: no index, empty cells for missing values, %.6g floats."""
    return df.to_csv(index=False, float_format="%.6g", na_rep="", lineterminator="\n")


def write_table(
    cfg: Config,
    table: str,
    out_csv: str | os.PathLike[str],
    out_md: str | os.PathLike[str],
    metrics_paths: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Build ``table`` and write its CSV and Markdown atomically; returns the DataFrame."""
    df = build_table(cfg, table, metrics_paths)
    md = render_markdown(cfg, table, df)
    atomic_write_text(out_csv, to_csv_text(df))
    atomic_write_text(out_md, md)
    return df
