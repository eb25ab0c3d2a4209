"""End to end: the demo DAG through Snakemake and its HTML report, and the same stages
through `dvc repro`.

Marked slow; CI runs them. The documented cluster path (Snakemake executes, `dvc commit`
records, `dvc push`/`pull`) is tests/test_cluster.py's round trip.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import BIN, REPO, copy_workflow, snakemake, tool_env

from mlonas.config import Config, load_raw, resolve_preset

pytestmark = pytest.mark.slow

DEMO_TABLES = Path(__file__).parent / "fixtures" / "demo_tables"


@pytest.fixture(scope="module")
def demo_checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkout that has run the README's first command: the whole demo, once for the
    tests of this module (about 5 minutes on this project's 2-core machine)."""
    root = tmp_path_factory.mktemp("demo-checkout")
    copy_workflow(root)
    res = snakemake("--cores", "2", "--config", "preset=demo", cwd=root, check=False, timeout=3000)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    return root


@pytest.fixture(scope="module")
def demo_cfg() -> Config:
    return Config(resolve_preset(load_raw(REPO / "params.yaml"), "demo"))


def test_demo_dag_runs_every_stage_and_all_tables(demo_checkout: Path, demo_cfg: Config) -> None:
    demo, cfg = demo_checkout / "demo", demo_cfg
    cfg_seeds = cfg.seeds
    for table, dataset in (("table2", "cifar100"), ("table3", "cifar10"), ("table4", "imagenet")):
        df = pd.read_csv(demo / "results" / f"{table}.csv")
        assert (df["dataset"] == dataset).all()
        spec = cfg.tables()[table]
        assert list(df["slug"]) == spec.get(
            "methods", [t["method"] for t in spec.get("transfers", [])]
        )
        assert (df["n"] == len(cfg_seeds)).all(), df
        assert df["top1_error_mean"].between(0, 100).all()
        assert df["data"].str.startswith("DEMO").all()
        md = (demo / "results" / f"{table}.md").read_text()
        assert md.startswith("**DEMO")
    assert (df["top5_error_mean"] <= df["top1_error_mean"]).all()
    # table5: its CIFAR-10 rows (table3's runs as baselines, then its own methods), then
    # its ImageNet transfers
    df = pd.read_csv(demo / "results" / "table5.csv")
    spec = cfg.tables()["table5"]
    transfers = [t["method"] for t in spec["transfers"]]
    assert list(df["slug"]) == [*spec["baselines"], *spec["methods"], *transfers]
    assert list(df["dataset"]) == ["cifar10"] * (len(df) - len(transfers)) + ["imagenet"] * len(
        transfers
    )
    assert (df["n"] == len(cfg_seeds)).all(), df
    assert df["top1_error_mean"].between(0, 100).all()
    assert (demo / "results" / "table5.md").read_text().startswith("**DEMO")
    # its baseline rows are table3's runs: the same numbers
    t3 = pd.read_csv(demo / "results" / "table3.csv").set_index("slug")
    for slug in spec["baselines"]:
        row = df.set_index("slug").loc[slug]
        assert row["top1_error_mean"] == t3.loc[slug, "top1_error_mean"], slug
    # No behaviour change unnoticed: the demo's tables are byte for byte the ones the
    # demo gave when the fixture was made (tests/fixtures/demo_tables/README.md says when,
    # and how to remake them after a change that is meant to change the numbers).
    # Every cell as text, except the one column that is a measured wall time.
    for table in ("table2", "table3", "table4", "table5"):
        got, want = (
            pd.read_csv(path, dtype=str, keep_default_na=False).drop(
                columns="search_cost_days_mean"
            )
            for path in (demo / "results" / f"{table}.csv", DEMO_TABLES / f"{table}.csv")
        )
        pd.testing.assert_frame_equal(got, want, obj=f"demo {table}.csv")
    # every stage left its artifacts where docs/design.md ("Artifacts") says
    n_search = len(cfg.search_jobs())
    assert len(list(demo.glob("results/cells/*/*/seed*.png"))) == n_search
    assert len(list(demo.glob("results/search/*/*/seed*/checkpoint.pt"))) == n_search
    assert len(list(demo.glob("results/eval/imagenet/*/*/seed*/metrics.json"))) == len(
        cfg.transfer_jobs()
    )
    assert list(demo.glob("logs/search/*/*/*.log"))
    # a second run has nothing to do
    again = snakemake("-n", "--config", "preset=demo", cwd=demo_checkout)
    assert "Nothing to be done" in again.stdout + again.stderr


def data_uris(html: str) -> dict[str, bytes]:
    """{file name: decoded bytes} of every base64 data URI the report embeds."""
    out = {}
    for m in re.finditer(
        r"data:[\w/+.-]+;charset=[\w-]+;filename=([^;]+);base64,([A-Za-z0-9+/=]+)", html
    ):
        out.setdefault(m.group(1), base64.b64decode(m.group(2)))
    return out


def test_demo_report_is_one_self_contained_html_file(demo_checkout: Path, demo_cfg: Config) -> None:
    """`snakemake --report` over the demo run: every figure and table inside one file."""
    report = demo_checkout / "demo" / "results" / "report.html"
    res = snakemake(
        "--report", str(report.relative_to(demo_checkout)), "--config", "preset=demo",
        cwd=demo_checkout,
    )  # fmt: skip
    assert report.is_file(), res.stdout + res.stderr
    html = report.read_text(encoding="utf-8")
    # self-contained: nothing is fetched from elsewhere
    assert not re.search(r"<script[^>]*\ssrc=|<link[^>]*\shref=|url\(\s*['\"]?https?:", html)
    files = data_uris(html)
    pngs = [n for n, data in files.items() if data[:4] == b"\x89PNG"]
    assert set(pngs) == {"seed0.png", "trajectory.png", "curves.png"}  # (names repeat)
    # per search: its cell, its trajectories, its search curves and its CIFAR evaluation;
    # per transfer: its ImageNet evaluation
    n_search, n_transfer = len(demo_cfg.search_jobs()), len(demo_cfg.transfer_jobs())
    assert html.count("data:image/png") == 4 * n_search + n_transfer
    page = files["table5.html"].decode()
    assert "<table>" in page and "DARTS-1st" in page and "DEMO" in page
    for table in ("table2", "table3", "table4"):
        page = files[f"{table}.html"].decode()
        assert "<table>" in page and "P-DARTS" in page and "DEMO" in page
        csv = (demo_checkout / "demo" / "results" / f"{table}.csv").read_bytes()
        assert files[f"{table}.csv"] == csv
    for caption in (
        "Architecture-weight trajectories",
        "Search curves",
        "Evaluation of the cell",
        "Results table",
        "The cell exported from the search",
        "multi-level neural architecture search, reproduced",
    ):
        assert caption in html, caption


def demo_sized_paper_checkout(dest: Path) -> dict:
    """A checkout whose params.yaml is the paper structure at demo size, one seed.

    dvc.yaml is written for the paper preset, so this is how the DVC pipeline can run here.
    """
    copy_workflow(dest, "dvc.yaml", ".dvc", ".dvcignore")
    shutil.rmtree(dest / ".dvc" / "tmp", ignore_errors=True)
    params = resolve_preset(load_raw(REPO / "params.yaml"), "demo")
    params.pop("preset")
    params.update(root="", seeds=[0])
    # one method keeps DVC's sequential runs short; the demo test covers every method
    params["tables"] = {
        "table2": {"dataset": "cifar100", "methods": ["darts-1st"]},
        "table3": {"dataset": "cifar10", "methods": ["darts-1st"]},
        "table4": {
            "dataset": "imagenet",
            "transfers": [{"source": "cifar10", "method": "darts-1st"}],
        },
        # dvc.yaml's table5 stages interpolate these lists (empty: no stages)
        "table5": {
            "dataset": "cifar10",
            "baselines": ["darts-1st"],
            "methods": [],
            "transfers": [],
        },
    }
    for ds in params["datasets"].values():
        ds["root"] = ds["root"].removeprefix("demo/")
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(dest, "git", "init", "-q")
    run(
        dest,
        "git",
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "init",
    )
    return params


def run(cwd: Path, *cmd: str) -> str:
    exe = str(BIN / cmd[0]) if (BIN / cmd[0]).exists() else cmd[0]
    res = subprocess.run(
        [exe, *cmd[1:]],
        cwd=cwd,
        env=tool_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res.stdout + res.stderr


def test_dvc_repro_records_params_data_genotypes_checkpoints_metrics(tmp_path: Path) -> None:
    params = demo_sized_paper_checkout(tmp_path)
    run(tmp_path, "dvc", "repro", "table@table3")
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]
    search = lock["search-cifar10@darts-1st-0"]
    assert search["params"]["params.yaml"]["search"]["epochs"] == params["search"]["epochs"]
    assert search["deps"][0]["path"] == "data/splits/cifar10.json"
    outs = {o["path"] for o in search["outs"]}
    assert "results/search/cifar10/darts-1st/seed0/checkpoint.pt" in outs
    assert lock["export-cifar10@darts-1st-0"]["outs"][0]["path"].endswith("seed0.json")
    train = lock["train-cifar10@darts-1st-0"]
    assert "results/eval/cifar10/darts-1st/seed0/metrics.json" in {o["path"] for o in train["outs"]}
    assert "eval.cifar" in train["params"]["params.yaml"]
    assert pd.read_csv(tmp_path / "results" / "table3.csv")["n"].tolist() == [1]
    assert "up to date" in run(tmp_path, "dvc", "status", "--with-deps", "table@table3")
