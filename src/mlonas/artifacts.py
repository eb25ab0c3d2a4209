"""Reading the JSON artifacts one stage hands to the next, checked against their schemas.

Splits, genotypes, alphas and evaluation metrics are JSON files that a later job (on
another machine, months later, from a DVC remote) reads back. Their shape is written down
once, as JSON Schemas in ``mlonas/schemas/<kind>.schema.json``, instead of as hand-written
``isinstance`` checks spread over their readers; each reader keeps only the checks a schema
cannot express (a split matches its params, a genotype's inputs are earlier nodes, ...).

A violation is one line, ``<file>: <json path>: <what is wrong>``, like every other
:class:`MlonasError`. A subschema may carry ``"x-message"`` (an annotation the validator
ignores) to say what its value must be in the reader's words, e.g. ``must be [operation,
input index]``, instead of jsonschema's wording.
"""

from __future__ import annotations

import json
import os
from functools import cache
from importlib import resources
from typing import Any, Literal

import jsonschema
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from mlonas.errors import MlonasError
from mlonas.io import read_json

Kind = Literal["split", "genotype", "alphas", "metrics"]
KINDS: tuple[Kind, ...] = ("split", "genotype", "alphas", "metrics")
_WHAT = {
    "split": "split file",
    "genotype": "genotype file",
    "alphas": "alphas file",
    "metrics": "metrics file",
}
_JSON_TYPE = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}


def _is_integer(_checker: Any, instance: Any) -> bool:
    """JSON Schema counts 1.0 as an integer; an index or a count written as 1.0 is a bug in
    whatever wrote it (and a float index fails later, far from the file), so not here."""
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator = jsonschema.validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


def schema(kind: Kind) -> dict[str, Any]:
    """The JSON Schema of ``kind`` (package data, so an installed mlonas has it too)."""
    return _schemas()[kind]


@cache
def _schemas() -> dict[str, dict[str, Any]]:
    folder = resources.files("mlonas") / "schemas"
    return {k: json.loads((folder / f"{k}.schema.json").read_text("utf-8")) for k in KINDS}


@cache
def _validator(kind: Kind) -> Any:
    # the schemas refer to each other by file name (alphas embeds a genotype)
    registry: Registry = Registry().with_resources(
        (f"{k}.schema.json", Resource.from_contents(s)) for k, s in _schemas().items()
    )
    return _Validator(schema(kind), registry=registry)


def _json_path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _message(error: jsonschema.ValidationError) -> tuple[str, str]:
    """(json path, message) of one violation, short whatever the size of the value."""
    path = list(error.absolute_path)
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return _json_path([*path, missing]), "missing key"
    if isinstance(error.schema, dict) and "x-message" in error.schema:
        message = str(error.schema["x-message"])
    elif error.validator == "type":
        want = error.validator_value
        want = " or ".join(want) if isinstance(want, list) else want
        got = _JSON_TYPE.get(type(error.instance), type(error.instance).__name__)
        message = f"must be {want}, got {got}"
    else:
        message = error.message
        if len(message) > 160:
            message = f"fails {error.validator}: {error.validator_value!r}"[:160]
    return _json_path(path), message


def validate_artifact(data: Any, kind: Kind, where: str) -> None:
    """Raise a one-line :class:`MlonasError` ``<where>: <json path>: <message>`` naming
    the most relevant violation of ``kind``'s schema (none: return)."""
    error = jsonschema.exceptions.best_match(_validator(kind).iter_errors(data))
    if error is not None:
        path, message = _message(error)
        raise MlonasError(f"{where}: {path}: {message}")


def load_artifact(path: str | os.PathLike[str], kind: Kind) -> Any:
    """Read the JSON artifact at ``path`` and check it against ``kind``'s schema.

    Missing or malformed files, and files that do not fit the schema, are one-line
    :class:`MlonasError`\\ s naming the file (and the key at fault).
    """
    data = read_json(path, _WHAT[kind])
    validate_artifact(data, kind, str(path))
    return data
