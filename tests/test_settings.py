"""The typed settings (mlonas.settings) and the scheme contract (mlonas.search.common)."""

from __future__ import annotations

import dataclasses
import inspect
import json
from typing import Any

import pytest
import yaml
from helpers import REPO

from mlonas.config import load_config, resolve_preset
from mlonas.errors import MlonasError
from mlonas.search.common import Scheme
from mlonas.search.schemes import SCHEMES
from mlonas.settings import (
    EVAL_SETTINGS,
    SCHEME_OPTIONS,
    CifarEvalSettings,
    ImagenetEvalSettings,
    LeaseOptions,
    PlainOptions,
    SearchSettings,
    Settings,
    SglOptions,
)

CLASSES = [
    SearchSettings,
    PlainOptions,
    LeaseOptions,
    SglOptions,
    CifarEvalSettings,
    ImagenetEvalSettings,
]


def raw() -> dict[str, Any]:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_no_field_has_a_default(cls: type[Settings]) -> None:
    """Defaults live in params.yaml only: a default here would be a second one."""
    for f in dataclasses.fields(cls):
        assert f.default is dataclasses.MISSING, f"{cls.__name__}.{f.name}"
        assert f.default_factory is dataclasses.MISSING, f"{cls.__name__}.{f.name}"


def test_params_yaml_states_every_setting() -> None:
    """Each class's keys are exactly those of its params.yaml section, so every value a
    run reads (including a base's neutral ones) is written in params.yaml."""
    params = raw()
    assert set(SearchSettings.keys()) == set(params["search"])
    for kind, cls in EVAL_SETTINGS.items():
        assert set(cls.keys()) == set(params["eval"][kind]), kind
    for scheme in sorted(set(SCHEME_OPTIONS) - {"plain"}):
        assert set(SCHEME_OPTIONS[scheme].keys()) == set(params["schemes"][scheme]), scheme
    assert SglOptions.keys()["lambda"] == "lam"


def test_a_typo_is_an_attribute_error() -> None:
    cfg = load_config(REPO / "params.yaml")
    m = cfg.method("lease-r18-darts-2nd")
    assert m.search.fd_eps == 0.01
    with pytest.raises(AttributeError):
        m.search.fd_epsilon  # noqa: B018
    with pytest.raises(AttributeError):
        m.options.audience_learning_rate  # noqa: B018
    with pytest.raises(AttributeError):
        cfg.eval_settings("imagenet").n_proc  # noqa: B018
    with pytest.raises(AttributeError):  # frozen (and slotted): no attribute can be set
        m.search.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(fd_epsilon=0.01), "params.yaml: unknown key search.fd_epsilon"),
        (lambda d: d.pop("fd_eps"), "params.yaml: search: fd_eps is required"),
    ],
)
def test_unknown_or_missing_key_is_one_line(edit: Any, message: str) -> None:
    values = dict(raw()["search"])
    edit(values)
    with pytest.raises(MlonasError) as info:
        SearchSettings.from_params(values, "params.yaml", "search")
    assert str(info.value) == message


@pytest.mark.parametrize("key", ["warmup_epochs", "max_skip_normal", "arch_grad_clip"])
def test_params_without_a_neutral_value_stop_at_load(key: str) -> None:
    """A base-specific key removed from the shared section is a load-time error naming it
    (before this, the code supplied its own default)."""
    params = raw()
    del params["search"][key]
    with pytest.raises(MlonasError) as info:
        resolve_preset(params, "paper")
    assert key in str(info.value) and "\n" not in str(info.value)


def test_settings_are_frozen_hashable_and_round_trip() -> None:
    cfg = load_config(REPO / "params.yaml", "demo")
    for slug in cfg.params["methods"]:
        m = cfg.method(slug)
        for obj in (m.search, m.options):
            hash(obj)  # lists became tuples
            back = type(obj).from_params(json.loads(json.dumps(obj.to_params())), "x", "y")
            assert back == obj
    pdarts = cfg.method("pdarts").search
    assert isinstance(pdarts.stage_layers, tuple)
    assert pdarts.to_params()["stage_layers"] == [3, 4, 5]  # demo preset
    assert cfg.method("darts-1st").search.stage_layers is None
    assert cfg.method("sgl-darts-1st").options.to_params()["lambda"] == 0.1


def test_every_scheme_implements_the_contract() -> None:
    with pytest.raises(TypeError):
        Scheme(None, {})  # type: ignore[abstract,arg-type]
    for name, cls in SCHEMES.items():
        assert issubclass(cls, Scheme) and not inspect.isabstract(cls), name
        assert cls.name == name
        assert isinstance(cls.PLAIN_VIEW, bool) and isinstance(cls.UNLABELED, bool)
