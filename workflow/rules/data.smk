# split: fetch (integrity-checked) or verify a dataset, write its search-train/val split.
# The single producer of each dataset's raw files: every consumer depends on its split.
rule split:
    output:
        CFG.path("data/splits/{dataset}.json"),
    log:
        CFG.path("logs/split/{dataset}.log"),
    benchmark:
        CFG.path("logs/split/{dataset}.bench.tsv")
    params:
        preset=PRESET,
        dataset=lambda wc: CFG.dataset(wc.dataset),
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/mlonas.yaml"
    shell:
        "mlonas split --preset {params.preset} --dataset {wildcards.dataset}"
        " --out {output} --log {log}"
