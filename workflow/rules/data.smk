# split: fetch (integrity-checked) or verify a dataset, write its search-train/val split.
# The single producer of each dataset's raw files: every consumer depends on its split.
rule split:
    output:
        pattern("split"),
    log:
        pattern("log:split", ".log"),
    benchmark:
        pattern("log:split", ".bench.tsv")
    params:
        preset=PRESET,
        tracked=lambda wc: CFG.tracked("split", dataset=wc.dataset),
        overrides=lambda wc: overrides("split", dataset=wc.dataset),
    resources:
        mem_mb=4000,
    conda:
        "../envs/mlonas.yaml"
    shell:
        "mlonas split --preset {params.preset}{params.overrides}"
        " --dataset {wildcards.dataset}"
        " --out {output} --log {log}"
