# export: alphas -> genotype JSON (the base's derivation rule) + a figure of both cells.
rule export:
    input:
        alphas=CFG.path("results/search/{dataset}/{method}/seed{seed}/alphas.json"),
    output:
        cell=CFG.path("results/cells/{dataset}/{method}/seed{seed}.json"),
        figure=report(
            CFG.path("results/cells/{dataset}/{method}/seed{seed}.png"),
            caption="../report/cells.rst",
            category="2. Searches",
            subcategory="{dataset}",
            labels={"method": "{method}", "seed": "{seed}", "figure": "cells"},
        ),
    log:
        CFG.path("logs/export/{dataset}/{method}/seed{seed}.log"),
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
