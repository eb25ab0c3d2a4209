"""The search stage: a darts-1st search runs, resumes bitwise, and fails loudly."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import torch

from mlonas.checkpoint import Checkpointer
from mlonas.config import Config
from mlonas.data.splits import write_split
from mlonas.errors import MlonasError
from mlonas.io import torch_load
from mlonas.report.cells import export_cell
from mlonas.runtime import cosine_lr
from mlonas.search.loop import run_search
from mlonas.space.genotype import Genotype


def search(cfg: Config, out: Path, seed: int = 0, method: str = "darts-1st") -> dict:
    """A search on cifar10 as the rule runs it: with cifar100's split as SGL's unlabeled data."""
    for ds in ("cifar10", "cifar100"):
        if not Path(cfg.split_path(ds)).exists():
            write_split(cfg, ds, cfg.split_path(ds))
    return run_search(
        cfg, "cifar10", method, seed, cfg.split_path("cifar10"), str(out), device="cpu",
        unlabeled_split=cfg.split_path("cifar100"),
    )  # fmt: skip


class Killed(Exception):
    """Stands in for SIGKILL right after a checkpoint was written."""


def kill_after_first_save(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next search raise :class:`Killed` right after its first checkpoint."""
    saves = {"n": 0}
    real_save = Checkpointer.save

    def save_then_die(self, state):
        real_save(self, state)
        saves["n"] += 1
        if saves["n"] == 1:
            raise Killed

    monkeypatch.setattr(Checkpointer, "save", save_then_die)


def test_cosine_schedule_matches_darts() -> None:
    assert cosine_lr(0, 50, 0.025, 0.001) == pytest.approx(0.025)
    assert cosine_lr(25, 50, 0.025, 0.001) == pytest.approx(0.013)
    assert cosine_lr(50, 50, 0.025, 0.001) == pytest.approx(0.001)


def test_search_writes_alphas_history_provenance_and_export(
    tiny_cfg: Config, tmp_path: Path
) -> None:
    out = tmp_path / "s"
    record = search(tiny_cfg, out)
    alphas = json.loads((out / "alphas.json").read_text())
    arch = alphas["architectures"]["model"]
    assert len(arch["alpha_normal"]) == 5 and len(arch["alpha_normal"][0]) == 8
    assert len(alphas["trajectory"]) == 3
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3]
    for col in ("train_loss", "train_acc", "val_loss", "val_acc", "genotype", "lr"):
        assert col in history
    Genotype.from_dict(json.loads(history["genotype"].iloc[-1]))
    assert record["inputs"]["split"]["sha256"]
    assert record["device"]["type"] == "cpu" and record["wall_time_s"] > 0
    assert record["params"]["settings"]["epochs"] == 3
    # export derives the same genotype the search recorded, and draws it
    cell = tmp_path / "cell.json"
    g = export_cell(
        str(out / "alphas.json"), str(cell), dataset="cifar10", method="darts-1st", seed=0
    )
    assert g.to_dict() == arch["genotype"]
    assert Genotype.load(cell) == g
    assert cell.with_suffix(".png").stat().st_size > 1000


# every plain base (MSR-DARTS' too), LeaSE (Delta and the audience in the checkpoint) and SGL across
# P-DARTS' stage boundaries (two learners rebuilt at each stage)
ALL_METHODS = [
    "darts-1st",
    "darts-2nd",
    "pcdarts",
    "pdarts",
    "darts-minus",
    "lease-r18-darts-2nd",
    "sgl-pdarts",
    "msr-darts",  # no alphas; spectral-norm power vectors and stable ranks in the state
    "drnas",  # killed after stage 1: the resumed run prunes and widens with the saved RNG
    "darts-2nd-clr",
    "bdarts-clr",  # the broad supernet: its own modules, CLR on the arch lr
    "mae-darts-1st",  # MAE-NAS: the mask generator's state in the checkpoint
    "il-darts-2nd",  # interleaved head stages; no per-head state beyond the supernet
    "lbt-r18-darts-2nd",  # teacher, student and three optimizers; unlabeled stream
    "halfspace-darts-1st",  # pruned before the search; the resumed run does not prune again
]


@pytest.mark.parametrize("method", ALL_METHODS)
def test_killed_search_resumes_bitwise_identical(
    tiny_cfg: Config, tmp_path: Path, monkeypatch, method: str
) -> None:
    search(tiny_cfg, tmp_path / "straight", method=method)

    kill_after_first_save(monkeypatch)
    with pytest.raises(Killed):
        search(tiny_cfg, tmp_path / "resumed", method=method)
    assert not (tmp_path / "resumed" / "alphas.json").exists()  # nothing half-done published
    search(tiny_cfg, tmp_path / "resumed", method=method)

    a = (tmp_path / "straight" / "alphas.json").read_bytes()
    b = (tmp_path / "resumed" / "alphas.json").read_bytes()
    assert a == b
    ha = pd.read_csv(tmp_path / "straight" / "history.csv").drop(columns="wall_time_s")
    hb = pd.read_csv(tmp_path / "resumed" / "history.csv").drop(columns="wall_time_s")
    pd.testing.assert_frame_equal(ha, hb, check_exact=True)
    sa = torch_load(tmp_path / "straight" / "checkpoint.pt")["scheme"]
    sb = torch_load(tmp_path / "resumed" / "checkpoint.pt")["scheme"]
    assert_same_state(sa, sb)


def assert_same_state(a: object, b: object, where: str = "scheme") -> None:
    """Every tensor of two (nested) scheme states is bitwise equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_changed_params_do_not_resume_a_stale_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from conftest import tiny_config

    cfg = tiny_config(tmp_path, {"search": {"epochs": 1}})
    search(cfg, tmp_path / "s")
    caplog.set_level(logging.INFO, logger="mlonas")
    cfg2 = tiny_config(tmp_path, {"search": {"epochs": 1, "arch_lr": 1e-2}})
    search(cfg2, tmp_path / "s")
    assert "belongs to a different run" in caplog.text


def test_nan_loss_stops_with_epoch_and_step_and_writes_nothing(tmp_path: Path) -> None:
    from conftest import tiny_config

    cfg = tiny_config(tmp_path, {"search": {"lr": 1e30, "grad_clip": 1e30, "epochs": 2}})
    with pytest.raises(MlonasError, match=r"non-finite .* at epoch \d+ step \d+ \(seed 0\)"):
        search(cfg, tmp_path / "s")
    assert not (tmp_path / "s" / "alphas.json").exists()
    assert not (tmp_path / "s" / "provenance.json").exists()


def test_bad_split_file_is_a_one_line_error(tiny_cfg: Config, tmp_path: Path) -> None:
    bad = tmp_path / "split.json"
    bad.write_text("{not json")
    with pytest.raises(MlonasError) as exc:
        run_search(tiny_cfg, "cifar10", "darts-1st", 0, str(bad), str(tmp_path / "s"), "cpu")
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "s" / "alphas.json").exists()


def test_pdarts_stages_prune_ops_and_limit_skips(tiny_cfg: Config, tmp_path: Path) -> None:
    out = tmp_path / "s"
    search(tiny_cfg, out, method="pdarts")
    alphas = json.loads((out / "alphas.json").read_text())
    history = pd.read_csv(out / "history.csv")
    assert list(history["stage"]) == [1, 2, 3]
    sizes = [len(t["model"]["normal"][0]) for t in alphas["trajectory"]]
    assert sizes == [8, 5, 3]  # candidate ops per edge in each stage
    arch = alphas["architectures"]["model"]
    assert all(len(ops) == 3 for ops in arch["edge_ops_normal"])
    assert arch["max_skip_normal"] == 2
    genotype = Genotype.from_dict(arch["genotype"])
    assert [op for op, _ in genotype.normal].count("skip_connect") <= 2


def test_pcdarts_and_darts_minus_record_their_options(tiny_cfg: Config, tmp_path: Path) -> None:
    search(tiny_cfg, tmp_path / "pc", method="pcdarts")
    arch = json.loads((tmp_path / "pc" / "alphas.json").read_text())["architectures"]["model"]
    assert "beta_normal" in arch and "beta_reduce" in arch
    history = pd.read_csv(tmp_path / "pc" / "history.csv")
    warm = tiny_cfg.method("pcdarts").search.warmup_epochs
    assert list(history["arch_updated"]) == [e >= warm for e in range(len(history))]
    search(tiny_cfg, tmp_path / "minus", method="darts-minus")
    arch = json.loads((tmp_path / "minus" / "alphas.json").read_text())["architectures"]["model"]
    assert "beta_normal" not in arch  # the auxiliary skip's beta is schedule, not architecture
