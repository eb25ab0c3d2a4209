"""Bad input through the real CLI: exit 2, exactly one stderr line naming the file or key,
and no artifact written.

The list of cases is :data:`CASES`; each builds its scenario in a fresh directory and
returns the command line, the words the error line must contain (the file or the params
key at fault, and what is wrong with it) and the artifacts that must not exist after it.
Dataset archives are served by :mod:`faults.mirror`, so torchvision's real download,
md5 and extraction code runs on them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import tiny_config
from test_cli import write_params
from test_data import write_mini_cifar
from torchvision.datasets import CIFAR10

from mlonas.cli import main
from mlonas.config import Config
from mlonas.data.splits import write_split
from mlonas.space.evalnet import published_genotype

from . import mirror


@dataclass
class Scenario:
    argv: list[str]
    words: list[str]  # the error line contains each of these
    absent: list[Path]  # artifacts that must not exist afterwards


class World:
    """A tiny configuration in ``tmp``; methods write its params and inputs on demand."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp = tmp
        self.monkeypatch = monkeypatch
        self.cfg = tiny_config(tmp)
        self.raw = tmp / "data" / "raw"

    def params(self, edit: Callable[[dict[str, Any]], None] | None = None) -> Path:
        cfg = Config(copy.deepcopy(self.cfg.params))
        if edit is not None:
            edit(cfg.params)
        return write_params(cfg, self.tmp / "params.yaml")

    def real_cifar10(self, download: bool) -> Path:
        def edit(p: dict[str, Any]) -> None:
            p["datasets"]["cifar10"].update(
                source="cifar10", image_size=32, download=download, n_train=12, n_val=12
            )
            # SGL reads the other CIFAR as unlabeled data, which must have the same size
            p["datasets"]["cifar100"]["image_size"] = 32

        return self.params(edit)

    def split(self, dataset: str = "cifar10") -> Path:
        path = self.tmp / f"{dataset}.json"
        write_split(self.cfg, dataset, path)
        return path

    def split_argv(self, params: Path, dataset: str = "cifar10") -> Scenario:
        out = self.tmp / "splits" / f"{dataset}.json"
        return Scenario(
            ["split", "--params", str(params), "--dataset", dataset, "--out", str(out)],
            [],
            [out],
        )

    def search_argv(
        self, split: Path, method: str = "darts-1st", dataset: str = "cifar10"
    ) -> Scenario:
        out = self.tmp / "search"
        argv = ["search", "--params", str(self.params()), "--dataset", dataset]
        argv += ["--method", method, "--seed", "0", "--split", str(split), "--out", str(out)]
        names = ("alphas.json", "history.csv", "provenance.json", "metrics.json")
        return Scenario([*argv, "--device", "cpu"], [], [out / n for n in names])

    def train_argv(self, genotype: Path) -> Scenario:
        out = self.tmp / "eval"
        argv = ["train-cifar", "--params", str(self.params()), "--dataset", "cifar10"]
        argv += ["--method", "darts-1st", "--seed", "0", "--genotype", str(genotype)]
        argv += ["--split", str(self.split()), "--out", str(out), "--device", "cpu"]
        names = ("metrics.json", "history.csv", "model.pt", "checkpoint.pt")
        return Scenario(argv, [], [out / n for n in names])

    def mirror(self, **spec: Any) -> dict[str, Any]:
        corrupt = spec.pop("corrupt", None)
        built = mirror.build(self.tmp / "mirror", self.monkeypatch.setattr, corrupt=corrupt)
        built.update(spec)
        mirror.install(built, self.monkeypatch.setattr)
        return built


def _with(s: Scenario, words: list[str], absent: list[Path] | None = None) -> Scenario:
    return Scenario(s.argv, words, s.absent + (absent or []))


# -- the cases --------------------------------------------------------------------------


def archive_truncated_in_download(w: World) -> Scenario:
    w.mirror(truncate=True)
    s = w.split_argv(w.real_cifar10(download=True))
    words = [
        "datasets.cifar10.root",
        "download of",
        "File not found or corrupted",
        "download: true",
    ]
    return _with(s, words, [w.raw / CIFAR10.filename])  # the broken archive is removed


def connection_drops_during_download(w: World) -> Scenario:
    w.mirror(network_error=True)
    s = w.split_argv(w.real_cifar10(download=True))
    words = ["datasets.cifar10.root", "download of", "URLError", "Connection reset"]
    return _with(s, words, [w.raw / CIFAR10.filename])  # the partial archive is removed


def archive_member_fails_its_md5(w: World) -> Scenario:
    w.mirror(corrupt="data_batch_3")
    s = w.split_argv(w.real_cifar10(download=True))
    return _with(s, ["datasets.cifar10.root", "data_batch_3 fails its md5 check", "download: true"])


def archive_is_not_a_tarball(w: World) -> Scenario:
    spec = w.mirror()
    Path(spec["archive"]).write_bytes(b"<html>503 Service Unavailable</html>" * 50)
    w.monkeypatch.setattr(CIFAR10, "tgz_md5", mirror._md5(Path(spec["archive"])))
    s = w.split_argv(w.real_cifar10(download=True))
    return _with(s, ["datasets.cifar10.root", "ReadError", "download: true"])


def extracted_file_has_wrong_checksum(w: World) -> Scenario:
    write_mini_cifar(w.raw, "cifar10", w.monkeypatch)
    path = w.raw / CIFAR10.base_folder / "data_batch_3"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    s = w.split_argv(w.real_cifar10(download=False))
    return _with(
        s, ["datasets.cifar10.root", "data_batch_3 fails its md5 check", "download: false"]
    )


def cifar_folder_missing(w: World) -> Scenario:
    s = w.split_argv(w.real_cifar10(download=False))
    return _with(
        s, ["datasets.cifar10.root", "cifar-10-batches-py/ does not exist", "download: false"]
    )


def cifar100_folder_missing(w: World) -> Scenario:
    def edit(p: dict[str, Any]) -> None:
        p["datasets"]["cifar100"].update(source="cifar100", image_size=32, download=False)
        p["datasets"]["cifar10"]["image_size"] = 32  # SGL's unlabeled data: same size

    s = w.split_argv(w.params(edit), "cifar100")
    return _with(s, ["datasets.cifar100.root", "cifar-100-python/ does not exist"])


def imagenet_folder_missing(w: World) -> Scenario:
    def edit(p: dict[str, Any]) -> None:
        p["datasets"]["imagenet"].update(source="imagenet", image_size=224)

    s = w.split_argv(w.params(edit), "imagenet")
    return _with(s, ["datasets.imagenet.root", "imagenet/train does not exist"])


def genotype_not_json(w: World) -> Scenario:
    cell = w.tmp / "cell.json"
    cell.write_text('{"normal": [["sep_conv_3x3", 0]')
    return _with(w.train_argv(cell), [str(cell), "not valid JSON"])


def genotype_unknown_op(w: World) -> Scenario:
    cell = w.tmp / "cell.json"
    g = published_genotype("DARTS_V2").to_dict()
    g["normal"][2][0] = "conv_9x9"
    cell.write_text(json.dumps(g))
    return _with(w.train_argv(cell), [str(cell), "unknown operation 'conv_9x9'"])


def unknown_method_on_the_command_line(w: World) -> Scenario:
    s = w.search_argv(w.tmp / "unused.json", method="darts-3rd")
    return _with(s, ["methods.darts-3rd: unknown method"])


def unknown_method_in_params(w: World) -> Scenario:
    params = w.params(lambda p: p["tables"]["table3"]["methods"].append("darts-3rd"))
    return _with(
        w.split_argv(params), [str(params), "tables.table3.methods", "unknown method 'darts-3rd'"]
    )


def typo_in_params_key(w: World) -> Scenario:
    def edit(p: dict[str, Any]) -> None:
        p["search"]["epoch"] = p["search"].pop("epochs")

    params = w.params(edit)
    return _with(w.split_argv(params), [str(params), "unknown key search.epoch"])


def negative_epochs_in_params(w: World) -> Scenario:
    params = w.params(lambda p: p["search"].update(epochs=-5))
    return _with(w.split_argv(params), [str(params), "search.epochs: -5 is less than the minimum"])


def params_not_yaml(w: World) -> Scenario:
    params = w.params()
    params.write_text("seeds: [0\n")
    return _with(w.split_argv(params), [str(params), "not valid YAML"])


def params_file_missing(w: World) -> Scenario:
    s = w.split_argv(w.tmp / "nope.yaml")
    return _with(s, [str(w.tmp / "nope.yaml"), "does not exist"])


def unknown_preset(w: World) -> Scenario:
    s = w.split_argv(w.params())
    return _with(
        Scenario([*s.argv, "--preset", "fast"], [], s.absent), ["presets.fast: no such preset"]
    )


def split_file_missing(w: World) -> Scenario:
    split = w.tmp / "none.json"
    return _with(w.search_argv(split), [str(split), "does not exist"])


def split_file_not_json(w: World) -> Scenario:
    split = w.tmp / "split.json"
    split.write_text("{not json")
    return _with(w.search_argv(split), [str(split), "not valid JSON"])


def split_of_another_dataset(w: World) -> Scenario:
    split = w.split("cifar10")
    s = w.search_argv(split, dataset="cifar100")
    return _with(s, [str(split), "is a split of 'cifar10', expected 'cifar100'"])


def alphas_not_json(w: World) -> Scenario:
    alphas = w.tmp / "alphas.json"
    alphas.write_text('{"base": "darts", "architectures": {')
    out = w.tmp / "cells" / "seed0.json"
    argv = ["export", "--params", str(w.params()), "--dataset", "cifar10"]
    argv += ["--method", "darts-1st", "--seed", "0", "--alphas", str(alphas), "--out", str(out)]
    return Scenario(argv, [str(alphas), "not valid JSON"], [out, out.with_suffix(".png")])


CASES: dict[str, Callable[[World], Scenario]] = {
    f.__name__: f
    for f in (
        archive_truncated_in_download,
        connection_drops_during_download,
        archive_member_fails_its_md5,
        archive_is_not_a_tarball,
        extracted_file_has_wrong_checksum,
        cifar_folder_missing,
        cifar100_folder_missing,
        imagenet_folder_missing,
        genotype_not_json,
        genotype_unknown_op,
        unknown_method_on_the_command_line,
        unknown_method_in_params,
        typo_in_params_key,
        negative_epochs_in_params,
        params_not_yaml,
        params_file_missing,
        unknown_preset,
        split_file_missing,
        split_file_not_json,
        split_of_another_dataset,
        alphas_not_json,
    )
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_naming_the_culprit_and_writes_nothing(
    case: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    scenario = CASES[case](World(tmp_path, monkeypatch))
    capsys.readouterr()
    code = main(scenario.argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith(f"mlonas {scenario.argv[0]}: error: "), line
    for word in scenario.words:
        assert word in line, (word, line)
    for path in scenario.absent:
        assert not path.exists(), path
    assert not list(tmp_path.rglob(".*.tmp")), "a temporary file was left behind"
