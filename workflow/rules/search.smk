# search: one architecture search of method x dataset x seed. checkpoint.pt in the same
# directory is deliberately not an output: Snakemake deletes outputs before a job runs,
# and the checkpoint must survive a killed job so the rerun resumes from it.
# Every CIFAR search gets the other CIFAR dataset's split (`datasets.<d>.unlabeled`): SGL
# reads its training images as unlabeled data; the other schemes ignore it. dvc.yaml
# cannot make a dependency depend on the method, so both drivers declare it for all.
rule search:
    input:
        split=pattern("split"),
        unlabeled=lambda wc: CFG.split_path(CFG.unlabeled_source(wc.dataset)),
    output:
        alphas=pattern("search", "alphas.json"),
        history=pattern("search", "history.csv"),
        provenance=pattern("search", "provenance.json"),
        metrics=pattern("search", "metrics.json"),
    log:
        pattern("log:search", ".log"),
    benchmark:
        pattern("log:search", ".bench.tsv")
    params:
        preset=PRESET,
        out=lambda wc: CFG.search_dir(wc.dataset, wc.method, wc.seed),
        tracked=lambda wc: CFG.tracked("search", dataset=wc.dataset, method=wc.method),
        overrides=lambda wc: overrides("search", dataset=wc.dataset, method=wc.method),
    wildcard_constraints:
        dataset="cifar10|cifar100",
    resources:
        gpu=0 if CFG.is_demo else 1,
        mem_mb=4000 if CFG.is_demo else 32000,
    conda:
        "../envs/mlonas.yaml"
    shell:
        "mlonas search --preset {params.preset}{params.overrides}"
        " --dataset {wildcards.dataset}"
        " --method {wildcards.method} --seed {wildcards.seed} --split {input.split}"
        " --unlabeled-split {input.unlabeled} --out {params.out} --log {log}"
