# evaluate: train a searched cell from scratch at the papers' protocol, or its method's
# where methods.<m>.eval overrides it (tracked per job). As for search, checkpoint.pt
# next to the outputs is not declared, so a killed run resumes.
rule train_cifar:
    input:
        genotype=pattern("cell"),
        split=pattern("split"),
    output:
        metrics=pattern("eval", "metrics.json"),
        history=pattern("eval", "history.csv"),
        model=pattern("eval", "model.pt"),
    log:
        pattern("log:train-cifar", ".log"),
    benchmark:
        pattern("log:train-cifar", ".bench.tsv")
    params:
        preset=PRESET,
        out=lambda wc: CFG.eval_dir(wc.dataset, wc.method, wc.seed),
        tracked=lambda wc: CFG.tracked("train-cifar", dataset=wc.dataset, method=wc.method),
        overrides=lambda wc: overrides("train-cifar", dataset=wc.dataset, method=wc.method),
    wildcard_constraints:
        dataset="cifar10|cifar100",
    resources:
        gpu=0 if CFG.is_demo else 1,
        mem_mb=4000 if CFG.is_demo else 32000,
    conda:
        "../envs/mlonas.yaml"
    shell:
        "mlonas train-cifar --preset {params.preset}{params.overrides}"
        " --dataset {wildcards.dataset}"
        " --method {wildcards.method} --seed {wildcards.seed} --genotype {input.genotype}"
        " --split {input.split} --out {params.out} --log {log}"


rule train_imagenet:
    input:
        genotype=pattern("cell", dataset="{source}"),
        split=pattern("split", dataset="imagenet"),
    output:
        metrics=pattern("imagenet_eval", "metrics.json"),
        history=pattern("imagenet_eval", "history.csv"),
        model=pattern("imagenet_eval", "model.pt"),
    log:
        pattern("log:train-imagenet", ".log"),
    benchmark:
        pattern("log:train-imagenet", ".bench.tsv")
    params:
        preset=PRESET,
        out=lambda wc: CFG.imagenet_eval_dir(wc.source, wc.method, wc.seed),
        tracked=lambda wc: CFG.tracked("train-imagenet", method=wc.method),
        overrides=lambda wc: overrides("train-imagenet", method=wc.method),
    # a method's eval.imagenet override may set its own nproc
    threads: lambda wc: CFG.eval_settings("imagenet", wc.method).nproc
    resources:
        gpu=lambda wc: 0 if CFG.is_demo else CFG.eval_settings("imagenet", wc.method).nproc,
        mem_mb=4000 if CFG.is_demo else 256000,
    conda:
        "../envs/mlonas.yaml"
    shell:
        "mlonas train-imagenet --preset {params.preset}{params.overrides}"
        " --source {wildcards.source}"
        " --method {wildcards.method} --seed {wildcards.seed} --genotype {input.genotype}"
        " --split {input.split} --out {params.out} --log {log}"
