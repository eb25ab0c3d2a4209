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
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import tiny_config, write_params
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


def _genotype_file(w: World, edit: Callable[[dict[str, Any]], None]) -> Path:
    cell = w.tmp / "cell.json"
    g = published_genotype("DARTS_V2").to_dict()
    edit(g)
    cell.write_text(json.dumps(g))
    return cell


def genotype_concat_lists_a_cell_input(w: World) -> Scenario:
    # a reduction cell's inputs are at the input resolution: training crashed on them
    cell = _genotype_file(w, lambda g: g.__setitem__("reduce_concat", [0, 2, 3, 4, 5]))
    words = [str(cell), "reduce_concat[0] is 0, not an intermediate node", "0 and 1 are"]
    return _with(w.train_argv(cell), words)


def genotype_concat_lists_the_other_cell_input(w: World) -> Scenario:
    cell = _genotype_file(w, lambda g: g.__setitem__("normal_concat", [2, 3, 4, 1]))
    return _with(w.train_argv(cell), [str(cell), "normal_concat[3] is 1, not an intermediate"])


def genotype_concat_lists_a_node_beyond_the_cell(w: World) -> Scenario:
    cell = _genotype_file(w, lambda g: g.__setitem__("normal_concat", [2, 3, 4, 6]))
    return _with(w.train_argv(cell), [str(cell), "normal_concat[3] is 6", "2..5"])


def _export(w: World, record: dict[str, Any]) -> Scenario:
    alphas = w.tmp / "alphas.json"
    alphas.write_text(json.dumps(record))  # NaN/Infinity as Python's json writes them
    out = w.tmp / "cells" / "seed0.json"
    argv = ["export", "--params", str(w.params()), "--dataset", "cifar10"]
    argv += ["--method", "darts-1st", "--seed", "0", "--alphas", str(alphas), "--out", str(out)]
    return Scenario(argv, [str(alphas)], [out, out.with_suffix(".png")])


def _alphas_record(multiplier: int = 2, value: float = 0.1) -> dict[str, Any]:
    """A DARTS alphas.json record of a 2-step cell (5 edges x 8 ops)."""
    alphas = [[0.1 * k for k in range(8)] for _ in range(5)]
    alphas[3][5] = value
    arch = {"steps": 2, "multiplier": multiplier, "alpha_normal": alphas, "alpha_reduce": alphas}
    return {"base": "darts", "selected": "darts", "architectures": {"darts": arch}}


def alphas_multiplier_above_steps(w: World) -> Scenario:
    s = _export(w, _alphas_record(multiplier=5))
    return _with(s, ["architectures.darts.multiplier is 5, must be in 1..steps (2)"])


def alphas_nan(w: World) -> Scenario:
    # derivation used to turn these into an all-max-pool cell and exit 0
    s = _export(w, _alphas_record(value=float("nan")))
    return _with(s, ["architectures.darts.alpha_normal holds non-finite values (nan)"])


def alphas_inf(w: World) -> Scenario:
    s = _export(w, _alphas_record(value=float("inf")))
    return _with(s, ["alpha_normal holds non-finite values (inf)"])


def multiplier_above_steps_in_params(w: World) -> Scenario:
    params = w.params(lambda p: p["search"].update(multiplier=3))  # steps: 2
    words = [str(params), "search.multiplier: 3 is more than search.steps (2)"]
    return _with(w.split_argv(params), words)


def multiplier_above_steps_in_a_method(w: World) -> Scenario:
    params = w.params(lambda p: p["methods"]["darts-1st"]["search"].update(steps=1))
    words = [str(params), "methods.darts-1st.search.steps: 1 is less than search.multiplier (2)"]
    return _with(w.split_argv(params), words)


def nan_lr_in_params(w: World) -> Scenario:
    params = w.params(lambda p: p["search"].update(lr=float("nan")))  # dumped as `.nan`
    return _with(w.split_argv(params), [str(params), "search.lr: .nan is not a finite number"])


def inf_lr_in_params(w: World) -> Scenario:
    params = w.params(lambda p: p["eval"]["cifar"].update(lr=float("inf")))
    return _with(w.split_argv(params), [str(params), "eval.cifar.lr: .inf is not a finite"])


def lr_min_above_lr_in_params(w: World) -> Scenario:
    params = w.params(lambda p: p["search"].update(lr_min=0.5))
    return _with(w.split_argv(params), [str(params), "search.lr_min: 0.5 is more than search.lr"])


def audience_lr_min_above_audience_lr(w: World) -> Scenario:
    params = w.params(lambda p: p["schemes"]["lease"].update(audience_lr_min=0.5))
    words = [str(params), "schemes.lease.audience_lr_min: 0.5 is more than"]
    return _with(w.split_argv(params), words)


def root_without_trailing_slash(w: World) -> Scenario:
    params = w.params(lambda p: p.update(root=str(w.tmp / "out")))
    words = [str(params), "root:", "must be \"\" or end in '/'", f"{w.tmp}/outresults/"]
    return _with(w.split_argv(params), words)


def exponent_without_sign_in_params(w: World) -> Scenario:
    params = w.params()
    # PyYAML (YAML 1.1), like Snakemake's loader, reads 1.0e6 as a string
    text = re.sub(r"^(  weight_decay: ).*$", r"\g<1>1.0e6", params.read_text(), count=1, flags=re.M)
    params.write_text(text)
    words = [str(params), "search.weight_decay: '1.0e6' is not of type 'number'"]
    words += ["(YAML reads 1.0e6 as text; write 1.0e+6 or 1000000.0)"]
    return _with(w.split_argv(params), words)


def log_is_a_directory(w: World) -> Scenario:
    s = w.split_argv(w.params())
    log = w.tmp / "logs"
    log.mkdir()
    return Scenario([*s.argv, "--log", str(log)], [f"--log {log}", "Is a directory"], s.absent)


def log_folder_is_a_file(w: World) -> Scenario:
    s = w.split_argv(w.params())
    blocker = w.tmp / "logs"
    blocker.write_text("not a folder")
    log = blocker / "split.log"
    words = [f"--log {log}", f"{blocker} is a file, not a folder"]
    return Scenario([*s.argv, "--log", str(log)], words, s.absent)


def _no_compute(w: World, target: str) -> None:
    def fail(*_: Any, **__: Any) -> Any:
        raise AssertionError(f"{target} was called: the bad --out was caught too late")

    w.monkeypatch.setattr(target, fail)


def search_out_is_a_file(w: World) -> Scenario:
    s = w.search_argv(w.split())
    out = w.tmp / "search"
    out.write_text("a file where the search's output directory belongs")
    _no_compute(w, "mlonas.data.loaders.epoch_loader")  # no batch is ever drawn
    return _with(s, [str(out), "is an existing file, expected a directory"])


def train_out_is_a_file(w: World) -> Scenario:
    s = w.train_argv(_genotype_file(w, lambda g: None))
    out = w.tmp / "eval"
    out.write_text("a file where the evaluation's output directory belongs")
    _no_compute(w, "mlonas.train.cifar.train_cell")
    return _with(s, [str(out), "is an existing file, expected a directory"])


def train_out_below_a_file(w: World) -> Scenario:
    s = w.train_argv(_genotype_file(w, lambda g: None))
    (w.tmp / "eval").write_text("a file where a folder of --out belongs")
    out = w.tmp / "eval" / "seed0"
    argv = [str(out) if a == str(w.tmp / "eval") else a for a in s.argv]
    _no_compute(w, "mlonas.train.cifar.train_cell")
    return Scenario(argv, [str(out), f"{w.tmp / 'eval'} is a file"], [])


def table_markdown_not_utf8(w: World) -> Scenario:
    # the table's page is the first file of its report job
    md = Path(w.cfg.table_path("table3", "md"))
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_bytes("# Table 3\n\n| method | error |\n".encode("utf-16"))
    out = Path(w.cfg.path("results/report/table3.html"))
    argv = ["figures", "--params", str(w.params()), "--table", "table3"]
    return Scenario(argv, [str(md), "is not UTF-8 text"], [out])


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
        genotype_concat_lists_a_cell_input,
        genotype_concat_lists_the_other_cell_input,
        genotype_concat_lists_a_node_beyond_the_cell,
        alphas_multiplier_above_steps,
        alphas_nan,
        alphas_inf,
        multiplier_above_steps_in_params,
        multiplier_above_steps_in_a_method,
        nan_lr_in_params,
        inf_lr_in_params,
        lr_min_above_lr_in_params,
        audience_lr_min_above_audience_lr,
        root_without_trailing_slash,
        exponent_without_sign_in_params,
        log_is_a_directory,
        log_folder_is_a_file,
        search_out_is_a_file,
        train_out_is_a_file,
        train_out_below_a_file,
        table_markdown_not_utf8,
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


# Every stage taking --seed, with its other options; FILE/ is a path in the test's folder.
SEED_STAGES = {
    "search": "search --dataset cifar10 --method darts-1st --split FILE/s.json --out FILE/out",
    "export": "export --dataset cifar10 --method darts-1st --alphas FILE/a.json --out FILE/c.json",
    "train-cifar": "train-cifar --dataset cifar10 --method darts-1st --genotype FILE/g.json"
    " --split FILE/s.json --out FILE/out",
    "train-imagenet": "train-imagenet --source cifar10 --method darts-1st --genotype FILE/g.json"
    " --split FILE/s.json --out FILE/out",
}


@pytest.mark.parametrize("stage", list(SEED_STAGES))
@pytest.mark.parametrize("seed", ["-1", "1.5", "one"])
def test_a_seed_that_is_not_a_non_negative_integer_is_refused_by_argparse(
    stage: str, seed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--seed -1`` used to run (torch accepts it) and write ``seed-1`` artifacts that no
    DAG asks for; params.yaml's ``seeds`` are non-negative, so the command line is too."""
    params = write_params(tiny_config(tmp_path), tmp_path / "params.yaml")
    argv = SEED_STAGES[stage].replace("FILE/", f"{tmp_path}/").split()
    argv += ["--params", str(params), "--seed", seed]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"mlonas {stage}: error: argument --seed: must be a non-negative integer, got {seed!r}"
    ), err
    assert not any("Traceback" in line for line in err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_artifacts_get_the_mode_a_plain_open_would_give(
    umask: int, mode: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Atomic writes went through ``tempfile.mkstemp``, whose 0600 the rename carried onto
    every artifact whatever the umask: results in a group directory were unreadable to
    the group. They must get ``0o666 & ~umask``, like ``open(path, "w")``."""
    import torch

    from mlonas.io import atomic_copy, atomic_torch_save, atomic_write_json

    w = World(tmp_path, monkeypatch)
    params = w.params()
    s = w.split_argv(params)
    old = os.umask(umask)
    try:
        assert main(s.argv) == 0
        atomic_write_json(tmp_path / "a" / "record.json", {"x": 1})
        atomic_copy(params, tmp_path / "a" / "copy.yaml")
        atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "a" / "state.pt")
        with open(tmp_path / "a" / "plain.txt", "w") as fh:  # the reference
            fh.write("x")
    finally:
        os.umask(old)
    written = [s.absent[0], *(tmp_path / "a").iterdir()]
    assert len(written) == 5
    for path in written:
        assert path.stat().st_mode & 0o777 == mode, (path, oct(path.stat().st_mode))
    assert not list(tmp_path.rglob(".*.tmp"))


@pytest.mark.parametrize("where", ["directory", "under a file"])
def test_a_file_output_at_a_directory_or_under_a_file_is_one_line(
    tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """split/export/table write one file: an --out that is a directory, or whose folder is
    a file, is named in one line (it was an IsADirectoryError traceback)."""
    params = write_params(tiny_config(tmp_path), tmp_path / "params.yaml")
    if where == "directory":
        out = tmp_path / "split.json"
        out.mkdir()
    else:
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "split.json"
    rc = main(["split", "--params", str(params), "--dataset", "cifar10", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and str(out) in err[0], err
    assert not [p for p in tmp_path.rglob("*.tmp")]
