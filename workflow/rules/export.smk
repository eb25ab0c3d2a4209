# export: alphas -> genotype JSON (the base's derivation rule) + a figure of both cells.
rule export:
    input:
        alphas=pattern("search", "alphas.json"),
    output:
        cell=pattern("cell"),
        figure=report(
            pattern("cell_figure"),
            caption="../report/cells.rst",
            category="2. Searches",
            subcategory="{dataset}",
            labels={"method": "{method}", "seed": "{seed}", "figure": "cells"},
        ),
    log:
        pattern("log:export", ".log"),
    benchmark:
        pattern("log:export", ".bench.tsv")
    params:
        preset=PRESET,
        overrides=overrides("export"),
    wildcard_constraints:
        dataset="cifar10|cifar100",
    conda:
        "../envs/mlonas.yaml"
    shell:
        "mlonas export --preset {params.preset}{params.overrides}"
        " --dataset {wildcards.dataset}"
        " --method {wildcards.method} --seed {wildcards.seed} --alphas {input.alphas}"
        " --out {output.cell} --log {log}"
