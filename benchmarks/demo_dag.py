"""Time the README's first command, the whole demo DAG, and print its time per rule.

Copies the working tree (tracked and untracked, not ignored files: what a fresh clone plus
your uncommitted changes would hold) to a temporary directory, runs
``snakemake --cores all --config preset=demo`` there under ``/usr/bin/time``, and prints
the wall time, the CPU time and the peak RSS of the whole run, then one row per rule from
the rules' ``benchmark:`` files (``demo/logs/**/*.bench.tsv``: each job's own wall time,
start-up included): jobs, summed, mean and longest job seconds. The budget is 8 minutes of
wall time on the project's 2-core machine.

    python benchmarks/demo_dag.py                 # about 8 minutes on 2 cores
    python benchmarks/demo_dag.py --keep /tmp/d   # keep the run's directory
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 8 * 60


def copy_tree(dest: Path) -> None:
    """The files a clone would have, plus uncommitted ones (``git ls-files -co``)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    shared = REPO.parent / "shared"  # the papers' reported numbers, as CI has it beside
    if shared.exists() and not (dest.parent / "shared").exists():
        (dest.parent / "shared").symlink_to(shared)


def per_rule(logs: Path) -> pd.DataFrame:
    """One row per rule from ``logs/<rule>/**/*.bench.tsv`` (Snakemake's benchmark files)."""
    rows = []
    for f in sorted(logs.rglob("*.bench.tsv")):
        rule = f.relative_to(logs).parts[0]
        rows.append({"rule": rule, "s": float(pd.read_csv(f, sep="\t")["s"].iloc[0])})
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    return (
        df.groupby("rule", sort=False)["s"]
        .agg(jobs="count", total_s="sum", mean_s="mean", max_s="max")
        .sort_values("total_s", ascending=False)
        .round(1)
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--keep", type=Path, help="run in DIR/main (new) and keep it")
    ap.add_argument("--cores", default="all", help="snakemake --cores (default: all, as README)")
    args = ap.parse_args()
    bin_dir = Path(sys.executable).parent
    top = args.keep or Path(tempfile.mkdtemp(prefix="mlonas-demo-"))
    work = top / "main"
    work.mkdir(parents=True, exist_ok=True)
    try:
        copy_tree(work)
        cmd = [str(bin_dir / "snakemake"), "--cores", args.cores, "--config", "preset=demo"]
        timed = ["/usr/bin/time", "-f", "%e %U %S %M", "-o", str(work / "time.txt"), *cmd]
        t0 = time.monotonic()
        # the copy's code, not whatever an editable install of the venv points at
        env = {**os.environ, "PYTHONPATH": str(work / "src")}
        res = subprocess.run(timed, cwd=work, env=env, capture_output=True, text=True, check=False)
        wall = time.monotonic() - t0
        if res.returncode != 0:
            print(res.stderr[-3000:], file=sys.stderr)
            print(f"demo DAG failed (exit {res.returncode}) after {wall:.0f} s", file=sys.stderr)
            return 1
        e, u, s, rss_kb = (float(v) for v in (work / "time.txt").read_text().split()[-4:])
        jobs = res.stderr.count("Finished job") or res.stdout.count("Finished job")
        table = per_rule(work / "demo" / "logs")
        print(table.to_markdown())
        print()
        print(f"{' '.join(cmd[1:])}: {jobs} jobs")
        print(
            f"wall {e:.0f} s ({e / 60:.1f} min; budget {BUDGET_S / 60:.0f} min), "
            f"CPU {u + s:.0f} s, peak RSS {rss_kb / 1024:.0f} MB; "
            f"jobs' own wall times sum to {table['total_s'].sum():.0f} s"
        )
    finally:
        if args.keep is None:
            shutil.rmtree(top, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
