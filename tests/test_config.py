"""params.yaml's scheme options and SGL's unlabeled data: what the schema cannot check is
cross-checked by mlonas.config, with one line naming the key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO

from mlonas.config import Config, load_config, resolve_preset, validate_params
from mlonas.errors import MlonasError
from mlonas.settings import PlainOptions


def raw() -> dict[str, Any]:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_methods_get_the_schemes_options_with_their_overrides() -> None:
    params = raw()
    params["methods"]["sgl-pcdarts"]["options"] = {"learners": 3}
    cfg = Config(resolve_preset(params, "paper"))
    sgl = cfg.method("sgl-pcdarts")
    assert sgl.options.to_params() == {**params["schemes"]["sgl"], "learners": 3}
    # SGL-PC-DARTS is set "in the same way as" PC-DARTS (one anchor in params.yaml)
    assert sgl.search == cfg.method("pcdarts").search
    assert cfg.method("lease-r18-darts-2nd").options.audience_blocks == (2, 2, 2, 2)
    assert cfg.method("lease-r18-darts-2nd").options.audience_width == 64  # ResNet-18
    assert cfg.method("darts-2nd").options == PlainOptions()
    assert cfg.unlabeled_source("cifar10") == "cifar100"
    demo = Config(resolve_preset(raw(), "demo"))
    assert demo.method("lease-r18-darts-2nd").options.audience_blocks == (1, 1, 1, 1)
    assert demo.method("lease-r18-darts-2nd").options.audience_width == 8


def mutate(path: str, value: Any) -> dict[str, Any]:
    params = copy.deepcopy(raw())
    *parents, last = path.split(".")
    node = params
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return params


DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "methods.sgl-darts-1st.options",
            {"select": 3},
            "methods.sgl-darts-1st: select: learner 3 of 2",
        ),
        ("methods.sgl-darts-1st.options", {"lambda": -1}, "methods.sgl-darts-1st.options.lambda"),
        ("methods.darts-1st.options", {"learners": 2}, "methods.darts-1st"),
        (
            "methods.il-darts-2nd.options",
            {"models": 6},
            "methods.il-darts-2nd: scheme il's 6 models need a group of at least 2 classes"
            " each, and cifar10 (tables.table5) has 10 classes",
        ),
        ("schemes.il.groups", "random", "schemes.il"),
        ("schemes.il", DELETE, "scheme il needs models"),
        ("schemes.lease", DELETE, "scheme lease needs gamma"),
        (
            "datasets.cifar10.unlabeled",
            "cifar10",
            "datasets.cifar10.unlabeled: must name the other",
        ),
        ("datasets.cifar10.unlabeled", DELETE, "datasets.cifar10.unlabeled: sgl-drnas"),
        ("datasets.cifar100.image_size", 16, "datasets.cifar10.unlabeled: cifar100's image_size"),
        ("schemes.lease.explanation_direction", "up", "schemes.lease"),
        (
            "methods.sgl-darts-1st.search",
            {"arch_bn_stats": "shared"},
            "methods.sgl-darts-1st: search.arch_bn_stats 'shared'",
        ),
        ("search.arch_bn_stats", "official", "search.arch_bn_stats"),
        ("search.scheduler_step_first", DELETE, "scheduler_step_first"),
        # table5: each run declared by one table (dvc.yaml makes each table's runs stages)
        (
            "tables.table5.methods",
            ["darts-1st"],
            "tables.table5.methods: darts-1st is already in tables.table3.methods (list it"
            " under tables.table5.baselines",
        ),
        (
            "tables.table5.baselines",
            ["pcdarts", "drnas-x"],
            "tables.table5.baselines: unknown method 'drnas-x'",
        ),
        (
            "tables.table3.methods",
            [m for m in raw()["tables"]["table3"]["methods"] if m != "darts-1st"],
            "tables.table5.baselines: darts-1st is not in another cifar10 table's methods",
        ),
        (
            "tables.table5.transfers",
            [{"source": "cifar10", "method": "pdarts"}],
            "tables.table5.transfers.0: pdarts from cifar10 is already in tables.table4.transfers",
        ),
        ("tables.table5.dataset", "cifar100", "tables.table5.dataset"),
        # a method's own evaluation settings: the schema's keys and bounds, the lr order
        ("methods.darts-1st.eval", DELETE, "eval"),
        ("methods.darts-1st.eval", {"cifar": {"drop_paht": 0.3}}, "drop_paht"),
        ("methods.darts-1st.eval", {"imagenet": {"drop_path": 1.5}}, "drop_path"),
        ("methods.darts-1st.eval", {"cifar": {"nproc": 2}}, "nproc"),
        (
            "methods.darts-1st.eval",
            {"cifar": {"lr_min": 0.1}},
            "methods.darts-1st.eval.cifar.lr_min: 0.1 is more than eval.cifar.lr (0.025)",
        ),
    ],
)
def test_bad_scheme_params_are_one_line_errors(path: str, value: Any, message: str) -> None:
    with pytest.raises(MlonasError) as exc:
        validate_params(mutate(path, value))
    assert message in str(exc.value) and "\n" not in str(exc.value)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        # a cell concatenates its last `multiplier` of `steps` nodes: more crashed the search
        ("search.multiplier", 5, "search.multiplier: 5 is more than search.steps (4)"),
        (
            "methods.darts-1st.search",
            {"multiplier": 5},
            "methods.darts-1st.search.multiplier: 5 is more than search.steps (4)",
        ),
        (
            "methods.darts-1st.search",
            {"steps": 3},
            "methods.darts-1st.search.steps: 3 is less than search.multiplier (4)",
        ),
        # NaN and infinities pass every schema bound
        ("search.lr", NAN, "search.lr: .nan is not a finite number"),
        ("search.lr", INF, "search.lr: .inf is not a finite number"),
        ("eval.imagenet.weight_decay", -INF, "eval.imagenet.weight_decay: -.inf is not a finite"),
        ("search.arch_betas", [0.5, NAN], "search.arch_betas.1: .nan is not a finite number"),
        ("schemes.sgl.lambda", INF, "schemes.sgl.lambda: .inf is not a finite number"),
        ("presets.demo.search.lr", NAN, "presets.demo.search.lr: .nan is not a finite"),
        # a cosine schedule "annealing" upwards
        ("search.lr_min", 0.1, "search.lr_min: 0.1 is more than search.lr (0.025)"),
        (
            "methods.darts-2nd.search",
            {"lr": 0.0005},
            "methods.darts-2nd.search.lr: 0.0005 is less than search.lr_min (0.001)",
        ),
        (
            "methods.pcdarts.search.lr_min",
            0.2,
            "methods.pcdarts.search.lr_min: 0.2 is more than methods.pcdarts.search.lr (0.1)",
        ),
        ("eval.cifar.lr_min", 0.1, "eval.cifar.lr_min: 0.1 is more than eval.cifar.lr (0.025)"),
        (
            "schemes.lease.audience_lr_min",
            0.1,
            "schemes.lease.audience_lr_min: 0.1 is more than schemes.lease.audience_lr (0.025)",
        ),
        (
            "methods.lease-r18-darts-2nd.options",
            {"audience_lr": 0.0005},
            "methods.lease-r18-darts-2nd.options.audience_lr: 0.0005 is less than"
            " schemes.lease.audience_lr_min (0.001)",
        ),
        # `root` is pasted in front of every artifact path: "out" gave outresults/...
        ("root", "out", "root: 'out' must be \"\" or end in '/' (it prefixes every artifact"),
        ("root", "demo/out", "demo/outresults/...); write 'demo/out/'"),
        # YAML 1.1 (PyYAML, and Snakemake's loader) reads these as strings: say so
        (
            "search.lr",
            "1.0e6",
            "search.lr: '1.0e6' is not of type 'number'"
            " (YAML reads 1.0e6 as text; write 1.0e+6 or 1000000.0)",
        ),
        ("search.weight_decay", "3e-4", "(YAML reads 3e-4 as text; write 3.0e-4 or 0.0003)"),
        ("search.epochs", "1e2", "search.epochs: '1e2' is not of type 'integer' (YAML reads"),
        ("search.lr", "0.5", "(it is quoted: write the number without quotes)"),
    ],
)
def test_inconsistent_or_non_finite_params_are_one_line_errors(
    path: str, value: Any, message: str
) -> None:
    with pytest.raises(MlonasError) as exc:
        validate_params(mutate(path, value))
    assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("search.multiplier", 4),  # == steps: every intermediate node, as in DARTS
        ("search.lr_min", 0.025),  # == lr: a constant schedule
        ("eval.cifar.lr_min", 0.025),
        ("root", "out/"),
        ("root", ""),
        ("search.lr", 1.0e6),  # what `1.0e+6` reads as
    ],
)
def test_the_boundaries_of_those_checks_are_accepted(path: str, value: Any) -> None:
    validate_params(mutate(path, value))


def test_a_methods_eval_settings_are_merged_over_the_shared_ones() -> None:
    """methods.<m>.eval.<kind> overrides eval.<kind> key by key for that method only
    (DrNAS' CIFAR protocol as the example: batch 64, drop path 0.3, scheduler stepped at
    the end of the epoch; DrNAS DARTS-space/train.py:24-42,126)."""
    params = mutate(
        "methods.darts-2nd.eval",
        {
            "cifar": {"batch_size": 64, "drop_path": 0.3, "scheduler_step_first": False},
            "imagenet": {"pool_bn": True},
        },
    )
    cfg = Config(resolve_preset(params, "paper"))
    own, shared = cfg.eval_settings("cifar", "darts-2nd"), cfg.eval_settings("cifar")
    assert (own.batch_size, own.drop_path, own.scheduler_step_first) == (64, 0.3, False)
    assert (shared.batch_size, shared.drop_path, shared.scheduler_step_first) == (96, 0.2, True)
    assert cfg.eval_settings("cifar", "darts-1st") == shared
    over = params["methods"]["darts-2nd"]["eval"]["cifar"]
    assert own.to_params() == {**shared.to_params(), **over}
    assert cfg.eval_settings("imagenet", "darts-2nd").pool_bn is True
    assert cfg.eval_settings("imagenet", "darts-1st").pool_bn is False
    # what the evaluation job tracks (and provenance records) includes the override
    tracked = cfg.tracked("train-cifar", dataset="cifar10", method="darts-2nd")
    assert tracked["methods.darts-2nd.eval"]["cifar"]["drop_path"] == 0.3
    with pytest.raises(MlonasError, match="unknown method"):
        cfg.eval_settings("cifar", "drnas-x")


def test_a_preset_is_checked_once_merged() -> None:
    """A preset is a free-form overlay until it is merged; then multiplier <= steps holds
    for the merged values (the demo's steps: 2 with a multiplier of 3 crashed a search)."""
    params = raw()
    params["presets"]["demo"]["search"]["multiplier"] = 3
    validate_params(params)  # the paper preset is fine
    with pytest.raises(MlonasError, match=r"\(preset demo\): search\.multiplier: 3 is more than"):
        resolve_preset(params, "demo")


@pytest.mark.parametrize(
    ("line", "written", "message"),
    [
        ("  lr: 0.025\n", "  lr: .nan\n", "search.lr: .nan is not a finite number"),
        ("  lr: 0.025\n", "  lr: .inf\n", "search.lr: .inf is not a finite number"),
        ("  lr: 0.025\n", "  lr: -.Inf\n", "search.lr: -.inf is not a finite number"),
        (
            "  weight_decay: 3.0e-4\n",
            "  weight_decay: 3e-4\n",
            "search.weight_decay: '3e-4' is not of type 'number' (YAML reads 3e-4 as text;"
            " write 3.0e-4 or 0.0003)",
        ),
    ],
)
def test_params_yaml_text_as_pyyaml_reads_it(
    line: str, written: str, message: str, tmp_path: Path
) -> None:
    """The same checks on params.yaml's own text, read by PyYAML as both drivers read it."""
    text = (REPO / "params.yaml").read_text()
    assert line in text
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(line, written, 1))
    with pytest.raises(MlonasError) as exc:
        load_config(path)
    assert f"{path}: {message}" in str(exc.value)
