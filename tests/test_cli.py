"""`mlonas <stage>`: user errors are one line on stderr, exit 2, and leave no artifact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

from mlonas.cli import main
from mlonas.config import Config


def write_params(cfg: Config, path: Path) -> Path:
    """A params.yaml whose paper preset *is* ``cfg`` (so CLI calls use it)."""
    params = {k: v for k, v in cfg.params.items() if k != "preset"}
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def params(tmp_path: Path) -> Path:
    return write_params(tiny_config(tmp_path), tmp_path / "params.yaml")


def test_split_through_the_cli_writes_the_split_and_the_log(params: Path, tmp_path: Path) -> None:
    split = tmp_path / "split.json"
    log = tmp_path / "logs" / "split.log"
    assert (
        main(
            [
                "split",
                "--params",
                str(params),
                "--dataset",
                "cifar10",
                "--out",
                str(split),
                "--log",
                str(log),
            ]
        )
        == 0
    )
    assert json.loads(split.read_text())["n_train"] == 48
    assert log.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        (
            json.dumps(
                {
                    "normal": [["conv_9x9", 0]] * 4,
                    "normal_concat": [2, 3],
                    "reduce": [["max_pool_3x3", 0]] * 4,
                    "reduce_concat": [2, 3],
                }
            ),
            "unknown operation 'conv_9x9'",
        ),
    ],
)
def test_train_cifar_rejects_bad_genotype_and_writes_nothing(
    params: Path, tmp_path: Path, capsys, content: str, message: str
) -> None:
    split = tmp_path / "split.json"
    assert (
        main(["split", "--params", str(params), "--dataset", "cifar10", "--out", str(split)]) == 0
    )
    capsys.readouterr()
    genotype = tmp_path / "cell.json"
    genotype.write_text(content)
    out = tmp_path / "eval"
    code = main(
        [
            "train-cifar",
            "--params",
            str(params),
            "--dataset",
            "cifar10",
            "--method",
            "darts-1st",
            "--seed",
            "0",
            "--genotype",
            str(genotype),
            "--split",
            str(split),
            "--out",
            str(out),
        ]
    )
    assert code == 2
    line = one_line_error(capsys)
    assert message in line and str(genotype) in line
    assert not out.exists() or not any(out.iterdir())


def test_unknown_method_and_missing_split(params: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "s"
    code = main(
        [
            "search",
            "--params",
            str(params),
            "--dataset",
            "cifar10",
            "--method",
            "darts-3rd",
            "--seed",
            "0",
            "--split",
            str(tmp_path / "none.json"),
            "--out",
            str(out),
        ]
    )
    assert code == 2 and "methods.darts-3rd: unknown method" in one_line_error(capsys)
    code = main(
        [
            "search",
            "--params",
            str(params),
            "--dataset",
            "cifar10",
            "--method",
            "darts-1st",
            "--seed",
            "0",
            "--split",
            str(tmp_path / "none.json"),
            "--out",
            str(out),
        ]
    )
    assert code == 2 and "does not exist" in one_line_error(capsys)
    assert not (out / "alphas.json").exists()


@pytest.mark.parametrize(
    ("dataset", "real"),
    [
        ("cifar10", {"source": "cifar10", "image_size": 32, "download": False}),
        ("imagenet", {"source": "imagenet", "image_size": 224}),
    ],
)
def test_missing_data_names_the_key(tmp_path: Path, capsys, dataset: str, real: dict) -> None:
    cfg = tiny_config(tmp_path)
    cfg.params["datasets"][dataset].update(real)
    if dataset == "cifar10":  # SGL's unlabeled images (CIFAR-100's) must be the same size
        cfg.params["datasets"]["cifar100"]["image_size"] = real["image_size"]
    params = write_params(cfg, tmp_path / "params.yaml")
    out = tmp_path / "split.json"
    code = main(["split", "--params", str(params), "--dataset", dataset, "--out", str(out)])
    assert code == 2
    assert f"datasets.{dataset}.root" in one_line_error(capsys)
    assert not out.exists()


def test_params_file_problems(tmp_path: Path, capsys) -> None:
    assert main(["validate", "--params", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in one_line_error(capsys)
    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds: [0\n")
    assert main(["validate", "--params", str(bad)]) == 2
    assert "not valid YAML" in one_line_error(capsys)
    assert main(["validate", "--preset", "fast"]) == 2
    assert "presets.fast: no such preset" in one_line_error(capsys)


def test_train_imagenet_launches_torchrun_and_logs_through_one_process(tmp_path: Path) -> None:
    """nproc > 1 outside torchrun: the CLI starts `torchrun` itself (2 CPU gloo workers)."""
    import subprocess

    from helpers import BIN, tool_env

    from mlonas.space.evalnet import published_genotype

    cfg = tiny_config(tmp_path)
    cfg.params["eval"]["imagenet"].update(nproc=2, epochs=1, batch_size=32, num_workers=0)
    params = write_params(cfg, tmp_path / "params.yaml")
    split, cell = tmp_path / "imagenet.json", tmp_path / "cell.json"
    assert (
        main(["split", "--params", str(params), "--dataset", "imagenet", "--out", str(split)]) == 0
    )
    published_genotype("DARTS_V2").save(cell)
    out, log = tmp_path / "eval", tmp_path / "train.log"
    res = subprocess.run(
        [
            str(BIN / "mlonas"),
            "train-imagenet",
            "--params",
            str(params),
            "--source",
            "cifar10",
            "--method",
            "darts-1st",
            "--seed",
            "0",
            "--genotype",
            str(cell),
            "--split",
            str(split),
            "--out",
            str(out),
            "--log",
            str(log),
            "--device",
            "cpu",
        ],
        env={**tool_env(), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["provenance"]["world_size"] == 2
    assert "epoch 1/1" in log.read_text()
