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
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import tiny_config

from mlonas.cli import main
from mlonas.config import Config
from mlonas.data.splits import write_split
from mlonas.report import audit as audit_module
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
    raw.pop("overrides", None)  # resolved-config bookkeeping, not a params.yaml key
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
    # What the code-drift notes say depends on this checkout's git state (uncommitted
    # edits while developing); tests/test_staleness.py checks code_changes on a repo of its
    # own, test_code_changes_of_each_stage_are_notes below that audit reports them.
    monkeypatch.setattr(audit_module, "code_changes", lambda code, stage: [])
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
        assert s["notes"] == []
        assert search["dir"] == f"results/search/cifar10/{SLUG}/seed{s['seed']}"
        (split,) = s["splits"]
        assert split["dataset"] == "cifar10" and len(split["raw_sha256"]) == 64
        statuses = {a["role"]: a["status"] for a in s["artifacts"]}
        for role in ("evaluation input: genotype", "evaluation input: split"):
            assert statuses[role] == "ok"
        assert statuses["genotype input: alphas"] == "ok"
        assert statuses["search input: split"] == "ok"
        assert statuses["evaluation model.pt"] == "unrecorded"  # no dvc.lock here
        # the search's own outputs, recorded in its provenance.json, are checked (issue 11)
        for name in ("alphas.json", "history.csv", "metrics.json"):
            art = _artifact(report, s["seed"], f"search output: {name}")
            assert art["status"] == "ok" and art["records"][0]["by"] == "search provenance"
        split_records = _artifact(report, s["seed"], "search input: split")["records"]
        assert [r["by"] for r in split_records] == ["search provenance", "search params"]
        # ... and so are the params each job read, against today's
        for stage in (ev, search):
            assert stage["tracked_params"] == {"status": "ok", "changed": []}
            assert stage["overrides"] == []
        assert split["params"] == "ok"
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
    assert _artifact(report, 0, "search output: alphas.json")["status"] == "missing"
    missing = [p for p in report["problems"] if p.endswith("is missing")]
    assert len(missing) == 6  # alphas by its two records, two consumers x two seeds of the split


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


def _dvc_tracks(work: Path, path: str) -> None:
    """Make ``work`` a DVC project whose dvc.lock records ``path`` as it is now: the md5
    DVC 3 records for a file is that of its bytes."""
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=work, check=True)
    md5 = hashlib.md5((work / path).read_bytes()).hexdigest()
    (work / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"t": {"cmd": "x", "outs": [path]}}}))
    lock = {"schema": "2.0", "stages": {"t": {"cmd": "x", "outs": [{"path": path, "md5": md5}]}}}
    (work / "dvc.lock").write_text(yaml.safe_dump(lock))  # found beside params.yaml


def test_dvc_lock_records_are_checked(work: Path, capsys) -> None:
    model = f"results/eval/cifar10/{SLUG}/seed0/model.pt"
    _dvc_tracks(work, model)
    code, report = audit_json(capsys, "results/table3.csv", "--method", "DARTS-1st")
    art = _artifact(report, 0, "evaluation model.pt")
    assert code == 0 and art["status"] == "ok"
    assert art["records"] == [{"by": "dvc.lock", "algo": "md5", "dvc": "unchanged", "status": "ok"}]
    (work / model).write_bytes((work / model).read_bytes() + b"\0")
    code, report = audit_json(capsys, "results/table3.csv", "--method", "DARTS-1st")
    art = _artifact(report, 0, "evaluation model.pt")
    assert code == 1 and art["status"] == "changed" and art["records"][0]["dvc"] == "modified"
    code, out, _ = audit(capsys, "results/table3.csv", "--method", "DARTS-1st")
    assert f"changed    evaluation model.pt: {model}" in out and "dvc data status: modified" in out
    (work / model).unlink()
    code, report = audit_json(capsys, "results/table3.csv", "--method", "DARTS-1st")
    art = _artifact(report, 0, "evaluation model.pt")
    assert code == 1 and art["status"] == "missing" and art["records"][0]["dvc"] == "deleted"


def test_a_dvc_lock_outside_a_dvc_project_is_a_one_line_error(work: Path, capsys) -> None:
    (work / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    code, out, err = audit(capsys, "results/table3.csv", "--method", SLUG)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "dvc data status in" in err and "not inside of a DVC repository" in err


def test_markdown_path_audits_the_csv_beside_it(chain: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(chain)  # read-only use of the shared chain
    _, from_csv = audit_json(capsys, "results/table3.csv", "--method", "DARTS-1st")
    code, from_md = audit_json(capsys, "results/table3.md", "--method", "darts-1st")
    assert code == 0 and from_md["table"]["path"] == "results/table3.csv"
    for key in ("shown_in_table", "recomputed", "seeds", "row", "table", "ok"):
        assert from_md[key] == from_csv[key], key


def test_bad_requests_are_one_line_errors(chain: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(chain)
    code, out, err = audit(capsys, "results/table3.csv", "--method", "SGL-PC-DARTS")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "has no method 'SGL-PC-DARTS' (it has: DARTS-1st)" in err
    code, _, err = audit(capsys, "results/table3.md", "--method", "nope")
    assert code == 2 and "table results/table3.csv has no method 'nope'" in err
    code, _, err = audit(capsys, "results/table9.csv", "--method", SLUG)
    assert code == 2 and "results/table9.csv does not exist" in err


def test_check_data_rehashes_the_raw_data(chain: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(chain)
    code, report = audit_json(capsys, "results/table3.csv", "--method", SLUG, "--check-data")
    assert code == 0 and report["seeds"][0]["splits"][0]["raw_data"] == "ok"
    _, report = audit_json(capsys, "results/table3.csv", "--method", SLUG)
    assert report["seeds"][0]["splits"][0]["raw_data"].startswith("not checked")


# --------------------------------------------------------------------------- tampering
# Issue 11 ("Audit gaps"): every file whose hash a later stage recorded is checked
# against it, and every record of params against today's params. Each case below edits
# one artifact of seed 1 the way a person (or a stale rerun) would and expects exit 1
# with a problem naming it.

S1 = f"results/search/cifar10/{SLUG}/seed1"
E1 = f"results/eval/cifar10/{SLUG}/seed1"
C1 = f"results/cells/cifar10/{SLUG}/seed1.json"


def _edit_json(path: str | Path, edit: Any) -> None:
    """Apply ``edit`` to a JSON file and write it back as the stages write JSON."""
    p = Path(path)
    data = json.loads(p.read_text())
    edit(data)
    p.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def _edit_csv(path: str | Path, column: str, delta: float) -> None:
    """Change the last row's ``column`` of a history.csv by ``delta``."""
    import pandas as pd

    frame = pd.read_csv(path)
    frame.loc[frame.index[-1], column] += delta
    frame.to_csv(path, index=False)


def _problems(report: dict[str, Any]) -> str:
    return "\n".join(report["problems"])


def _set(*keys: str, value: Any = None, scale: float | None = None) -> Any:
    """An edit of the JSON value at ``keys`` (set it, or multiply it by ``scale``)."""

    def edit(data: Any) -> None:
        node = data
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = node[keys[-1]] * scale if scale is not None else value

    return edit


TAMPER: dict[str, tuple[str, Any, list[str]]] = {
    # file, edit, what the problems must say
    "split json": (
        "data/splits/cifar10.json",
        lambda d: d["train_indices"].reverse(),
        [
            "seed 1: search input: split data/splits/cifar10.json is changed",
            "seed 1: evaluation input: split data/splits/cifar10.json is changed",
        ],
    ),
    "search alphas.json": (
        f"{S1}/alphas.json",
        lambda d: d["architectures"]["model"]["alpha_normal"][0].reverse(),
        [
            f"seed 1: search output: alphas.json {S1}/alphas.json is changed",
            f"seed 1: genotype input: alphas {S1}/alphas.json is changed",
        ],
    ),
    "search history.csv": (
        f"{S1}/history.csv",
        ("val_acc", 1.0),
        [f"seed 1: search output: history.csv {S1}/history.csv is changed"],
    ),
    "search metrics.json": (
        f"{S1}/metrics.json",
        _set("val_acc", value=99.0),
        [
            f"seed 1: search output: metrics.json {S1}/metrics.json is changed",
            f"final.val_acc {{}} disagrees with {S1}/metrics.json 99.0",
        ],
    ),
    "search provenance params": (
        f"{S1}/provenance.json",
        _set("params", "settings", "lr", scale=2.0),
        [
            f"seed 1: search provenance {S1}/provenance.json records params other than today's",
            "params.settings.lr (recorded 0.05, today 0.025)",
        ],
    ),
    "search provenance output hash": (
        f"{S1}/provenance.json",
        _set("outputs", "history.csv", "sha256", value="0" * 64),
        [f"seed 1: search output: history.csv {S1}/history.csv is changed"],
    ),
    "search provenance wall time": (
        f"{S1}/provenance.json",
        _set("wall_time_s", scale=10.0),
        [f"seed 1: search provenance {S1}/provenance.json: wall_time_s"],
    ),
    "cell genotype json": (
        C1,
        lambda d: d["genotype"]["normal"][0].__setitem__(0, "skip_connect"),
        [f"seed 1: evaluation input: genotype {C1} is changed"],
    ),
    "eval metrics.json params": (
        f"{E1}/metrics.json",
        _set("provenance", "params", "epochs", value=600),
        [
            f"seed 1: evaluation {E1}/metrics.json records params other than today's",
            "params.epochs (recorded 600, today 1)",
            "epochs 1 disagrees with provenance.params.epochs 600",
        ],
    ),
    "eval metrics.json tracked_params": (
        f"{E1}/metrics.json",
        _set("provenance", "tracked_params", "datasets.cifar10", "split_seed", value=7),
        [
            f"seed 1: evaluation {E1}/metrics.json tracked_params differ from today's",
            "datasets.cifar10.split_seed (recorded 7, today 0)",
        ],
    ),
    "eval history.csv": (
        f"{E1}/history.csv",
        ("test_top1", -1.0),
        [
            f"seed 1: evaluation {E1}/metrics.json: top1_error",
            f"disagrees with its {E1}/history.csv",
        ],
    ),
}


@pytest.mark.parametrize("case", list(TAMPER))
def test_each_tampered_artifact_is_named_and_exits_1(work: Path, capsys, case: str) -> None:
    """Every kind of artifact behind a number, edited by hand, fails the audit by name.

    Before issue 11 the search's history.csv/metrics.json were "unrecorded" although its
    provenance holds their hashes, and an edited provenance, an edited eval setting or an
    eval history that no longer gives the metrics all passed as OK.
    """
    path, edit, expected = TAMPER[case]
    code, report = audit_json(capsys, "results/table3.csv", "--method", SLUG)
    assert code == 0, report["problems"]  # the fixture itself is clean
    final_val_acc = json.loads((work / S1 / "provenance.json").read_text())["final"]["val_acc"]
    if isinstance(edit, tuple):
        _edit_csv(work / path, *edit)
    else:
        _edit_json(work / path, edit)
    code, report = audit_json(capsys, "results/table3.csv", "--method", SLUG)
    problems = _problems(report)
    assert code == 1 and not report["ok"]
    for text in expected:
        assert text.replace("{}", repr(final_val_acc)) in problems, problems
    seed0 = next(s for s in report["seeds"] if s["seed"] == 0)
    if case != "split json":  # the split is shared by both seeds; all else is seed 1's
        assert seed0["problems"] == [], seed0["problems"]
    code, out, _ = audit(capsys, "results/table3.csv", "--method", SLUG)
    assert code == 1 and "PROBLEMS (" in out and expected[0].replace("{}", "") in out


def test_provenance_edited_without_tracked_params_is_still_caught(work: Path, capsys) -> None:
    """Artifacts written before tracked_params existed: the params themselves are still
    compared, so an edit of them fails; the missing record is said, not a crash."""

    def old_search(d: dict[str, Any]) -> None:
        for key in ("tracked_params", "outputs"):
            del d[key]

    def old_eval(d: dict[str, Any]) -> None:
        for key in ("tracked_params",):
            del d["provenance"][key]

    for s in SEEDS:
        _edit_json(work / f"results/search/cifar10/{SLUG}/seed{s}/provenance.json", old_search)
        _edit_json(work / f"results/eval/cifar10/{SLUG}/seed{s}/metrics.json", old_eval)
    code, report = audit_json(capsys, "results/table3.csv", "--method", SLUG)
    assert code == 0, report["problems"]
    for s in report["seeds"]:
        for stage in (s["evaluation"], s["search"]):
            assert stage["tracked_params"] == {"status": "unrecorded", "changed": None}
            assert stage["params_changed_since"] == [] and stage["overrides"] == []
        assert _artifact(report, s["seed"], "search history.csv")["status"] == "unrecorded"
        notes = "\n".join(s["notes"])
        assert "records no tracked_params" in notes and "records no output hashes" in notes
    code, out, _ = audit(capsys, "results/table3.csv", "--method", SLUG)
    assert code == 0 and "tracked params: not recorded" in out

    _edit_json(f"{S1}/provenance.json", _set("params", "settings", "lr", value=0.5))
    _edit_json(f"{E1}/metrics.json", _set("provenance", "params", "lr", value=0.5))
    code, report = audit_json(capsys, "results/table3.csv", "--method", SLUG)
    assert code == 1
    problems = _problems(report)
    assert "params.settings.lr (recorded 0.5, today 0.025)" in problems
    assert f"{E1}/metrics.json records params other than today's" in problems
    assert "params.lr (recorded 0.5, today 0.025)" in problems


def test_consistent_edit_of_a_provenance_is_still_caught(work: Path, capsys) -> None:
    """tracked_params edited to agree with an edited definition: both differ from today."""

    def edit(d: dict[str, Any]) -> None:
        d["params"]["settings"]["epochs"] = 50
        d["tracked_params"]["search"]["epochs"] = 50

    _edit_json(f"{S1}/provenance.json", edit)
    code, report = audit_json(capsys, "results/table3.csv", "--method", SLUG)
    assert code == 1
    problems = _problems(report)
    assert "params.settings.epochs (recorded 50, today 3)" in problems
    assert "search.epochs (recorded 50, today 3)" in problems
    assert report["seeds"][1]["search"]["tracked_params"] == {
        "status": "changed",
        "changed": ["search.epochs"],
    }


def test_params_changed_since_the_runs_are_reported_by_key(work: Path, capsys) -> None:
    """Today's params.yaml no longer gives what the chain was made with: every stage whose
    rule reads a changed key says which (what Snakemake would rerun), the others do not."""
    raw = yaml.safe_load(Path("params.yaml").read_text())
    raw["eval"]["cifar"]["lr"] = 0.05
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    code, report = audit_json(capsys, "results/table3.csv", "--method", SLUG)
    assert code == 1
    for s in report["seeds"]:
        ev, search = s["evaluation"], s["search"]
        assert ev["params_changed_since"] == ["params.lr"]
        assert ev["tracked_params"]["changed"] == ["eval.cifar.lr"]
        assert search["tracked_params"]["status"] == "ok" and search["params_changed_since"] == []
    assert "eval.cifar.lr (recorded 0.025, today 0.05)" in _problems(report)

    raw["eval"]["cifar"]["lr"] = 0.025
    raw["search"]["momentum"] = 0.8
    raw["datasets"]["cifar10"]["split_seed"] = 3
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    code, report = audit_json(capsys, "results/table3.csv", "--method", SLUG)
    assert code == 1
    problems = _problems(report)
    for s in report["seeds"]:
        assert s["search"]["params_changed_since"] == ["params.settings.momentum"]
        assert s["search"]["tracked_params"]["changed"] == [
            "datasets.cifar10.split_seed",
            "search.momentum",
        ]
        assert s["evaluation"]["tracked_params"]["changed"] == ["datasets.cifar10.split_seed"]
        assert s["splits"][0]["params"].startswith("changed")
    assert "split data/splits/cifar10.json: made with split_seed=0" in problems


def test_a_run_with_overrides_differs_and_says_so(work: Path, capsys) -> None:
    """A real rerun of one evaluation with ``--set``: provenance records the override and
    the tracked value; the audit reports the key and the override list, and exits 1."""
    shutil.rmtree(E1)
    args = ["--params", "params.yaml", "--preset", "demo"]
    code = main(
        [
            "train-cifar",
            *args,
            "--set",
            "eval.cifar.lr=0.05",
            "--dataset",
            "cifar10",
            "--method",
            SLUG,
            "--seed",
            "1",
            "--genotype",
            C1,
            "--split",
            "data/splits/cifar10.json",
            "--out",
            E1,
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    table = ["--out-csv", "results/table3.csv", "--out-md", "results/table3.md"]
    assert main(["table", *args, "--table", "table3", *table]) == 0
    prov = json.loads(Path(f"{E1}/metrics.json").read_text())["provenance"]
    assert prov["overrides"] == ["eval.cifar.lr=0.05"]
    assert prov["tracked_params"]["eval.cifar"]["lr"] == 0.05
    capsys.readouterr()
    code, report = audit_json(capsys, "results/table3.csv", "--method", SLUG)
    assert code == 1 and report["table_matches"]  # the table was rebuilt: only params differ
    seed0, seed1 = report["seeds"]
    assert seed0["problems"] == []
    assert seed1["evaluation"]["overrides"] == ["eval.cifar.lr=0.05"]
    problems = "\n".join(seed1["problems"])
    assert "eval.cifar.lr (recorded 0.05, today 0.025)" in problems
    assert "params.lr (recorded 0.05, today 0.025)" in problems
    assert problems.count("[the run had overrides: eval.cifar.lr=0.05]") == 2
    code, out, _ = audit(capsys, "results/table3.csv", "--method", SLUG)
    assert code == 1 and "run with overrides eval.cifar.lr=0.05" in out


def test_dvc_lock_records_of_evaluation_history_are_checked(work: Path, capsys) -> None:
    """An evaluation's history.csv is recorded by dvc.lock only; an edit that keeps the
    metrics' numbers (a train loss) is found there, and only there."""
    hist = f"{E1}/history.csv"
    _dvc_tracks(work, hist)
    code, report = audit_json(capsys, "results/table3.csv", "--method", SLUG)
    assert code == 0 and _artifact(report, 1, "evaluation history.csv")["status"] == "ok"
    _edit_csv(work / hist, "train_loss", 0.5)
    code, report = audit_json(capsys, "results/table3.csv", "--method", SLUG)
    assert code == 1 and report["problems"] == [f"seed 1: evaluation history.csv {hist} is changed"]


def test_a_demo_table_is_not_audited_against_a_paper_preset() -> None:
    """The CSV says whether its numbers are DEMO ones (its data column); the audit refuses
    to follow them into the artifacts of a preset that is not a demo, and back."""
    from mlonas.config import load_config
    from mlonas.errors import MlonasError
    from mlonas.report.audit import TableFile, check_preset

    repo = Path(__file__).resolve().parents[1]
    paper, demo = (load_config(repo / "params.yaml", p) for p in ("paper", "demo"))
    with pytest.raises(MlonasError, match="holds demo numbers but preset 'paper' is not a demo"):
        check_preset(TableFile("t.csv", "table3", True, []), paper)
    with pytest.raises(MlonasError, match="holds non-demo numbers but preset 'demo' is a demo"):
        check_preset(TableFile("t.csv", "table3", False, []), demo)
    check_preset(TableFile("t.csv", "table3", True, []), demo)


def test_code_changes_of_each_stage_are_notes(work: Path, capsys, monkeypatch) -> None:
    """The code drift of every run (mlonas.staleness) reaches the report as a note naming
    the record, asked for with the stage whose code made it; it is not a problem."""
    asked: list[tuple[str, str]] = []

    def changes(code: Any, stage: str) -> list[str]:
        asked.append((code.get("git_commit"), stage))
        return [f"src/mlonas/x.py changed since {stage}"]

    monkeypatch.setattr(audit_module, "code_changes", changes)
    code, report = audit_json(capsys, "results/table3.csv", "--method", "DARTS-1st")
    assert code == 0 and report["ok"]
    assert sorted({stage for _, stage in asked}) == ["search", "train-cifar"]
    for s in report["seeds"]:
        search_dir = f"results/search/cifar10/{SLUG}/seed{s['seed']}"
        eval_dir = f"results/eval/cifar10/{SLUG}/seed{s['seed']}"
        assert f"{search_dir}/provenance.json: src/mlonas/x.py changed since search" in s["notes"]
        assert f"{eval_dir}/metrics.json: src/mlonas/x.py changed since train-cifar" in s["notes"]
