"""``mlonas plan``: what the jobs Snakemake would run cost in device-hours, before any run.

The real cost of the papers' protocol is GPU time (60 CIFAR searches, 60 600-epoch CIFAR
evaluations, 21 ImageNet evaluations on 8 GPUs), so a researcher should see it before
asking a cluster for it. The plan is plain arithmetic on three things, each from where it
is defined and none guessed:

* **which jobs**: Snakemake's dry run of the targets (:mod:`mlonas.dryrun`) with the
  same preset and overrides, so only jobs that would actually run are counted;
* **how many steps**: each job's resolved settings (:class:`mlonas.config.Config`), by the
  loops' own rules: a search epoch is ``min(n_train, n_val) // batch_size`` steps (the
  loop zips the two streams, dropping last partial batches), ``warmup_epochs`` of each
  stage update only the weights (PC-DARTS, P-DARTS), P-DARTS runs ``epochs`` per stage on
  ``stage_layers[s]`` cells with ``stage_ops[s]`` ops per edge; an evaluation epoch is one
  pass over the whole training set (per process for ImageNet, whose ``nproc`` processes
  each hold a GPU, so its device-hours are wall-hours x nproc);
* **seconds per step**: measured ones, from :data:`STEP_TIMES` (written by the benchmarks'
  ``--record``; :func:`record_step_time`), each row valid only for the device and the
  settings that set a step's cost (:class:`StepKey`). A job none matches is reported as
  "not measured on <device>" and left out of the total, which then says it is partial.

Only training steps are counted: the per-epoch validation/test passes, start-up, data
loading beyond what a step waits for, and checkpoints are not, so a measured total is a
lower bound. Torch-free: ``mlonas plan`` runs in seconds (most of it Snakemake's DAG).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import math
import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlonas.config import BASES_WITHOUT_ARCHITECTURE, TABLES, Config, parse_overrides
from mlonas.errors import MlonasError
from mlonas.settings import EvalSettings, SearchSettings

#: The recorded step times (a CSV in the package, so an installed mlonas has them too).
STEP_TIMES = Path(__file__).with_name("step_times.csv")
COLUMNS = (
    "device",  # a name like nvidia-h100 or cpu-2core (device_label)
    "date",  # YYYY-MM-DD the step was measured
    "commit",  # the mlonas commit it was measured at
    "stage",  # search | train-cifar | train-imagenet
    "composition",  # search: scheme/base; training: the cell timed (any cell's jobs use it)
    "mode",  # search: first_order | finite_difference | exact | weights_only; training: precision
    "init_channels",
    "layers",
    "nodes",  # intermediate nodes per cell (search only)
    "batch_size",  # per process
    "image_size",
    "extra",  # other settings a step's cost depends on, k=v;k=v (learners, audience, ops ...)
    "seconds_per_step",
    "peak_mb",
    "source",  # the command that measured it
    "note",
)
#: Used when ``--device`` is not given: the one GPU with paper-size measurements so far.
DEFAULT_DEVICE = "nvidia-h100"

#: Training images per dataset source: CIFAR-10/100 50,000 each (the search splits them
#: 25k/25k, the evaluation trains on all), ImageNet-1k 1,281,167, the demo stand-in 1,397
#: (scikit-learn's 1,797 digits less 40 test images per class, mlonas.data.sources).
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "imagenet": 1_281_167, "demo": 1_397}
#: Bases whose supernet differs per stage (mlonas.search.bases; a test keeps them equal).
PROGRESSIVE_BASES = frozenset({"pdarts", "drnas"})
PARTIAL_CHANNEL_BASES = frozenset({"pcdarts"})
#: The rules whose jobs hold a device; the others (split, export, tables, figures) are
#: CPU jobs of seconds and are listed, not costed.
DEVICE_RULES = {
    "search": "search",
    "train_cifar": "train-cifar",
    "train_imagenet": "train-imagenet",
}
EVAL_RULES = frozenset({"train_cifar", "train_imagenet"})


# -- what a step is: the key a measurement applies to ------------------------------------


@dataclass(frozen=True)
class StepKey:
    """The settings that set one step's cost; a measured row applies to jobs with its key.

    ``composition`` of a training key is the cell it was timed with; a job's training key
    leaves it empty, because the searched cell is not known before the search has run
    (cells differ in their op mix, so this is the one approximation the plan makes, and it
    says which cell the time was measured with).
    """

    stage: str
    composition: str
    mode: str
    init_channels: int
    layers: int
    nodes: int | None
    batch_size: int
    image_size: int
    extra: str = ""

    def applies_to(self, job: StepKey) -> bool:
        """Whether a measurement with this key times ``job``'s steps."""
        mine, theirs = self._fields(), job._fields()
        if self.stage != "search":
            mine.pop("composition"), theirs.pop("composition")
        return mine == theirs

    def _fields(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    def describe(self) -> str:
        """``search sgl/pdarts first_order C=16 layers=11 nodes=4 batch=96 image=32 ops=5``."""
        parts = [self.stage, self.composition or "any cell", self.mode]
        parts.append(f"C={self.init_channels} layers={self.layers}")
        if self.nodes is not None:
            parts.append(f"nodes={self.nodes}")
        parts.append(f"batch={self.batch_size} image={self.image_size}")
        if self.extra:
            parts.append(self.extra.replace(";", " "))
        return " ".join(parts)


def _extra(**values: Any) -> str:
    return ";".join(f"{k}={v}" for k, v in sorted(values.items()) if v is not None)


def search_step_key(
    scheme: str,
    base: str,
    mode: str,
    settings: SearchSettings,
    options: Any,
    image_size: int,
    stage: int = 0,
) -> StepKey:
    """The key of a search step: the scheme and base, the hypergradient ``mode``
    (``weights_only`` for a warm-up epoch's step), the supernet's size in P-DARTS or DrNAS stage
    ``stage``, the batch, the images, and the options that add work (SGL's K learners,
    LeaSE's audience, LBT's student, IL's K heads and R rounds, PC-DARTS' channel fraction,
    P-DARTS' ops per edge)."""
    layers = settings.layers
    extra: dict[str, Any] = {}
    if base in PROGRESSIVE_BASES:
        if settings.stage_layers:
            layers = settings.stage_layers[stage]
        extra["ops"] = settings.stage_ops[stage]  # type: ignore[index]
        if settings.stage_partial_channels:  # DrNAS
            extra["partial_channels"] = settings.stage_partial_channels[stage]
    if base in PARTIAL_CHANNEL_BASES:
        extra["partial_channels"] = settings.partial_channels
    if scheme == "sgl":
        extra["K"] = options.learners
    if scheme == "il":
        extra["K"] = options.models
        extra["R"] = options.rounds
    if scheme == "lease":
        extra["audience"] = "-".join(str(b) for b in options.audience_blocks)
        extra["audience_width"] = options.audience_width
    if scheme == "lbt":
        extra["student"] = "-".join(str(b) for b in options.student_blocks)
        extra["student_width"] = options.student_width
    return StepKey(
        stage="search",
        composition=f"{scheme}/{base}",
        mode=mode,
        init_channels=settings.init_channels,
        layers=layers,
        nodes=settings.steps,
        batch_size=settings.batch_size,
        image_size=image_size,
        extra=_extra(**extra),
    )


def train_step_key(
    stage: str, settings: EvalSettings, image_size: int, cell: str = "", precision: str = ""
) -> StepKey:
    """The key of an evaluation training step (``stage``: train-cifar or train-imagenet):
    network size (and kind: B-DARTS' broad network), per-process batch, images, auxiliary
    head, and the precision
    (``eval.*.precision`` where params has it, else the official loop's fp32)."""
    nproc = int(getattr(settings, "nproc", 1))
    mode = precision or str(getattr(settings, "precision", "fp32"))
    # B-DARTS' broad network is another network at the same C and cells: its own key
    broad = getattr(settings, "network", "darts") == "broad"
    return StepKey(
        stage=stage,
        composition=cell,
        mode=mode,
        init_channels=settings.init_channels,
        layers=settings.layers,
        nodes=None,
        batch_size=settings.batch_size // nproc,
        image_size=image_size,
        extra=_extra(
            auxiliary=int(settings.auxiliary_weight > 0),
            network="broad" if broad else None,
            en_layers=getattr(settings, "en_layers", None) if broad else None,
        ),
    )


# -- the recorded step times ---------------------------------------------------------------


@dataclass(frozen=True)
class StepTime:
    """One measured row of :data:`STEP_TIMES`."""

    device: str
    date: str
    commit: str
    key: StepKey
    seconds_per_step: float
    peak_mb: float | None
    source: str
    note: str

    def provenance(self) -> str:
        note = f"; {self.note}" if self.note else ""
        return f"{self.device} {self.date} at {self.commit}{note}"


def _int_or_none(text: str) -> int | None:
    return int(text) if text.strip() else None


def load_step_times(path: str | os.PathLike[str] = STEP_TIMES) -> list[StepTime]:
    """The rows of the step-time table (``#`` lines are comments)."""
    try:
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise MlonasError(f"{path}: cannot read the step-time table: {exc.strerror}") from None
    rows = csv.DictReader(line for line in io.StringIO(text) if not line.startswith("#"))
    if rows.fieldnames is None or tuple(rows.fieldnames) != COLUMNS:
        raise MlonasError(f"{path}: header must be {','.join(COLUMNS)}")
    out = []
    for n, r in enumerate(rows, start=2):
        try:
            key = StepKey(
                stage=r["stage"],
                composition=r["composition"],
                mode=r["mode"],
                init_channels=int(r["init_channels"]),
                layers=int(r["layers"]),
                nodes=_int_or_none(r["nodes"]),
                batch_size=int(r["batch_size"]),
                image_size=int(r["image_size"]),
                extra=r["extra"],
            )
            out.append(
                StepTime(
                    r["device"],
                    r["date"],
                    r["commit"],
                    key,
                    float(r["seconds_per_step"]),
                    float(r["peak_mb"]) if r["peak_mb"].strip() else None,
                    r["source"],
                    r["note"],
                )
            )
        except (TypeError, ValueError) as exc:
            raise MlonasError(f"{path}: data row {n - 1}: {exc}") from None
    return out


def device_label(name: str, cpu_count: int | None = None) -> str:
    """The table's device name for a torch device name: ``NVIDIA H100 80GB HBM3`` ->
    ``nvidia-h100`` (vendor and model: memory variants of one GPU step at about the
    same speed), ``cpu`` -> ``cpu-<cores>core`` (the cores this process may use)."""
    if name == "cpu":
        cores = cpu_count or len(os.sched_getaffinity(0))
        return f"cpu-{cores}core"
    words = re.findall(r"[a-z0-9]+", name.lower())
    return "-".join(words[:2]) if words else name


def current_commit(repo: str | os.PathLike[str] = ".") -> str:
    """The short commit of ``repo``'s HEAD, ``+dirty`` when tracked files other than the
    step-time table itself (which recording changes) are modified."""
    table = STEP_TIMES.resolve()
    root = Path(repo).resolve()
    mine = [f":!{table.relative_to(root).as_posix()}"] if table.is_relative_to(root) else []
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *mine],
            cwd=repo,
            capture_output=True,
            text=True,
        )
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def record_step_time(
    key: StepKey,
    seconds_per_step: float,
    *,
    device: str,
    source: str,
    peak_mb: float | None = None,
    note: str = "",
    path: str | os.PathLike[str] = STEP_TIMES,
    date: str | None = None,
    commit: str | None = None,
) -> StepTime:
    """Append one measurement to the step-time table (the benchmarks' ``--record``).

    ``date`` defaults to today (UTC) and ``commit`` to the repository's HEAD (marked
    ``+dirty`` when the working tree differs from it). The file is rewritten atomically.
    """
    from mlonas.io import atomic_write_text

    if not (seconds_per_step > 0 and math.isfinite(seconds_per_step)):
        raise MlonasError(f"record_step_time: seconds_per_step must be > 0, got {seconds_per_step}")
    row = StepTime(
        device=device,
        date=date or _dt.datetime.now(_dt.UTC).date().isoformat(),
        commit=commit or current_commit(Path(__file__).resolve().parents[3]),
        key=key,
        seconds_per_step=seconds_per_step,
        peak_mb=peak_mb,
        source=source,
        note=note,
    )
    target = Path(path)
    text = target.read_text("utf-8") if target.exists() else ",".join(COLUMNS) + "\n"
    if not text.endswith("\n"):
        text += "\n"
    buf = io.StringIO()
    k = key
    csv.writer(buf, lineterminator="\n").writerow(
        [
            row.device,
            row.date,
            row.commit,
            k.stage,
            k.composition,
            k.mode,
            k.init_channels,
            k.layers,
            "" if k.nodes is None else k.nodes,
            k.batch_size,
            k.image_size,
            k.extra,
            f"{seconds_per_step:.4g}",
            "" if peak_mb is None else f"{peak_mb:.0f}",
            source,
            note,
        ]
    )
    atomic_write_text(target, text + buf.getvalue())
    return row


def lookup(times: Sequence[StepTime], device: str, key: StepKey) -> StepTime | None:
    """The newest measurement on ``device`` that applies to ``key`` (later rows win ties)."""
    found = [t for t in times if t.device == device and t.key.applies_to(key)]
    return max(found, key=lambda t: t.date) if found else None


# -- steps per job -------------------------------------------------------------------------


def _epoch_batches(n: int, batch: int) -> int:
    """Batches of an evaluation epoch over ``n`` images: the training loop keeps the
    last partial batch and drops only a lone last sample (mlonas.train.loop)."""
    return n // batch if n % batch == 1 and n > 1 else math.ceil(n / batch)


def _train_images(cfg: Config, dataset: str) -> int:
    source = cfg.dataset(dataset)["source"]
    return TRAIN_IMAGES[source]


def search_profile(cfg: Config, dataset: str, slug: str) -> list[tuple[StepKey, int]]:
    """``[(step key, steps)]`` of one search job, in the order the loop runs them."""
    m = cfg.method(slug)
    s = m.search
    ds = cfg.dataset(dataset)
    per_epoch = min(int(ds["n_train"]), int(ds["n_val"])) // s.batch_size
    mode = "first_order" if m.order == "first" else s.unrolled_mode
    stages = len(s.stage_ops) if m.base in PROGRESSIVE_BASES else 1  # type: ignore[arg-type]
    # a base without architecture parameters (MSR-DARTS) only ever trains weights
    warm = s.epochs if m.base in BASES_WITHOUT_ARCHITECTURE else min(s.warmup_epochs, s.epochs)
    image = int(ds["image_size"])
    out: list[tuple[StepKey, int]] = []
    for stage in range(stages):
        for phase_mode, epochs in (("weights_only", warm), (mode, s.epochs - warm)):
            if epochs > 0:
                key = search_step_key(m.scheme, m.base, phase_mode, s, m.options, image, stage)
                out.append((key, epochs * per_epoch))
    return out


def train_profile(cfg: Config, rule: str, dataset: str, method: str) -> tuple[StepKey, int, int]:
    """``(step key, steps per process, processes)`` of one evaluation job (of ``method``'s
    cell: a method may evaluate with its own settings)."""
    if rule == "train_cifar":
        s = cfg.eval_settings("cifar", method)
        n = _train_images(cfg, dataset)
        key = train_step_key("train-cifar", s, int(cfg.dataset(dataset)["image_size"]))
        return key, int(s.epochs) * _epoch_batches(n, s.batch_size), 1
    s = cfg.eval_settings("imagenet", method)
    nproc = int(s.nproc)  # type: ignore[attr-defined]
    # DistributedSampler pads the set to a multiple of nproc; each process then batches
    # its shard of ceil(n / nproc) images at batch_size / nproc
    shard = math.ceil(_train_images(cfg, "imagenet") / nproc)
    key = train_step_key("train-imagenet", s, int(cfg.dataset("imagenet")["image_size"]))
    return key, int(s.epochs) * _epoch_batches(shard, key.batch_size), nproc


# -- the plan ------------------------------------------------------------------------------


@dataclass
class Group:
    """Jobs of one rule with the same steps (a method's seeds, mostly)."""

    rule: str
    what: str
    parts: list[tuple[StepKey, int]]  # (key, steps per process) of one job
    nproc: int = 1
    jobs: int = 0
    measured: list[StepTime | None] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return sum(n for _, n in self.parts)

    @property
    def complete(self) -> bool:
        return all(t is not None for t in self.measured)

    def device_seconds_per_job(self) -> float | None:
        if not self.complete:
            return None
        return self.nproc * sum(
            n * t.seconds_per_step  # type: ignore[union-attr]
            for (_, n), t in zip(self.parts, self.measured, strict=True)
        )

    def missing(self) -> list[StepKey]:
        return [k for (k, _), t in zip(self.parts, self.measured, strict=True) if t is None]


@dataclass
class Plan:
    device: str
    targets: list[str]
    groups: list[Group]
    other_jobs: dict[str, int]  # rule -> jobs of CPU rules (not costed)

    def _total(self, rules: Iterable[str] | None = None) -> float:
        keep = set(rules) if rules is not None else None
        return (
            sum(
                g.jobs * (g.device_seconds_per_job() or 0.0)
                for g in self.groups
                if keep is None or g.rule in keep
            )
            / 3600.0
        )

    @property
    def hours(self) -> float:
        return self._total()

    @property
    def eval_hours(self) -> float:
        return self._total(EVAL_RULES)

    @property
    def unmeasured_jobs(self) -> int:
        return sum(g.jobs for g in self.groups if not g.complete)

    @property
    def device_jobs(self) -> int:
        return sum(g.jobs for g in self.groups)


def resolve_targets(cfg: Config, targets: Sequence[str]) -> list[str]:
    """Table names (``table2``) as their CSV; other paths under the preset's root
    (``results/table2.csv`` is ``demo/results/table2.csv`` for the demo)."""
    root = cfg.params["root"]
    out = []
    for t in targets:
        if t in TABLES:
            out.append(cfg.table_path(t))
        elif root and not t.startswith(root) and not os.path.isabs(t):
            out.append(cfg.path(t))
        else:
            out.append(t)
    return out


def snakemake_config(cfg: Config) -> list[str]:
    """``--config`` values that make Snakemake resolve the params as ``cfg`` was:
    the preset, and each overridden top-level key as YAML (JSON) merged over params.yaml."""
    over = parse_overrides(cfg.overrides)
    return [f"preset={cfg.preset}"] + [
        f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in over.items()
    ]


def make_plan(
    cfg: Config,
    device: str,
    targets: Sequence[str] = (),
    *,
    times: Sequence[StepTime] | None = None,
    forceall: bool = False,
    cwd: str | os.PathLike[str] = ".",
) -> Plan:
    """The plan of the jobs ``snakemake -n TARGETS`` lists, on ``device``."""
    from mlonas.dryrun import dry_run

    times = load_step_times() if times is None else times
    devices = sorted({t.device for t in times})
    if device not in devices:
        raise MlonasError(
            f"--device {device}: no step times recorded for it in {STEP_TIMES.name}"
            f" (have: {', '.join(devices) or 'none'})"
        )
    resolved = resolve_targets(cfg, targets)
    jobs = dry_run(resolved, snakemake_config(cfg), forceall=forceall, cwd=cwd)
    groups: dict[tuple[str, ...], Group] = {}
    other: dict[str, int] = {}
    for job in jobs:
        if job.rule not in DEVICE_RULES:
            if job.command is not None:  # rule all has none: it is a target, not a job
                other[job.rule] = other.get(job.rule, 0) + 1
            continue
        wc = job.wildcards
        if job.rule == "search":
            parts, nproc = search_profile(cfg, wc["dataset"], wc["method"]), 1
            what = wc["method"]
        else:
            dataset = wc.get("dataset", "imagenet")
            key, steps, nproc = train_profile(cfg, job.rule, dataset, wc["method"])
            parts = [(key, steps)]
            what = wc["method"] if job.rule == "train_cifar" else f"{wc['source']}/{wc['method']}"
        sig = (job.rule, what, repr(parts), str(nproc))
        if sig not in groups:
            groups[sig] = Group(job.rule, what, parts, nproc)
            groups[sig].measured = [lookup(times, device, k) for k, _ in parts]
        groups[sig].jobs += 1
    shown = [str(t) for t in targets] or ["all"]
    order = list(DEVICE_RULES)
    ordered = sorted(groups.values(), key=lambda g: (order.index(g.rule), g.what))
    return Plan(device, shown, ordered, other)


# -- printing ------------------------------------------------------------------------------


def _hours(h: float) -> str:
    if h >= 100:
        return f"{h:,.0f}"
    if h >= 1:
        return f"{h:.1f}"
    return f"{h:.3g}"


def _unit(device: str) -> str:
    return "CPU" if device.startswith("cpu") else "GPU"


def summary(plan: Plan) -> str:
    """``table2 on nvidia-h100: N GPU-days, of which evaluation M`` (+ what is left out)."""
    unit = _unit(plan.device)
    what = " ".join(t.removesuffix(".csv").rsplit("/", 1)[-1] for t in plan.targets)
    if not plan.device_jobs:
        return f"{what}: nothing to run on a device (the outputs are up to date)"
    days = plan.hours / 24
    evals = [g for g in plan.groups if g.rule in EVAL_RULES]
    if not evals:
        of_eval = "no evaluation"
    elif not any(g.complete for g in evals):
        of_eval = f"evaluation not measured on {plan.device}"
    else:
        partial = "at least " if not all(g.complete for g in evals) else ""
        of_eval = f"of which evaluation {partial}{plan.eval_hours / 24:.3g} {unit}-days"
    if plan.unmeasured_jobs:
        return (
            f"{what} on 1×{plan.device}: PARTIAL, at least {days:.3g} {unit}-days"
            f" ({_hours(plan.hours)} {unit}-hours), {of_eval}; {plan.unmeasured_jobs} of"
            f" {plan.device_jobs} device jobs not measured on {plan.device} and not in the total"
        )
    minutes = f" = {plan.hours * 60:.3g} min" if plan.hours < 1 else ""
    return (
        f"{what} on 1×{plan.device}: {days:.3g} {unit}-days ({_hours(plan.hours)}"
        f" {unit}-hours{minutes}), {of_eval}"
    )


def render(plan: Plan) -> str:
    """The per-job-group table, the per-rule totals, provenance and the summary line."""
    from tabulate import tabulate

    rows = []
    for g in plan.groups:
        per_job = g.device_seconds_per_job()
        s_step = "" if per_job is None else f"{per_job / g.nproc / g.steps:.3g}"
        rows.append(
            [
                g.rule,
                g.what,
                g.jobs,
                f"{g.steps:,}",
                g.nproc,
                s_step or f"not measured on {plan.device}",
                "" if per_job is None else _hours(per_job / 3600),
                "" if per_job is None else _hours(g.jobs * per_job / 3600),
            ]
        )
    unit = _unit(plan.device)
    head = ["rule", "what", "jobs", "steps/job", "devices", "s/step", f"{unit}-h/job", f"{unit}-h"]
    out = [f"plan on {plan.device} (step times: {STEP_TIMES.name})", ""]
    out.append(
        tabulate(rows, head, tablefmt="simple", disable_numparse=True, colalign=("left", "left"))
    )
    per_rule = []
    for rule in DEVICE_RULES:
        gs = [g for g in plan.groups if g.rule == rule]
        if not gs:
            continue
        jobs = sum(g.jobs for g in gs)
        miss = sum(g.jobs for g in gs if not g.complete)
        hours = plan._total([rule])
        if miss == jobs:
            per_rule.append([rule, jobs, "", "", f"not measured on {plan.device}"])
            continue
        note = f"partial: {miss} jobs not measured on {plan.device}" if miss else ""
        per_rule.append([rule, jobs, _hours(hours), f"{hours / 24:.3g}", note])
    for rule, n in plan.other_jobs.items():
        per_rule.append([rule, n, "", "", "CPU job of seconds, not costed"])
    out += [
        "",
        tabulate(
            per_rule,
            ["rule", "jobs", f"{unit}-h", f"{unit}-days", ""],
            tablefmt="simple",
            disable_numparse=True,
        ),
    ]
    missing = sorted({k.describe() for g in plan.groups for k in g.missing()})
    if missing:
        out += ["", f"not measured on {plan.device} (benchmarks/*.py --record adds them):"]
        out += [f"  {m}" for m in missing]
    used = {t for g in plan.groups for t in g.measured if t is not None}
    if used:
        out += ["", "measured:"]
        by: dict[tuple[str, str, str], list[StepTime]] = {}
        for t in used:
            by.setdefault((t.key.stage, t.device, t.date), []).append(t)
        for (stage, device, date), ts in sorted(by.items()):
            commits = ", ".join(sorted({t.commit for t in ts}))
            notes = "; ".join(sorted({t.note for t in ts if t.note}))
            cells = sorted({t.key.composition for t in ts if stage != "search"})
            cell = f" (cell {', '.join(cells)})" if cells else ""
            out.append(f"  {stage}: {device} {date} at {commits}{cell}; {notes}".rstrip("; "))
    out += [
        "",
        "Training steps only: per-epoch validation/test passes, start-up and checkpoints are"
        " not counted.",
        summary(plan),
    ]
    return "\n".join(out)


def run_plan(
    preset: str,
    overrides: Sequence[str],
    targets: Sequence[str],
    device: str,
    *,
    forceall: bool = False,
    params: str = "params.yaml",
    step_times: str | None = None,
) -> str:
    """``mlonas plan``: load the params as Snakemake will, plan, render."""
    from mlonas.config import load_config

    cfg = load_config(params, preset, overrides)
    times = load_step_times(step_times or STEP_TIMES)
    return render(make_plan(cfg, device, targets, times=times, forceall=forceall))
