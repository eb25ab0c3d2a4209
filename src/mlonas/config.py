"""Typed, validated view of params.yaml (plus presets), and the artifact paths.

Both drivers read the same file: the Snakefile validates ``config`` against the JSON
schema in ``workflow/schemas/`` (a link to the copy shipped in this package), and every
``mlonas <stage>`` call loads params.yaml through :func:`load_config`, which applies the
same schema and the cross-reference checks a schema cannot express. A bad value
therefore stops both drivers with one line naming the key.

The job enumeration (:meth:`Config.search_jobs` and friends) is the single table of
stages from which the Snakefile's targets are computed; ``tests/test_workflow.py``
checks dvc.yaml against the same table so the two drivers cannot drift apart.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from mlonas.errors import MlonasError
from mlonas.settings import (
    EVAL_SETTINGS,
    SCHEME_OPTIONS,
    CifarEvalSettings,
    EvalSettings,
    SchemeOptions,
    SearchSettings,
)

PRESETS = ("paper", "demo")
CIFAR_DATASETS = ("cifar10", "cifar100")
#: The papers' result tables, the one list of their names: name -> (the dataset its
#: error is measured on, its title). The report, the audit, the CLI's ``--table`` choices
#: and the Snakefile's ``{table}`` wildcard all read it.
TABLES: dict[str, tuple[str, str]] = {
    "table2": ("cifar100", "Table 2 — CIFAR-100 test error (%)"),
    "table3": ("cifar10", "Table 3 — CIFAR-10 test error (%)"),
    "table4": ("imagenet", "Table 4 — ImageNet test error (%) of cells searched on CIFAR"),
    # not a table of the papers: the methods of their related-work list with public code,
    # CIFAR-10 rows and, where the authors transfer, ImageNet rows of their cells
    "table5": (
        "cifar10",
        "Table 5 — methods of the related-work list: CIFAR-10 test error (%)"
        " and ImageNet transfers of their cells",
    ),
}
TABLE_DATASET = {name: dataset for name, (dataset, _) in TABLES.items()}


def table_methods(spec: dict[str, Any]) -> list[str]:
    """A table's CIFAR rows in order: its ``baselines`` (runs another table declares),
    then its own ``methods``."""
    return [*spec.get("baselines", []), *spec.get("methods", [])]


@cache
def schema() -> dict[str, Any]:
    text = resources.files("mlonas").joinpath("schemas/params.schema.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def _key_path(path: Any) -> str:
    return ".".join(str(p) for p in path) or "<root>"


def _yaml_float(value: float) -> str:
    """``nan``/``inf`` as params.yaml spells them (``.nan``, ``.inf``, ``-.inf``)."""
    if math.isnan(value):
        return ".nan"
    return ".inf" if value > 0 else "-.inf"


def _refuse_non_finite(node: Any, where: str, path: tuple[Any, ...] = ()) -> None:
    """Refuse NaN and infinities anywhere in the params (``lr: .nan``, ``lr_min: .inf``).

    They pass every schema bound (a comparison with NaN is false, and ``.inf`` is above
    any minimum), so they would validate and only surface as a NaN loss or a crash deep
    inside a run. No setting in params.yaml is meaningfully infinite.
    """
    if isinstance(node, float) and not math.isfinite(node):
        raise MlonasError(f"{where}: {_key_path(path)}: {_yaml_float(node)} is not a finite number")
    if isinstance(node, dict):
        for k, v in node.items():
            _refuse_non_finite(v, where, (*path, k))
    elif isinstance(node, list):
        for k, v in enumerate(node):
            _refuse_non_finite(v, where, (*path, k))


def _reads_as_float(text: str, value: float) -> bool:
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    return isinstance(parsed, float) and parsed == value


def _yaml_text_hint(err: jsonschema.exceptions.ValidationError) -> str:
    """How to write a number that YAML read as text (`` (...)`` or ``""``).

    PyYAML implements YAML 1.1, whose floats need a ``.`` in the mantissa and a sign in
    the exponent: ``1.0e6``, ``1e+6`` and ``3e-4`` are strings. Snakemake loads params.yaml
    with the same rules, so accepting them here would make the two drivers read different
    values; the schema's "'1.0e6' is not of type 'number'" alone does not say why.
    """
    if err.validator != "type" or not isinstance(err.instance, str):
        return ""
    types = err.validator_value
    expected = set(types) if isinstance(types, list) else {types}
    if not expected & {"number", "integer"}:
        return ""
    text = err.instance.strip()
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        parsed = None
    if isinstance(parsed, int | float) and not isinstance(parsed, bool):
        return " (it is quoted: write the number without quotes)"
    try:
        value = float(text)
    except ValueError:
        return ""
    if not math.isfinite(value):
        return ""
    if "number" not in expected:
        return f" (YAML reads {text} as text; write {int(value)})" if value.is_integer() else ""
    forms: list[str] = []
    mantissa, e, exponent = text.lower().partition("e")
    if e:
        if "." not in mantissa:
            mantissa += ".0"
        if exponent[:1] not in ("+", "-"):
            exponent = f"+{exponent}"
        forms.append(f"{mantissa}e{exponent}")
    plain = repr(value)
    if "e" in plain and "." not in plain.partition("e")[0]:
        plain = plain.replace("e", ".0e", 1)
    forms.append(plain)
    forms = [f for f in dict.fromkeys(forms) if _reads_as_float(f, value)]
    return f" (YAML reads {text} as text; write {' or '.join(forms)})" if forms else ""


def _not_above(
    where: str,
    values: dict[str, Any],
    pair: tuple[str, str, str],
    names: dict[str, str],
    blame: str,
) -> None:
    """Raise unless ``values[low] <= values[high]`` for ``pair = (low, high, why)``; the
    message leads with ``blame``, the key to fix. A missing key is reported elsewhere."""
    low, high, why = pair
    if low not in values or high not in values or values[low] <= values[high]:
        return
    if blame == low:
        what = f"{values[low]} is more than {names[high]} ({values[high]})"
    else:
        what = f"{values[high]} is less than {names[low]} ({values[low]})"
    raise MlonasError(f"{where}: {names[blame]}: {what}; {why}")


_SEARCH_PAIRS = (
    (
        "multiplier",
        "steps",
        "a cell's output concatenates the last `multiplier` of its `steps` intermediate nodes",
    ),
    ("lr_min", "lr", "the cosine schedule anneals lr down to lr_min"),
)
_LR_PAIRS = _SEARCH_PAIRS[1:]
_LEASE_PAIRS = (
    (
        "audience_lr_min",
        "audience_lr",
        "the audience's cosine schedule anneals audience_lr down to audience_lr_min",
    ),
)
_LBT_PAIRS = (
    (
        "student_lr_min",
        "student_lr",
        "the student's cosine schedule anneals student_lr down to student_lr_min",
    ),
)
# the schemes with a learning-rate pair in their options, checked like search's
_SCHEME_PAIRS = {"lease": _LEASE_PAIRS, "lbt": _LBT_PAIRS}
#: Schemes that train on unlabeled images (``datasets.<d>.unlabeled``; Scheme.UNLABELED,
#: here so that validation does not import torch; a test keeps them equal).
UNLABELED_SCHEMES = frozenset({"sgl", "lbt"})

_Pairs = tuple[tuple[str, str, str], ...]


def _check_orders(raw: dict[str, Any], where: str) -> None:
    """Relations between keys the schema cannot express: ``root`` is a path prefix, and
    ``multiplier <= steps``, ``lr_min <= lr`` wherever those are set (the shared search,
    a method's override of it, eval.cifar, LeaSE's audience). Each passed validation and
    then crashed the search, wrote ``outresults/``, or "annealed" a learning rate upwards.
    """
    root = raw["root"]
    if root and not root.endswith("/"):
        raise MlonasError(
            f"{where}: root: {root!r} must be \"\" or end in '/' (it prefixes every artifact"
            f" path: {root}results/...); write {root + '/'!r}"
        )
    # (values, the keys a method set itself, its own prefix, the inherited prefix, pairs)
    checks: list[tuple[dict[str, Any], dict[str, Any] | None, str, str, _Pairs]] = [
        (raw["search"], None, "search", "search", _SEARCH_PAIRS),
        (raw["eval"]["cifar"], None, "eval.cifar", "eval.cifar", _LR_PAIRS),
    ]
    for scheme, pairs in _SCHEME_PAIRS.items():
        shared = raw.get("schemes", {}).get(scheme)
        if shared is not None:
            checks.append((shared, None, f"schemes.{scheme}", f"schemes.{scheme}", pairs))
    for slug, method in raw["methods"].items():
        over = method.get("search", {})
        if over:
            merged = deep_merge(raw["search"], over)
            checks.append((merged, over, f"methods.{slug}.search", "search", _SEARCH_PAIRS))
        own_eval = method.get("eval", {}).get("cifar", {})
        if own_eval:
            merged = deep_merge(raw["eval"]["cifar"], own_eval)
            prefix = f"methods.{slug}.eval.cifar"
            checks.append((merged, own_eval, prefix, "eval.cifar", _LR_PAIRS))
        pairs = _SCHEME_PAIRS.get(method["scheme"])
        if pairs and method.get("options"):
            opts, own = scheme_options(raw, method), f"methods.{slug}.options"
            checks.append((opts, method["options"], own, f"schemes.{method['scheme']}", pairs))
    for values, set_here, own_prefix, inherited, pairs in checks:
        for pair in pairs:
            low, high = pair[:2]
            own = {k: set_here is None or k in set_here for k in (low, high)}
            names = {k: f"{own_prefix if own[k] else inherited}.{k}" for k in (low, high)}
            # blame the key the method set itself when only one of the two is its own
            blame = high if own[high] and not own[low] else low
            _not_above(where, values, pair, names, blame)


#: Bases whose supernet has no architecture parameters (MSR-DARTS: stable-rank mixing);
#: only scheme plain in first order runs them (mlonas.search.bases.Base.learns_architecture;
#: a test keeps them equal). Here so that validation does not import torch.
BASES_WITHOUT_ARCHITECTURE = frozenset({"msrdarts"})

#: search.objective mae (MAE-NAS): the keys it reads (null under classification), and the
#: bases it cannot run on, with why (mlonas.space.mae.MaeSupernet reads the stage outputs
#: of DARTS' cell stack).
MAE_KEYS = ("mask_ratio", "patch_size", "decoder", "decoder_channels", "norm_pix_loss")
BASES_WITHOUT_MAE = {
    "msrdarts": "learns no architecture parameters",
    "bdarts": "has a broad supernet without per-stage cell outputs",
    "drnas": "widens the supernet between stages, which the decoder would not follow",
}


#: Half search space (mlonas.space.zeroshot): the ops a pruner may keep on each edge, per
#: base (its primitives without ``none``; mlonas.search.bases.Base.primitives, a test keeps
#: them equal). Absent: the base cannot be pruned (MSR-DARTS has no alphas to mask; the
#: broad supernet of B-DARTS takes no per-edge op lists).
PRUNABLE_OPS = {"darts": 7, "pcdarts": 7, "pdarts": 7, "darts_minus": 7, "drnas": 7}
PRUNE_KEYS = (
    "prune_keep",
    "prune_rankers",
    "prune_repeat",
    "prune_batch_size",
    "prune_batches",
    "prune_channels",
)


def _check_prune(where: str, slug: str, method: dict[str, Any], s: SearchSettings) -> None:
    """Half search space: a pruner needs its keys, a base with per-edge op lists, and
    fewer ops kept than the edge has; without one its keys stay null."""
    at = f"{where}: methods.{slug}.search"
    if s.prune is None:
        set_keys = [k for k in PRUNE_KEYS if getattr(s, k) is not None]
        if set_keys:
            raise MlonasError(f"{at}.{set_keys[0]} is set but prune is null")
        return
    missing = [k for k in PRUNE_KEYS if getattr(s, k) is None]
    if missing:
        raise MlonasError(f"{at}.{missing[0]} is required with prune {s.prune}")
    available = PRUNABLE_OPS.get(method["base"])
    if available is None:
        why = (
            "it learns no architecture parameters to mask"
            if method["base"] in BASES_WITHOUT_ARCHITECTURE
            else "its supernet takes no per-edge op lists"
        )
        raise MlonasError(
            f"{at}.prune: base {method['base']} cannot be pruned ({why}; prunable bases:"
            f" {', '.join(PRUNABLE_OPS)})"
        )
    assert s.prune_keep is not None
    if s.prune_keep >= available:
        raise MlonasError(
            f"{at}.prune_keep: {s.prune_keep} keeps all {available} ops of base"
            f" {method['base']} other than none (nothing to prune)"
        )


def validate_params(raw: Any, where: str = "params.yaml") -> None:
    """Schema + cross-reference validation; raises a one-line :class:`MlonasError`."""
    if not isinstance(raw, dict):
        raise MlonasError(f"{where}: expected a mapping at the top level")
    _refuse_non_finite(raw, where)
    validator = jsonschema.Draft202012Validator(schema())
    errors = list(validator.iter_errors(raw))
    if errors:
        # A typo'd key also makes the correctly spelled one "missing": name the typo.
        unknown = [e for e in errors if e.validator == "additionalProperties"]
        err = jsonschema.exceptions.best_match(unknown or errors)
        key = _key_path(err.absolute_path)
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            if extra:
                prefix = f"{key}." if err.absolute_path else ""
                raise MlonasError(f"{where}: unknown key {prefix}{extra[0]}")
        raise MlonasError(f"{where}: {key}: {err.message}{_yaml_text_hint(err)}")
    _check_orders(raw, where)
    methods = raw["methods"]
    for tname, table in raw["tables"].items():
        for key in ("baselines", "methods"):
            for slug in table.get(key, []):
                if slug not in methods:
                    raise MlonasError(f"{where}: tables.{tname}.{key}: unknown method {slug!r}")
        for k, tr in enumerate(table.get("transfers", [])):
            if tr["method"] not in methods:
                raise MlonasError(
                    f"{where}: tables.{tname}.transfers.{k}.method: unknown method {tr['method']!r}"
                )
        if TABLE_DATASET[tname] != table["dataset"]:
            raise MlonasError(
                f"{where}: tables.{tname}.dataset must be {TABLE_DATASET[tname]}"
                f" (the papers' {tname})"
            )
    for slug, method in raw["methods"].items():
        s = search_settings(raw, slug, where)
        if method["scheme"] != "plain" and s.arch_bn_stats != "private":
            raise MlonasError(
                f"{where}: methods.{slug}: search.arch_bn_stats {s.arch_bn_stats!r} is the"
                f" official DARTS-family architect's behaviour and exists for scheme plain only"
                f" ({method['scheme']} keeps its hypergradient forwards private)"
            )
        if method["scheme"] != "plain":
            opts = scheme_options(raw, method)
            required = schema()["$defs"][f"{method['scheme']}_required"]["required"]
            missing = [k for k in required if k not in opts]
            if missing:
                raise MlonasError(
                    f"{where}: methods.{slug}: scheme {method['scheme']} needs"
                    f" {', '.join(missing)} (in schemes.{method['scheme']} or the method's options)"
                )
            pick = opts.get("select")
            if isinstance(pick, int) and pick > opts.get("learners", 0):
                raise MlonasError(
                    f"{where}: methods.{slug}: select: learner {pick} of {opts['learners']}"
                    " learners"
                )
        scheme_settings(raw, slug, where)
        if method["base"] == "pdarts":
            stages = (s.stage_layers, s.stage_ops, s.stage_skip_dropout)
            if any(v is None for v in stages) or len({len(v) for v in stages}) != 1:
                raise MlonasError(
                    f"{where}: methods.{slug}.search: a pdarts base needs stage_layers,"
                    " stage_ops and stage_skip_dropout of one length (one entry per stage)"
                )
            ops = s.stage_ops
            if ops[0] != 8 or tuple(sorted(ops, reverse=True)) != ops:
                raise MlonasError(
                    f"{where}: methods.{slug}.search.stage_ops must start at 8 and not grow"
                )
        if method["base"] == "drnas":
            ops, ks = s.stage_ops, s.stage_partial_channels
            if ops is None or ks is None or len(ops) != len(ks) or s.stage_layers is not None:
                raise MlonasError(
                    f"{where}: methods.{slug}.search: a drnas base needs stage_ops and"
                    " stage_partial_channels of one length (one entry per stage) and no"
                    " stage_layers"
                )
            if ops[0] != 7 or tuple(sorted(ops, reverse=True)) != ops:
                raise MlonasError(
                    f"{where}: methods.{slug}.search.stage_ops must start at 7 (DrNAS' ops)"
                    " and not grow"
                )
            if any(s.init_channels % k for k in ks):
                raise MlonasError(
                    f"{where}: methods.{slug}.search.stage_partial_channels must each divide"
                    f" init_channels ({s.init_channels})"
                )
        if method["base"] in BASES_WITHOUT_ARCHITECTURE and (
            method["scheme"] != "plain" or method["order"] != "first"
        ):
            what = f"scheme {method['scheme']}" if method["scheme"] != "plain" else "order second"
            raise MlonasError(
                f"{where}: methods.{slug}: base {method['base']} learns no architecture"
                f" parameters, so {what} has nothing to update (use scheme plain, order first)"
            )
        _check_prune(where, slug, method, s)
        if method["base"] == "bdarts" and (s.layers != 2 or s.en_layers is None):
            raise MlonasError(
                f"{where}: methods.{slug}.search: a bdarts base needs layers 2 (its broad"
                " supernet's two convolution cells) and en_layers"
            )
        _check_objective(raw, slug, method, s, where)
        if method["base"] != "bdarts" and s.layers < 3:
            raise MlonasError(f"{where}: methods.{slug}.search.layers must be at least 3")
        if method["base"] == "pcdarts":
            k = s.partial_channels
            if not k or s.init_channels % k:
                raise MlonasError(
                    f"{where}: methods.{slug}.search.partial_channels must divide init_channels"
                )
    for kind in EVAL_SETTINGS:
        eval_settings(raw, kind, where)
        for slug in raw["methods"]:
            e = eval_settings(raw, kind, where, slug)
            if (
                isinstance(e, CifarEvalSettings)
                and e.network == "broad"
                and (e.en_layers is None or e.pool_time != 2 or e.auxiliary_weight > 0)
            ):
                raise MlonasError(
                    f"{where}: methods.{slug}.eval.cifar: network broad needs en_layers,"
                    " pool_time 2 and auxiliary_weight 0 (B-DARTS' network has no"
                    " auxiliary head)"
                )
    _check_table_runs(raw, where)
    for name, ds in raw["datasets"].items():
        if ds["source"] not in (name, "demo"):
            raise MlonasError(
                f"{where}: datasets.{name}.source: {ds['source']!r} cannot stand in for {name}"
                " (use the dataset itself or 'demo')"
            )
        if name in CIFAR_DATASETS and ("n_train" not in ds or "n_val" not in ds):
            raise MlonasError(f"{where}: datasets.{name}: n_train and n_val are required")
        other = ds.get("unlabeled")
        if other is not None:
            if name not in CIFAR_DATASETS or other == name:
                raise MlonasError(
                    f"{where}: datasets.{name}.unlabeled: must name the other CIFAR dataset"
                    " (its own training images would leak the search-validation half)"
                )
            if raw["datasets"][other]["image_size"] != ds["image_size"]:
                raise MlonasError(
                    f"{where}: datasets.{name}.unlabeled: {other}'s image_size"
                    f" {raw['datasets'][other]['image_size']} differs from {ds['image_size']}"
                )
    for slug, method in raw["methods"].items():
        if method["scheme"] in UNLABELED_SCHEMES:
            for tname, table in raw["tables"].items():
                if slug in table.get("methods", []) and not raw["datasets"][table["dataset"]].get(
                    "unlabeled"
                ):
                    raise MlonasError(
                        f"{where}: datasets.{table['dataset']}.unlabeled: {slug} (scheme"
                        f" {method['scheme']}, in tables.{tname}) needs an unlabeled dataset"
                    )
        if method["scheme"] == "il":
            models = scheme_options(raw, method)["models"]
            for tname, table in raw["tables"].items():
                n = SOURCE_CLASSES.get(raw["datasets"][table["dataset"]]["source"])
                if slug in table.get("methods", []) and n is not None and 2 * models > n:
                    raise MlonasError(
                        f"{where}: methods.{slug}: scheme il's {models} models need a group of"
                        f" at least 2 classes each, and {table['dataset']} (tables.{tname}) has"
                        f" {n} classes"
                    )


#: classes of a searchable source (the demo stand-in: the 10 handwritten digits), for the
#: checks that need them before any data is read (scheme il's class groups)
SOURCE_CLASSES = {"cifar10": 10, "cifar100": 100, "demo": 10}


def _check_objective(
    raw: dict[str, Any], slug: str, method: dict[str, Any], s: SearchSettings, where: str
) -> None:
    """search.objective mae (MAE-NAS, an interpretation): scheme plain on a base with
    DARTS' cell stack, every MAE key set, patches that tile the images it searches;
    classification: the MAE keys at their neutral null."""
    if s.objective != "mae":
        extra = [k for k in MAE_KEYS if getattr(s, k) is not None]
        if extra:
            raise MlonasError(
                f"{where}: methods.{slug}.search.{extra[0]} is for objective mae (null under"
                f" objective {s.objective})"
            )
        return
    if method["scheme"] != "plain":
        raise MlonasError(
            f"{where}: methods.{slug}: search.objective mae needs scheme plain (scheme"
            f" {method['scheme']} trains on labels or predictions)"
        )
    why = BASES_WITHOUT_MAE.get(method["base"])
    if why is not None:
        raise MlonasError(
            f"{where}: methods.{slug}: search.objective mae cannot run on base"
            f" {method['base']}: it {why}"
        )
    missing = [k for k in MAE_KEYS if getattr(s, k) is None]
    if missing:
        raise MlonasError(f"{where}: methods.{slug}.search.{missing[0]}: objective mae needs it")
    assert s.patch_size is not None
    for tname, table in raw["tables"].items():
        if slug in table.get("methods", []) or slug in table.get("baselines", []):
            size = raw["datasets"][table["dataset"]]["image_size"]
            if size % s.patch_size:
                raise MlonasError(
                    f"{where}: methods.{slug}.search.patch_size {s.patch_size} does not divide"
                    f" datasets.{table['dataset']}.image_size {size} (tables.{tname})"
                )


def _check_table_runs(raw: dict[str, Any], where: str) -> None:
    """Each run is declared by one table, and a table's other rows name runs that one
    declares. dvc.yaml makes each table's ``methods`` and ``transfers`` its own stages, so
    a run listed twice would be two stages with one output; table5 shows table3's rows as
    ``baselines`` instead. A transfer (any table's) needs its cell searched on its source.
    """
    owner: dict[tuple[str, str], str] = {}  # (dataset, method) -> "tables.<t>.methods"
    for tname, table in raw["tables"].items():
        for slug in table.get("methods", []):
            key = (table["dataset"], slug)
            if key in owner:
                raise MlonasError(
                    f"{where}: tables.{tname}.methods: {slug} is already in {owner[key]}"
                    f" (list it under tables.{tname}.baselines: each run is declared once)"
                )
            owner[key] = f"tables.{tname}.methods"
    searched = {t["dataset"] for t in raw["tables"].values() if "methods" in t}
    for tname, table in raw["tables"].items():
        for slug in table.get("baselines", []):
            if (table["dataset"], slug) not in owner:
                raise MlonasError(
                    f"{where}: tables.{tname}.baselines: {slug} is not in another"
                    f" {table['dataset']} table's methods (a baseline row shows that table's"
                    f" runs; list a method searched for this table under its methods)"
                )
        for k, tr in enumerate(table.get("transfers", [])):
            key = (tr["source"], tr["method"])
            if tr["source"] in searched and key not in owner:
                raise MlonasError(
                    f"{where}: tables.{tname}.transfers.{k}: {tr['method']} is not searched on"
                    f" {tr['source']} (add it to that dataset's table)"
                )
            run = ("imagenet", *key)
            if run in owner:
                raise MlonasError(
                    f"{where}: tables.{tname}.transfers.{k}: {tr['method']} from {tr['source']}"
                    f" is already in {owner[run]} (each run is declared once)"
                )
            owner[run] = f"tables.{tname}.transfers"


def scheme_options(params: dict[str, Any], method: dict[str, Any]) -> dict[str, Any]:
    """``schemes.<scheme>`` (the papers' settings) with the method's ``options`` over it."""
    shared = params.get("schemes", {}).get(method["scheme"], {})
    return deep_merge(shared, method.get("options", {}))


def search_settings(params: dict[str, Any], slug: str, where: str = "params") -> SearchSettings:
    """Method ``slug``'s search settings: ``search`` with the method's ``search`` over it."""
    merged = deep_merge(params["search"], params["methods"][slug].get("search", {}))
    return SearchSettings.from_params(merged, where, f"methods.{slug}.search")


def scheme_settings(params: dict[str, Any], slug: str, where: str = "params") -> SchemeOptions:
    """Method ``slug``'s scheme options, typed by its scheme (:data:`SCHEME_OPTIONS`)."""
    method = params["methods"][slug]
    cls = SCHEME_OPTIONS[method["scheme"]]
    return cls.from_params(scheme_options(params, method), where, f"methods.{slug}.options")


def eval_settings(
    params: dict[str, Any], kind: str, where: str = "params", method: str | None = None
) -> EvalSettings:
    """``eval.<kind>`` (``cifar`` or ``imagenet``), typed; with ``method``, that method's
    ``methods.<method>.eval.<kind>`` merged over it (the settings its cells are evaluated
    with: its CIFAR evaluation and its ImageNet transfers)."""
    if kind not in EVAL_SETTINGS:
        raise MlonasError(f"{where}: eval.{kind}: no such evaluation (have: cifar, imagenet)")
    values, section = params["eval"][kind], f"eval.{kind}"
    if method is not None:
        over = params["methods"][method].get("eval", {}).get(kind, {})
        if over:
            values, section = deep_merge(values, over), f"methods.{method}.eval.{kind}"
    return EVAL_SETTINGS[kind].from_params(values, where, section)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; lists and scalars in ``over`` replace those in ``base``."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_raw(path: str | os.PathLike[str] = "params.yaml") -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise MlonasError(f"params file {p} does not exist")
    try:
        raw = yaml.safe_load(p.read_text("utf-8"))
    except yaml.YAMLError as exc:
        raise MlonasError(
            f"params file {p} is not valid YAML: {' '.join(str(exc).split())}"
        ) from None
    return raw


def resolve_preset(
    raw: dict[str, Any],
    preset: str,
    where: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate ``raw``, merge the named preset and then ``overrides`` over it, and
    validate each result.

    ``overrides`` (from ``--set``, or what Snakemake's ``--config``/``--configfile`` put
    over params.yaml) win over the preset: ``--config preset=demo 'search={epochs: 1}'``
    means one epoch, not the demo's two. An override of ``presets.<name>.*`` changes the
    preset itself. A value the override makes invalid is blamed on the override.
    """
    validate_params(raw, where)
    if overrides:
        raw = deep_merge(raw, overrides)
        validate_params(raw, OVERRIDE_WHERE)
    if preset == "paper":
        merged = copy.deepcopy(raw)
    else:
        presets = raw.get("presets", {})
        if preset not in presets:
            have = ", ".join(["paper", *presets])
            raise MlonasError(f"{where}: presets.{preset}: no such preset (have: {have})")
        merged = deep_merge(raw, presets[preset])
        validate_params(merged, f"{where} (preset {preset})")
        over = {k: v for k, v in (overrides or {}).items() if k != "presets"}
        if over:
            merged = deep_merge(merged, over)
            validate_params(merged, f"{OVERRIDE_WHERE} (preset {preset})")
    merged.pop("presets", None)
    merged["preset"] = preset
    if overrides:  # resolution metadata, like ``preset``; absent when there is none
        merged["overrides"] = override_args(overrides)
    return merged


# -- overrides: what a driver puts over params.yaml reaches every job -------------------

OVERRIDE_WHERE = "override (--config/--configfile/--set)"


def _coerce(value: Any) -> Any:
    """Snakemake parses nested ``--config`` values with YAML's BaseLoader, which keeps
    every scalar a string (``search={lr: 0.5}`` gives ``"0.5"``); read such strings as
    YAML so the override means what it says."""
    if isinstance(value, dict):
        return {k: _coerce(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_coerce(v) for v in value]
    if isinstance(value, str):
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        return parsed if isinstance(parsed, int | float | bool) else value
    return value


def overrides_of(config: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    """The part of Snakemake's ``config`` that is not params.yaml's: ``--configfile`` and
    ``--config`` entries merged over it, as a nested dict of the changed leaves."""
    delta: dict[str, Any] = {}
    for key, value in config.items():
        value = _coerce(value)
        if key not in raw:
            delta[key] = value
        elif isinstance(value, dict) and isinstance(raw[key], dict):
            sub = overrides_of(value, raw[key])
            if sub:
                delta[key] = sub
        elif value != raw[key]:
            delta[key] = value
    return delta


def override_args(overrides: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"search": {"lr": 0.5}}`` -> ``["search.lr=0.5"]``: the ``--set`` arguments that
    carry ``overrides`` to a job (values as JSON, which YAML reads back unchanged)."""
    out: list[str] = []
    for key, value in overrides.items():
        if isinstance(value, dict) and value:
            out += override_args(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value, separators=(',', ':'))}")
    return out


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` arguments (dotted keys, YAML values) as a nested dict."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise MlonasError(f"--set {item!r}: expected KEY=VALUE with a dotted key")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise MlonasError(f"--set {key}: {text!r} is not a YAML value") from None
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise MlonasError(f"--set {key}: {part} is set to a value and a mapping")
        node[leaf] = value
    return out


@dataclass(frozen=True)
class Method:
    """One row of the papers' tables: a composition base x order x scheme."""

    slug: str
    label: str
    base: str
    order: str
    scheme: str
    search: SearchSettings  # shared search settings with the method's overrides applied
    options: SchemeOptions  # the scheme's options (``schemes.<scheme>`` + method overrides)


@dataclass(frozen=True)
class SearchJob:
    dataset: str
    method: str
    seed: int


@dataclass(frozen=True)
class TransferJob:
    source: str
    method: str
    seed: int


# The params.yaml keys each stage's job reads, with the job's wildcards in braces. This is
# the one list both drivers track: the Snakefile's rules pass ``Config.tracked(...)`` as
# ``params`` (so Snakemake's params trigger sees every value) and dvc.yaml's stages list the
# same keys (tests/test_workflow.py checks both, and that a change to each reruns exactly
# the jobs that read it). DVC cannot choose a key by another key's value, so a search
# tracks all of ``schemes`` (not only its own scheme's) and its dataset's unlabeled
# partner whatever its scheme, and a table tracks all ``methods`` (it reads their labels).
STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "split": ("datasets.{dataset}",),
    "search": (
        "search",
        "schemes",
        # the composition, not the label (a new label must not rerun a GPU-day search)
        "methods.{method}.base",
        "methods.{method}.order",
        "methods.{method}.scheme",
        "methods.{method}.search",
        "methods.{method}.options",
        "datasets.{dataset}",
        "datasets.{unlabeled}",
    ),
    "export": (),
    # a method's eval overrides (both kinds: DVC cannot track methods.<m>.eval.cifar when
    # the method sets `eval: {}`, so a change to either reruns both of its evaluations)
    "train-cifar": ("eval.cifar", "methods.{method}.eval", "datasets.{dataset}"),
    "train-imagenet": ("eval.imagenet", "methods.{method}.eval", "datasets.imagenet"),
    "table": (
        "seeds",
        "tables.{table}",
        "methods",
        "datasets.cifar10.source",
        "datasets.cifar100.source",
        "datasets.imagenet.source",
    ),
    # report-only (Snakemake): a table's figures; titles name the methods' labels and say
    # DEMO on demo data
    "figures": (
        "tables.{table}",
        "methods",
        "datasets.cifar10.source",
        "datasets.cifar100.source",
        "datasets.imagenet.source",
    ),
}


def get_key(params: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted params key (``methods.darts-1st``); None where it is absent."""
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


# Every artifact's path, relative to the preset's ``root``, with the Snakemake wildcards
# as fields: the one definition of the layout. The Config methods below format them, the
# Snakefile's rules take their input/output/log patterns from here (workflow/rules/
# common.smk), and tests/test_workflow.py checks dvc.yaml's literal paths against them.
# Directories hold several files (search: alphas.json, history.csv, ...); "log:<stage>"
# entries are stems that the rules complete with ".log" / ".bench.tsv".
PATHS: dict[str, str] = {
    "split": "data/splits/{dataset}.json",
    "search": "results/search/{dataset}/{method}/seed{seed}",
    "cell": "results/cells/{dataset}/{method}/seed{seed}.json",
    "cell_figure": "results/cells/{dataset}/{method}/seed{seed}.png",
    "eval": "results/eval/{dataset}/{method}/seed{seed}",
    "imagenet_eval": "results/eval/imagenet/{source}/{method}/seed{seed}",
    "table": "results/{table}.{ext}",
    "log:split": "logs/split/{dataset}",
    "log:search": "logs/search/{dataset}/{method}/seed{seed}",
    "log:export": "logs/export/{dataset}/{method}/seed{seed}",
    "log:train-cifar": "logs/train-cifar/{dataset}/{method}/seed{seed}",
    "log:train-imagenet": "logs/train-imagenet/{source}/{method}/seed{seed}",
    "log:table": "logs/table/{table}",
    "log:figures": "logs/figures/{table}",
}


class Config:
    """The resolved params of one preset, with artifact paths and job enumeration."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    @property
    def preset(self) -> str:
        return self.params["preset"]

    @property
    def overrides(self) -> list[str]:
        """The ``--set`` arguments merged over params.yaml and the preset (provenance)."""
        return list(self.params.get("overrides", []))

    def tracked_keys(self, stage: str, **wildcards: Any) -> list[str]:
        """The params keys ``stage``'s job reads (:data:`STAGE_PARAMS`) for these wildcards."""
        if "dataset" in wildcards and "unlabeled" not in wildcards:
            wildcards["unlabeled"] = self.unlabeled_source(wildcards["dataset"])
        keys = []
        for template in STAGE_PARAMS[stage]:
            if "{unlabeled}" in template and wildcards.get("unlabeled") is None:
                continue
            keys.append(template.format(**wildcards))
        return keys

    def job_overrides(self, stage: str, **wildcards: Any) -> list[str]:
        """The overrides (``--set`` arguments) that reach ``stage``'s job: those on a key it
        reads. Passing only these keeps Snakemake's params trigger as fine as the tracked
        keys (an override of ``search.lr`` does not rerun a split). A method's other keys
        ride along with the ones read, so a method added by an override stays complete;
        but a setting inside one of its blocks (``methods.<m>.eval.cifar.drop_path``) rides
        along only when the override sets the method's ``base`` too (a new composition),
        so that an evaluation setting does not change, and rerun, the method's search.
        """
        keys = self.tracked_keys(stage, **wildcards)
        leaves = [arg.partition("=")[0].split(".") for arg in self.overrides]
        whole = {lp[1] for lp in leaves if lp[0] == "methods" and lp[2:] == ["base"]}

        def reaches(lp: list[str]) -> bool:
            for key in keys:
                kp = key.split(".")
                n = min(len(lp), len(kp))
                if lp[:n] == kp[:n]:
                    return True
                same_method = lp[0] == kp[0] == "methods" and lp[:2] == kp[:2]
                if same_method and (len(lp) <= 3 or lp[1] in whole):
                    return True
            return False

        return [arg for arg, lp in zip(self.overrides, leaves, strict=True) if reaches(lp)]

    def tracked(self, stage: str, **wildcards: Any) -> dict[str, Any]:
        """``{key: resolved value}`` of every setting ``stage``'s job reads: what the
        Snakefile's rules track as ``params`` and what provenance records."""
        return {k: get_key(self.params, k) for k in self.tracked_keys(stage, **wildcards)}

    @property
    def seeds(self) -> list[int]:
        return list(self.params["seeds"])

    @property
    def is_demo(self) -> bool:
        return any(d["source"] == "demo" for d in self.params["datasets"].values())

    def dataset(self, name: str) -> dict[str, Any]:
        try:
            return self.params["datasets"][name]
        except KeyError:
            raise MlonasError(f"params: datasets.{name}: no such dataset") from None

    def method(self, slug: str) -> Method:
        try:
            m = self.params["methods"][slug]
        except KeyError:
            known = ", ".join(self.params["methods"])
            raise MlonasError(f"params: methods.{slug}: unknown method (known: {known})") from None
        search = search_settings(self.params, slug)
        options = scheme_settings(self.params, slug)
        return Method(slug, m["label"], m["base"], m["order"], m["scheme"], search, options)

    def unlabeled_source(self, dataset: str) -> str | None:
        """The dataset whose training images (labels dropped) SGL uses when searching
        ``dataset`` (SGL section 3.1: CIFAR-100 for CIFAR-10 and vice versa)."""
        return self.dataset(dataset).get("unlabeled")

    def eval_settings(self, kind: str, method: str | None = None) -> EvalSettings:
        """``eval.<kind>``, with ``method``'s ``eval.<kind>`` override merged over it."""
        if method is not None:
            self.method(method)  # an unknown method: one line with the known ones
        return eval_settings(self.params, kind, method=method)

    # -- artifact paths (docs/design.md "Artifacts"; prefixed by ``root`` for presets) --
    def path(self, rel: str) -> str:
        return f"{self.params['root']}{rel}"

    def split_path(self, dataset: str) -> str:
        return self.path(PATHS["split"].format(dataset=dataset))

    def search_dir(self, dataset: str, method: str, seed: int) -> str:
        return self.path(PATHS["search"].format(dataset=dataset, method=method, seed=seed))

    def cell_path(self, dataset: str, method: str, seed: int) -> str:
        return self.path(PATHS["cell"].format(dataset=dataset, method=method, seed=seed))

    def eval_dir(self, dataset: str, method: str, seed: int) -> str:
        return self.path(PATHS["eval"].format(dataset=dataset, method=method, seed=seed))

    def imagenet_eval_dir(self, source: str, method: str, seed: int) -> str:
        return self.path(PATHS["imagenet_eval"].format(source=source, method=method, seed=seed))

    def table_path(self, table: str, ext: str = "csv") -> str:
        return self.path(PATHS["table"].format(table=table, ext=ext))

    # -- the job table --
    def tables(self) -> dict[str, dict[str, Any]]:
        return dict(self.params["tables"])

    def search_jobs(self) -> list[SearchJob]:
        """Every (dataset, method, seed) a table needs, searched once even if used twice."""
        jobs: dict[SearchJob, None] = {}
        for table in self.params["tables"].values():
            for slug in table_methods(table):
                for s in self.seeds:
                    jobs[SearchJob(table["dataset"], slug, s)] = None
            for tr in table.get("transfers", []):
                for s in self.seeds:
                    jobs[SearchJob(tr["source"], tr["method"], s)] = None
        return list(jobs)

    def cifar_eval_jobs(self) -> list[SearchJob]:
        return [
            SearchJob(t["dataset"], slug, s)
            for t in self.params["tables"].values()
            for slug in t.get("methods", [])
            for s in self.seeds
        ]

    def table_inputs(self, table: str) -> list[str]:
        """Files a table is computed from: each run's metrics and its search's provenance."""
        spec = self.params["tables"][table]
        paths: list[str] = []
        for slug in table_methods(spec):
            for s in self.seeds:
                paths.append(f"{self.eval_dir(spec['dataset'], slug, s)}/metrics.json")
                paths.append(f"{self.search_dir(spec['dataset'], slug, s)}/provenance.json")
        for tr in spec.get("transfers", []):
            for s in self.seeds:
                paths.append(
                    f"{self.imagenet_eval_dir(tr['source'], tr['method'], s)}/metrics.json"
                )
                paths.append(f"{self.search_dir(tr['source'], tr['method'], s)}/provenance.json")
        return paths

    def transfer_jobs(self) -> list[TransferJob]:
        return [
            TransferJob(tr["source"], tr["method"], s)
            for t in self.params["tables"].values()
            for tr in t.get("transfers", [])
            for s in self.seeds
        ]


def load_config(
    path: str | os.PathLike[str] = "params.yaml",
    preset: str = "paper",
    overrides: Sequence[str] = (),
) -> Config:
    """params.yaml with ``preset`` and the ``--set`` ``overrides`` merged over it."""
    return Config(
        resolve_preset(
            load_raw(path), preset, where=str(path), overrides=parse_overrides(overrides)
        )
    )
