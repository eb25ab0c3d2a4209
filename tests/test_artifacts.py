"""The JSON artifacts' schemas (mlonas/schemas/*.schema.json) and load_artifact's messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from mlonas.artifacts import KINDS, load_artifact, schema, validate_artifact
from mlonas.errors import MlonasError
from mlonas.space.evalnet import published_genotype


def alphas_record() -> dict[str, Any]:
    row = [0.1] * 8
    return {
        "base": "darts",
        "selected": "arch",
        "architectures": {
            "arch": {
                "steps": 2,
                "multiplier": 2,
                "alpha_normal": [row] * 5,
                "alpha_reduce": [row] * 5,
                "max_skip_normal": None,
                "derivation": "darts",
                "genotype": published_genotype("DARTS_V2").to_dict(),
            }
        },
        "trajectory": [],
    }


def test_schemas_are_package_data_and_valid() -> None:
    for kind in KINDS:
        Draft202012Validator.check_schema(schema(kind))


def check(data: Any, kind: str, message: str) -> None:
    with pytest.raises(MlonasError, match=message) as exc:
        validate_artifact(data, kind, "f.json")
    assert "\n" not in str(exc.value) and str(exc.value).startswith("f.json: ")


def test_alphas_and_metrics_records() -> None:
    validate_artifact(alphas_record(), "alphas", "f.json")
    a = alphas_record()
    del a["architectures"]["arch"]["multiplier"]
    check(a, "alphas", r"^f\.json: architectures\.arch\.multiplier: missing key$")
    a = alphas_record()
    a["architectures"]["arch"]["alpha_normal"][1] = "x"
    check(a, "alphas", r"architectures\.arch\.alpha_normal\[1\]: must be array, got string")
    a = alphas_record()
    a["architectures"]["arch"]["derivation"] = "gdas"
    check(a, "alphas", r"architectures\.arch\.derivation: 'gdas' is not one of")

    validate_artifact({"params_m": 3.3, "top1_error": 2.5, "top5_error": None}, "metrics", "m")
    # a diverged run's errors are whatever the trainer managed to write
    validate_artifact({"params_m": 3.3, "diverged": True, "top1_error": None}, "metrics", "m")
    check({"params_m": 3.3}, "metrics", r"f\.json: top1_error: missing key")
    check({"params_m": 3.3, "top1_error": None}, "metrics", "top1_error: must be number, got null")
    check({"params_m": 3.3, "top1_error": 1, "diverged": "no"}, "metrics", "must be true or false")
    check({"top1_error": 1.0, "params_m": "3"}, "metrics", "params_m: must be number, got string")


def test_genotype_bare_or_exported_and_load_artifact(tmp_path: Path) -> None:
    g = published_genotype("DARTS_V2").to_dict()
    validate_artifact(g, "genotype", "f.json")
    validate_artifact({"genotype": g, "method": "darts-2nd"}, "genotype", "f.json")
    check(
        {"genotype": {**g, "reduce": [["skip_connect", True]] * 2}},
        "genotype",
        r"genotype\.reduce\[\d\]\[1\]: must be \[operation, input index\]",
    )
    check([g], "genotype", r"\(top level\): must be an object with normal/reduce cells")
    check({**g, "normal_concat": []}, "genotype", "normal_concat: must be a non-empty list")

    path = tmp_path / "alphas.json"
    path.write_text(json.dumps(alphas_record()))
    assert load_artifact(path, "alphas") == alphas_record()
    path.write_text(json.dumps({"base": "darts"}))
    with pytest.raises(MlonasError, match=rf"^{path}: selected: missing key$"):
        load_artifact(path, "alphas")
    with pytest.raises(MlonasError, match=r"metrics file .* does not exist"):
        load_artifact(tmp_path / "none.json", "metrics")
