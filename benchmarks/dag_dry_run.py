"""Time `snakemake -n` (DAG construction) for the paper and demo presets; print a table.

The spine issue asks for the paper DAG of table 2 to be listed in <= 10 s. Run from the
repository root: `python benchmarks/dag_dry_run.py [--repeat 3]`.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).parent / "snakemake"

CASES = [
    ("paper", "results/table2.csv", []),
    ("paper", "all tables", []),
    ("demo", "all tables", ["--config", "preset=demo"]),
]


def dry_run(target: str, extra: list[str]) -> tuple[float, int]:
    args = [str(SNAKEMAKE), "-n", "-F", *extra]
    if target != "all tables":
        args.append(target)
    t0 = time.perf_counter()
    res = subprocess.run(args, cwd=REPO, capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - t0
    total = re.search(r"^total\s+(\d+)", res.stdout, re.M)
    return elapsed, int(total.group(1)) if total else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{'preset':<7} {'target':<20} {'jobs':>5} {'median s':>9} {'max s':>7}")
    for preset, target, extra in CASES:
        times, jobs = [], 0
        for _ in range(args.repeat):
            t, jobs = dry_run(target, extra)
            times.append(t)
        print(
            f"{preset:<7} {target:<20} {jobs:>5} {statistics.median(times):>9.2f} "
            f"{max(times):>7.2f}"
        )


if __name__ == "__main__":
    main()
