"""Evaluation training: resume is bitwise, stale checkpoints are ignored, DDP.

Damaged checkpoints, divergence (NaN/inf loss) and killed processes are fault cases and
live in ``tests/faults/``.

The data modules are a colleague's (``mlonas.data``); these tests stand in for them with
tiny synthetic tensors that honour the same interface, so the training loop is tested on
its own. The random "augmentation" below draws from the global torch RNG on purpose:
it makes the bitwise-resume test fail if the RNG state were not restored.

Run as a script (``torchrun --nproc_per_node=2 tests/test_train.py OUT``) this file is also
the per-rank program of the DDP test.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import subprocess
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mlonas import checkpoint, runstate
from mlonas.cli import stage_logging
from mlonas.config import Config, load_config
from mlonas.data.device import DeviceImages
from mlonas.errors import MlonasError
from mlonas.settings import CifarEvalSettings
from mlonas.space.evalnet import NetworkCIFAR, published_genotype
from mlonas.train import loop, run_train_cifar, run_train_imagenet
from mlonas.train.loop import TrainJob, cosine_factor, fit, imagenet_factor

REPO = Path(__file__).resolve().parents[1]
TIME_KEYS = {"wall_time_s", "provenance"}

CIFAR_SETTINGS: dict[str, Any] = {
    "layers": 3,
    "init_channels": 4,
    "epochs": 3,
    "batch_size": 8,
    "lr": 0.05,
    "lr_min": 0.0,
    "scheduler_step_first": True,
    "momentum": 0.9,
    "weight_decay": 3e-4,
    "grad_clip": 5.0,
    "cutout": 0,
    "drop_path": 0.2,
    "auxiliary_weight": 0.4,
    "label_smoothing": 0.0,
    "num_workers": 0,
    "loader": "workers",
    "precision": "fp32",
    "channels_last": False,
    "compile": False,
    "pool_bn": False,
    "network": "darts",
    "en_layers": None,
    "pool_time": None,
}
IMAGENET_SETTINGS: dict[str, Any] = {
    "layers": 3,
    "init_channels": 4,
    "epochs": 2,
    "batch_size": 8,
    "nproc": 2,
    "lr": 0.1,
    "lr_schedule": "linear",
    "warmup_epochs": 1,
    "momentum": 0.9,
    "weight_decay": 3e-5,
    "grad_clip": 5.0,
    "drop_path": 0.1,
    "auxiliary_weight": 0.4,
    "label_smoothing": 0.1,
    "num_workers": 0,
    "precision": "fp32",
    "channels_last": False,
    "compile": False,
    "pool_bn": False,
    "decode": "workers",
}


# -- stand-ins for mlonas.data -----------------------------------------------------------


class Jitter(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Synthetic images with a random flip + noise drawn from the global torch RNG."""

    def __init__(self, n: int, size: int, classes: int, seed: int, nan: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, size, size, generator=g)
        self.y = torch.randint(0, classes, (n,), generator=g)
        if nan:
            self.x[:] = float("nan")

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[i]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x + 0.05 * torch.randn_like(x), self.y[i]


def tiny_loader(
    dataset: Dataset[Any],
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    sampler: Sampler[int] | None = None,
    **rest: Any,
) -> DataLoader[Any]:
    """A LoaderFactory not built on epoch_loader: the order depends only on (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    shuffle = shuffle and sampler is None
    return DataLoader(dataset, batch_size, shuffle=shuffle, sampler=sampler, generator=g, **rest)


def fake_data_modules(
    train: Dataset[Any], test: Dataset[Any], classes: int
) -> dict[str, types.ModuleType]:
    loaders = types.ModuleType("mlonas.data.loaders")
    loaders.eval_datasets = lambda cfg, name, split, cutout, loader: (train, test, classes)  # type: ignore[attr-defined]
    loaders.imagenet_datasets = lambda cfg, split: (train, test, classes)  # type: ignore[attr-defined]
    loaders.epoch_loader = tiny_loader  # type: ignore[attr-defined]
    splits = types.ModuleType("mlonas.data.splits")
    splits.load_split = lambda path, cfg, name, verify=True: {  # type: ignore[attr-defined]
        "num_classes": classes,
        "image_size": 8,
    }
    return {"mlonas.data.loaders": loaders, "mlonas.data.splits": splits}


def demo_config(cifar: dict[str, Any], imagenet: dict[str, Any]) -> Config:
    cfg = load_config(REPO / "params.yaml", "demo")
    params = copy.deepcopy(cfg.params)
    params["eval"] = {"cifar": dict(cifar), "imagenet": dict(imagenet)}
    return Config(params)


def write_inputs(tmp: Path) -> tuple[str, str]:
    genotype = tmp / "cell.json"
    published_genotype("DARTS_V2").save(genotype)
    split = tmp / "split.json"
    split.write_text(json.dumps({"train": [0, 1], "val": [2]}))
    return str(genotype), str(split)


# -- helpers -----------------------------------------------------------------------------


def make_job(tmp: Path, out: str, settings: dict[str, Any] | None = None) -> TrainJob:
    s = dict(settings or CIFAR_SETTINGS)
    genotype_path, split_path = write_inputs(tmp)
    return TrainJob(
        stage="train-cifar",
        dataset="cifar10",
        method="darts-1st",
        seed=0,
        settings=CifarEvalSettings.from_params(s, "test", "eval.cifar"),
        genotype=published_genotype("DARTS_V2"),
        genotype_path=genotype_path,
        split_path=split_path,
        out_dir=str(tmp / out),
        lr_factor=lambda e: cosine_factor(e, s["epochs"], s["lr"], s["lr_min"]),
    )


def run_job(job: TrainJob, train: Dataset[Any], test: Dataset[Any], **kw: Any) -> Any:
    s = job.settings

    def build() -> NetworkCIFAR:
        return NetworkCIFAR(s.init_channels, 10, s.layers, True, job.genotype)

    return fit(job, build, train, test, "cpu", make_loader=tiny_loader, **kw)


def outputs(out: str) -> tuple[dict[str, torch.Tensor], pd.DataFrame, dict[str, Any]]:
    d = Path(out)
    state = torch.load(d / "model.pt", weights_only=True)
    history = pd.read_csv(d / "history.csv")
    metrics = json.loads((d / "metrics.json").read_text())
    return state, history, metrics


def assert_same_run(a: str, b: str) -> None:
    sa, ha, ma = outputs(a)
    sb, hb, mb = outputs(b)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa), "model weights differ"
    pd.testing.assert_frame_equal(
        ha.drop(columns="wall_time_s"), hb.drop(columns="wall_time_s"), check_exact=True
    )
    assert {k: v for k, v in ma.items() if k not in TIME_KEYS} == {
        k: v for k, v in mb.items() if k not in TIME_KEYS
    }


@pytest.fixture(scope="module")
def data() -> tuple[Jitter, Jitter]:
    return Jitter(16, 8, 10, seed=1), Jitter(9, 8, 10, seed=2)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny networks run fastest (and least disturbed by a busy machine) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- tests -------------------------------------------------------------------------------


def test_lr_schedules() -> None:
    assert cosine_factor(0, 10, 0.025, 0.0) == 1.0
    assert cosine_factor(5, 10, 0.025, 0.0) == pytest.approx(0.5)
    assert cosine_factor(10, 10, 0.025, 0.001) * 0.025 == pytest.approx(0.001)


def test_cosine_step_first_is_the_official_training_scripts_schedule() -> None:
    """The official DARTS ``train.py`` loop, replayed with torch's own scheduler:
    ``scheduler.step()`` at the top of each epoch, then train at the optimizer's lr."""
    epochs, lr = 12, 0.025
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    for e in range(epochs):
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()"
            warnings.simplefilter("ignore", UserWarning)
            sched.step()
        official = opt.param_groups[0]["lr"]
        assert cosine_factor(e, epochs, lr, 0.0, step_first=True) * lr == pytest.approx(
            official, abs=1e-15
        )
    assert official == pytest.approx(0.0, abs=1e-15)  # the last epoch trains at lr_min
    warm = [imagenet_factor(e, 250, "linear", 5) for e in range(6)]
    assert warm[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert warm[5] == pytest.approx(1 - 5 / 250)
    assert imagenet_factor(249, 250, "linear", 5) == pytest.approx(1 / 250)
    assert imagenet_factor(125, 250, "cosine", 0) == pytest.approx(0.5)
    with pytest.raises(MlonasError, match="lr_schedule"):
        imagenet_factor(3, 10, "step", 0)


def test_resumed_run_is_bitwise_identical(
    tmp_path: Path, data: tuple[Jitter, Jitter], caplog: pytest.LogCaptureFixture
) -> None:
    train, test = data
    caplog.set_level(logging.INFO, logger="mlonas")
    full = make_job(tmp_path, "full")
    metrics = run_job(full, train, test)
    assert metrics["epochs"] == 3 and not metrics["diverged"]

    parts = make_job(tmp_path, "parts")
    assert run_job(parts, train, test, stop_after_epoch=1) is None
    out = Path(parts.out_dir)
    assert (out / "checkpoint.pt").is_file()
    assert not any((out / name).exists() for name in loop.OUTPUTS)  # nothing partial
    caplog.clear()
    resumed = run_job(parts, train, test)
    assert "resuming from epoch 2 of 3" in caplog.text
    assert f"{out / 'checkpoint.pt'} after epoch 1" in caplog.text
    assert_same_run(full.out_dir, parts.out_dir)
    assert resumed["top1_error"] == metrics["top1_error"]
    # wall time accumulates over the two segments; history has one row per epoch
    _, history, _ = outputs(parts.out_dir)
    assert list(history["epoch"]) == [1, 2, 3]
    assert history["wall_time_s"].is_monotonic_increasing
    assert resumed["wall_time_s"] == history["wall_time_s"].iloc[-1]


def test_changed_params_start_over(
    tmp_path: Path, data: tuple[Jitter, Jitter], caplog: pytest.LogCaptureFixture
) -> None:
    train, test = data
    caplog.set_level(logging.INFO, logger="mlonas")
    s = {**CIFAR_SETTINGS, "epochs": 2}
    reference = make_job(tmp_path, "reference", s)
    run_job(reference, train, test)

    job = make_job(tmp_path, "job", {**s, "weight_decay": 1e-3})
    assert run_job(job, train, test, stop_after_epoch=1) is None
    job = make_job(tmp_path, "job", s)  # same out_dir, different params
    caplog.clear()
    run_job(job, train, test)
    assert "different run" in caplog.text
    assert_same_run(reference.out_dir, job.out_dir)


def test_finished_checkpoint_only_rewrites_outputs(
    tmp_path: Path, data: tuple[Jitter, Jitter], caplog: pytest.LogCaptureFixture
) -> None:
    train, test = data
    caplog.set_level(logging.INFO, logger="mlonas")
    job = make_job(tmp_path, "done", {**CIFAR_SETTINGS, "epochs": 1})
    first = run_job(job, train, test)
    for name in loop.OUTPUTS:  # what Snakemake does before re-running a job
        (Path(job.out_dir) / name).unlink()
    caplog.clear()
    second = run_job(job, train, test)
    assert "all 1 epochs done" in caplog.text
    assert second["wall_time_s"] == first["wall_time_s"]  # no training happened
    assert_same_run(job.out_dir, job.out_dir)


def test_run_train_cifar_entry_point(
    tmp_path: Path, data: tuple[Jitter, Jitter], monkeypatch: pytest.MonkeyPatch
) -> None:
    train, test = data
    for name, module in fake_data_modules(train, test, 10).items():
        monkeypatch.setitem(sys.modules, name, module)
    cfg = demo_config({**CIFAR_SETTINGS, "epochs": 2}, IMAGENET_SETTINGS)
    # the method's own evaluation settings (DrNAS-like: pool-BN, its drop path) reach the run
    own = {"pool_bn": True, "drop_path": 0.3}
    cfg.params["methods"]["darts-1st"]["eval"] = {"cifar": own}
    genotype_path, split_path = write_inputs(tmp_path)
    out = tmp_path / "eval"
    metrics = run_train_cifar(
        cfg, "cifar10", "darts-1st", 0, genotype_path, split_path, str(out), device="cpu"
    )
    assert set(metrics) >= {
        "top1_error",
        "top5_error",
        "params_m",
        "epochs",
        "wall_time_s",
        "diverged",
        "dataset",
        "method",
        "seed",
        "provenance",
    }
    assert 0.0 <= metrics["top1_error"] <= 100.0 and metrics["top5_error"] is not None
    assert metrics["dataset"] == "cifar10" and metrics["epochs"] == 2
    prov = metrics["provenance"]
    assert prov["stage"] == "train-cifar" and prov["seed"] == 0
    assert set(prov["inputs"]) == {"genotype", "split"}
    assert prov["params"] == cfg.eval_settings("cifar", "darts-1st").to_params()
    assert prov["params"] == {**cfg.eval_settings("cifar").to_params(), **own}
    assert prov["tracked_params"]["methods.darts-1st.eval"] == {"cifar": own}
    # DARTS_V2's reduce cell has max pools: each followed by the affine-free BN's buffers
    state = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert any(".ops." in k and k.endswith(".1.running_mean") for k in state)
    history = pd.read_csv(out / "history.csv")
    assert list(history.columns) == list(loop.HISTORY_COLUMNS) and len(history) == 2
    assert json.loads((out / "metrics.json").read_text()) == metrics
    with pytest.raises(MlonasError, match="unknown method"):
        run_train_cifar(cfg, "cifar10", "nope", 0, genotype_path, split_path, str(out), "cpu")


def test_run_train_imagenet_entry_point(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train, test = Jitter(12, 16, 6, seed=3), Jitter(7, 16, 6, seed=4)
    for name, module in fake_data_modules(train, test, 6).items():
        monkeypatch.setitem(sys.modules, name, module)
    cfg = demo_config(CIFAR_SETTINGS, IMAGENET_SETTINGS)
    genotype_path, split_path = write_inputs(tmp_path)
    metrics = run_train_imagenet(
        cfg,
        "cifar10",
        "darts-1st",
        0,
        genotype_path,
        split_path,
        str(tmp_path / "in"),
        device="cpu",
    )
    assert metrics["dataset"] == "imagenet" and metrics["source"] == "cifar10"
    assert metrics["top5_error"] <= metrics["top1_error"]
    history = pd.read_csv(tmp_path / "in" / "history.csv")
    assert list(history["lr"]) == pytest.approx([0.1, 0.1 * (1 - 1 / 2)])  # warm-up, decay


# -- the evaluation loop's speed settings (issue 13) --------------------------------------


def resident(n: int, size: int, classes: int, seed: int, train: bool) -> DeviceImages:
    """uint8 images whose class sets the mean colour (learnable in a few epochs)."""
    palette = torch.randint(40, 216, (classes, 3), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    noise = torch.randint(-40, 41, (n, size, size, 3), generator=g)
    x = (palette[y][:, None, None, :] + noise).clamp(0, 255).to(torch.uint8)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    return DeviceImages(x, y, mean, std, train=train, padding=size // 8, cutout=3 if train else 0)


@pytest.mark.parametrize("channels_last", [False, True])
def test_device_loader_run_resumes_bitwise(tmp_path: Path, channels_last: bool) -> None:
    """The device-resident loader through fit: killed after epoch 1 and resumed equals
    uninterrupted, bit for bit on CPU (its draws depend on (seed, epoch) only)."""
    train, test = resident(20, 8, 10, 1, True), resident(9, 8, 10, 2, False)
    s = {**CIFAR_SETTINGS, "loader": "device", "cutout": 3, "channels_last": channels_last}
    full = make_job(tmp_path, "full", s)
    run_job(full, train, test)
    parts = make_job(tmp_path, "parts", s)
    assert run_job(parts, train, test, stop_after_epoch=1) is None
    run_job(parts, train, test)
    assert_same_run(full.out_dir, parts.out_dir)
    if channels_last:
        state, _, _ = outputs(full.out_dir)
        assert state["stem.0.weight"].is_contiguous(memory_format=torch.channels_last)


def test_bf16_training_ends_close_to_fp32(tmp_path: Path) -> None:
    """bf16 autocast and fp32 training of a tiny network end within a stated tolerance.

    Same seed, data and initial weights; 6 epochs of 40 steps on a colour task that both
    learn to ~98 % test top-1. bf16 keeps 8 mantissa bits (relative rounding 2^-9 per
    op), so the trajectories drift apart chaotically rather than by a fixed bias; what
    must hold is that they end at the same level. The tolerance is what changing the
    *seed* does to fp32 on this task: measured over seeds 0-2, the final training loss
    (with the 0.4-weighted auxiliary loss) spans 0.50-0.74 and test top-1 98.5-99.5 %,
    while bf16 vs fp32 at one seed differed by <= 0.10 in loss and <= 1 point. So:
    |loss gap| < 0.25 (the seed-to-seed range) and |top-1 gap| <= 3 points (6 of the
    200 test images). A broken bf16 path (chance: 10 % top-1) fails by far. The two
    histories must differ, or the test would not have exercised bf16 at all.
    """
    train, test = resident(320, 8, 10, 11, True), resident(200, 8, 10, 12, False)
    base = {**CIFAR_SETTINGS, "loader": "device", "epochs": 6, "drop_path": 0.0, "lr": 0.05}
    runs = {}
    for precision in ("fp32", "bf16"):
        job = make_job(tmp_path, precision, {**base, "precision": precision})
        runs[precision] = (run_job(job, train, test), outputs(job.out_dir)[1])
    (m32, h32), (m16, h16) = runs["fp32"], runs["bf16"]
    assert not h32["train_loss"].equals(h16["train_loss"])  # bf16 really ran
    assert m32["top1_error"] < 10.0 and m16["top1_error"] < 10.0  # both learned
    assert abs(h16["train_loss"].iloc[-1] - h32["train_loss"].iloc[-1]) < 0.25
    assert abs(m16["top1_error"] - m32["top1_error"]) <= 3.0
    assert m16["provenance"]["params"]["precision"] == "bf16"


def _compile_raises_at_call(model: Any) -> Callable[..., Any]:
    def compiled(*args: Any) -> Any:
        torch.rand(5)  # tracing may draw: the fallback must undo it
        raise RuntimeError("inductor: no C compiler\nsecond line")

    return compiled


def _compile_raises(model: Any) -> Any:
    raise RuntimeError("torch.compile is not supported on this Python")


@pytest.mark.parametrize("fake_compile", [_compile_raises, _compile_raises_at_call])
def test_compile_error_falls_back_to_eager(
    tmp_path: Path,
    data: tuple[Jitter, Jitter],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fake_compile: Callable[[Any], Any],
) -> None:
    """A compile error (at torch.compile or at the first call, where torch.compile's
    lazy errors appear) costs one warning line; the run goes on eagerly and ends bit for
    bit as a run that never tried compiling."""
    train, test = data
    s = {**CIFAR_SETTINGS, "epochs": 2}
    eager = make_job(tmp_path, "eager", s)
    run_job(eager, train, test)
    monkeypatch.setattr(torch, "compile", fake_compile)
    caplog.set_level(logging.INFO, logger="mlonas")
    compiled = make_job(tmp_path, "compiled", {**s, "compile": True})
    run_job(compiled, train, test)
    lines = [r.getMessage() for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(lines) == 1 and "eager mode" in lines[0] and "\n" not in lines[0]
    assert "RuntimeError" in lines[0]
    sa, ha, _ = outputs(eager.out_dir)
    sb, hb, mb = outputs(compiled.out_dir)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    pd.testing.assert_frame_equal(ha.drop(columns="wall_time_s"), hb.drop(columns="wall_time_s"))
    assert mb["provenance"]["params"]["compile"] is True
    # the settings are part of the run's fingerprint: eager and compile are different runs
    assert loop.run_definition(eager, 1) != loop.run_definition(compiled, 1)


# -- DDP: two CPU processes under torchrun with gloo --------------------------------------


def _ddp_main(out_root: str) -> None:
    """Per-rank program: an uninterrupted run, and one killed after epoch 1 then resumed."""
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    train, test = Jitter(24, 16, 6, seed=3), Jitter(11, 16, 6, seed=4)
    sys.modules.update(fake_data_modules(train, test, 6))
    written: list[str] = []

    def recording(fn: Callable[..., None], path_arg: int) -> Callable[..., None]:
        def wrapper(*args: Any) -> None:
            written.append(Path(args[path_arg]).name)
            fn(*args)

        return wrapper

    # atomic_torch_save(obj, path); atomic_write_json/text(path, data); history.csv is
    # written through mlonas.runstate, checkpoints through mlonas.checkpoint
    for module, name, path_arg in (
        (loop, "atomic_torch_save", 1),
        (loop, "atomic_write_json", 0),
        (runstate, "atomic_write_text", 0),
        (checkpoint, "atomic_torch_save", 1),
    ):
        setattr(module, name, recording(getattr(module, name), path_arg))
    real_fit = loop.fit

    def killed_after_epoch_1(*args: Any, **kwargs: Any) -> dict[str, Any]:
        assert real_fit(*args, stop_after_epoch=1, **kwargs) is None
        return {}

    cfg = demo_config(CIFAR_SETTINGS, {**IMAGENET_SETTINGS, "epochs": 3})
    root = Path(out_root)
    genotype_path, split_path = write_inputs(root)
    dist.init_process_group("gloo")  # fit joins this group and leaves it open
    args = ("cifar10", "darts-1st", 0, genotype_path, split_path)
    with stage_logging():  # the messages on stderr, as `mlonas train-imagenet` shows them
        run_train_imagenet(cfg, *args, str(root / "full"), device="cpu")
        loop.fit = killed_after_epoch_1  # type: ignore[assignment]
        run_train_imagenet(cfg, *args, str(root / "parts"), device="cpu")
        loop.fit = real_fit
        metrics = run_train_imagenet(cfg, *args, str(root / "parts"), device="cpu")
    (root / f"rank{rank}.json").write_text(json.dumps({"written": written, "metrics": metrics}))
    dist.destroy_process_group()


def test_ddp_two_cpu_processes(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("torchrun")
    if not exe.is_file():
        pytest.skip("torchrun is not installed next to this Python")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.run(
        [str(exe), "--standalone", "--nproc_per_node=2", __file__, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stderr.count("mlonas: resuming from epoch 2 of 3") == 1  # rank 0 only
    assert proc.stderr.count("mlonas: epoch 3/3 lr ") == 2  # full and parts, rank 0 only
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank1["written"] == []  # only rank 0 writes
    assert rank0["written"].count("checkpoint.pt") == 6 and "metrics.json" in rank0["written"]
    # all-reduced test metrics agree on both ranks; provenance records the world size
    assert rank0["metrics"]["top1_error"] == rank1["metrics"]["top1_error"]
    assert rank0["metrics"]["provenance"]["world_size"] == 2
    assert_same_run(str(tmp_path / "full"), str(tmp_path / "parts"))
    assert len(pd.read_csv(tmp_path / "parts" / "history.csv")) == 3


if __name__ == "__main__":
    _ddp_main(sys.argv[1])
