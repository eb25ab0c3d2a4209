"""The report's figures and table pages (mlonas.report.figures) and `snakemake --report`.

The fast tests draw from fabricated artifacts whose every number the test knows, and
inspect the matplotlib figure before it is saved: which op's line is in which panel and
that it carries exactly the trajectory's probabilities. The HTML report of the whole demo
is tests/test_e2e.py's (it reuses that test's demo run).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers import REPO, tool_env

from mlonas.cli import main
from mlonas.config import load_config
from mlonas.errors import MlonasError
from mlonas.report import figures
from mlonas.space.ops import PRIMITIVES

PRIMS = list(PRIMITIVES)


def softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def keep_strongest(names: list[str], probs: list[float], keep: int) -> list[str]:
    """The ``keep`` most probable names, listed in their original order."""
    best = sorted(range(len(names)), key=lambda k: probs[k], reverse=True)[:keep]
    return [names[k] for k in sorted(best)]


def fake_search(
    names: tuple[str, ...] = ("learner1", "learner2"),
    stage_ops: tuple[int, ...] = (8, 5, 3),
    epochs_per_stage: int = 2,
    steps: int = 2,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[tuple[str, str, int], list[list[str]]]]:
    """An alphas.json record of a P-DARTS-like search (ops pruned between stages).

    Returns the record and the true op names per (architecture, cell, stage).
    """
    rng = random.Random(seed)
    n_edges = sum(i + 2 for i in range(steps))
    truth: dict[tuple[str, str, int], list[list[str]]] = {}
    ops = {
        (n, k): [list(PRIMS) for _ in range(n_edges)] for n in names for k in ("normal", "reduce")
    }
    traj: list[dict[str, Any]] = []
    epoch = 0
    for st, keep in enumerate(stage_ops, start=1):
        if st > 1:
            last = traj[-1]
            for (n, k), cur in ops.items():
                ops[(n, k)] = [
                    keep_strongest(o, p, keep) for o, p in zip(cur, last[n][k], strict=True)
                ]
        for (n, k), cur in ops.items():
            truth[(n, k, st)] = [list(o) for o in cur]
        for _ in range(epochs_per_stage):
            epoch += 1
            entry: dict[str, Any] = {"epoch": epoch, "stage": st}
            for n in names:
                entry[n] = {
                    k: [softmax([rng.gauss(0, 1) for _ in o]) for o in ops[(n, k)]]
                    for k in ("normal", "reduce")
                }
            traj.append(entry)
    archs = {
        n: {
            "primitives": PRIMS,
            "steps": steps,
            "multiplier": steps,
            "edge_ops_normal": ops[(n, "normal")],
            "edge_ops_reduce": ops[(n, "reduce")],
        }
        for n in names
    }
    return {
        "base": "pdarts",
        "architectures": archs,
        "selected": names[-1],
        "trajectory": traj,
    }, truth


def another_top3(stage2: list[str], final: list[str]) -> list[str]:
    """Three of an edge's stage-2 ops that are not the ones P-DARTS kept."""
    return next(list(c) for c in itertools.combinations(stage2, 3) if list(c) != final)


def search_history(epochs: int = 6, stage_len: int = 2) -> pd.DataFrame:
    """A search history with SGL-style per-learner columns and a genotype column."""
    rows = []
    for e in range(1, epochs + 1):
        rows.append(
            {
                "epoch": e,
                "stage": (e - 1) // stage_len + 1,
                "lr": 0.025,
                "arch_updated": e > 1,
                "train_loss": 2.0 / e,
                "train_acc": 10.0 * e,
                "val_loss": 2.1 / e,
                "val_acc": 9.0 * e,
                "learner1_val_acc": 8.0 * e,
                "learner2_val_acc": 7.0 * e,
                "learner1_val_loss": 2.2 / e,
                "learner2_val_loss": 2.3 / e,
                "pl_agreement": 50.0 + e,
                "wall_time_s": 1.5 * e,
                "learner1_genotype": '{"normal": []}',
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Figures handed to atomic_savefig (still written), for inspection."""
    figs: list[Any] = []
    real = figures.atomic_savefig

    def keep(fig: Any, path: Any, **kw: Any) -> None:
        figs.append(fig)
        real(fig, path, **kw)

    monkeypatch.setattr(figures, "atomic_savefig", keep)
    return figs


def op_lines(ax: Any) -> dict[tuple[str, tuple[int, ...]], list[float]]:
    """{(op, epochs): probabilities} of the op lines of one panel."""
    out = {}
    for line in ax.get_lines():
        if line.get_label() in PRIMS:
            xs = tuple(int(x) for x in line.get_xdata())
            out[(line.get_label(), xs)] = [float(y) for y in line.get_ydata()]
    return out


def test_stage_op_names_recovers_pruned_stages_and_rejects_inconsistent_records() -> None:
    record, truth = fake_search()
    for n in ("learner1", "learner2"):
        for k in ("normal", "reduce"):
            got = figures.stage_op_names(record["architectures"][n], record["trajectory"], n, k)
            assert got == {st: truth[(n, k, st)] for st in (1, 2, 3)}
    # A recorded last stage that the pruning rule cannot have produced: the intermediate
    # stage's names are not trusted (None), the recorded first and last ones still are.
    arch = record["architectures"]["learner1"]
    stage2 = truth[("learner1", "normal", 2)]
    arch["edge_ops_normal"][0] = another_top3(stage2[0], arch["edge_ops_normal"][0])
    got = figures.stage_op_names(arch, record["trajectory"], "learner1", "normal")
    assert got[2] is None and got[1] == truth[("learner1", "normal", 1)]
    assert got[3] == arch["edge_ops_normal"]
    # recorded names that do not fit the rows are an error, not a figure
    arch["edge_ops_reduce"][0] = arch["edge_ops_reduce"][0][:2]
    with pytest.raises(MlonasError, match="edge_ops_reduce"):
        figures.stage_op_names(arch, record["trajectory"], "learner1", "reduce")


def test_single_stage_search_uses_the_recorded_names() -> None:
    record, truth = fake_search(names=("model",), stage_ops=(8,), epochs_per_stage=3)
    arch = record["architectures"]["model"]
    assert figures.stage_op_names(arch, record["trajectory"], "model", "reduce") == {
        1: truth[("model", "reduce", 1)]
    }


def test_trajectory_figure_draws_each_op_with_its_own_probabilities(
    tmp_path: Path, captured: list[Any]
) -> None:
    record, truth = fake_search()
    alphas = tmp_path / "alphas.json"
    alphas.write_text(json.dumps(record))
    out = tmp_path / "fig" / "trajectory.png"
    figures.plot_trajectory(alphas, out, title="t")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = captured
    n_edges = 5
    axes = [ax for ax in fig.axes if ax.get_lines()]
    assert len(axes) == 2 * 2 * n_edges  # 2 architectures x 2 cells, one panel per edge
    # rows: the selected architecture first, normal then reduction
    order = [("learner2", "normal"), ("learner2", "reduce"), ("learner1", "normal")]
    traj = record["trajectory"]
    for r, (n, k) in enumerate(order):
        for c in range(n_edges):
            lines = op_lines(axes[r * n_edges + c])
            assert len(lines) == 8 + 5 + 3
            for st in (1, 2, 3):
                idx = [i for i, e in enumerate(traj) if e["stage"] == st]
                for j, op in enumerate(truth[(n, k, st)][c]):
                    epochs = tuple(traj[i]["epoch"] for i in idx)
                    assert lines[(op, epochs)] == [traj[i][n][k][c][j] for i in idx]
    assert "stage boundaries" in fig.get_suptitle()


def test_trajectory_figure_leaves_out_stages_with_unrecoverable_names(
    tmp_path: Path, captured: list[Any]
) -> None:
    record, truth = fake_search(names=("model",))
    arch = record["architectures"]["model"]
    stage2 = truth[("model", "normal", 2)]
    arch["edge_ops_normal"][0] = another_top3(stage2[0], arch["edge_ops_normal"][0])
    alphas = tmp_path / "alphas.json"
    alphas.write_text(json.dumps(record))
    figures.plot_trajectory(alphas, tmp_path / "t.png")
    (fig,) = captured
    assert "op names not recoverable for: model normal stage 2" in fig.get_suptitle()
    normal0 = op_lines(fig.axes[0])
    assert len(normal0) == 8 + 3  # stage 2 left out, not guessed
    assert len(op_lines(fig.axes[5])) == 8 + 5 + 3  # the reduction cell is intact


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda r: r["architectures"]["model"].pop("steps"), "is malformed: KeyError: 'steps'"),
        (lambda r: r["trajectory"][0].pop("model"), "'model' missing from the trajectory"),
        (lambda r: r.update(trajectory=[]), "has an empty trajectory"),
    ],
)
def test_malformed_alphas_are_a_one_line_error_naming_the_file(
    tmp_path: Path, breakage: Any, message: str
) -> None:
    record, _ = fake_search(names=("model",))
    breakage(record)
    alphas = tmp_path / "alphas.json"
    alphas.write_text(json.dumps(record))
    with pytest.raises(MlonasError, match=re.escape(message)) as err:
        figures.plot_trajectory(alphas, tmp_path / "t.png")
    assert str(alphas) in str(err.value)
    assert not (tmp_path / "t.png").exists()


def test_search_curves_put_every_accuracy_loss_and_other_column_in_its_panel(
    tmp_path: Path, captured: list[Any]
) -> None:
    hist = tmp_path / "history.csv"
    df = search_history()
    df.to_csv(hist, index=False)
    figures.plot_curves(hist, tmp_path / "curves.png", title="x")
    (fig,) = captured
    acc, loss, other = fig.axes[:3]
    labelled = lambda ax: {  # noqa: E731
        ln.get_label(): list(ln.get_ydata()) for ln in ax.get_lines() if ln.get_label() in df
    }
    assert labelled(acc) == {
        c: df[c].tolist() for c in ("train_acc", "val_acc", "learner1_val_acc", "learner2_val_acc")
    }
    assert set(labelled(loss)) == {
        "train_loss",
        "val_loss",
        "learner1_val_loss",
        "learner2_val_loss",
    }
    assert labelled(other) == {"pl_agreement": df["pl_agreement"].tolist()}
    # stage changes after epochs 2 and 4; epoch 1 without architecture updates
    bounds = [ln for ln in acc.get_lines() if ln.get_linestyle() == ":"]
    assert sorted(float(ln.get_xdata()[0]) for ln in bounds) == [2.5, 4.5]
    assert [p.get_label() for p in acc.patches] == ["no α update"]


def test_eval_curves_read_the_training_loops_columns(tmp_path: Path, captured: list[Any]) -> None:
    from mlonas.train.loop import HISTORY_COLUMNS

    rows = [
        {c: float(e) if c != "epoch" else e for c in HISTORY_COLUMNS} | {"test_top1": 40.0 + e}
        for e in range(1, 4)
    ]
    hist = tmp_path / "history.csv"
    pd.DataFrame(rows).to_csv(hist, index=False)
    cfg = load_config(REPO / "params.yaml", "demo")
    out = str(tmp_path / "c.png")
    figures.draw(
        cfg, figures.ReportFile("eval_curves", out, (str(hist),), "t", "cifar10", "darts-1st")
    )
    (fig,) = captured
    title = fig.get_suptitle()
    assert "DARTS-1st (darts-1st), seed 0" in title and "final test top-1 43.00%" in title
    assert "DEMO" in title
    acc = {ln.get_label() for ln in fig.axes[0].get_lines()}
    assert acc == {"train_top1", "test_top1", "test_top5"}
    assert {ln.get_label() for ln in fig.axes[1].get_lines()} == {"train_loss", "test_loss"}


def test_table_page_renders_the_markdown_and_escapes_raw_html(tmp_path: Path) -> None:
    md = tmp_path / "table3.md"
    md.write_text(
        "**DEMO numbers**\n\n# Table 3 — CIFAR-10 test error (%)\n\n"
        "| Method | Ours |\n|---|---|\n| DARTS-1st | 3.00 ± 0.10 (n=3/3) |\n\n"
        "<script>alert(1)</script>\n"
    )
    out = tmp_path / "t.html"
    figures.write_table_html(md, out)
    page = out.read_text()
    assert "<title>Table 3 — CIFAR-10 test error (%)</title>" in page
    assert "<td>DARTS-1st</td>" in page and "<td>3.00 ± 0.10 (n=3/3)</td>" in page
    assert "<strong>DEMO numbers</strong>" in page
    assert "<script>" not in page and "&lt;script&gt;" in page


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("a,b\n1,2\n", "has no 'epoch' column"),
        ("epoch,train_loss\n", "has no epochs"),
    ],
)
def test_bad_history_is_a_one_line_error(tmp_path: Path, content: str | None, message: str) -> None:
    hist = tmp_path / "history.csv"
    if content is not None:
        hist.write_text(content)
    with pytest.raises(MlonasError, match=message):
        figures.plot_curves(hist, tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def one_search_project(tmp_path: Path, record: dict[str, Any]) -> tuple[Path, Any]:
    """A params file rooted at ``tmp_path`` with one table of one search and evaluation,
    their artifacts (``record`` as alphas.json) and the table's Markdown."""
    from conftest import tiny_config, write_params

    cfg = tiny_config(tmp_path)
    cfg.params |= {
        "seeds": [0],
        "tables": {"table3": {"dataset": "cifar10", "methods": ["pdarts"]}},
    }
    params = write_params(cfg, tmp_path / "params.yaml")
    cfg = load_config(params)
    search = Path(cfg.search_dir("cifar10", "pdarts", 0))
    search.mkdir(parents=True)
    (search / "alphas.json").write_text(json.dumps(record))
    search_history().to_csv(search / "history.csv", index=False)
    run = Path(cfg.eval_dir("cifar10", "pdarts", 0))
    run.mkdir(parents=True)
    pd.DataFrame({"epoch": [1, 2], "train_loss": [2.0, 1.5]}).to_csv(run / "history.csv")
    Path(cfg.table_path("table3", "md")).write_text("# Table 3\n\n| a |\n|---|\n| 1 |\n")
    return params, cfg


def test_report_job_draws_every_file_of_its_table_without_importing_torch(tmp_path: Path) -> None:
    record, _ = fake_search(names=("model",))
    params, cfg = one_search_project(tmp_path, record)
    code = (
        "import sys; from mlonas.cli import main; rc = main(sys.argv[1:]);"
        " print('torch' in sys.modules); sys.exit(rc)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, "figures", "--params", str(params), "--table", "table3"],
        capture_output=True,
        text=True,
        env=tool_env(),
        check=False,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"
    files = figures.report_files(cfg, "table3")
    assert sorted(f.kind for f in files) == ["eval_curves", "search_curves", "table", "trajectory"]
    for f in files:
        head = Path(f.path).read_bytes()[:15]
        assert head.startswith(b"\x89PNG" if f.kind != "table" else b"<!DOCTYPE html>"), f


def test_cli_reports_a_bad_alphas_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    params, cfg = one_search_project(tmp_path, {"base": "darts", "architectures": {}})
    assert main(["figures", "--params", str(params), "--table", "table3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mlonas figures: error: alphas file")
    assert "trajectory" in err[0]
    assert not any(Path(f.path).exists() for f in figures.report_files(cfg) if f.kind != "table")


def test_report_targets_cover_every_search_evaluation_and_table_once() -> None:
    cfg = load_config(REPO / "params.yaml", "demo")
    files = figures.report_files(cfg)
    targets = figures.report_targets(cfg)
    assert targets == [f.path for f in files] and len(targets) == len(set(targets))
    n = 2 * len(cfg.search_jobs()) + len(cfg.cifar_eval_jobs()) + len(cfg.transfer_jobs())
    assert len(targets) == n + len(cfg.tables())
    assert all(t.startswith("demo/results/report/") for t in targets)
    # each table's job draws its own evaluations and the searches no earlier table drew
    per_table = [f.path for t in cfg.tables() for f in figures.report_files(cfg, t)]
    assert sorted(per_table) == sorted(targets)
    j = cfg.transfer_jobs()[0]
    (transfer,) = [
        f for f in files if f.source == j.source and f.method == j.method and f.seed == j.seed
    ]
    assert transfer.table == "table4" and transfer.path == (
        f"demo/results/report/eval/imagenet/{j.source}/{j.method}/seed{j.seed}/curves.png"
    )
    # a CIFAR-10 search is drawn by table3's job, not again by its transfer's table4
    searched = {(f.dataset, f.table) for f in files if f.kind == "trajectory"}
    assert searched == {("cifar100", "table2"), ("cifar10", "table3"), ("cifar10", "table5")}
