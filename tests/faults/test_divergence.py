"""NaN/inf losses: where they happened is always named; what survives depends on the stage.

- A diverged *search* stops with one line naming epoch and step and leaves no artifact
  (no genotype can be exported from it), so its seed is missing downstream: the table
  row has n < n_requested.
- A diverged *evaluation training* is a result: exit 0, one line "diverged at epoch E
  step S", outputs marked ``"diverged": true`` with where it happened, and the table
  row counts the seed as diverged instead of dropping it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from conftest import tiny_config, write_params

from mlonas.checkpoint import Diverged, check_finite
from mlonas.cli import main
from mlonas.data import loaders
from mlonas.errors import MlonasError
from mlonas.io import torch_load
from mlonas.report.tables import build_table, render_markdown
from mlonas.space.evalnet import published_genotype

from .conftest import cli_args


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_names_epoch_step_and_seed(value: float) -> None:
    with pytest.raises(Diverged) as err:
        check_finite(torch.tensor(value), 3, 17, 2, "architecture (validation) loss", " in x")
    exc = err.value
    assert isinstance(exc, MlonasError)  # the CLI's one-line, exit-2 error for a search
    assert (exc.epoch, exc.step, exc.seed, exc.what) == (3, 17, 2, "architecture (validation) loss")
    assert str(exc) == (
        f"non-finite architecture (validation) loss ({value}) at epoch 3 step 17 (seed 2) in x"
    )
    check_finite(torch.tensor(1e38), 1, 1, 0)  # large but finite is not divergence


class PoisonAfter(torch.utils.data.Dataset):
    """Serves ``inner`` until ``after`` items were read, then images full of NaN.

    The loader reads in-process (num_workers 0) and in a fixed order, so the first
    poisoned batch, and therefore the (epoch, step) of the divergence, is known.
    """

    def __init__(self, inner: Any, after: int) -> None:
        self.inner, self.after, self.reads = inner, after, 0

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.inner[i]
        self.reads += 1
        return (torch.full_like(x, math.nan) if self.reads > self.after else x), y


def test_diverged_training_is_recorded_and_the_table_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # loader: workers, so that the poisoned images go through the dataset wrapper below
    cifar = {"epochs": 3, "batch_size": 64, "loader": "workers"}
    cfg = tiny_config(tmp_path, {"eval": {"cifar": cifar}})
    params = write_params(cfg, tmp_path / "params.yaml")
    split, cell = tmp_path / "cifar10.json", tmp_path / "cell.json"
    assert main(cli_args("split", params=params, dataset="cifar10", out=split)) == 0
    published_genotype("DARTS_V2").save(cell)
    real = loaders.eval_datasets
    poisoned: dict[str, PoisonAfter] = {}

    def eval_datasets(*args: Any, **kwargs: Any) -> Any:
        train, test, classes = real(*args, **kwargs)
        # the 4th batch of epoch 2 is the first with a NaN image
        poisoned["train"] = PoisonAfter(train, len(train) + 3 * 64)
        return poisoned["train"], test, classes

    monkeypatch.setattr(loaders, "eval_datasets", eval_datasets)
    out = Path(cfg.eval_dir("cifar10", "darts-1st", 0))
    capsys.readouterr()
    code = main(
        cli_args(
            "train-cifar",
            params=params,
            dataset="cifar10",
            method="darts-1st",
            seed=0,
            genotype=cell,
            split=split,
            out=out,
            device="cpu",
        )
    )
    err = capsys.readouterr().err.splitlines()
    assert code == 0, err  # a result: Snakemake keeps the outputs of a successful job
    said = [line for line in err if "diverged" in line]
    assert len(said) == 1 and "error" not in said[0]
    assert "train-cifar cifar10/darts-1st seed 0 diverged at epoch 2 step 4" in said[0]
    assert "non-finite training loss: nan" in said[0] and str(out) in said[0]

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["diverged"] is True and metrics["seed"] == 0
    assert metrics["diverged_at"] == {
        "epoch": 2,
        "step": 4,
        "loss": "training loss",
        "value": "nan",
    }
    assert metrics["epochs_completed"] == 1 and metrics["epochs"] == 3
    assert metrics["top1_error"] is None and metrics["params_m"] > 0
    assert metrics["provenance"]["inputs"]["genotype"]["path"] == str(cell)
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1] and history["train_loss"].notna().all()
    model = torch_load(out / "model.pt", "model")
    assert isinstance(model, dict) and all(isinstance(t, torch.Tensor) for t in model.values())
    assert torch_load(out / "checkpoint.pt")["epoch"] == 1  # the last finite epoch

    row = build_table(cfg, "table3").set_index("slug").loc["darts-1st"]
    assert (row["n"], row["n_requested"], row["diverged"], row["seeds"]) == (1, 1, 1, "0")
    assert math.isnan(row["top1_error_mean"])
    line = next(
        ln
        for ln in render_markdown(cfg, "table3", build_table(cfg, "table3")).splitlines()
        if ln.startswith("| DARTS-1st ")
    )
    assert "1 diverged (excluded)" in line


def test_diverged_search_stops_with_one_line_and_the_seed_goes_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tiny_config(tmp_path, {"search": {"lr": 1e30, "grad_clip": 1e30, "epochs": 2}})
    params = write_params(cfg, tmp_path / "params.yaml")
    split = Path(cfg.split_path("cifar10"))
    assert main(cli_args("split", params=params, dataset="cifar10", out=split)) == 0
    out = Path(cfg.search_dir("cifar10", "darts-1st", 0))
    capsys.readouterr()
    code = main(
        cli_args(
            "search",
            params=params,
            dataset="cifar10",
            method="darts-1st",
            seed=0,
            split=split,
            out=out,
            device="cpu",
        )
    )
    err = capsys.readouterr().err.splitlines()
    assert code == 2
    errors = [line for line in err if line.startswith("mlonas search: error: ")]
    assert len(errors) == 1 and errors[0] == err[-1], err
    assert "non-finite" in errors[0] and "(seed 0)" in errors[0]
    assert any(f"at epoch {e} step " in errors[0] for e in (1, 2)), errors[0]
    for name in ("alphas.json", "history.csv", "provenance.json", "metrics.json"):
        assert not (out / name).exists(), name

    cell = Path(cfg.cell_path("cifar10", "darts-1st", 0))
    code = main(
        cli_args(
            "export",
            params=params,
            dataset="cifar10",
            method="darts-1st",
            seed=0,
            alphas=out / "alphas.json",
            out=cell,
        )
    )
    assert code == 2 and not cell.exists()
    assert str(out / "alphas.json") in capsys.readouterr().err
    row = build_table(cfg, "table3").set_index("slug").loc["darts-1st"]
    assert (row["n"], row["n_requested"], row["diverged"]) == (0, 1, 0)


# -- non-finite values only the end of a search epoch sees --------------------------------


def search_setup(tmp_path: Path, method: str = "darts-1st") -> tuple[list[str], Path]:
    """A 2-epoch tiny search's command line (split written) and its output directory."""
    cfg = tiny_config(tmp_path, {"search": {"epochs": 2}})
    params = write_params(cfg, tmp_path / "params.yaml")
    split = Path(cfg.split_path("cifar10"))
    assert main(cli_args("split", params=params, dataset="cifar10", out=split)) == 0
    out = Path(cfg.search_dir("cifar10", method, 0))
    argv = cli_args(
        "search", params=params, dataset="cifar10", method=method, seed=0, split=split,
        out=out, device="cpu",
    )  # fmt: skip
    return argv, out


def assert_stopped_without_artifacts(
    code: int, err: list[str], out: Path, words: list[str], epochs_checkpointed: int
) -> None:
    """Exit 2, one error line (the last) with ``words``, no output, no diverged checkpoint."""
    assert code == 2, err
    assert not any("Traceback" in line for line in err), err
    errors = [line for line in err if line.startswith("mlonas search: error: ")]
    assert len(errors) == 1 and errors[0] == err[-1], err
    for w in words:
        assert w in errors[0], (w, errors[0])
    for name in ("alphas.json", "history.csv", "provenance.json", "metrics.json"):
        assert not (out / name).exists(), name
    if epochs_checkpointed == 0:
        assert not (out / "checkpoint.pt").exists()  # the diverged epoch is never saved
        return
    saved = torch_load(out / "checkpoint.pt")
    assert saved["epoch"] == epochs_checkpointed  # epochs done
    assert len(saved["history"]) == epochs_checkpointed
    assert all(math.isfinite(v) for r in saved["history"] for v in r.values() if type(v) is float)


@pytest.mark.parametrize("epoch", [1, 2])
def test_non_finite_validation_loss_stops_the_search_and_is_not_checkpointed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    epoch: int,
) -> None:
    """The end-of-epoch validation pass returns NaN at ``epoch`` (of 2): every step's loss is
    finite, so only the epoch check sees it. Before: epoch 1 went on and finished (exit 0,
    a NaN in history.csv); epoch 2 crashed writing metrics.json after alphas.json and
    history.csv (exit 1, traceback), and the NaN epoch was checkpointed either way."""
    from mlonas.search.common import Scheme

    argv, out = search_setup(tmp_path)
    real = Scheme.evaluate_nets
    calls = {"n": 0}

    def evaluate_nets(self: Scheme, nets: Any, *args: Any, **kwargs: Any) -> Any:
        res = real(self, nets, *args, **kwargs)
        calls["n"] += 1  # once per epoch
        if calls["n"] == epoch:
            res["model"] = (math.nan, res["model"][1])
        return res

    monkeypatch.setattr(Scheme, "evaluate_nets", evaluate_nets)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.splitlines()
    words = [f"non-finite val_loss (nan) at epoch {epoch} (seed 0)", "search cifar10/darts-1st"]
    assert_stopped_without_artifacts(code, err, out, words, epochs_checkpointed=epoch - 1)


def test_non_finite_architecture_parameter_stops_the_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An alpha at -inf in the last epoch: softmax gives its op weight 0, so every loss stays
    finite. Before: the state was checkpointed and writing alphas.json crashed (exit 1)."""
    from mlonas.search.schemes import PlainScheme

    argv, out = search_setup(tmp_path)
    real = PlainScheme.evaluate
    calls = {"n": 0}

    def evaluate(self: PlainScheme, batches: Any) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 2:  # after the last epoch's steps
            with torch.no_grad():
                self.model.alpha_normal[0, 0] = -math.inf
        return real(self, batches)

    monkeypatch.setattr(PlainScheme, "evaluate", evaluate)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.splitlines()
    words = ["non-finite architecture parameter model.alpha_normal (-inf) at epoch 2 (seed 0)"]
    assert_stopped_without_artifacts(code, err, out, words, epochs_checkpointed=1)


@pytest.mark.parametrize(
    "key", ["val_loss", "audience_val_loss", "learner2_val_loss", "train_loss", "val_acc"]
)
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_every_scheme_s_epoch_values_are_checked(key: str, value: float) -> None:
    """The check reads the epoch's row, so LeaSE's audience and SGL's per-learner losses
    are covered as well as the plain scheme's (the same keys the schemes return)."""
    from mlonas.search.loop import check_epoch_finite

    row = {"epoch": 3, "lr": 0.025, "train_loss": 2.3, "val_loss": 2.1, "val_acc": 10.0}
    check_epoch_finite(row, {}, 4)  # finite: nothing happens
    with pytest.raises(Diverged) as err:
        check_epoch_finite({**row, key: value}, {}, 4, " in search x/y")
    assert str(err.value) == f"non-finite {key} ({value}) at epoch 3 (seed 4) in search x/y"
    assert (err.value.epoch, err.value.step, err.value.seed) == (3, None, 4)
