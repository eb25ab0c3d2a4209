# report: figures and table pages for `snakemake --report`, drawn from the artifacts
# (alphas.json, history.csv, tableN.md) by `mlonas figures ...` without torch. These rules
# are report-only: DVC renders the same histories with `dvc plots`, so they have no
# dvc.yaml twin (tests/test_workflow.py names them in REPORT_ONLY_RULES). Paths come from
# mlonas.report.figures, which also lists them for rule `all` (report_targets).
from mlonas.report import figures as FIG


rule search_figures:
    input:
        alphas=pattern("search", "alphas.json"),
        history=pattern("search", "history.csv"),
    output:
        trajectory=report(
            FIG.search_report_files(CFG, "{dataset}", "{method}", "{seed}")[0],
            caption="../report/search_trajectory.rst",
            category="2. Searches",
            subcategory="{dataset}",
            labels={"method": "{method}", "seed": "{seed}", "figure": "α trajectories"},
        ),
        curves=report(
            FIG.search_report_files(CFG, "{dataset}", "{method}", "{seed}")[1],
            caption="../report/search_curves.rst",
            category="2. Searches",
            subcategory="{dataset}",
            labels={"method": "{method}", "seed": "{seed}", "figure": "accuracy and loss"},
        ),
    log:
        CFG.path("logs/figures/search/{dataset}/{method}/seed{seed}.log"),
    params:
        preset=PRESET,
        tracked=lambda wc: CFG.tracked("figures", method=wc.method),
        overrides=lambda wc: overrides("figures", method=wc.method),
    wildcard_constraints:
        dataset="cifar10|cifar100",
    resources:
        mem_mb=1000,
    conda:
        "../envs/mlonas.yaml"
    shell:
        "mlonas figures search --preset {params.preset}{params.overrides}"
        " --dataset {wildcards.dataset}"
        " --method {wildcards.method} --seed {wildcards.seed} --alphas {input.alphas}"
        " --history {input.history} --out-trajectory {output.trajectory}"
        " --out-curves {output.curves} --log {log}"


rule eval_figures:
    input:
        history=pattern("eval", "history.csv"),
    output:
        curves=report(
            FIG.eval_report_file(CFG, "{dataset}", "{method}", "{seed}"),
            caption="../report/eval_curves.rst",
            category="3. Evaluations",
            subcategory="{dataset}",
            labels={"method": "{method}", "seed": "{seed}", "searched on": "{dataset}"},
        ),
    log:
        CFG.path("logs/figures/eval/{dataset}/{method}/seed{seed}.log"),
    params:
        preset=PRESET,
        tracked=lambda wc: CFG.tracked("figures", method=wc.method),
        overrides=lambda wc: overrides("figures", method=wc.method),
    wildcard_constraints:
        dataset="cifar10|cifar100",
    resources:
        mem_mb=1000,
    conda:
        "../envs/mlonas.yaml"
    shell:
        "mlonas figures eval --preset {params.preset}{params.overrides}"
        " --dataset {wildcards.dataset}"
        " --method {wildcards.method} --seed {wildcards.seed} --history {input.history}"
        " --out {output.curves} --log {log}"


rule imagenet_eval_figures:
    input:
        history=pattern("imagenet_eval", "history.csv"),
    output:
        curves=report(
            FIG.eval_report_file(CFG, "imagenet", "{method}", "{seed}", "{source}"),
            caption="../report/eval_curves.rst",
            category="3. Evaluations",
            subcategory="imagenet",
            labels={"method": "{method}", "seed": "{seed}", "searched on": "{source}"},
        ),
    log:
        CFG.path("logs/figures/eval/imagenet/{source}/{method}/seed{seed}.log"),
    params:
        preset=PRESET,
        tracked=lambda wc: CFG.tracked("figures", method=wc.method),
        overrides=lambda wc: overrides("figures", method=wc.method),
    resources:
        mem_mb=1000,
    conda:
        "../envs/mlonas.yaml"
    shell:
        "mlonas figures eval --preset {params.preset}{params.overrides}"
        " --dataset imagenet"
        " --source {wildcards.source} --method {wildcards.method} --seed {wildcards.seed}"
        " --history {input.history} --out {output.curves} --log {log}"


rule table_html:
    input:
        md=pattern("table", ext="md"),
    output:
        page=report(
            FIG.table_report_file(CFG, "{table}"),
            caption="../report/table.rst",
            category="1. Tables",
            labels={"table": "{table}", "file": "rendered"},
        ),
    log:
        CFG.path("logs/figures/{table}.log"),
    params:
        preset=PRESET,
        overrides=overrides("figures-table"),
    resources:
        mem_mb=1000,
    conda:
        "../envs/mlonas.yaml"
    shell:
        "mlonas figures table --preset {params.preset}{params.overrides}"
        " --md {input.md} --out {output.page}"
        " --log {log}"
