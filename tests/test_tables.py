"""Tables 2-4 from tiny fake result trees: statistics, missing/diverged seeds, the papers' join."""

from __future__ import annotations

import json
import math
import statistics
from io import StringIO
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from scipy import stats

from mlonas.config import Config, load_raw, resolve_preset
from mlonas.errors import MlonasError
from mlonas.report import stats as stats_mod
from mlonas.report import tables
from mlonas.report.stats import welch_compare
from mlonas.report.tables import COLUMNS, build_table, load_reported, write_table

REPO = Path(__file__).resolve().parents[1]
SHARED_REPORTED = REPO.parent / "shared" / "reference" / "reported.csv"


def _cfg(tmp_path: Path, preset: str = "demo", seeds: list[int] | None = None) -> Config:
    """The repo's params with our own method list, so the tests do not depend on which
    methods params.yaml happens to enable, and every artifact under ``tmp_path``."""
    params = resolve_preset(load_raw(REPO / "params.yaml"), preset)
    params["root"] = f"{tmp_path}/"
    params["seeds"] = seeds if seeds is not None else [0, 1, 2]
    plain = {"order": "first", "scheme": "plain", "search": {}}
    params["methods"] = {
        "darts-1st": {"label": "DARTS-1st", "base": "darts", **plain},
        "darts-2nd": {"label": "DARTS-2nd", "base": "darts", **plain, "order": "second"},
        "darts-minus": {"label": "DARTS-", "base": "darts_minus", **plain},
        "my-new": {"label": "My-New-Method", "base": "darts", **plain},
    }
    params["tables"] = {
        "table2": {"dataset": "cifar100", "methods": ["darts-1st", "my-new"]},
        "table3": {"dataset": "cifar10", "methods": ["darts-1st", "darts-minus"]},
        "table4": {
            "dataset": "imagenet",
            "transfers": [
                {"source": "cifar10", "method": "darts-2nd"},
                {"source": "cifar100", "method": "darts-1st"},
            ],
        },
    }
    return Config(params)


def _write(path: str | Path, obj: Any) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)


def _metrics(
    cfg: Config,
    dataset: str,
    method: str,
    seed: int,
    top1: float | None,
    *,
    top5: float | None = None,
    params_m: float = 1.5,
    diverged: bool = False,
    source: str | None = None,
) -> None:
    rec = {
        "top1_error": top1,
        "top5_error": top5,
        "params_m": params_m,
        "epochs": 2,
        "wall_time_s": 1.0,
        "diverged": diverged,
        "dataset": dataset,
        "method": method,
        "seed": seed,
        "provenance": {"device": {"type": "cpu", "name": "x", "count": 1}},
    }
    if source:
        d = cfg.imagenet_eval_dir(source, method, seed)
    else:
        d = cfg.eval_dir(dataset, method, seed)
    _write(f"{d}/metrics.json", rec)


def _search(
    cfg: Config,
    dataset: str,
    method: str,
    seed: int,
    wall: float,
    dtype: str = "cpu",
    name: str = "x86_64",
    count: int = 1,
) -> None:
    _write(
        f"{cfg.search_dir(dataset, method, seed)}/provenance.json",
        {
            "wall_time_s": wall,
            "device": {"type": dtype, "name": name, "count": count},
            "seed": seed,
        },
    )


def _row(df: pd.DataFrame, method: str) -> pd.Series:
    rows = df[df["method"] == method]
    assert len(rows) == 1, df["method"].tolist()
    return rows.iloc[0]


def test_mean_std_n_and_reported_join_table2(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    errs = [21.0, 20.0, 22.5]
    for seed, e in enumerate(errs):
        _metrics(cfg, "cifar100", "darts-1st", seed, e, params_m=1.0 + seed)
    df = build_table(cfg, "table2")
    assert list(df.columns) == COLUMNS
    assert df["method"].tolist() == ["DARTS-1st", "My-New-Method"]  # params order
    r = _row(df, "DARTS-1st")
    assert (r["n"], r["n_requested"], r["seeds"], r["diverged"]) == (3, 3, "0;1;2", 0)
    assert r["top1_error_mean"] == pytest.approx(sum(errs) / 3)
    # sample std by hand: deviations -0.1667, -1.1667, 1.3333 -> sqrt(3.1667 / 2)
    assert r["top1_error_std"] == pytest.approx(math.sqrt(3.1666666667 / 2))
    assert r["top1_error_std"] == pytest.approx(statistics.stdev(errs))
    assert r["params_m_mean"] == pytest.approx(2.0)
    assert (r["reported_error_mean"], r["reported_error_std"]) == (20.52, 0.31)
    assert r["reported_params_m"] == 1.8
    assert r["reported_by"] == "lease;sgl"
    assert math.isnan(r["top5_error_mean"])


def test_method_not_in_papers_and_without_results_still_listed(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    r = _row(build_table(cfg, "table2"), "My-New-Method")
    assert (r["n"], r["n_requested"], r["seeds"]) == (0, 3, "")
    assert math.isnan(r["top1_error_mean"]) and math.isnan(r["reported_error_mean"])
    assert r["reported_by"] == ""
    assert r["reported_note"] == "not reported in the papers"


def test_missing_seed_gives_smaller_n_and_no_std_below_two(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    _metrics(cfg, "cifar10", "darts-1st", 0, 3.5)
    _metrics(cfg, "cifar10", "darts-1st", 2, 2.5)
    _metrics(cfg, "cifar10", "darts-minus", 1, 2.9)
    df = build_table(cfg, "table3")
    r = _row(df, "DARTS-1st")
    assert (r["n"], r["n_requested"], r["seeds"]) == (2, 3, "0;2")
    assert r["top1_error_mean"] == pytest.approx(3.0)
    assert r["top1_error_std"] == pytest.approx(math.sqrt(0.5))
    assert r["reported_error_mean"] == 3.00 and r["reported_error_std"] == 0.14
    one = _row(df, "DARTS-")
    assert one["n"] == 1 and math.isnan(one["top1_error_std"])


def test_diverged_seed_listed_counted_but_excluded(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    _metrics(cfg, "cifar10", "darts-1st", 0, 3.0)
    _metrics(cfg, "cifar10", "darts-1st", 1, 5.0)
    _metrics(cfg, "cifar10", "darts-1st", 2, None, diverged=True)
    r = _row(build_table(cfg, "table3"), "DARTS-1st")
    assert (r["n"], r["seeds"], r["diverged"]) == (3, "0;1;2", 1)
    assert r["top1_error_mean"] == pytest.approx(4.0)
    assert r["top1_error_std"] == pytest.approx(math.sqrt(2.0))


def test_papers_disagreement_noted(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    r = _row(build_table(cfg, "table3"), "DARTS-")
    assert r["reported_search_cost_gpu_days"] == 0.4  # LeaSE's value (first paper)
    assert "0.6" in r["reported_note"] and "disagree" in r["reported_note"]


def test_search_cost_measured_and_marked_cpu(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    for seed, wall in [(0, 4320.0), (1, 12960.0)]:
        _metrics(cfg, "cifar10", "darts-1st", seed, 3.0)
        _search(cfg, "cifar10", "darts-1st", seed, wall)
    _metrics(cfg, "cifar10", "darts-minus", 0, 3.0)
    _search(cfg, "cifar10", "darts-minus", 0, 43200.0, "cuda", "NVIDIA H100", count=4)
    df = build_table(cfg, "table3")
    r = _row(df, "DARTS-1st")
    assert r["search_cost_days_mean"] == pytest.approx((4320 + 12960) / 2 / 86400)
    assert r["search_device"] == "cpu"
    g = _row(df, "DARTS-")
    assert g["search_cost_days_mean"] == pytest.approx(43200 * 4 / 86400)
    assert g["search_device"] == "cuda:NVIDIA H100"
    md = tables.render_markdown(cfg, "table3", df)
    line = next(x for x in md.splitlines() if x.startswith("| DARTS-1st"))
    assert "CPU-days" in line and "GPU-days" not in line
    assert "GPU-days" in next(x for x in md.splitlines() if x.startswith("| DARTS- "))


def test_table4_labels_top5_and_cost_of_cifar_search(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, seeds=[0, 1])
    for seed in (0, 1):
        _metrics(cfg, "imagenet", "darts-2nd", seed, 26.0 + seed, top5=8.0 + seed, source="cifar10")
        _search(cfg, "cifar10", "darts-2nd", seed, 86400.0)
    df = build_table(cfg, "table4")
    assert df["method"].tolist() == ["DARTS-2nd (CIFAR-10)", "DARTS-1st (CIFAR-100)"]
    r = _row(df, "DARTS-2nd (CIFAR-10)")
    assert (r["dataset"], r["source"], r["n"]) == ("imagenet", "cifar10", 2)
    assert r["top1_error_mean"] == pytest.approx(26.5)
    assert r["top5_error_mean"] == pytest.approx(8.5)
    assert r["top5_error_std"] == pytest.approx(math.sqrt(0.5))
    assert r["search_cost_days_mean"] == pytest.approx(1.0)
    assert (r["reported_error_mean"], r["reported_top5_error"]) == (26.7, 8.7)
    assert _row(df, "DARTS-1st (CIFAR-100)")["n"] == 0


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        '["a list"]',
        '{"top1_error": "x", "params_m": 1}',
        '{"top1_error": 3.0}',
        '{"top1_error": 3, "params_m": 1, "diverged": "no"}',
    ],
)
def test_malformed_metrics_names_the_file(tmp_path: Path, text: str) -> None:
    cfg = _cfg(tmp_path)
    path = f"{cfg.eval_dir('cifar100', 'darts-1st', 1)}/metrics.json"
    _write(path, text)
    with pytest.raises(MlonasError, match=r"metrics\.json") as exc:
        build_table(cfg, "table2")
    assert str(Path(path)) in str(exc.value) and "\n" not in str(exc.value)


def test_metrics_filed_under_wrong_seed_is_refused(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    _metrics(cfg, "cifar100", "darts-1st", 1, 20.0)
    p = Path(cfg.eval_dir("cifar100", "darts-1st", 1)) / "metrics.json"
    rec = json.loads(p.read_text())
    rec["seed"] = 2
    p.write_text(json.dumps(rec))
    with pytest.raises(MlonasError, match="seed"):
        build_table(cfg, "table2")


def test_metrics_paths_restrict_what_is_read(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    for seed in (0, 1, 2):
        _metrics(cfg, "cifar100", "darts-1st", seed, 20.0 + seed)
    only = [f"{cfg.eval_dir('cifar100', 'darts-1st', 0)}/metrics.json"]
    r = _row(build_table(cfg, "table2", only), "DARTS-1st")
    assert (r["n"], r["seeds"]) == (1, "0")
    with pytest.raises(MlonasError, match="not a metrics file of table2"):
        build_table(cfg, "table2", [str(tmp_path / "elsewhere" / "metrics.json")])


def test_write_table_outputs_and_demo_banner(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    _metrics(cfg, "cifar100", "darts-1st", 0, 20.0)
    _metrics(cfg, "cifar100", "darts-1st", 1, 21.0)
    csv, md = cfg.table_path("table2", "csv"), cfg.table_path("table2", "md")
    df = write_table(cfg, "table2", csv, md)
    back = pd.read_csv(csv, keep_default_na=False)
    assert list(back.columns) == COLUMNS and len(back) == len(df)
    data = back.loc[0, "data"]
    assert data.startswith("DEMO: offline stand-in") and "CIFAR-100" in data
    text = Path(md).read_text()
    first = text.splitlines()[0]
    assert first.startswith("**DEMO") and "not comparable" in first.lower()
    assert "Table 2 — CIFAR-100 test error (%)" in text
    assert "20.50 ± 0.71 (n=2/3)" in text
    rows = [ln.split("|")[1].strip() for ln in text.splitlines() if ln.startswith("| ")]
    assert "DARTS-1st [1]" in rows and "re-run 10x" in text  # the note's footnote mark
    assert not list(Path(csv).parent.glob(".*.tmp"))  # atomic writes leave no temp files


def test_paper_preset_has_no_banner(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, preset="paper")
    df = build_table(cfg, "table3")
    assert set(df["data"]) == {"CIFAR-10"}
    md = tables.render_markdown(cfg, "table3", df)
    assert "DEMO" not in md and md.startswith("# Table 3")


def test_unknown_table(tmp_path: Path) -> None:
    with pytest.raises(MlonasError, match="table9"):
        build_table(_cfg(tmp_path), "table9")


def test_reported_packaged_copy() -> None:
    """Tables 2-4: the papers' rows, verbatim as ../shared has them. Table 5: the related
    methods' own numbers after them, each row naming its source/version and citing it."""
    df = load_reported()
    assert set(df.loc[df["table"] <= 4, "paper"]) == {"lease", "sgl"}
    related = df[df["table"] == 5]
    assert set(related["paper"]) == {
        "lease",
        "sgl",
        "drnas-iclr2021",
        "drnas-arxiv-v1",
        "msrdarts-later",
        "bdarts-arxiv",
        "maenas-arxiv",
        "il-arxiv",
        "lbt-arxiv",
        "halfspace-arxiv",
    }
    assert (related["note"] != "").all()
    assert df["table"].dtype.kind == "i" and df["error_mean"].dtype.kind == "f"
    if not SHARED_REPORTED.is_file():
        pytest.skip("../shared/reference/reported.csv not present")
    packaged = tables._reported_text()
    assert packaged.startswith(SHARED_REPORTED.read_text("utf-8"))
    shared = pd.read_csv(SHARED_REPORTED)
    assert len(shared) == len(df[df["table"] <= 4])


# --------------------------------------------------------------------------- scheme vs base


def _scheme_cfg(tmp_path: Path, seeds: list[int] | None = None) -> Config:
    """Adds two scheme methods (the slugs/compositions LeaSE and SGL use) to :func:`_cfg`."""
    cfg = _cfg(tmp_path, seeds=seeds)
    cfg.params["methods"].update(
        {
            "lease-x": {"label": "LeaSE-X", "base": "darts", "order": "second", "scheme": "lease"},
            "sgl-x": {"label": "SGL-X", "base": "darts", "order": "first", "scheme": "sgl"},
            "sgl-minus": {"label": "SGL-Minus", "base": "darts_minus", "order": "first"}
            | {"scheme": "sgl"},
        }
    )
    cfg.params["tables"]["table3"]["methods"] = [
        "darts-1st",
        "darts-2nd",
        "lease-x",
        "sgl-x",
        "sgl-minus",
    ]
    cfg.params["tables"]["table4"]["transfers"] = [
        {"source": "cifar10", "method": "darts-2nd"},
        {"source": "cifar100", "method": "darts-2nd"},
        {"source": "cifar100", "method": "lease-x"},
    ]
    return cfg


def test_scheme_row_against_its_base_welch_by_hand(tmp_path: Path) -> None:
    cfg = _scheme_cfg(tmp_path)
    scheme, base = [2.0, 3.0, 4.0], [4.0, 6.0]  # means 3 and 5, variances 1 and 2
    for seed, e in enumerate(scheme):
        _metrics(cfg, "cifar10", "lease-x", seed, e)
    for seed, e in zip((0, 2), base, strict=True):
        _metrics(cfg, "cifar10", "darts-2nd", seed, e)
    df = build_table(cfg, "table3")
    r = _row(df, "LeaSE-X")
    assert (r["scheme"], r["vs_base"], r["stats_note"]) == ("lease", "DARTS-2nd", "")
    # by hand: se^2 = 1/3 + 2/2 = 4/3; t = -2/sqrt(4/3); df = (4/3)^2 / ((1/3)^2/2 + 1^2/1)
    assert r["diff_mean"] == pytest.approx(-2.0)
    assert r["welch_t"] == pytest.approx(-2.0 / math.sqrt(4.0 / 3.0))
    assert r["welch_df"] == pytest.approx(32.0 / 19.0)
    ref = stats.ttest_ind(scheme, base, equal_var=False)
    assert r["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert r["welch_df"] == pytest.approx(ref.df, rel=1e-9)
    ci = ref.confidence_interval(0.95)
    assert (r["diff_ci_low"], r["diff_ci_high"]) == (
        pytest.approx(ci.low, rel=1e-9),
        pytest.approx(ci.high, rel=1e-9),
    )
    half = stats.t.ppf(0.975, 32.0 / 19.0) * math.sqrt(4.0 / 3.0)
    assert r["diff_ci_high"] == pytest.approx(-2.0 + half)
    # plain rows carry no comparison
    plain = _row(df, "DARTS-2nd")
    assert plain["scheme"] == "plain" and plain["vs_base"] == "" and math.isnan(plain["p_value"])


def test_scheme_row_stats_need_two_non_diverged_seeds_per_side(tmp_path: Path) -> None:
    cfg = _scheme_cfg(tmp_path)
    for seed, e in enumerate([3.0, 3.2, 2.8]):
        _metrics(cfg, "cifar10", "sgl-x", seed, e)
    _metrics(cfg, "cifar10", "darts-1st", 0, 3.0)
    _metrics(cfg, "cifar10", "darts-1st", 1, None, diverged=True)
    df = build_table(cfg, "table3")
    r = _row(df, "SGL-X")
    assert r["vs_base"] == "DARTS-1st"
    assert r["diff_mean"] == pytest.approx(0.0, abs=1e-12)  # the means are still defined
    for col in ("diff_ci_low", "diff_ci_high", "welch_t", "welch_df", "p_value"):
        assert math.isnan(r[col]), col
    assert "have 3 vs 1" in r["stats_note"]
    md = tables.render_markdown(cfg, "table3", df)
    line = next(x for x in md.splitlines() if x.startswith("| SGL-X"))
    assert "vs DARTS-1st" in line and "needs >= 2 non-diverged seeds" in line
    # the base row shows it lost seeds: 2 found (one diverged) of 3 requested
    base = next(x for x in md.splitlines() if x.startswith("| DARTS-1st"))
    assert "2 of 3 requested seeds" in base and "1 diverged" in base
    assert "requested seeds" not in line  # SGL-X has all three


def test_scheme_row_without_base_in_table_says_so(tmp_path: Path) -> None:
    cfg = _scheme_cfg(tmp_path)
    for seed in (0, 1):
        _metrics(cfg, "cifar10", "sgl-minus", seed, 3.0 + seed)
    r = _row(build_table(cfg, "table3"), "SGL-Minus")
    assert r["vs_base"] == "" and math.isnan(r["diff_mean"])
    assert r["stats_note"] == "no plain row with base darts_minus and order first in this table"


def test_table4_scheme_compares_with_base_of_same_source(tmp_path: Path) -> None:
    cfg = _scheme_cfg(tmp_path)
    for seed, (a, b, c) in enumerate([(20.0, 26.0, 25.0), (21.0, 27.0, 25.5), (22.0, 28.0, 24.5)]):
        _metrics(cfg, "imagenet", "darts-2nd", seed, a, top5=5.0, source="cifar10")
        _metrics(cfg, "imagenet", "darts-2nd", seed, b, top5=5.0, source="cifar100")
        _metrics(cfg, "imagenet", "lease-x", seed, c, top5=5.0, source="cifar100")
    r = _row(build_table(cfg, "table4"), "LeaSE-X (CIFAR-100)")
    assert r["vs_base"] == "DARTS-2nd (CIFAR-100)"
    assert r["diff_mean"] == pytest.approx(25.0 - 27.0)


def test_markdown_states_the_test_and_formats_the_comparison(tmp_path: Path) -> None:
    cfg = _scheme_cfg(tmp_path)
    for seed, (a, b) in enumerate([(2.0, 3.0), (2.5, 3.5), (2.25, 3.75)]):
        _metrics(cfg, "cifar10", "sgl-x", seed, a)
        _metrics(cfg, "cifar10", "darts-1st", seed, b)
    df = build_table(cfg, "table3")
    md = tables.render_markdown(cfg, "table3", df)
    head = md.split("\n| Method")[0]
    assert "Welch's two-sided t-test" in head and "95% confidence interval" in head
    assert tables.DIFF_HEADER in md
    r = _row(df, "SGL-X")
    line = next(x for x in md.splitlines() if x.startswith("| SGL-X"))
    expected = (
        f"{r['diff_mean']:+.2f} [{r['diff_ci_low']:+.2f}, {r['diff_ci_high']:+.2f}] vs DARTS-1st;"
        f" t({r['welch_df']:.1f}) = {r['welch_t']:.2f}, p = {r['p_value']:.3f}"
    )
    assert expected in line and r["diff_mean"] == pytest.approx(2.25 - 41.0 / 12)  # 2.25 vs 3.41667
    csv_text = tables.to_csv_text(df)
    back = pd.read_csv(StringIO(csv_text), keep_default_na=False)
    assert list(back.columns) == COLUMNS
    assert COLUMNS.index("p_value") > COLUMNS.index("reported_note")  # added after the old ones


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy, on [3, 3]
def test_welch_compare_zero_spread_is_not_a_test() -> None:
    c = welch_compare([3.0, 3.0], [4.0, 4.0, 4.0])
    assert c.diff_mean == pytest.approx(-1.0) and not c.tested
    assert math.isnan(c.ci_low) and "undefined" in c.note
    # one side without spread is fine: df comes from the other side alone
    c = welch_compare([3.0, 3.0], [4.0, 5.0, 6.0])
    assert c.df == pytest.approx(2.0) and c.tested
    assert c.p_value == pytest.approx(
        stats.ttest_ind([3.0, 3.0], [4.0, 5.0, 6.0], equal_var=False).pvalue
    )


def _welch_by_hand(a: list[float], b: list[float]) -> tuple[float, float, float, float]:
    """(diff, t, df, half-width of the 95% CI) from the Welch–Satterthwaite formulas."""
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    diff = statistics.fmean(a) - statistics.fmean(b)
    return diff, diff / se, df, stats.t.ppf(0.975, df) * se


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([2.76, 2.81, 2.62], [3.00, 2.94, 3.12]),
        ([19.1, 20.4, 18.8, 21.0], [22.5, 23.9]),
        ([85.75, 84.5], [85.0, 85.0, 85.0]),  # one side without spread
        ([27.5, 31.0, 23.8, 28.2, 29.1], [41.3, 30.6, 36.2, 37.9, 34.0, 33.1]),
    ],
)
def test_welch_compare_agrees_with_the_formulas_written_out(a: list[float], b: list[float]) -> None:
    c = welch_compare(a, b)
    diff, t, df, half = _welch_by_hand(a, b)
    assert c.tested and c.note == "" and (c.n_scheme, c.n_base) == (len(a), len(b))
    assert c.diff_mean == pytest.approx(diff, rel=1e-12, abs=1e-12)
    assert c.t == pytest.approx(t, rel=1e-9)
    assert c.df == pytest.approx(df, rel=1e-9)
    assert c.ci_low == pytest.approx(diff - half, rel=1e-9)
    assert c.ci_high == pytest.approx(diff + half, rel=1e-9)
    p = 2 * stats.t.sf(abs(t), df)
    assert c.p_value == pytest.approx(p, rel=1e-9)


def test_mean_and_std_are_the_sample_statistics() -> None:
    xs = [2.76, 2.81, 2.62, 3.05]
    assert stats_mod.mean(xs) == pytest.approx(statistics.fmean(xs), rel=1e-15)
    assert stats_mod.std(xs) == pytest.approx(statistics.stdev(xs), rel=1e-12)  # ddof=1
    assert math.isnan(stats_mod.std([3.0])) and stats_mod.mean([3.0]) == 3.0
    assert math.isnan(stats_mod.mean([]))


# --------------------------------------------------------------------------- table 5


def _table5_cfg(tmp_path: Path) -> Config:
    """:func:`_cfg` with table5 as the lead fills it: table3's DARTS rows as baselines,
    the related methods (stand-in compositions under their labels), one transfer, and a
    scheme row whose base row is not in the table."""
    cfg = _cfg(tmp_path, seeds=[0, 1])
    plain = {"base": "darts", "order": "first", "scheme": "plain", "search": {}}
    cfg.params["methods"].update(
        {
            "drnas": {"label": "DrNAS", **plain},
            "msr-darts": {"label": "MSR-DARTS", **plain},
            "darts-1st-clr": {"label": "DARTS-1st+CLR", **plain},
            "sgl-x": {"label": "SGL-X", **plain, "base": "darts_minus", "scheme": "sgl"},
        }
    )
    cfg.params["tables"]["table3"]["methods"] = ["darts-1st", "darts-2nd"]
    cfg.params["tables"]["table5"] = {
        "dataset": "cifar10",
        "baselines": ["darts-2nd", "darts-1st"],
        "methods": ["drnas", "msr-darts", "darts-1st-clr", "sgl-x"],
        "transfers": [{"source": "cifar10", "method": "msr-darts"}],
    }
    return cfg


def test_table5_rows_datasets_and_both_drnas_versions(tmp_path: Path) -> None:
    cfg = _table5_cfg(tmp_path)
    slugs = ["darts-2nd", "darts-1st", "drnas", "msr-darts", "darts-1st-clr", "sgl-x"]
    for seed in (0, 1):
        for k, slug in enumerate(slugs):
            _metrics(cfg, "cifar10", slug, seed, 2.5 + 0.1 * k + 0.05 * seed)
        _metrics(cfg, "imagenet", "msr-darts", seed, 24.0 + seed, top5=7.0, source="cifar10")
    # only the rows' runs are read: table3's for the baselines, table5's own, the transfer's
    assert sorted(p for p in cfg.table_inputs("table5") if p.endswith("metrics.json")) == sorted(
        [f"{cfg.eval_dir('cifar10', s, seed)}/metrics.json" for s in slugs for seed in (0, 1)]
        + [f"{cfg.imagenet_eval_dir('cifar10', 'msr-darts', seed)}/metrics.json" for seed in (0, 1)]
    )
    df = build_table(cfg, "table5")
    assert list(df["method"]) == [
        "DARTS-2nd",
        "DARTS-1st",
        "DrNAS",
        "MSR-DARTS",
        "DARTS-1st+CLR",
        "SGL-X",
        "MSR-DARTS (CIFAR-10)",
    ]
    assert list(df["dataset"]) == ["cifar10"] * 6 + ["imagenet"]
    assert list(df["source"]) == ["cifar10"] * 7
    assert (df["n"] == 2).all()
    assert _row(df, "MSR-DARTS (CIFAR-10)")["top1_error_mean"] == pytest.approx(24.5)
    # DrNAS: the ICLR 2021 numbers (the version of the repository's 4.1M cell) shown, the
    # arXiv v1 numbers LeaSE and SGL quote named beside them
    d = _row(df, "DrNAS")
    assert (d.reported_error_mean, d.reported_error_std) == (2.46, 0.03)
    assert (d.reported_params_m, d.reported_search_cost_gpu_days) == (4.1, 0.6)
    assert d.reported_by == "drnas-iclr2021;drnas-arxiv-v1"
    for words in ("drnas-arxiv-v1 reports 2.54", "drnas-arxiv-v1 reports 4", "reports 0.4"):
        assert words in d.reported_note, d.reported_note
    m = _row(df, "MSR-DARTS")
    assert (m.reported_error_mean, m.reported_params_m, m.reported_search_cost_gpu_days) == (
        2.54,
        4.0,
        0.3,
    )
    assert math.isnan(m.reported_error_std)
    assert _row(df, "MSR-DARTS (CIFAR-10)").reported_error_mean == 23.9
    # CLR: no accessible numbers, and the note says so (not the generic "not reported")
    c = _row(df, "DARTS-1st+CLR")
    assert math.isnan(c.reported_error_mean) and c.reported_by == "bdarts-arxiv"
    assert "no test error" in c.reported_note
    assert _row(df, "DARTS-1st").reported_error_mean == 3.00
    # a scheme row without its base row in the table: explained, not a crash
    s = _row(df, "SGL-X")
    assert s.vs_base == "" and "no plain row with base darts_minus" in s.stats_note
    md = tables.render_markdown(cfg, "table5", df)
    assert "\n# Table 5 — methods of the related-work list" in md
    assert "| Ours: top-5" in md and "Baseline rows (DARTS-2nd, DARTS-1st)" in md
    assert "drnas-iclr2021, drnas-arxiv-v1" in md
    # without transfers: CIFAR-10 rows only, no top-5 columns
    cfg.params["tables"]["table5"]["transfers"] = []
    df = build_table(cfg, "table5")
    assert set(df["dataset"]) == {"cifar10"}
    assert "top-5" not in tables.render_markdown(cfg, "table5", df)


def test_table5_declares_its_own_runs_once_and_borrows_table3s(tmp_path: Path) -> None:
    """params.yaml's table5: its DARTS baselines are table3's runs, its own methods are run
    for no other table (each run is declared by one table), and a table of baselines only
    builds."""
    for preset in ("demo", "paper"):
        cfg = Config(resolve_preset(load_raw(REPO / "params.yaml"), preset))
        spec, table3 = cfg.tables()["table5"], set(cfg.tables()["table3"]["methods"])
        assert spec["baselines"] and set(spec["baselines"]) <= table3
        assert spec["methods"] and not set(spec["methods"]) & table3
        assert {t["method"] for t in spec["transfers"]} <= set(spec["methods"])
    cfg = _cfg(tmp_path, seeds=[0])
    cfg.params["tables"]["table5"] = {
        "dataset": "cifar10",
        "baselines": ["darts-1st"],
        "methods": [],
        "transfers": [],
    }
    _metrics(cfg, "cifar10", "darts-1st", 0, 3.1)
    df = build_table(cfg, "table5")
    assert list(df["method"]) == ["DARTS-1st"] and df["n"].tolist() == [1]


def test_audit_reads_table5_by_its_name_with_rows_of_both_datasets(tmp_path: Path) -> None:
    """Table 5 holds CIFAR-10 and ImageNet rows, so its CSV's dataset column cannot say
    which table it is (table3's is CIFAR-10 too): the audit takes the file's name."""
    from mlonas.report.audit import read_table_file

    cfg = _table5_cfg(tmp_path)
    for seed in (0, 1):
        for slug in ("darts-2nd", "darts-1st", "drnas", "msr-darts", "darts-1st-clr", "sgl-x"):
            _metrics(cfg, "cifar10", slug, seed, 3.0)
        _metrics(cfg, "imagenet", "msr-darts", seed, 24.0, top5=7.0, source="cifar10")
    csv_path, md_path = cfg.table_path("table5"), cfg.table_path("table5", "md")
    write_table(cfg, "table5", csv_path, md_path)
    read = read_table_file(md_path)
    assert read.table == "table5" and read.path == csv_path
    assert [(e.label, e.dataset) for e in read.entries][-2:] == [
        ("SGL-X", "cifar10"),
        ("MSR-DARTS (CIFAR-10)", "imagenet"),
    ]
    # the same CSV under another name: its rows' datasets do not name one table
    other = tmp_path / "copy.csv"
    other.write_text(Path(csv_path).read_text())
    with pytest.raises(MlonasError, match="rows of several datasets"):
        read_table_file(other)
