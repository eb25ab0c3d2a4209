"""``mlonas plan``: the dry run it reads, the steps it counts, the times it looks up."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from helpers import REPO

from mlonas.cli import main
from mlonas.config import load_config
from mlonas.dryrun import parse_dry_run
from mlonas.errors import MlonasError
from mlonas.report import plan as P

BLOCKS = """\
Building DAG of jobs...
Job stats:
job       count
------  -------
search        1
total         2

[Sun Nov 29 09:24:51 2026]
rule search:
    input: demo/data/splits/cifar10.json, demo/data/splits/cifar100.json
    output: demo/results/search/x/alphas.json, demo/results/search/x/metrics.json
    log: demo/logs/search/cifar10/sgl-pdarts/seed0.log
    jobid: 3
    wildcards: dataset=cifar10, method=sgl-pdarts, seed=0
    resources: tmpdir=/tmp, gpu=0, mem_mb=4000
Shell command: mlonas search --preset demo   --dataset cifar10 --method sgl-pdarts --seed 0

[Sun Nov 29 09:24:51 2026]
localrule all:
    input: demo/results/table3.csv
    jobid: 0
    reason: Input files updated by another job: demo/results/table3.csv
    resources: tmpdir=/tmp
Shell command: None
Job stats:
"""


def test_parse_dry_run_reads_each_block() -> None:
    search, everything = parse_dry_run(BLOCKS)
    assert search.rule == "search"
    assert search.wildcards == {"dataset": "cifar10", "method": "sgl-pdarts", "seed": "0"}
    assert search.inputs == ("demo/data/splits/cifar10.json", "demo/data/splits/cifar100.json")
    assert search.outputs == (
        "demo/results/search/x/alphas.json",
        "demo/results/search/x/metrics.json",
    )
    assert search.resources["gpu"] == "0" and search.resources["mem_mb"] == "4000"
    assert (
        search.command
        == "mlonas search --preset demo --dataset cifar10 --method sgl-pdarts --seed 0"
    )
    assert everything.rule == "all" and everything.command is None
    assert everything.outputs == () and everything.inputs == ("demo/results/table3.csv",)


def test_dry_run_of_the_demo_lists_only_the_jobs_that_would_run(tmp_path: Path) -> None:
    """A real `snakemake -n` of the demo's table 2 under an empty root: every job; with the
    splits already there, the same minus the splits."""
    from mlonas.dryrun import dry_run

    root = f"{tmp_path}/"
    config = ["preset=demo", f"root={root}"]
    cfg = load_config(REPO / "params.yaml", "demo", [f"root={root}"])
    n = len(cfg.seeds) * len(cfg.tables()["table2"]["methods"])
    jobs = dry_run([f"{root}results/table2.csv"], config, cwd=REPO)
    assert Counter(j.rule for j in jobs) == {
        "split": 2,  # CIFAR-100 and its SGL unlabeled CIFAR-10
        "search": n,
        "export": n,
        "train_cifar": n,
        "table": 1,
    }
    for name in ("cifar10", "cifar100"):
        split = Path(cfg.split_path(name))
        split.parent.mkdir(parents=True, exist_ok=True)
        split.write_text("{}")
    left = Counter(j.rule for j in dry_run([f"{root}results/table2.csv"], config, cwd=REPO))
    assert "split" not in left and left["search"] == n


def test_search_steps_by_hand() -> None:
    """Paper DARTS-2nd: 50 epochs x 25,000 // 64 = 390 steps, all with an architecture
    step. P-DARTS: 3 stages x 25 epochs x 25,000 // 96 = 260 steps, the first 10 epochs of
    each stage weights only, on 5/11/17 cells with 8/5/3 ops per edge."""
    cfg = load_config(REPO / "params.yaml", "paper")
    [(key, steps)] = P.search_profile(cfg, "cifar100", "darts-2nd")
    assert steps == 50 * 390 == 19_500
    assert (key.composition, key.mode, key.layers, key.batch_size) == (
        "plain/darts",
        "finite_difference",
        8,
        64,
    )
    parts = P.search_profile(cfg, "cifar10", "sgl-pdarts")
    assert [(k.mode, k.layers, k.extra, n) for k, n in parts] == [
        ("weights_only", 5, "K=2;ops=8", 10 * 260),
        ("first_order", 5, "K=2;ops=8", 15 * 260),
        ("weights_only", 11, "K=2;ops=5", 10 * 260),
        ("first_order", 11, "K=2;ops=5", 15 * 260),
        ("weights_only", 17, "K=2;ops=3", 10 * 260),
        ("first_order", 17, "K=2;ops=3", 15 * 260),
    ]


def test_search_schedule_agrees_with_the_loop() -> None:
    """The plan's torch-free schedule against the bases the search loop asks (epochs,
    epochs with architecture steps) for every method of both presets."""
    from mlonas.search.bases import BASES

    assert {n for n, b in BASES.items() if b.progressive} == P.PROGRESSIVE_BASES
    assert {n for n, b in BASES.items() if b.partial_channels} == P.PARTIAL_CHANNEL_BASES
    for preset in ("paper", "demo"):
        cfg = load_config(REPO / "params.yaml", preset)
        ds = cfg.dataset("cifar10")
        for slug in cfg.params["methods"]:
            m = cfg.method(slug)
            base, s = BASES[m.base], m.search
            per_epoch = min(ds["n_train"], ds["n_val"]) // s.batch_size
            epochs = range(base.total_epochs(s))
            arch = sum(base.updates_architecture(e, s) for e in epochs)
            parts = P.search_profile(cfg, "cifar10", slug)
            assert sum(n for _, n in parts) == len(epochs) * per_epoch, (preset, slug)
            warm = sum(n for k, n in parts if k.mode == "weights_only")
            assert warm == (len(epochs) - arch) * per_epoch, (preset, slug)


def test_training_set_sizes() -> None:
    """The demo stand-in's training images, against the images it really has."""
    from mlonas.data.sources import demo_arrays

    assert len(demo_arrays("cifar10", 16)[0]) == P.TRAIN_IMAGES["demo"]


def test_evaluation_steps_by_hand() -> None:
    """CIFAR: 600 epochs x ceil(50,000 / 96) = 521 batches. ImageNet on 8 processes: a
    shard of ceil(1,281,167 / 8) = 160,146 images at 1024 / 8 = 128 a batch is 1,252
    batches, x 250 epochs, and every step holds 8 GPUs."""
    cfg = load_config(REPO / "params.yaml", "paper")
    key, steps, nproc = P.train_profile(cfg, "train_cifar", "cifar10", "darts-1st")
    assert (steps, nproc, key.batch_size, key.extra) == (600 * 521, 1, 96, "auxiliary=1")
    key, steps, nproc = P.train_profile(cfg, "train_imagenet", "imagenet", "darts-1st")
    assert (steps, nproc, key.batch_size, key.image_size) == (250 * 1252, 8, 128, 224)
    group = P.Group("train_imagenet", "x", [(key, steps)], nproc, jobs=3)
    group.measured = [P.StepTime("dev", "2026-01-01", "abc", key, 0.2, None, "test", "")]
    assert group.device_seconds_per_job() == pytest.approx(250 * 1252 * 0.2 * 8)


def test_record_and_look_up(tmp_path: Path) -> None:
    table = tmp_path / "times.csv"
    cfg = load_config(REPO / "params.yaml", "paper")
    m = cfg.method("sgl-darts-1st")
    key = P.search_step_key("sgl", "darts", "first_order", m.search, m.options, 32)
    row = P.record_step_time(key, 3.5, device="gpu-x", source="test", path=table)
    assert row.commit and row.date
    smaller = dataclasses.replace(m.search, batch_size=32)
    other = P.search_step_key("sgl", "darts", "first_order", smaller, m.options, 32)
    P.record_step_time(other, 1.0, device="gpu-x", source="test", path=table)
    times = P.load_step_times(table)
    assert [t.seconds_per_step for t in times] == [3.5, 1.0]
    assert P.lookup(times, "gpu-x", key).seconds_per_step == 3.5  # the batch tells them apart
    assert P.lookup(times, "gpu-y", key) is None
    table.write_text("device,date\n")
    with pytest.raises(MlonasError, match="header must be"):
        P.load_step_times(table)


def test_device_label() -> None:
    assert P.device_label("NVIDIA H100 80GB HBM3") == "nvidia-h100"
    assert P.device_label("NVIDIA H200") == "nvidia-h200"
    assert P.device_label("cpu", cpu_count=2) == "cpu-2core"


def test_plan_says_what_is_not_measured(capsys: pytest.CaptureFixture[str]) -> None:
    """Paper table 2 on the H100: the measured searches are costed, the rest say so and
    the total is partial; SGL at second order (an override) has no H100 row either."""
    assert main(["plan", "table2", "--device", "nvidia-h100"]) == 0
    out = capsys.readouterr().out
    rows = {ln.split()[1]: ln for ln in out.splitlines() if ln.startswith("search ")}
    assert "not measured on nvidia-h100" in rows["pdarts"]
    # 50 x 390 steps x 2.65 s = 14.35 h a job, 10 seeds
    assert rows["darts-2nd"].split()[-2:] == ["14.4", "144"]
    assert "search plain/pdarts first_order C=16 layers=11" in out
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("table2 on 1×nvidia-h100: PARTIAL, at least ")
    assert "evaluation not measured on nvidia-h100" in summary

    argv = ["plan", "table2", "--set", "methods.sgl-darts-1st.order=second"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    sgl = next(ln for ln in out.splitlines() if ln.startswith("search       sgl-darts-1st"))
    assert "not measured on nvidia-h100" in sgl
    assert "search sgl/darts finite_difference C=16 layers=8 nodes=4 batch=64 image=32 K=2" in out


def test_demo_plan_on_this_cpu_is_fully_measured(capsys: pytest.CaptureFixture[str]) -> None:
    """The recorded cpu-2core rows cover every step of the demo's table 2 (re-measure with
    benchmarks/search_step.py --size demo --record when the demo's sizes change)."""
    assert main(["plan", "--preset", "demo", "--device", "cpu-2core", "results/table2.csv"]) == 0
    out = capsys.readouterr().out
    assert "not measured" not in out and "PARTIAL" not in out
    assert out.strip().splitlines()[-1].startswith("table2 on 1×cpu-2core: ")


def test_unknown_device_and_target_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "table2", "--device", "tpu-v9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert (
        err.startswith("mlonas plan: error: --device tpu-v9: no step times")
        and "nvidia-h100" in err
    )
    assert main(["plan", "results/nope.csv"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No rule to produce results/nope.csv" in err


def test_plan_does_not_import_torch() -> None:
    code = (
        "import sys; from mlonas.cli import main;"
        " main(['plan', '--preset', 'demo', '--device', 'cpu-2core', 'table2']);"
        " sys.exit(3 if 'torch' in sys.modules else 0)"
    )
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], cwd=REPO, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr[-2000:]
    imported = [ln.split("|")[-1].strip() for ln in res.stderr.splitlines() if "|" in ln]
    assert imported and not [m for m in imported if m.split(".")[0] == "torch"]
    assert "table2 on 1×cpu-2core" in res.stdout
