"""params.yaml's scheme options and SGL's unlabeled data: what the schema cannot check is
cross-checked by mlonas.config, with one line naming the key."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from helpers import REPO

from mlonas.config import Config, resolve_preset, validate_params
from mlonas.errors import MlonasError


def raw() -> dict[str, Any]:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_methods_get_the_schemes_options_with_their_overrides() -> None:
    params = raw()
    params["methods"]["sgl-pcdarts"]["options"] = {"learners": 3}
    cfg = Config(resolve_preset(params, "paper"))
    sgl = cfg.method("sgl-pcdarts")
    assert sgl.options == {**params["schemes"]["sgl"], "learners": 3}
    # SGL-PC-DARTS is set "in the same way as" PC-DARTS (one anchor in params.yaml)
    assert sgl.search == cfg.method("pcdarts").search
    assert cfg.method("lease-r18-darts-2nd").options["audience_blocks"] == [2, 2, 2, 2]
    assert cfg.method("darts-2nd").options == {}
    assert cfg.unlabeled_source("cifar10") == "cifar100"
    demo = Config(resolve_preset(raw(), "demo"))
    assert demo.method("lease-r18-darts-2nd").options["audience_blocks"] == [1, 1, 1, 1]


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
        ("schemes.lease", DELETE, "scheme lease needs gamma"),
        (
            "datasets.cifar10.unlabeled",
            "cifar10",
            "datasets.cifar10.unlabeled: must name the other",
        ),
        ("datasets.cifar10.unlabeled", DELETE, "datasets.cifar10.unlabeled: sgl-darts-1st"),
        ("datasets.cifar100.image_size", 16, "datasets.cifar10.unlabeled: cifar100's image_size"),
        ("schemes.lease.explanation_direction", "up", "schemes.lease"),
        (
            "methods.sgl-darts-1st.search",
            {"arch_bn_stats": "shared"},
            "methods.sgl-darts-1st: search.arch_bn_stats 'shared'",
        ),
        ("search.arch_bn_stats", "official", "search.arch_bn_stats"),
        ("search.scheduler_step_first", DELETE, "scheduler_step_first"),
    ],
)
def test_bad_scheme_params_are_one_line_errors(path: str, value: Any, message: str) -> None:
    with pytest.raises(MlonasError) as exc:
        validate_params(mutate(path, value))
    assert message in str(exc.value) and "\n" not in str(exc.value)
