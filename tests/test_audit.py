"""``mlonas audit`` on a real chain: split -> search -> export -> train-cifar -> table.

The chain is built once per module with the tiny configuration (two seeds of darts-1st
on the CIFAR-10 stand-in, about 15 s) under a *relative* root, so that every path the
stages record is relative to the working directory; each test that breaks something
works on its own copy of the tree and audits it from there through the real CLI.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import tiny_config

from mlonas.cli import main
from mlonas.config import Config
from mlonas.data.splits import write_split
from mlonas.report.cells import export_cell
from mlonas.report.tables import write_table
from mlonas.search.loop import run_search
from mlonas.train import run_train_cifar

SEEDS = [0, 1]
SLUG = "darts-1st"
TABLES = {
    "table2": {"dataset": "cifar100", "methods": [SLUG]},
    "table3": {"dataset": "cifar10", "methods": [SLUG]},
    "table4": {"dataset": "imagenet", "transfers": [{"source": "cifar10", "method": SLUG}]},
}


def _config() -> Config:
    cfg = tiny_config(Path("."), {"seeds": SEEDS, "eval": {"cifar": {"epochs": 1}}})
    cfg.params["root"] = ""  # every recorded path relative to the working directory
    cfg.params["tables"] = copy.deepcopy(TABLES)
    return cfg


def _params_file(cfg: Config, path: Path) -> None:
    """The tiny config as a params file the CLI can load with ``--preset demo``."""
    raw = copy.deepcopy(cfg.params)
    raw.pop("preset")
    raw["root"] = "./"
    raw["presets"] = {"demo": {"root": ""}}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("chain")
    old = os.getcwd()
    os.chdir(base)
    try:
        cfg = _config()
        _params_file(cfg, base / "params.yaml")
        split = cfg.split_path("cifar10")
        write_split(cfg, "cifar10", split)
        for seed in SEEDS:
            s_dir = cfg.search_dir("cifar10", SLUG, seed)
            run_search(cfg, "cifar10", SLUG, seed, split, s_dir, device="cpu")
            cell = cfg.cell_path("cifar10", SLUG, seed)
            export_cell(f"{s_dir}/alphas.json", cell, dataset="cifar10", method=SLUG, seed=seed)
            e_dir = cfg.eval_dir("cifar10", SLUG, seed)
            run_train_cifar(cfg, "cifar10", SLUG, seed, cell, split, e_dir, device="cpu")
        write_table(cfg, "table3", cfg.table_path("table3"), cfg.table_path("table3", "md"))
    finally:
        os.chdir(old)
    return base


@pytest.fixture
def work(chain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the chain, made the working directory."""
    dest = tmp_path / "w"
    shutil.copytree(chain, dest)
    monkeypatch.chdir(dest)
    return dest


def audit(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["audit", "--params", "params.yaml", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def audit_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code, out, err = audit(capsys, *args, "--json")
    assert err == ""
    return code, json.loads(out)


def _artifact(report: dict[str, Any], seed: int, role: str) -> dict[str, Any]:
    seed_rep = next(s for s in report["seeds"] if s["seed"] == seed)
    hits = [a for a in seed_rep["artifacts"] if a["role"] == role]
    assert len(hits) == 1, [a["role"] for a in seed_rep["artifacts"]]
    return hits[0]


def test_clean_chain_is_ok_and_traces_every_stage(work: Path, capsys) -> None:
    code, report = audit_json(capsys, "results/table3.csv", "--method", "DARTS-1st")
    assert code == 0 and report["ok"] and report["problems"] == []
    assert report["table_matches"] and report["table"]["preset"] == "demo"
    assert report["row"] == {
        "method": "DARTS-1st",
        "slug": SLUG,
        "dataset": "cifar10",
        "source": "cifar10",
        "base": "darts",
        "order": "first",
        "scheme": "plain",
    }
    rc = report["recomputed"]
    metrics = [
        json.loads((work / f"results/eval/cifar10/{SLUG}/seed{s}/metrics.json").read_text())
        for s in SEEDS
    ]
    errors = [m["top1_error"] for m in metrics]
    assert rc["seeds"] == SEEDS and rc["top1_error_mean"] == pytest.approx(sum(errors) / 2)
    assert rc["top1_error_std"] == pytest.approx(abs(errors[0] - errors[1]) / 2**0.5)
    for s, m in zip(report["seeds"], metrics, strict=True):
        ev, geno, search = s["evaluation"], s["genotype"], s["search"]
        assert ev["top1_error"] == m["top1_error"] and ev["params"]["epochs"] == 1
        assert ev["software"]["torch"] and ev["code"]["package"] and ev["device"]["type"] == "cpu"
        assert ev["wall_time_s"] > 0 and ev["params_changed_since"] == []
        cell = json.loads((work / f"results/cells/cifar10/{SLUG}/seed{s['seed']}.json").read_text())
        assert geno["genotype"] == cell["genotype"] and geno["architecture"] == "model"
        assert geno["rederived_from_alphas"] == "same"
        assert search["params"]["method"] == SLUG and search["params_changed_since"] == []
        assert search["dir"] == f"results/search/cifar10/{SLUG}/seed{s['seed']}"
        (split,) = s["splits"]
        assert split["dataset"] == "cifar10" and len(split["raw_sha256"]) == 64
        statuses = {a["role"]: a["status"] for a in s["artifacts"]}
        for role in ("evaluation input: genotype", "evaluation input: split"):
            assert statuses[role] == "ok"
        assert statuses["genotype input: alphas"] == "ok"
        assert statuses["search input: split"] == "ok"
        assert statuses["evaluation model.pt"] == "unrecorded"  # no dvc.lock here
        genotype = _artifact(report, s["seed"], "evaluation input: genotype")
        assert (
            genotype["sha256"] == hashlib.sha256((work / genotype["path"]).read_bytes()).hexdigest()
        )


def test_text_report_groups_per_seed_and_says_ok(work: Path, capsys) -> None:
    code, out, err = audit(capsys, "results/table3.csv", "--method", SLUG)  # slug works too
    assert code == 0 and err == ""
    assert out.startswith("Audit of DARTS-1st in results/table3.csv (table3, preset demo)")
    assert "-> matches" in out and out.rstrip().endswith("matches them.")
    for s in SEEDS:
        block = out.split(f"\nSeed {s}\n")[1].split("\nSeed ")[0]
        assert f"results/eval/cifar10/{SLUG}/seed{s}" in block
        assert f"results/cells/cifar10/{SLUG}/seed{s}.json" in block
        assert "torch " in block and "device: cpu" in block and "wall time" in block
        assert "ok         evaluation input: genotype" in block


def test_changed_byte_is_reported_and_exits_1(work: Path, capsys) -> None:
    cell = work / f"results/cells/cifar10/{SLUG}/seed1.json"
    cell.write_bytes(cell.read_bytes() + b" ")  # still valid JSON, other bytes
    code, report = audit_json(capsys, "results/table3.csv", "--method", "DARTS-1st")
    assert code == 1 and not report["ok"]
    assert _artifact(report, 1, "evaluation input: genotype")["status"] == "changed"
    assert _artifact(report, 0, "evaluation input: genotype")["status"] == "ok"
    assert any("seed 1" in p and "changed" in p for p in report["problems"])
    code, out, _ = audit(capsys, "results/table3.csv", "--method", "DARTS-1st")
    assert code == 1 and "changed    evaluation input: genotype" in out and "PROBLEMS (1)" in out


def test_missing_artifacts_are_reported(work: Path, capsys) -> None:
    (work / f"results/search/cifar10/{SLUG}/seed0/alphas.json").unlink()
    (work / "data/splits/cifar10.json").unlink()
    code, report = audit_json(capsys, "results/table3.csv", "--method", "DARTS-1st")
    assert code == 1
    assert _artifact(report, 0, "genotype input: alphas")["status"] == "missing"
    assert _artifact(report, 1, "genotype input: alphas")["status"] == "ok"
    assert report["seeds"][0]["genotype"]["rederived_from_alphas"].startswith("not checked")
    for s in SEEDS:
        for role in ("evaluation input: split", "search input: split"):
            assert _artifact(report, s, role)["status"] == "missing"
    missing = [p for p in report["problems"] if p.endswith("is missing")]
    assert len(missing) == 5  # one alphas, two consumers x two seeds of the split


def test_table_not_matching_its_artifacts_is_visible(work: Path, capsys) -> None:
    path = work / f"results/eval/cifar10/{SLUG}/seed0/metrics.json"
    m = json.loads(path.read_text())
    m["top1_error"] += 1.0  # an evaluation redone (or edited) after the table was built
    path.write_text(json.dumps(m))
    code, report = audit_json(capsys, "results/table3.md", "--method", "DARTS-1st")
    assert code == 1 and not report["table_matches"]
    assert any("top-1 mean" in p for p in report["problems"])
    # seed 1 lost its evaluation: the table (csv) still counts it
    shutil.rmtree(work / f"results/eval/cifar10/{SLUG}/seed1")
    code, out, _ = audit(capsys, "results/table3.csv", "--method", "DARTS-1st")
    assert code == 1 and "DOES NOT MATCH" in out
    assert "seeds: table [0, 1], found [0]" in out and "is missing but the table counts" in out


def test_dvc_lock_records_are_checked(work: Path, capsys) -> None:
    model = f"results/eval/cifar10/{SLUG}/seed0/model.pt"
    md5 = hashlib.md5((work / model).read_bytes()).hexdigest()
    lock = {"schema": "2.0", "stages": {"t": {"cmd": "x", "outs": [{"path": model, "md5": md5}]}}}
    (work / "dvc.lock").write_text(yaml.safe_dump(lock))  # found beside params.yaml
    code, report = audit_json(capsys, "results/table3.csv", "--method", "DARTS-1st")
    assert code == 0 and _artifact(report, 0, "evaluation model.pt")["status"] == "ok"
    assert _artifact(report, 0, "evaluation model.pt")["records"][0]["by"] == "dvc.lock"
    (work / model).write_bytes((work / model).read_bytes() + b"\0")
    code, report = audit_json(capsys, "results/table3.csv", "--method", "DARTS-1st")
    assert code == 1 and _artifact(report, 0, "evaluation model.pt")["status"] == "changed"


def test_markdown_and_csv_give_the_same_facts(chain: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(chain)  # read-only use of the shared chain
    _, from_csv = audit_json(capsys, "results/table3.csv", "--method", "DARTS-1st")
    code, from_md = audit_json(capsys, "results/table3.md", "--method", "darts-1st")
    assert code == 0 and from_md["table"]["format"] == "md"
    assert from_md["recomputed"] == from_csv["recomputed"]
    assert from_md["seeds"] == [s | {"in_table": None} for s in from_csv["seeds"]]
    shown = from_md["shown_in_table"]
    assert (shown["n"], shown["n_requested"], shown["seeds"]) == (2, 2, None)
    assert f"{shown['top1_error_mean']:.2f}" == f"{from_csv['recomputed']['top1_error_mean']:.2f}"


def test_bad_requests_are_one_line_errors(chain: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(chain)
    code, out, err = audit(capsys, "results/table3.csv", "--method", "SGL-PC-DARTS")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "has no method 'SGL-PC-DARTS' (it has: DARTS-1st)" in err
    code, _, err = audit(capsys, "results/table3.md", "--method", SLUG, "--preset", "paper")
    assert code == 2 and "built with preset 'demo'" in err and err.count("\n") == 1
    code, _, err = audit(capsys, "results/table9.csv", "--method", SLUG)
    assert code == 2 and "results/table9.csv does not exist" in err


def test_check_data_rehashes_the_raw_data(chain: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(chain)
    code, report = audit_json(capsys, "results/table3.csv", "--method", SLUG, "--check-data")
    assert code == 0 and report["seeds"][0]["splits"][0]["raw_data"] == "ok"
    _, report = audit_json(capsys, "results/table3.csv", "--method", SLUG)
    assert report["seeds"][0]["splits"][0]["raw_data"].startswith("not checked")
