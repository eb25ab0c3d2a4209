# report: figures and table pages for `snakemake --report`, drawn from the artifacts
# (alphas.json, history.csv, tableN.md) by `mlonas figures` without torch. One job per
# table draws all of its files (mlonas.report.figures.report_files says which): a job per
# figure spent more on starting Python than on drawing. These rules are report-only: DVC
# renders the same histories with `dvc plots`, so they have no dvc.yaml twin
# (tests/test_workflow.py names them in REPORT_ONLY_RULES). The rules are made in a loop,
# one per table, because each job's outputs (the table's figures, each with its own
# report labels) are known from params.yaml, not from a wildcard.
from mlonas.report import figures as FIG


def report_file(f):
    """The report() marker of one report file: caption, category and labels by kind."""
    if f.kind == "table":
        return report(
            f.path,
            caption="../report/table.rst",
            category="1. Tables",
            labels={"table": f.table, "file": "rendered"},
        )
    if f.kind in ("trajectory", "search_curves"):
        trajectory = f.kind == "trajectory"
        return report(
            f.path,
            caption=f"../report/search_{'trajectory' if trajectory else 'curves'}.rst",
            category="2. Searches",
            subcategory=f.dataset,
            labels={
                "method": f.method,
                "seed": str(f.seed),
                "figure": "α trajectories" if trajectory else "accuracy and loss",
            },
        )
    return report(
        f.path,
        caption="../report/eval_curves.rst",
        category="3. Evaluations",
        subcategory=f.dataset,
        labels={"method": f.method, "seed": str(f.seed), "searched on": f.source or f.dataset},
    )


for _table in CFG.tables():
    _files = FIG.report_files(CFG, _table)

    rule:
        name:
            f"figures_{_table}"
        input:
            sorted({i for f in _files for i in f.inputs}),
        output:
            [report_file(f) for f in _files],
        log:
            pattern("log:figures", ".log", table=_table),
        benchmark:
            pattern("log:figures", ".bench.tsv", table=_table)
        params:
            preset=PRESET,
            table=_table,
            tracked=CFG.tracked("figures", table=_table),
            overrides=overrides("figures", table=_table),
        resources:
            mem_mb=1000,
        conda:
            "../envs/mlonas.yaml"
        shell:
            "mlonas figures --preset {params.preset}{params.overrides}"
            " --table {params.table} --log {log}"
