"""``mlonas <stage>``: the only entry point Snakemake rules and DVC stages call.

Each subcommand is one stage of the DAG with explicit inputs and outputs on the command
line, so the same command string appears in the Snakefile's rules and in dvc.yaml (a
test checks they are identical). User errors exit with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from mlonas.config import TABLES, Config, load_config
from mlonas.errors import MlonasError

# By name, not __name__: run as `python -m mlonas.cli` (torchrun workers) this module is
# __main__, whose logger is outside the `mlonas` tree and its handlers.
log = logging.getLogger("mlonas.cli")


class _Format(logging.Formatter):
    """``mlonas: <message>``, the form of every line a stage says (and tests read).

    A record's ``prefix`` replaces ``mlonas: ``: the command's own lines carry the stage
    (``mlonas search: error: ...``), and lines relayed from torchrun workers are already
    formatted (``""``), as are Python's warnings.
    """

    def format(self, record: logging.LogRecord) -> str:
        default = "" if record.name == "py.warnings" else "mlonas: "
        return getattr(record, "prefix", default) + super().format(record)


class _Console(logging.Handler):
    """stderr, through ``tqdm.write`` when tqdm is loaded, so a message goes above a live
    progress bar instead of into it. ``sys.stderr`` is looked up for each record (pytest's
    capsys replaces it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            tqdm = sys.modules.get("tqdm")
            if tqdm is not None:
                tqdm.tqdm.write(text, file=sys.stderr)
            else:
                sys.stderr.write(text + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def stage_logging() -> Iterator[None]:
    """The ``mlonas`` logger, for one stage: INFO and up to stderr, in the project's form.

    Modules log to ``logging.getLogger(__name__)`` (all under ``mlonas``); this is the one
    place that decides where it goes. Python's warnings go the same way (into ``--log``
    too, as before). Everything added here or meanwhile (``--log``'s file) is removed
    again afterwards, so in-process callers (tests) start clean.
    """
    root, warned = logging.getLogger("mlonas"), logging.getLogger("py.warnings")
    console = _Console()
    console.setFormatter(_Format())
    saved = [(lg, lg.level, lg.propagate, list(lg.handlers)) for lg in (root, warned)]
    for lg in (root, warned):
        lg.addHandler(console)
        lg.setLevel(logging.INFO)
        lg.propagate = False  # said once, here, even if something configured the root logger
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for lg, level, propagate, handlers in saved:
            for handler in [h for h in lg.handlers if h not in handlers]:
                lg.removeHandler(handler)
                handler.close()
            lg.setLevel(level)
            lg.propagate = propagate


def _log_to_file(path: str) -> str:
    """Also send the stage's messages to ``path`` (``--log``); returns why it cannot, or ""."""
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    except OSError as exc:
        nearest = next((a for a in Path(path).parents if a.exists()), None)
        if nearest is not None and not nearest.is_dir():
            return f"{nearest} is a file, not a folder"
        return exc.strerror or str(exc)
    handler.setFormatter(_Format())
    for name in ("mlonas", "py.warnings"):
        logging.getLogger(name).addHandler(handler)
    return ""


def _seed(text: str) -> int:
    """argparse type of ``--seed``: a non-negative integer, like params.yaml's ``seeds``.

    A negative seed would otherwise run (torch accepts it) and name artifacts ``seed-1``
    that no table or DAG ever asks for; argparse turns the error into its usage + one line.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument(
        "--preset", default="paper", help="preset of params.yaml: paper (default) or demo"
    )
    p.add_argument("--log", default=None, help="also write this job's messages to this file")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a params key over params.yaml and the preset (dotted key, YAML"
        " value; repeatable). The Snakefile passes its --config/--configfile overrides"
        " this way; provenance records them",
    )


def build_parser() -> argparse.ArgumentParser:
    """The subcommands; each names its handler with ``set_defaults(func=...)``."""
    parser = argparse.ArgumentParser(prog="mlonas", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)

    p = sub.add_parser("validate", help="validate params.yaml (and a preset)")
    _common(p)
    p.set_defaults(func=_validate)

    p = sub.add_parser("split", help="fetch/verify a dataset and write its search split")
    _common(p)
    p.add_argument("--dataset", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_split)

    p = sub.add_parser("search", help="architecture search of one method x dataset x seed")
    _common(p)
    for a in ("--dataset", "--method", "--split", "--out"):
        p.add_argument(a, required=True)
    p.add_argument("--seed", type=_seed, required=True)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--unlabeled-split",
        default=None,
        help="split of the dataset whose training images SGL and LBT use unlabeled (other"
        " schemes ignore it)",
    )
    p.set_defaults(func=_search, checkpoints=True)

    p = sub.add_parser("export", help="derive the genotype from a search's alphas")
    _common(p)
    for a in ("--dataset", "--method", "--alphas", "--out"):
        p.add_argument(a, required=True)
    p.add_argument("--seed", type=_seed, required=True)
    p.set_defaults(func=_export)

    for name, src, func in (
        ("train-cifar", "--dataset", _train_cifar),
        ("train-imagenet", "--source", _train_imagenet),
    ):
        p = sub.add_parser(name, help=f"train a searched cell at the papers' {name[6:]} protocol")
        _common(p)
        for a in (src, "--method", "--genotype", "--split", "--out"):
            p.add_argument(a, required=True)
        p.add_argument("--seed", type=_seed, required=True)
        p.add_argument("--device", default="auto")
        p.set_defaults(func=func, checkpoints=True)

    p = sub.add_parser("table", help="aggregate evaluation metrics into a results table")
    _common(p)
    p.add_argument("--table", required=True, choices=list(TABLES))
    p.add_argument("--out-csv", required=True)
    p.add_argument("--out-md", required=True)
    p.set_defaults(func=_table)

    # Report-only figures (snakemake --report); torch-free, see mlonas.report.figures.
    p = sub.add_parser(
        "figures", help="draw a table's report files: its searches' and evaluations' figures"
    )
    _common(p)
    p.add_argument("--table", required=True, choices=list(TABLES))
    p.set_defaults(func=_figures)

    p = sub.add_parser("audit", help="trace a table's number back to every artifact behind it")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--preset", default=None, help="default: the preset the table was built with")
    p.add_argument("--log", default=None, help="also write this job's messages to this file")
    p.add_argument(
        "table_file",
        help="a table's CSV written by `mlonas table` (a .md path names the .csv beside it)",
    )
    p.add_argument("--method", required=True, help="row label (as printed) or method slug")
    p.add_argument("--json", action="store_true", help="print one JSON document instead")
    p.add_argument(
        "--check-data", action="store_true", help="also re-hash the raw data behind each split"
    )
    p.add_argument(
        "--dvc-lock", default=None, help="dvc.lock to check outputs against (default: by params)"
    )
    # loads the params of the table's preset itself
    p.set_defaults(func=_audit, loads_config=False)

    p = sub.add_parser(
        "plan",
        help="device-hours of the jobs Snakemake would run for the targets (before a run)",
    )
    p.add_argument(
        "targets",
        nargs="*",
        metavar="TARGET",
        help="a table (table2), or a path as Snakemake takes it, under the preset's root"
        " (default: every table, as `snakemake` alone)",
    )
    p.add_argument(
        "--device",
        default=None,
        help="device of the recorded step times to cost with (default: nvidia-h100)",
    )
    p.add_argument(
        "--preset", default="paper", help="preset of params.yaml: paper (default) or demo"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a params key, as --config KEY=VALUE does for snakemake (repeatable)",
    )
    p.add_argument(
        "--forceall",
        action="store_true",
        help="cost every job of the targets' DAG (snakemake -F), as if nothing were built",
    )
    p.add_argument(
        "--step-times", default=None, help="step-time table (default: mlonas' own, recorded)"
    )
    # loads params.yaml itself: the file the Snakefile reads
    p.set_defaults(func=_plan, loads_config=False, log=None)
    return parser


def _without_log(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--log":
            skip = True
        elif not a.startswith("--log="):
            out.append(a)
    return out


def _launch_torchrun(nproc: int, argv: Sequence[str], out_dir: str) -> int:
    """Re-run this command under torchrun with ``nproc`` processes (one per GPU).

    The workers do not open the job's log themselves (they would clobber one another);
    their merged output is streamed through this process, which writes the log. This
    process holds the output directory's lock for the whole run (the workers skip it,
    told so by :data:`mlonas.io.LAUNCHER_HOLDS_ENV`), so a second job is refused with one
    line before any worker starts. A worker's one-line error is the job's message: it
    exits 2 as the single-process command would, and torchrun's failure report (a
    Python traceback about the child) that follows it is left out.
    """
    from mlonas.io import LAUNCHER_HOLDS_ENV, hold_output_dir

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "mlonas.cli",
        *_without_log(argv),
    ]
    env = {**os.environ, LAUNCHER_HOLDS_ENV: str(Path(out_dir).resolve())}
    user_error = False
    with (
        hold_output_dir(out_dir),
        subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            if not user_error:  # already formatted by the worker: relayed as it is
                log.info(line.rstrip("\n"), extra={"prefix": ""})
            user_error = user_error or line.startswith("mlonas train-imagenet: error: ")
    return 2 if user_error and proc.returncode else proc.returncode


# -- the stages: one handler each, named by its subparser's set_defaults(func=...) -------
# A handler gets the parsed arguments, the loaded params (None for audit, which loads the
# table's preset itself) and argv (train-imagenet re-runs it under torchrun).


def _validate(args: argparse.Namespace, cfg: Config, argv: Sequence[str]) -> int:
    print(
        f"{args.params} (preset {args.preset}): ok, {len(cfg.search_jobs())} searches, "
        f"{len(cfg.cifar_eval_jobs())} CIFAR and {len(cfg.transfer_jobs())}"
        " ImageNet evaluations"
    )
    return 0


def _split(args: argparse.Namespace, cfg: Config, argv: Sequence[str]) -> int:
    from mlonas.data.splits import write_split

    write_split(cfg, args.dataset, args.out)
    return 0


def _search(args: argparse.Namespace, cfg: Config, argv: Sequence[str]) -> int:
    from mlonas.search.loop import run_search

    run_search(
        cfg,
        args.dataset,
        args.method,
        args.seed,
        args.split,
        args.out,
        args.device,
        unlabeled_split=args.unlabeled_split,
    )
    return 0


def _export(args: argparse.Namespace, cfg: Config, argv: Sequence[str]) -> int:
    from mlonas.report.cells import export_cell

    export_cell(args.alphas, args.out, dataset=args.dataset, method=args.method, seed=args.seed)
    return 0


def _train_cifar(args: argparse.Namespace, cfg: Config, argv: Sequence[str]) -> int:
    from mlonas.train import run_train_cifar

    run_train_cifar(
        cfg, args.dataset, args.method, args.seed, args.genotype, args.split, args.out, args.device
    )
    return 0


def _train_imagenet(args: argparse.Namespace, cfg: Config, argv: Sequence[str]) -> int:
    nproc = cfg.eval_settings("imagenet", args.method).nproc
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        return _launch_torchrun(nproc, argv, args.out)
    from mlonas.train import run_train_imagenet

    run_train_imagenet(
        cfg, args.source, args.method, args.seed, args.genotype, args.split, args.out, args.device
    )
    return 0


def _table(args: argparse.Namespace, cfg: Config, argv: Sequence[str]) -> int:
    from mlonas.report.tables import write_table

    write_table(cfg, args.table, args.out_csv, args.out_md)
    return 0


def _figures(args: argparse.Namespace, cfg: Config, argv: Sequence[str]) -> int:
    from mlonas.report.figures import draw_report

    drawn = draw_report(cfg, args.table)
    log.info("%s: %d report files", args.table, len(drawn))
    return 0


def _audit(args: argparse.Namespace, cfg: None, argv: Sequence[str]) -> int:
    from mlonas.report.audit import run_audit

    return run_audit(
        args.params,
        args.preset,
        args.table_file,
        args.method,
        as_json=args.json,
        check_data=args.check_data,
        dvc_lock=args.dvc_lock,
    )


def _plan(args: argparse.Namespace, cfg: None, argv: Sequence[str]) -> int:
    from mlonas.report.plan import DEFAULT_DEVICE, run_plan

    print(
        run_plan(
            args.preset,
            args.set,
            args.targets,
            args.device or DEFAULT_DEVICE,
            forceall=args.forceall,
            step_times=args.step_times,
        )
    )
    return 0


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Load the params (validated: a bad value stops here with one line) and run the stage."""
    if not getattr(args, "loads_config", True):
        return args.func(args, None, argv)
    cfg = load_config(args.params, args.preset, args.set)
    if getattr(args, "checkpoints", False):
        from mlonas.io import ensure_out_dir

        ensure_out_dir(args.out)  # else it fails at the first checkpoint, an epoch later
    return args.func(args, cfg, argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    with stage_logging():
        said = {"prefix": f"mlonas {args.stage}: "}
        if args.log:
            why = _log_to_file(args.log)
            if why:  # one line (to the terminal only: there is no log), not a traceback
                log.error(
                    "error: --log %s: cannot write the log file: %s", args.log, why, extra=said
                )
                return 2
        try:
            return run(args, argv)
        except MlonasError as exc:
            log.error("error: %s", exc, extra=said)
            return 2
        except KeyboardInterrupt:
            log.error("interrupted", extra=said)
            return 130
        except Exception:
            # A bug, not a user error: keep the full traceback, in the job's log too.
            log.exception("unexpected error (a bug in mlonas, not in the input):", extra=said)
            return 1


if __name__ == "__main__":
    sys.exit(main())
