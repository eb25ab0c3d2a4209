"""``mlonas audit``: from one number of a results table back to everything that produced it.

Given a table's CSV (``results/table2.csv``; its Markdown rendering's path names the CSV
beside it) and a method row, the audit walks the chain of artifacts behind the row's
top-1 error, seed by seed::

    table row -> results/eval/.../seed{s}/metrics.json    (evaluation: params, code, device)
              -> results/cells/{source}/{slug}/seed{s}.json (genotype; which architecture)
              -> results/search/{source}/{slug}/seed{s}/    (search: params, code, device)
              -> data/splits/{dataset}.json                (split; hash of the raw data)

Each link is followed through what the *consumer* recorded (the evaluation's provenance
names the genotype file and its sha256, the genotype file names the alphas file and its
sha256, the search's provenance names its split(s)), not through the paths the current
params would give: the audit reports what was actually used. Every artifact gets a
status:

- ``ok``: its sha256 matches the record (and, for a DVC output, ``dvc data status``
  finds it unchanged against ``dvc.lock``);
- ``changed``: it exists but differs from what was recorded;
- ``missing``: it was recorded (or is expected) and is not on disk;
- ``unrecorded``: it exists, but nothing recorded its hash (e.g. an evaluation's
  history.csv outside DVC); its current sha256 is still shown.

A file recorded by several stages is checked against each record (a search's alphas.json
by its own provenance's ``outputs`` and by the genotype file; a split by the search's
``inputs``, by its run definition and by the evaluation's ``inputs``).

Params are checked too, because a hash only says a file is what its consumer used, not
that it was made with the params the table claims. Each stage's recorded params (the
search's definition, the evaluation's settings) and its ``tracked_params`` (every params
key the job read, :meth:`mlonas.config.Config.tracked`) are compared with what today's
params of the table's preset give, key by key; a split is checked by the rule every
consumer applies (:func:`mlonas.data.splits.load_split`). A run made with ``--set``
overrides differs by design and is reported with them. Records with nothing recorded
about them (the provenance.json a search writes last, an evaluation's metrics.json) are
checked for agreeing with the hashed files beside them (metrics.json, history.csv).

The audit also recomputes the row's mean and std from the per-seed metrics it found, by
the table's own rules (:func:`mlonas.report.stats.mean_std`), and says whether the table
shows the same numbers, so a table rebuilt from changed artifacts (or not rebuilt after
they changed) is visible. Anything changed, missing, not matching or made with other
params than today's makes the report end in ``PROBLEMS`` and the command exit with
status 1 (a script can test it); the full report is printed either way. Seeds the table
itself does not count (no metrics.json when it was built, shown as ``n`` <
``n_requested``) are listed, not treated as problems.

Hashes of the raw data behind a split are recomputed only with ``check_data`` (CIFAR's
arrays take seconds, ImageNet's file listing a directory walk of 1.3M files).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mlonas.artifacts import load_artifact
from mlonas.config import TABLE_DATASET, TABLES, Config, get_key
from mlonas.errors import MlonasError
from mlonas.io import read_json, sha256_file
from mlonas.report import stats, tables
from mlonas.staleness import code_changes

OK, CHANGED, MISSING, UNRECORDED = "ok", "changed", "missing", "unrecorded"
_CSV_NEEDS = ("method", "slug", "dataset", "source", "data", "n", "n_requested", "seeds")


# --------------------------------------------------------------------------- table files


@dataclass(frozen=True)
class TableEntry:
    """One row of a table's CSV."""

    label: str
    slug: str
    dataset: str  # the dataset the error is measured on (table 5 has CIFAR and ImageNet rows)
    source: str
    n: int
    n_requested: int
    seeds: list[int]
    top1_mean: float
    top1_std: float


@dataclass(frozen=True)
class TableFile:
    path: str  # the CSV read (a .md given on the command line names its sibling .csv)
    table: str  # a name of mlonas.config.TABLES
    demo: bool
    entries: list[TableEntry]


def _float(text: str) -> float:
    return float(text) if str(text).strip() else math.nan


def read_table_file(path: str | os.PathLike[str]) -> TableFile:
    """Read a table written by :func:`mlonas.report.tables.write_table`.

    Only the CSV is read: it holds every number at full precision and the slug, source
    and seeds of each row, while the Markdown beside it is a rendering for people. A
    ``.md`` path is taken as the name of its sibling ``.csv``. Which table it is comes
    from its name (``table5.csv``) or else from its one dataset (the papers' tables 2-4,
    the first table of that dataset).
    """
    p = str(path)
    if p.endswith(".md"):
        p = p[: -len(".md")] + ".csv"
    if not Path(p).is_file():
        raise MlonasError(f"table {p} does not exist")
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as exc:
        raise MlonasError(f"table {p} cannot be parsed as CSV: {exc}") from None
    missing = [c for c in (*_CSV_NEEDS, "top1_error_mean", "top1_error_std") if c not in df]
    if missing:
        raise MlonasError(f"table {p}: missing column(s) {', '.join(missing)}")
    datasets = set(df["dataset"])
    by_dataset: dict[str, str] = {}
    for name, dataset in TABLE_DATASET.items():
        by_dataset.setdefault(dataset, name)
    if any(d not in by_dataset for d in datasets):
        raise MlonasError(f"table {p}: dataset column must be one of {', '.join(by_dataset)}")
    name = Path(p).stem
    # a file named after a table whose rows it can hold (ImageNet rows: its transfers)
    if name not in TABLES or not datasets <= {TABLE_DATASET[name], "imagenet"}:
        if len(datasets) != 1:
            raise MlonasError(
                f"table {p}: rows of several datasets; name the file after its table"
                f" ({', '.join(TABLES)})"
            )
        name = by_dataset[next(iter(datasets))]
    try:
        entries = [
            TableEntry(
                label=r.method,
                slug=r.slug,
                dataset=r.dataset,
                source=r.source,
                n=int(r.n),
                n_requested=int(r.n_requested),
                seeds=[int(s) for s in r.seeds.split(";") if s],
                top1_mean=_float(r.top1_error_mean),
                top1_std=_float(r.top1_error_std),
            )
            for r in df.itertuples(index=False)
        ]
    except ValueError as exc:
        raise MlonasError(f"table {p}: malformed row ({exc})") from None
    return TableFile(
        path=p,
        table=name,
        demo=any(d.startswith("DEMO") for d in df["data"]),
        entries=entries,
    )


def table_preset(table: TableFile) -> str:
    """The preset a table was most likely built with: its CSV only says whether it is DEMO."""
    return "demo" if table.demo else "paper"


def check_preset(table: TableFile, cfg: Config) -> None:
    """Refuse to audit a demo table against a non-demo preset's artifacts, or back."""
    if table.demo != cfg.is_demo:
        said = "demo" if table.demo else "non-demo"
        raise MlonasError(
            f"table {table.path} holds {said} numbers but preset {cfg.preset!r} is"
            f" {'a demo' if cfg.is_demo else 'not a demo'} preset (pass --preset)"
        )


def _select(table: TableFile, method: str) -> tuple[TableEntry, tables.TableRow]:
    """The table entry ``method`` names (label or slug) and the runs it is built from."""
    hits = [e for e in table.entries if e.label == method]
    if not hits:
        hits = [e for e in table.entries if e.label.lower() == method.lower()]
    if not hits:
        hits = [e for e in table.entries if e.slug == method]
    have = ", ".join(e.label for e in table.entries) or "no rows"
    if not hits:
        raise MlonasError(f"table {table.path} has no method {method!r} (it has: {have})")
    if len(hits) > 1:
        labels = ", ".join(repr(e.label) for e in hits)
        raise MlonasError(f"table {table.path}: {method!r} matches rows {labels}; name one")
    entry = hits[0]
    # the CSV says which runs a row is built from
    row = tables.TableRow(entry.slug, entry.label, entry.dataset, entry.source)
    return entry, row


# --------------------------------------------------------------------------- hashes


class _Hasher:
    """sha256 of files, each computed once per audit (splits are shared by seeds), and
    what ``dvc data status`` says of the files DVC tracks."""

    def __init__(self, dvc: dict[str, str]) -> None:
        self.dvc = dvc
        self._cache: dict[str, str] = {}

    def sha256(self, path: str) -> str:
        key = os.path.realpath(path)
        if key not in self._cache:
            self._cache[key] = sha256_file(path)
        return self._cache[key]

    def artifact(
        self, role: str, path: str, recorded: Sequence[tuple[str, Any]] = ()
    ) -> dict[str, Any]:
        """One artifact's entry: current sha256 and every record of it, with a status.

        ``recorded`` is ``[(who recorded it, sha256), ...]``: a file can be recorded by
        several consumers (a split by the search's inputs and by the search's own run
        definition), and any one of them disagreeing means the file is not what that
        consumer used. A record that is not a string (a hand-edited provenance) counts
        as a record that does not match, never as no record at all. A file DVC tracks
        has one more record, dvc.lock's, whose status is DVC's own verdict.
        """
        exists = bool(path) and Path(path).is_file()
        records: list[dict[str, Any]] = []
        for by, sha in recorded:
            if sha is None:
                continue
            text = sha if isinstance(sha, str) else repr(sha)
            status = MISSING if not exists else OK if self.sha256(path) == text else CHANGED
            records.append({"by": by, "algo": "sha256", "hash": text, "status": status})
        key = os.path.normpath(os.path.abspath(path)) if path else ""
        if key in self.dvc:
            state = self.dvc[key]
            status = {"unchanged": OK, "modified": CHANGED}.get(state, MISSING)
            records.append({"by": "dvc.lock", "algo": "md5", "dvc": state, "status": status})
        if not exists:
            status = MISSING
        elif not records:
            status = UNRECORDED
        else:
            status = CHANGED if any(r["status"] == CHANGED for r in records) else OK
        return {
            "role": role,
            "path": path,
            "sha256": self.sha256(path) if exists else None,
            "status": status,
            "records": records,
        }


def dvc_data_status(lock: str | os.PathLike[str]) -> dict[str, str]:
    """``{absolute path: "unchanged" | "modified" | "deleted"}`` of every file output
    recorded in ``lock``, as ``dvc data status`` reports the workspace against it.

    DVC compares each output with its dvc.lock hash itself (caching hashes by mtime), so
    the audit does not re-implement it. Directory outputs are left out, as a file's entry
    is what a consumer's record is checked against.
    """
    root = Path(lock).parent
    cmd = [sys.executable, "-m", "dvc", "data", "status", "--json", "--unchanged"]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise MlonasError(f"dvc data status in {root} (for {lock}) failed: {why}")
    report = json.loads(proc.stdout or "{}")
    states = {"unchanged": report.get("unchanged", [])}
    for state in ("modified", "deleted"):
        states[state] = report.get("uncommitted", {}).get(state, [])
    return {
        os.path.normpath(os.path.abspath(root / p)): state
        for state, paths in states.items()
        for p in paths
        if not p.endswith("/")
    }


# --------------------------------------------------------------------------- stages


def _stage_facts(prov: Any) -> dict[str, Any]:
    """The parts of a provenance block a reader wants (absent keys come out as None)."""
    prov = prov if isinstance(prov, dict) else {}
    keys = ("stage", "seed", "code", "software", "device", "host", "wall_time_s", "finished_at")
    return {k: prov.get(k) for k in keys}


def _read_json_or_note(path: str, what: str, notes: list[str]) -> Any:
    if not Path(path).is_file():
        return None
    try:
        return read_json(path, what)
    except MlonasError as exc:
        notes.append(str(exc))
        return None


class _Absent:
    """A key one side of a comparison lacks (``None`` is a value params can hold)."""

    def __repr__(self) -> str:
        return "absent"


_ABSENT: Any = _Absent()


def _plain(x: Any) -> Any:
    """``x`` as JSON gives it back (tuples as lists, keys as strings), so that a value
    read from a record compares equal to the same value built in Python today."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def _same_value(a: Any, b: Any) -> bool:
    # True == 1 in Python; a flag edited into a number (or back) is still a change
    return isinstance(a, bool) == isinstance(b, bool) and type(a) is not _Absent and a == b


def _diff_keys(recorded: Any, today: Any, key: str) -> list[tuple[str, Any, Any]]:
    """``[(dotted key, recorded value, today's value)]`` of every leaf that differs.

    Descends into mappings on both sides, so ``search`` differing names ``search.lr``:
    the key a reader has to look at, not a whole block."""
    if isinstance(recorded, dict) and isinstance(today, dict):
        out: list[tuple[str, Any, Any]] = []
        for k in sorted(set(recorded) | set(today)):
            sub = f"{key}.{k}" if key else k
            out += _diff_keys(recorded.get(k, _ABSENT), today.get(k, _ABSENT), sub)
        return out
    return [] if _same_value(recorded, today) else [(key, recorded, today)]


def _value_text(v: Any, width: int = 40) -> str:
    text = "absent" if type(v) is _Absent else json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= width else f"{text[: width - 1]}…"


def _diff_text(diffs: list[tuple[str, Any, Any]], limit: int = 12) -> str:
    items = [
        f"{k} (recorded {_value_text(r)}, today {_value_text(t)})" for k, r, t in diffs[:limit]
    ]
    if len(diffs) > limit:
        items.append(f"and {len(diffs) - limit} more (see --json)")
    return "; ".join(items)


def _tracked_diff(
    recorded: dict[str, Any], today: dict[str, Any], params: dict[str, Any]
) -> list[tuple[str, Any, Any]]:
    """Recorded ``tracked_params`` against :meth:`Config.tracked` computed today.

    A key the run recorded but today's :data:`~mlonas.config.STAGE_PARAMS` no longer
    lists (the list was refined, e.g. ``methods.x`` into ``methods.x.base`` ...) is still
    compared, with today's value at that key; a key only today lists counts as a
    difference unless a recorded key covers it (is it, or a prefix of it, or below it),
    so a reorganised list does not turn every old run into a problem, while a setting a
    job reads today and did not read then (an SGL search's unlabeled partner) does.
    """
    rec, now = _plain(recorded), _plain(today)
    out: list[tuple[str, Any, Any]] = []
    for k in sorted(rec):
        value = now[k] if k in now else _plain(get_key(params, k))
        out += _diff_keys(rec[k], value, k)
    for k in sorted(now):
        if k in rec or any(k.startswith(f"{r}.") or r.startswith(f"{k}.") for r in rec):
            continue
        out.append((k, _ABSENT, now[k]))
    return out


def _compare_params(
    seed: int,
    where: str,
    prov: dict[str, Any],
    used: tuple[str, Any, dict[str, Any]],
    tracked: Callable[[], dict[str, Any]],
    cfg: Config,
    problems: list[str],
    notes: list[str],
) -> dict[str, Any]:
    """Compare what a stage recorded about its params with what its rule uses today.

    Two records are compared, because each catches what the other cannot:

    - ``used = (name, recorded, today)``: the settings the job actually ran with (the
      search's definition, the evaluation's settings) against what today's config gives
      for them. A hand-edited provenance shows here even if its ``tracked_params`` were
      edited to match, and so does an artifact written before ``tracked_params`` existed.
    - ``tracked_params`` against :meth:`Config.tracked` for the same stage and wildcards:
      every params key the job read (dataset sizes, an SGL scheme's options ...), in the
      dotted names of params.yaml, i.e. what Snakemake's params trigger would rerun on.

    Either differing is a problem: the number was not made with the params the table's
    preset says. A run made with ``--set`` overrides differs by design; the problem says
    so and lists them, rather than hiding the difference.
    """
    name, recorded, today = used
    overrides = prov.get("overrides")
    ov = [str(o) for o in overrides] if isinstance(overrides, list) else []
    ran_with = f" [the run had overrides: {', '.join(ov)}]" if ov else ""
    today_is = f"today's params (preset {cfg.preset!r})"
    facts: dict[str, Any] = {"overrides": ov}  # runs record the key only when they had some
    if isinstance(recorded, dict):
        diffs = _diff_keys(_plain(recorded), _plain(today), name)
        facts["params_changed_since"] = [k for k, _, _ in diffs]
        if diffs:
            problems.append(
                f"seed {seed}: {where} records {name} other than {today_is}:"
                f" {_diff_text(diffs)}{ran_with}"
            )
    else:
        facts["params_changed_since"] = None
        problems.append(f"seed {seed}: {where} records no {name}")
    rec_tracked = prov.get("tracked_params")
    if rec_tracked is None:
        facts["tracked_params"] = {"status": UNRECORDED, "changed": None}
        notes.append(
            f"{where} records no tracked_params (written before they were recorded):"
            f" only its {name} are compared with {today_is}"
        )
        return facts
    if not isinstance(rec_tracked, dict):
        facts["tracked_params"] = {"status": CHANGED, "changed": None}
        problems.append(f"seed {seed}: {where}: tracked_params is not a mapping")
        return facts
    try:
        now = tracked()
    except MlonasError as exc:
        facts["tracked_params"] = {"status": MISSING, "changed": None}
        problems.append(f"seed {seed}: {where}: today's params cannot be resolved: {exc}")
        return facts
    diffs = _tracked_diff(rec_tracked, now, cfg.params)
    facts["tracked_params"] = {
        "status": CHANGED if diffs else OK,
        "changed": [k for k, _, _ in diffs],
    }
    if diffs:
        problems.append(
            f"seed {seed}: {where} tracked_params differ from {today_is}:"
            f" {_diff_text(diffs)}{ran_with}"
        )
    elif ov:
        notes.append(f"{where}: the run had overrides {', '.join(ov)}, all equal to {today_is}")
    return facts


def _split_facts(path: str, cfg: Config, check_data: bool, problems: list[str]) -> dict[str, Any]:
    """What a split says about itself, and whether it still fits today's params.

    :func:`mlonas.data.splits.load_split` (without re-hashing: that is ``check_data``'s)
    is the check every consumer runs before using a split, so a split cut with other
    ``datasets.<name>`` settings than today's is reported here by the same rule.
    """
    from mlonas.data.splits import load_split

    notes: list[str] = []
    split = _read_json_or_note(path, "split file", notes)
    facts: dict[str, Any] = {"path": path, "exists": Path(path).is_file(), "notes": notes}
    if not isinstance(split, dict):
        return facts
    for k in ("dataset", "source", "split_seed", "n_train", "n_val", "n_test", "num_classes"):
        if k in split:
            facts[k] = split[k]
    facts["raw_sha256"] = split.get("raw_sha256")
    facts["raw_data"] = "not checked (--check-data re-hashes the raw data)"
    name = split.get("dataset")
    if isinstance(name, str):
        try:
            load_split(path, cfg, name, verify=False)
            facts["params"] = OK
        except MlonasError as exc:
            facts["params"] = f"{CHANGED}: {exc}"
            problems.append(f"split {exc}")
    if check_data and isinstance(name, str):
        facts["raw_data"] = _check_raw(cfg, name, split.get("raw_sha256"), problems, path)
    return facts


def _check_raw(cfg: Config, name: str, recorded: Any, problems: list[str], where: str) -> str:
    from mlonas.data.splits import cifar_raw_sha256, imagenet_raw_sha256

    try:
        ds = cfg.dataset(name)
        if name == "imagenet":
            now = imagenet_raw_sha256(ds["root"])
        else:
            now = cifar_raw_sha256(name, ds)[0]
    except MlonasError as exc:
        problems.append(f"raw data of {name} behind {where}: {exc}")
        return f"{MISSING}: {exc}"
    if now != recorded:
        problems.append(f"raw data of {name} changed since {where} was made (sha256 {now})")
        return f"{CHANGED}: sha256 now {now}"
    return OK


def _genotype_text(g: Any) -> dict[str, str]:
    """``{"normal": "op<-src ...", "reduce": ...}`` of a genotype dict, for reading."""
    out = {}
    for cell in ("normal", "reduce"):
        edges = g.get(cell, []) if isinstance(g, dict) else []
        out[cell] = " ".join(
            f"{e[0]}<-{e[1]}" if isinstance(e, list | tuple) and len(e) == 2 else str(e)
            for e in edges
        )
    return out


def _rederive(alphas_path: str, cell: dict[str, Any]) -> str:
    """Whether today's derivation of the recorded alphas gives the exported genotype."""
    from mlonas.space.genotype import genotype_from_alphas

    if not Path(alphas_path).is_file():
        return "not checked (alphas missing)"
    try:
        g = genotype_from_alphas(
            load_artifact(alphas_path, "alphas"), cell.get("architecture"), where=alphas_path
        )
    except MlonasError as exc:
        return f"failed: {exc}"
    return "same" if g.to_dict() == cell.get("genotype") else "differs"


def _records(x: Any) -> dict[str, dict[str, Any]]:
    """A provenance's ``{role: {"path", "sha256"}}`` block, malformed entries dropped
    (a hand-edited block must not crash the audit that is there to find it)."""
    if not isinstance(x, dict):
        return {}
    return {str(k): v for k, v in x.items() if isinstance(v, dict)}


def _last_history_row(path: str) -> dict[str, Any] | None:
    """The last epoch of an evaluation's history.csv (None if it has none to read)."""
    if not Path(path).is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError):
        return None
    if not len(frame):
        return None
    # numpy scalars as Python numbers (numpy's int64 is no ``int``)
    return {k: v.item() if hasattr(v, "item") else v for k, v in frame.iloc[-1].items()}


def _check_evaluation(
    seed: int,
    mpath: str,
    metrics: dict[str, Any],
    prov: dict[str, Any],
    row: tables.TableRow,
    stage: str,
    problems: list[str],
) -> None:
    """What an evaluation's metrics.json says about itself must agree with itself.

    Its own hash is recorded nowhere but dvc.lock (it is the last file a run writes), so
    an edit of it shows only as a disagreement: with its provenance (which stage, seed,
    dataset, how many epochs) or with the history.csv written beside it, whose last epoch
    the top-1/top-5 errors are taken from. A table rebuilt after such an edit matches
    the edited file; this is what still shows it.
    """
    where = f"evaluation {mpath}"
    for key, want in (("stage", stage), ("seed", seed)):
        if prov.get(key) not in (None, want):
            problems.append(f"seed {seed}: {where}: provenance.{key} is {prov.get(key)!r}")
    if metrics.get("dataset") not in (None, row.dataset):
        problems.append(f"seed {seed}: {where}: dataset is {metrics.get('dataset')!r}")
    settings = prov.get("params")
    if isinstance(settings, dict) and metrics.get("epochs") != settings.get("epochs"):
        problems.append(
            f"seed {seed}: {where}: epochs {metrics.get('epochs')!r} disagrees with"
            f" provenance.params.epochs {settings.get('epochs')!r}"
        )
    if metrics.get("diverged"):
        return
    hist = os.path.join(os.path.dirname(mpath), "history.csv")
    last = _last_history_row(hist)
    if last is None:
        return
    for key, col in (("top1_error", "test_top1"), ("top5_error", "test_top5")):
        got, acc = metrics.get(key), last.get(col)
        if not isinstance(got, int | float) or not isinstance(acc, int | float):
            continue
        if not math.isclose(got, 100.0 - acc, rel_tol=1e-9, abs_tol=1e-9):
            problems.append(
                f"seed {seed}: {where}: {key} {got!r} disagrees with its {hist}"
                f" (last epoch's {col} {acc!r} gives {100.0 - acc!r})"
            )


def _check_search(
    seed: int,
    sprov_path: str,
    sprov: dict[str, Any],
    params: dict[str, Any],
    s_metrics: Any,
    problems: list[str],
) -> None:
    """A search's provenance.json must agree with the outputs it recorded the hashes of.

    The provenance is recorded by nothing downstream (the table reads it for the search
    cost), so an edit of it shows only as a disagreement with what it says elsewhere: its
    run definition (``params``), and its metrics.json, whose hash it holds and which
    repeats the final epoch, the selected architecture and the wall time the table's
    search cost is computed from.
    """
    where = f"search provenance {sprov_path}"

    def differs(what: str, value: Any, other: str, other_value: Any) -> None:
        problems.append(
            f"seed {seed}: {where}: {what} {_value_text(value)} disagrees with"
            f" {other} {_value_text(other_value)}"
        )

    for key in ("dataset", "method", "seed"):
        if key in params and params[key] != sprov.get(key):
            differs(key, sprov.get(key), f"params.{key}", params[key])
    dev = sprov.get("device")
    dev_type = dev.get("type") if isinstance(dev, dict) else None
    if "device" in params and params["device"] != dev_type:
        differs("device.type", dev_type, "params.device", params["device"])
    final = sprov.get("final")
    if not isinstance(s_metrics, dict) or not isinstance(final, dict):
        return
    metrics_path = _records(sprov.get("outputs")).get("metrics.json", {}).get("path")
    metrics_name = metrics_path or "its metrics.json"
    for key in sorted(set(final) | {"selected"}):
        value = sprov.get("selected") if key == "selected" else final[key]
        if s_metrics.get(key, _ABSENT) != value:
            label = key if key == "selected" else f"final.{key}"
            differs(label, value, metrics_name, s_metrics.get(key, _ABSENT))
    wall, last = sprov.get("wall_time_s"), final.get("wall_time_s")
    if isinstance(last, int | float) and (
        not isinstance(wall, int | float) or not math.isclose(wall, last, abs_tol=1e-3)
    ):
        differs("wall_time_s", wall, f"{metrics_name}'s final wall_time_s", last)


def _audit_search(
    cfg: Config,
    row: tables.TableRow,
    seed: int,
    s_dir: str,
    h: _Hasher,
    artifacts: list[dict[str, Any]],
    problems: list[str],
    notes: list[str],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The search behind a genotype: its record, outputs and inputs, against their hashes
    and today's params. Returns its facts and its recorded inputs (the splits)."""
    sprov_path = os.path.join(s_dir, "provenance.json")
    sprov = _read_json_or_note(sprov_path, "search provenance", notes)
    search: dict[str, Any] = {"dir": s_dir, "exists": Path(sprov_path).is_file()}
    artifacts.append(h.artifact("search provenance", sprov_path))
    if not isinstance(sprov, dict):
        for name in ("history.csv", "metrics.json"):
            artifacts.append(h.artifact(f"search {name}", os.path.join(s_dir, name)))
        return search, {}
    notes += [f"{sprov_path}: {n}" for n in code_changes(sprov.get("code"), "search")]
    params = sprov.get("params") if isinstance(sprov.get("params"), dict) else {}
    search |= {
        **_stage_facts(sprov),
        "method": sprov.get("method"),
        "dataset": sprov.get("dataset"),
        "final": sprov.get("final"),
        "params": params,
    }
    if sprov.get("method") not in (None, row.slug) or sprov.get("seed") not in (None, seed):
        problems.append(f"seed {seed}: {sprov_path} is a search of another method or seed")
    m = cfg.method(row.slug)
    definition = {
        "stage": "search",
        "dataset": row.source,
        "method": row.slug,
        "seed": seed,
        "base": m.base,
        "order": m.order,
        "scheme": m.scheme,
        "settings": m.search.to_params(),
        "options": m.options.to_params(),
    }
    search |= _compare_params(
        seed,
        f"search provenance {sprov_path}",
        sprov,
        ("params", {k: params.get(k, _ABSENT) for k in definition}, definition),
        lambda: cfg.tracked("search", dataset=row.source, method=row.slug),
        cfg,
        problems,
        notes,
    )

    # -- outputs: recorded by the search itself when it finished --
    outputs = _records(sprov.get("outputs"))
    if not outputs:
        notes.append(
            f"{sprov_path} records no output hashes (written before they were recorded):"
            " its history.csv and metrics.json are unrecorded"
        )
    for name in sorted({*outputs, "history.csv", "metrics.json"}):
        rec = outputs.get(name, {})
        path = rec.get("path") or os.path.join(s_dir, name)
        role = f"search output: {name}" if name in outputs else f"search {name}"
        artifacts.append(h.artifact(role, path, [("search provenance", rec.get("sha256"))]))
    ckpt = os.path.join(s_dir, "checkpoint.pt")
    if Path(ckpt).exists():
        artifacts.append(h.artifact("search checkpoint.pt", ckpt))
    metrics_path = outputs.get("metrics.json", {}).get("path") or os.path.join(
        s_dir, "metrics.json"
    )
    s_metrics = _read_json_or_note(metrics_path, "search metrics", notes)
    _check_search(seed, sprov_path, sprov, params, s_metrics, problems)

    # -- inputs: recorded twice, in ``inputs`` and as ``<role>_sha256`` in its definition
    s_inputs = _records(sprov.get("inputs"))
    for role, rec in sorted(s_inputs.items()):
        recorded = [("search provenance", rec.get("sha256"))]
        if f"{role}_sha256" in params:
            recorded.append(("search params", params[f"{role}_sha256"]))
        artifacts.append(h.artifact(f"search input: {role}", rec.get("path", ""), recorded))
    return search, s_inputs


def _audit_seed(
    cfg: Config,
    row: tables.TableRow,
    seed: int,
    in_table: bool,
    h: _Hasher,
    check_data: bool,
) -> tuple[dict[str, Any], tuple[str, float | None, bool] | None]:
    """One seed's chain. Returns its report and (status, top-1, diverged) for the mean."""
    problems: list[str] = []
    notes: list[str] = []
    artifacts: list[dict[str, Any]] = []
    out: dict[str, Any] = {
        "seed": seed,
        "in_table": in_table,
        "problems": problems,
        "notes": notes,
        "artifacts": artifacts,
    }
    mpath = tables.metrics_path(cfg, row, seed)
    ev_dir = os.path.dirname(mpath)
    if not Path(mpath).is_file():
        out["evaluation"] = None
        if in_table:
            artifacts.append(h.artifact("evaluation metrics", mpath))
            problems.append(f"seed {seed}: {mpath} is missing but the table counts this seed")
        else:
            notes.append(f"no {mpath}: this seed is not part of the number")
        return out, None
    try:
        run = tables.read_metrics(mpath, row.slug, seed)
    except MlonasError as exc:
        artifacts.append(h.artifact("evaluation metrics", mpath))
        problems.append(f"seed {seed}: {exc}")
        out["evaluation"] = None
        return out, None
    metrics = load_artifact(mpath, "metrics")
    prov = metrics.get("provenance")
    kind = "imagenet" if row.dataset == "imagenet" else "cifar"
    stage = f"train-{kind}"
    ev: dict[str, Any] = {
        "dir": ev_dir,
        "top1_error": run.top1,
        "top5_error": run.top5,
        "params_m": run.params_m,
        "epochs": metrics.get("epochs"),
        "diverged": run.diverged,
        **_stage_facts(prov),
        "params": prov.get("params") if isinstance(prov, dict) else None,
        "fingerprint": prov.get("fingerprint") if isinstance(prov, dict) else None,
        "params_changed_since": None,
    }
    out["evaluation"] = ev
    if not in_table:
        problems.append(f"seed {seed}: {mpath} exists but the table does not count it (stale?)")
    if isinstance(prov, dict):
        notes += [f"{mpath}: {n}" for n in code_changes(prov.get("code"), stage)]
        wildcards = {"method": row.slug}
        if kind == "cifar":
            wildcards["dataset"] = row.dataset
        ev |= _compare_params(
            seed,
            f"evaluation {mpath}",
            prov,
            ("params", prov.get("params"), cfg.eval_settings(kind, row.slug).to_params()),
            lambda: cfg.tracked(stage, **wildcards),
            cfg,
            problems,
            notes,
        )
        _check_evaluation(seed, mpath, metrics, prov, row, stage, problems)
    else:
        # A diverged run may stop before it can record its inputs; a finished one may not.
        (notes if run.diverged else problems).append(f"seed {seed}: {mpath} has no provenance")
    artifacts.append(h.artifact("evaluation metrics", mpath))
    for name in ("history.csv", "model.pt", "checkpoint.pt"):
        p = os.path.join(ev_dir, name)
        if name != "checkpoint.pt" or Path(p).exists():
            artifacts.append(h.artifact(f"evaluation {name}", p))
    inputs = _records(prov.get("inputs")) if isinstance(prov, dict) else {}
    for role, rec in sorted(inputs.items()):
        artifacts.append(
            h.artifact(
                f"evaluation input: {role}",
                rec.get("path", ""),
                [("evaluation provenance", rec.get("sha256"))],
            )
        )

    # -- genotype (export) --
    expected_cell = cfg.cell_path(row.source, row.slug, seed)
    cell_path = inputs.get("genotype", {}).get("path") or expected_cell
    if os.path.normpath(cell_path) != os.path.normpath(expected_cell):
        notes.append(f"evaluation trained {cell_path}, not the expected {expected_cell}")
    cell = _read_json_or_note(cell_path, "genotype file", notes)
    geno: dict[str, Any] = {"path": cell_path, "exists": Path(cell_path).is_file()}
    alphas_path = os.path.join(cfg.search_dir(row.source, row.slug, seed), "alphas.json")
    if isinstance(cell, dict):
        rec = cell.get("alphas") if isinstance(cell.get("alphas"), dict) else {}
        alphas_path = rec.get("path") or alphas_path
        geno |= {
            "architecture": cell.get("architecture"),
            "base": cell.get("base"),
            "genotype": cell.get("genotype"),
            "cells": _genotype_text(cell.get("genotype")),
            "rederived_from_alphas": _rederive(alphas_path, cell),
        }
        for key, want in (("method", row.slug), ("seed", seed), ("dataset", row.source)):
            if cell.get(key) != want:
                problems.append(f"seed {seed}: {cell_path} records {key} {cell.get(key)!r}")
        if geno["rederived_from_alphas"] == "differs":
            notes.append(f"today's derivation of {alphas_path} gives another genotype")
        artifacts.append(
            h.artifact(
                "genotype input: alphas", alphas_path, [("genotype file", rec.get("sha256"))]
            )
        )
        if cell.get("figure") and Path(cell["figure"]).exists():
            artifacts.append(h.artifact("genotype figure", cell["figure"]))
    else:
        notes.append(f"genotype {cell_path} unreadable: following the expected search dir")
    out["genotype"] = geno

    # -- search --
    out["search"], s_inputs = _audit_search(
        cfg, row, seed, os.path.dirname(alphas_path), h, artifacts, problems, notes
    )

    # -- data splits (every input that is one) --
    splits: dict[str, dict[str, Any]] = {}
    for role, rec in [*inputs.items(), *s_inputs.items()]:
        p = rec.get("path", "")
        if role == "genotype" or not p or os.path.normpath(p) in splits:
            continue
        facts = _split_facts(p, cfg, check_data, problems)
        if not facts["exists"] or "raw_sha256" in facts:  # a split, or a missing input
            splits[os.path.normpath(p)] = facts
    out["splits"] = list(splits.values())

    for a in artifacts:
        if a["status"] in (CHANGED, MISSING):
            problems.append(f"seed {seed}: {a['role']} {a['path']} is {a['status']}")
    return out, (OK, run.top1, run.diverged)


# --------------------------------------------------------------------------- the audit


def _same_number(table_value: float, ours: float) -> bool:
    """Whether the CSV's value is ``ours`` as the CSV prints it (6 significant digits)."""
    if math.isnan(table_value) or math.isnan(ours):
        return math.isnan(table_value) and math.isnan(ours)
    return math.isclose(table_value, float(f"{ours:.6g}"), rel_tol=1e-9, abs_tol=1e-12)


def audit(
    cfg: Config,
    table_path: str | os.PathLike[str],
    method: str,
    *,
    check_data: bool = False,
    dvc_lock: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """The audit report of ``method``'s row in ``table_path``, as a JSON-able dict.

    ``report["ok"]`` is False when any artifact is changed or missing, or the table's
    numbers differ from the ones recomputed from the per-seed metrics on disk.
    """
    from mlonas.provenance import code_version, software

    table = read_table_file(table_path)
    check_preset(table, cfg)
    tables.table_rows(cfg, table.table)  # refuses a table the preset does not configure
    entry, row = _select(table, method)
    m = cfg.method(row.slug)
    h = _Hasher(dvc_data_status(dvc_lock) if dvc_lock else {})
    problems: list[str] = []
    notes: list[str] = []
    if entry.n_requested != len(cfg.seeds):
        notes.append(
            f"the table requested {entry.n_requested} seeds, preset {cfg.preset!r} requests"
            f" {len(cfg.seeds)} ({', '.join(map(str, cfg.seeds))})"
        )
    seeds = list(dict.fromkeys([*cfg.seeds, *entry.seeds]))
    per_seed = []
    found: list[tuple[int, float | None, bool]] = []
    for s in seeds:
        rep, run = _audit_seed(cfg, row, s, s in entry.seeds, h, check_data)
        per_seed.append(rep)
        problems += rep["problems"]
        if run is not None:
            found.append((s, run[1], run[2]))
    top1 = [t for _, t, div in found if not div and t is not None]
    mean, std = stats.mean_std(top1)
    recomputed = {
        "n": len(found),
        "seeds": [s for s, _, _ in found],
        "diverged": [s for s, _, div in found if div],
        "top1_error_mean": mean,
        "top1_error_std": std,
    }
    shown = {
        "n": entry.n,
        "n_requested": entry.n_requested,
        "seeds": entry.seeds,
        "top1_error_mean": entry.top1_mean,
        "top1_error_std": entry.top1_std,
    }
    mismatches = []
    if entry.n != len(found):
        mismatches.append(f"n: table {entry.n}, found {len(found)}")
    if entry.seeds != recomputed["seeds"]:
        mismatches.append(f"seeds: table {entry.seeds}, found {recomputed['seeds']}")
    for key, t_val, ours in (("mean", entry.top1_mean, mean), ("std", entry.top1_std, std)):
        if not _same_number(t_val, ours):
            mismatches.append(f"top-1 {key}: table {t_val:g}, recomputed {ours:.6g}")
    problems += [f"table differs from the artifacts: {x}" for x in mismatches]
    table_art = h.artifact("table", table.path)
    if table_art["status"] == CHANGED:
        problems.append(f"table {table.path} differs from its dvc.lock record")
    return {
        "table": {
            "path": table.path,
            "format": "csv",
            "table": table.table,
            "preset": cfg.preset,
            "artifact": table_art,
        },
        "row": {
            "method": row.label,
            "slug": row.slug,
            "dataset": row.dataset,
            "source": row.source,
            "base": m.base,
            "order": m.order,
            "scheme": m.scheme,
        },
        "shown_in_table": shown,
        "recomputed": recomputed,
        "table_matches": not mismatches,
        "seeds": per_seed,
        "notes": notes,
        "problems": problems,
        "ok": not problems,
        "audited_with": {"code": code_version(), "software": software(), "dvc_lock": dvc_lock},
    }


# --------------------------------------------------------------------------- rendering


def _short(sha: Any) -> str:
    return f"{sha[:12]}…" if isinstance(sha, str) else "—"


def _num(x: Any, fmt: str = ".2f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _code(c: Any) -> str:
    if not isinstance(c, dict):
        return "not recorded"
    commit = c.get("git_commit")
    dirty = " (dirty tree)" if c.get("git_dirty") else ""
    git = f"git {commit[:12]}{dirty}" if commit else "no git"
    return f"mlonas {c.get('package')}, {git}"


def _software(s: Any) -> str:
    if not isinstance(s, dict):
        return "not recorded"
    return f"torch {s.get('torch')}, torchvision {s.get('torchvision')}, python {s.get('python')}"


def _device(d: Any, host: Any) -> str:
    if not isinstance(d, dict):
        return "not recorded"
    n = d.get("threads")
    extra = f", {n} thread{'' if n == 1 else 's'}" if n else ""
    return f"{d.get('type')} ({d.get('name')}) x{d.get('count', 1)}{extra} on {host or '?'}"


def _params(p: Any, changed: list[str] | None, indent: str) -> list[str]:
    if not isinstance(p, dict):
        return [f"{indent}params: not recorded"]
    body = ", ".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(p.items()))
    lines = textwrap.wrap(
        f"params: {body}", 100, initial_indent=indent, subsequent_indent=indent + "  "
    )
    if changed:
        lines.append(f"{indent}  (current params differ in: {', '.join(changed)})")
    elif changed is not None:
        lines.append(f"{indent}  (same as the current params)")
    return lines


def _tracked_lines(st: dict[str, Any], indent: str) -> list[str]:
    """Whether the params keys the job read (``tracked_params``) are today's, and which
    ``--set`` overrides it ran with: a reader sees why a run differs, not only that."""
    tp = st.get("tracked_params")
    if not isinstance(tp, dict):
        return []
    if tp["status"] == UNRECORDED:
        text = "not recorded (written before they were)"
    elif tp["status"] == OK:
        text = "same as today's"
    elif tp.get("changed"):
        text = f"differ from today's in: {', '.join(tp['changed'])}"
    else:
        text = tp["status"]
    ov = st.get("overrides")
    runs = f"; run with overrides {', '.join(map(str, ov))}" if ov else ""
    return textwrap.wrap(
        f"tracked params: {text}{runs}", 100, initial_indent=indent, subsequent_indent=indent + "  "
    )


def _record_text(rec: dict[str, Any]) -> str:
    if "dvc" in rec:  # DVC's own word on the file against its dvc.lock record
        return f"dvc data status: {rec['dvc']}"
    if rec["status"] == OK:
        return f"= {rec['algo']} recorded by {rec['by']}"
    return f"{rec['by']} recorded {rec['algo']} {_short(rec['hash'])}"


def _stage_lines(name: str, where: str, st: dict[str, Any], indent: str = "  ") -> list[str]:
    return [
        f"{indent}{name}: {where}",
        f"{indent}  code: {_code(st.get('code'))}; {_software(st.get('software'))}",
        f"{indent}  device: {_device(st.get('device'), st.get('host'))}; wall time"
        f" {_num(st.get('wall_time_s'), '.1f')} s; finished {st.get('finished_at') or '—'}",
    ]


def render_text(report: dict[str, Any]) -> str:
    """The human-readable report: the number, then each seed's chain, then the verdict."""
    t, r = report["table"], report["row"]
    rc, sh = report["recomputed"], report["shown_in_table"]
    out = [
        f"Audit of {r['method']} in {t['path']} ({t['table']}, preset {t['preset']})",
        f"  method {r['slug']}: base {r['base']}, order {r['order']}, scheme {r['scheme']};"
        f" evaluated on {r['dataset']}, cell searched on {r['source']}",
        f"  table file sha256 {_short(t['artifact']['sha256'])} [{t['artifact']['status']}]",
        "",
        "Top-1 error (%) per seed:",
    ]
    for s in report["seeds"]:
        ev = s["evaluation"]
        if ev is None:
            out.append(f"  seed {s['seed']}: no metrics (not part of the number)")
        elif ev["diverged"]:
            out.append(f"  seed {s['seed']}: diverged (counted in n, excluded from the mean)")
        else:
            out.append(f"  seed {s['seed']}: {_num(ev['top1_error'], '.4f')}")
    ours = f"{_num(rc['top1_error_mean'])} ± {_num(rc['top1_error_std'])} (n={rc['n']})"
    table = f"{_num(sh['top1_error_mean'])} ± {_num(sh['top1_error_std'])}"
    verdict = "matches" if report["table_matches"] else "DOES NOT MATCH"
    out += [
        f"  recomputed from these: {ours}",
        f"  the table shows:       {table} (n={sh['n']}/{sh['n_requested']}) -> {verdict}",
    ]
    for s in report["seeds"]:
        out += ["", f"Seed {s['seed']}"]
        ev = s["evaluation"]
        if ev is not None:
            out += _stage_lines("evaluation", ev["dir"], ev)
            out.append(
                f"    top-1 {_num(ev['top1_error'], '.4f')}, top-5 {_num(ev['top5_error'], '.4f')},"
                f" params {_num(ev['params_m'], '.4g')} M, {ev['epochs']} epochs,"
                f" diverged: {'yes' if ev['diverged'] else 'no'}"
            )
            out += _params(ev["params"], ev["params_changed_since"], "    ")
            out += _tracked_lines(ev, "    ")
        g = s.get("genotype")
        if g is not None:
            arch = f"architecture {g.get('architecture')!r}, " if g.get("architecture") else ""
            out.append(f"  genotype: {g['path']} ({arch}base {g.get('base')})")
            for cell, text in g.get("cells", {}).items():
                out += textwrap.wrap(
                    f"{cell}: {text}", 100, initial_indent="    ", subsequent_indent="      "
                )
            if "rederived_from_alphas" in g:
                out.append(f"    re-derived from the alphas today: {g['rederived_from_alphas']}")
        sr = s.get("search")
        if sr is not None:
            out += _stage_lines("search", sr["dir"], sr)
            if sr.get("final"):
                fin = ", ".join(f"{k} {_num(v, '.4g')}" for k, v in sr["final"].items())
                out.append(f"    final epoch: {fin}")
            p = sr.get("params") or {}
            out += _params(p.get("settings"), sr.get("params_changed_since"), "    ")
            out += _tracked_lines(sr, "    ")
        for sp in s.get("splits", []):
            sizes = "/".join(str(sp.get(k, "?")) for k in ("n_train", "n_val"))
            out.append(
                f"  data split: {sp['path']}: {sp.get('dataset')} (source {sp.get('source')},"
                f" split_seed {sp.get('split_seed', '—')}, train/val {sizes});"
                f" raw data sha256 {_short(sp.get('raw_sha256'))}: {sp.get('raw_data', '—')}"
            )
        if s["artifacts"]:
            out.append("  artifacts:")
            for a in s["artifacts"]:
                rec = "; ".join(_record_text(x) for x in a["records"])
                out.append(
                    f"    {a['status']:<10} {a['role']}: {a['path']} sha256 {_short(a['sha256'])}"
                    + (f" ({rec})" if rec else "")
                )
        out += [f"  note: {n}" for n in s["notes"]]
    aw = report["audited_with"]
    out += [
        "",
        f"Audited with {_code(aw['code'])}; {_software(aw['software'])}"
        + (f"; DVC records from {aw['dvc_lock']}" if aw.get("dvc_lock") else ""),
    ]
    out += [f"Note: {n}" for n in report["notes"]]
    if report["ok"]:
        out.append("OK: every recorded artifact matches its hash and the table matches them.")
    else:
        out.append(f"PROBLEMS ({len(report['problems'])}):")
        out += [f"  - {p}" for p in report["problems"]]
    return "\n".join(out) + "\n"


def _json_default(o: Any) -> Any:
    raise TypeError(f"not JSON-serializable: {type(o).__name__}")


def to_json(report: dict[str, Any]) -> str:
    """The report as one JSON document (NaN -> null, so any JSON parser reads it)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(report), indent=1, sort_keys=True, default=_json_default) + "\n"


def run_audit(
    params: str,
    preset: str | None,
    table_path: str,
    method: str,
    *,
    as_json: bool = False,
    check_data: bool = False,
    dvc_lock: str | None = None,
    echo: Callable[[str], None] = print,
) -> int:
    """The CLI's ``audit``: print the report; 0 when all is ok, 1 when anything is not."""
    from mlonas.config import load_config

    if preset is None:
        preset = table_preset(read_table_file(table_path))
    cfg = load_config(params, preset)
    if dvc_lock is None:
        default = Path(params).parent / "dvc.lock"
        dvc_lock = str(default) if default.is_file() else None
    report = audit(cfg, table_path, method, check_data=check_data, dvc_lock=dvc_lock)
    echo((to_json if as_json else render_text)(report).rstrip("\n"))
    return 0 if report["ok"] else 1
