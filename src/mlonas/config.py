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
import os
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from mlonas.errors import MlonasError

PRESETS = ("paper", "demo")
CIFAR_DATASETS = ("cifar10", "cifar100")
TABLE_DATASET = {"table2": "cifar100", "table3": "cifar10", "table4": "imagenet"}


@cache
def schema() -> dict[str, Any]:
    text = resources.files("mlonas").joinpath("schemas/params.schema.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def _key_path(path: Any) -> str:
    return ".".join(str(p) for p in path) or "<root>"


def validate_params(raw: Any, where: str = "params.yaml") -> None:
    """Schema + cross-reference validation; raises a one-line :class:`MlonasError`."""
    if not isinstance(raw, dict):
        raise MlonasError(f"{where}: expected a mapping at the top level")
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
        raise MlonasError(f"{where}: {key}: {err.message}")
    methods = raw["methods"]
    for tname, table in raw["tables"].items():
        for slug in table.get("methods", []):
            if slug not in methods:
                raise MlonasError(f"{where}: tables.{tname}.methods: unknown method {slug!r}")
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
        s = deep_merge(raw["search"], method.get("search", {}))
        if method["scheme"] != "plain" and s["arch_bn_stats"] != "private":
            raise MlonasError(
                f"{where}: methods.{slug}: search.arch_bn_stats {s['arch_bn_stats']!r} is the"
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
        if method["base"] == "pdarts":
            need = ("stage_layers", "stage_ops", "stage_skip_dropout")
            if any(k not in s for k in need) or len({len(s[k]) for k in need}) != 1:
                raise MlonasError(
                    f"{where}: methods.{slug}.search: a pdarts base needs stage_layers,"
                    " stage_ops and stage_skip_dropout of one length (one entry per stage)"
                )
            if s["stage_ops"][0] != 8 or sorted(s["stage_ops"], reverse=True) != s["stage_ops"]:
                raise MlonasError(
                    f"{where}: methods.{slug}.search.stage_ops must start at 8 and not grow"
                )
        if method["base"] == "pcdarts":
            k = s.get("partial_channels")
            if not k or s["init_channels"] % k:
                raise MlonasError(
                    f"{where}: methods.{slug}.search.partial_channels must divide init_channels"
                )
    searched = {t["dataset"]: set(t["methods"]) for t in raw["tables"].values() if "methods" in t}
    for k, tr in enumerate(raw["tables"].get("table4", {}).get("transfers", [])):
        if tr["source"] in searched and tr["method"] not in searched[tr["source"]]:
            raise MlonasError(
                f"{where}: tables.table4.transfers.{k}: {tr['method']} is not searched on"
                f" {tr['source']} (add it to that dataset's table)"
            )
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
        if method["scheme"] == "sgl":
            for tname, table in raw["tables"].items():
                if slug in table.get("methods", []) and not raw["datasets"][table["dataset"]].get(
                    "unlabeled"
                ):
                    raise MlonasError(
                        f"{where}: datasets.{table['dataset']}.unlabeled: {slug} (scheme sgl,"
                        f" in tables.{tname}) needs an unlabeled dataset"
                    )


def scheme_options(params: dict[str, Any], method: dict[str, Any]) -> dict[str, Any]:
    """``schemes.<scheme>`` (the papers' settings) with the method's ``options`` over it."""
    shared = params.get("schemes", {}).get(method["scheme"], {})
    return deep_merge(shared, method.get("options", {}))


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


def resolve_preset(raw: dict[str, Any], preset: str, where: str = "params.yaml") -> dict[str, Any]:
    """Validate ``raw``, merge the named preset over it, and validate the result."""
    validate_params(raw, where)
    if preset == "paper":
        merged = copy.deepcopy(raw)
    else:
        presets = raw.get("presets", {})
        if preset not in presets:
            have = ", ".join(["paper", *presets])
            raise MlonasError(f"{where}: presets.{preset}: no such preset (have: {have})")
        merged = deep_merge(raw, presets[preset])
        validate_params(merged, f"{where} (preset {preset})")
    merged.pop("presets", None)
    merged["preset"] = preset
    return merged


@dataclass(frozen=True)
class Method:
    """One row of the papers' tables: a composition base x order x scheme."""

    slug: str
    label: str
    base: str
    order: str
    scheme: str
    search: dict[str, Any]  # shared search settings with the method's overrides applied
    options: dict[str, Any]  # the scheme's options (``schemes.<scheme>`` + method overrides)


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


class Config:
    """The resolved params of one preset, with artifact paths and job enumeration."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    @property
    def preset(self) -> str:
        return self.params["preset"]

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
        search = deep_merge(self.params["search"], m.get("search", {}))
        options = scheme_options(self.params, m)
        return Method(slug, m["label"], m["base"], m["order"], m["scheme"], search, options)

    def unlabeled_source(self, dataset: str) -> str | None:
        """The dataset whose training images (labels dropped) SGL uses when searching
        ``dataset`` (SGL section 3.1: CIFAR-100 for CIFAR-10 and vice versa)."""
        return self.dataset(dataset).get("unlabeled")

    def eval_settings(self, kind: str) -> dict[str, Any]:
        return dict(self.params["eval"][kind])

    # -- artifact paths (DESIGN.md "Artifacts"; prefixed by ``root`` for presets) --
    def path(self, rel: str) -> str:
        return f"{self.params['root']}{rel}"

    def split_path(self, dataset: str) -> str:
        return self.path(f"data/splits/{dataset}.json")

    def search_dir(self, dataset: str, method: str, seed: int) -> str:
        return self.path(f"results/search/{dataset}/{method}/seed{seed}")

    def cell_path(self, dataset: str, method: str, seed: int) -> str:
        return self.path(f"results/cells/{dataset}/{method}/seed{seed}.json")

    def eval_dir(self, dataset: str, method: str, seed: int) -> str:
        return self.path(f"results/eval/{dataset}/{method}/seed{seed}")

    def imagenet_eval_dir(self, source: str, method: str, seed: int) -> str:
        return self.path(f"results/eval/imagenet/{source}/{method}/seed{seed}")

    def table_path(self, table: str, ext: str = "csv") -> str:
        return self.path(f"results/{table}.{ext}")

    # -- the job table --
    def tables(self) -> dict[str, dict[str, Any]]:
        return dict(self.params["tables"])

    def search_jobs(self) -> list[SearchJob]:
        """Every (dataset, method, seed) a table needs, searched once even if used twice."""
        jobs: dict[SearchJob, None] = {}
        for table in self.params["tables"].values():
            for slug in table.get("methods", []):
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
        for slug in spec.get("methods", []):
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


def load_config(path: str | os.PathLike[str] = "params.yaml", preset: str = "paper") -> Config:
    return Config(resolve_preset(load_raw(path), preset, where=str(path)))
