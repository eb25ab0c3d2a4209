"""LeaSE and SGL as schemes of the one search loop: they run on the bases the papers use,
record what a researcher needs to see (the audience learning, the explanations moving,
each learner and their agreement), and pick the reported learner as configured."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import tiny_config
from test_search import search

from mlonas.config import UNLABELED_SCHEMES, Config
from mlonas.errors import MlonasError
from mlonas.report.cells import export_cell
from mlonas.search.loop import run_search
from mlonas.search.schemes import SCHEMES
from mlonas.search.sgl import select_learner
from mlonas.space.genotype import Genotype

# LeaSE on PC-DARTS: a composition params.yaml can name without code (docs/design.md)
LEASE_PCDARTS = {
    "methods": {
        "lease-pcdarts": {
            "label": "LeaSE-PC-DARTS",
            "base": "pcdarts",
            "order": "second",
            "scheme": "lease",
            "search": {"batch_size": 16, "partial_channels": 4, "init_channels": 8},
            "options": {},
        }
    }
}


@pytest.mark.parametrize("method", ["lease-r18-darts-2nd", "lease-pcdarts"])
def test_lease_runs_on_darts_and_pcdarts(tmp_path: Path, method: str) -> None:
    cfg = tiny_config(tmp_path, {**LEASE_PCDARTS, "search": {"epochs": 2}})
    record = search(cfg, tmp_path / "s", method=method)
    alphas = json.loads((tmp_path / "s" / "alphas.json").read_text())
    assert alphas["selected"] == record["selected"] == "explainer"
    assert list(alphas["architectures"]) == ["explainer"]
    Genotype.from_dict(alphas["architectures"]["explainer"]["genotype"])
    if method == "lease-pcdarts":
        assert "beta_normal" in alphas["architectures"]["explainer"]
    h = pd.read_csv(tmp_path / "s" / "history.csv")
    for col in ("audience_train_acc", "audience_val_acc", "audience_train_loss"):
        assert h[col].between(0, 100 if col.endswith("acc") else 1e3).all(), col
    # the explanations moved from their initialization (uniform in +-init*eps: mean 0.25)
    init = cfg.method(method).options.explanation_init
    assert (h["explanation_abs_mean"] - init / 2).abs().max() > 1e-3
    assert h["explanation_saturated"].between(0, 1).all()
    metrics = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert metrics["selected"] == "explainer" and "audience_val_acc" in metrics
    assert set(record["outputs"]) == {"alphas.json", "history.csv", "metrics.json"}


@pytest.mark.parametrize(
    "method", ["sgl-darts-1st", "sgl-darts-minus", "sgl-pdarts", "sgl-pcdarts"]
)
def test_sgl_runs_on_every_base(tiny_cfg: Config, tmp_path: Path, method: str) -> None:
    record = search(tiny_cfg, tmp_path / "s", method=method)
    alphas = json.loads((tmp_path / "s" / "alphas.json").read_text())
    archs = alphas["architectures"]
    assert list(archs) == ["learner1", "learner2"]
    # learners start from different random initializations
    assert archs["learner1"]["alpha_normal"] != archs["learner2"]["alpha_normal"]
    h = pd.read_csv(tmp_path / "s" / "history.csv")
    last = h.iloc[-1]
    names = ["learner1", "learner2"]
    assert alphas["selected"] == min(names, key=lambda n: last[f"{n}_val_loss"])
    assert record["selected"] == alphas["selected"]
    for n in names:
        for col in ("train_acc", "val_acc", "train_loss", "val_loss"):
            assert f"{n}_{col}" in h
        Genotype.from_dict(json.loads(last[f"{n}_genotype"]))
    assert h["pl_agreement"].between(0, 100).all()
    assert last["val_loss"] == pytest.approx(
        (last["learner1_val_loss"] + last["learner2_val_loss"]) / 2
    )
    assert set(record["inputs"]) == {"split", "unlabeled_split"}
    assert record["inputs"]["unlabeled_split"]["path"].endswith("cifar100.json")
    if method == "sgl-pdarts":
        assert list(h["stage"]) == [1, 2, 3]
        assert all(len(ops) == 3 for ops in archs["learner2"]["edge_ops_normal"])
    # export writes the selected learner's cell for evaluation, and every learner's cell
    cell = tmp_path / "cell.json"
    export_cell(str(tmp_path / "s" / "alphas.json"), str(cell), dataset="cifar10", method=method,
                seed=0)  # fmt: skip
    exported = json.loads(cell.read_text())
    assert exported["architecture"] == alphas["selected"]
    assert exported["genotypes"] == {n: archs[n]["genotype"] for n in names}
    assert exported["genotype"] == archs[alphas["selected"]]["genotype"]


def test_sgl_reports_the_configured_learner(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, {"search": {"epochs": 1}, "schemes": {"sgl": {"select": 2}}})
    search(cfg, tmp_path / "s", method="sgl-darts-1st")
    assert json.loads((tmp_path / "s" / "alphas.json").read_text())["selected"] == "learner2"
    history = [{"learner1_val_loss": 1.0, "learner2_val_loss": 0.5, "learner1_val_acc": 60.0,
                "learner2_val_acc": 40.0}]  # fmt: skip
    assert select_learner("min_val_loss", history, ["learner1", "learner2"]) == "learner2"
    assert select_learner("max_val_acc", history, ["learner1", "learner2"]) == "learner1"
    with pytest.raises(MlonasError, match=r"schemes\.sgl\.select: learner 3 of 2"):
        select_learner(3, history, ["learner1", "learner2"])


def test_sgl_without_its_unlabeled_split_is_a_one_line_error(tiny_cfg: Config, tmp_path) -> None:
    search(tiny_cfg, tmp_path / "warm", method="darts-1st")  # writes both splits
    with pytest.raises(MlonasError, match="--unlabeled-split: method sgl-darts-1st needs") as e:
        run_search(
            tiny_cfg, "cifar10", "sgl-darts-1st", 0, tiny_cfg.split_path("cifar10"),
            str(tmp_path / "s"), "cpu",
        )  # fmt: skip
    assert "\n" not in str(e.value)
    assert not (tmp_path / "s").exists()


def test_lbt_runs_with_its_student_and_unlabeled_images(tiny_cfg: Config, tmp_path: Path) -> None:
    record = search(tiny_cfg, tmp_path / "s", method="lbt-r18-darts-2nd")
    alphas = json.loads((tmp_path / "s" / "alphas.json").read_text())
    assert alphas["selected"] == record["selected"] == "teacher"
    assert list(alphas["architectures"]) == ["teacher"]
    Genotype.from_dict(alphas["architectures"]["teacher"]["genotype"])
    h = pd.read_csv(tmp_path / "s" / "history.csv")
    for col in ("student_train_acc", "student_val_acc", "pl_agreement"):
        assert h[col].between(0, 100).all(), col
    assert (h["student_train_loss"] > 0).all() and (h["student_pl_loss"] > 0).all()
    assert set(record["inputs"]) == {"split", "unlabeled_split"}
    assert record["inputs"]["unlabeled_split"]["path"].endswith("cifar100.json")


def test_lbt_with_gamma_zero_searches_as_darts_second_order(tmp_path: Path) -> None:
    """gamma = 0: the teacher's architecture and weights follow DARTS-2nd's exactly (the
    student learns beside it and never feeds back), so the scheme's real steps and
    schedule leave the teacher's search untouched. One loader worker: in-process, the
    augmentation of the unlabeled stream would draw from the global RNG between the
    training batches' draws (a worker's RNG is seeded from the loader's own generator)."""
    search_over = {"epochs": 1, "num_workers": 1}
    cfg = tiny_config(tmp_path, {"search": search_over, "schemes": {"lbt": {"gamma": 0.0}}})
    search(cfg, tmp_path / "lbt", method="lbt-r18-darts-2nd")
    search(cfg, tmp_path / "darts", method="darts-2nd")
    lbt = json.loads((tmp_path / "lbt" / "alphas.json").read_text())["architectures"]["teacher"]
    darts = json.loads((tmp_path / "darts" / "alphas.json").read_text())["architectures"]["model"]
    for key in ("alpha_normal", "alpha_reduce"):
        flat_lbt = [a for row in lbt[key] for a in row]
        assert flat_lbt == pytest.approx([a for row in darts[key] for a in row], abs=1e-12), key
    assert lbt["genotype"] == darts["genotype"]


def test_unlabeled_schemes_are_listed_for_validation() -> None:
    assert {n for n, c in SCHEMES.items() if c.UNLABELED} == UNLABELED_SCHEMES
