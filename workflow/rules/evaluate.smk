# evaluate: train a searched cell from scratch at the papers' protocol. As for search,
# checkpoint.pt next to the outputs is not declared, so a killed run resumes.
rule train_cifar:
    input:
        genotype=CFG.path("results/cells/{dataset}/{method}/seed{seed}.json"),
        split=CFG.path("data/splits/{dataset}.json"),
    output:
        metrics=CFG.path("results/eval/{dataset}/{method}/seed{seed}/metrics.json"),
        history=CFG.path("results/eval/{dataset}/{method}/seed{seed}/history.csv"),
        model=CFG.path("results/eval/{dataset}/{method}/seed{seed}/model.pt"),
    log:
        CFG.path("logs/train-cifar/{dataset}/{method}/seed{seed}.log"),
    benchmark:
        CFG.path("logs/train-cifar/{dataset}/{method}/seed{seed}.bench.tsv")
    params:
        preset=PRESET,
        out=lambda wc: CFG.eval_dir(wc.dataset, wc.method, wc.seed),
        tracked=lambda wc: CFG.tracked("train-cifar", dataset=wc.dataset),
        overrides=lambda wc: overrides("train-cifar", dataset=wc.dataset),
    wildcard_constraints:
        dataset="cifar10|cifar100",
    resources:
        gpu=0 if CFG.is_demo else 1,
        mem_mb=4000 if CFG.is_demo else 32000,
        runtime=30 if CFG.is_demo else 4320,
    conda:
        "../envs/mlonas.yaml"
    shell:
        "mlonas train-cifar --preset {params.preset}{params.overrides}"
        " --dataset {wildcards.dataset}"
        " --method {wildcards.method} --seed {wildcards.seed} --genotype {input.genotype}"
        " --split {input.split} --out {params.out} --log {log}"


rule train_imagenet:
    input:
        genotype=CFG.path("results/cells/{source}/{method}/seed{seed}.json"),
        split=CFG.path("data/splits/imagenet.json"),
    output:
        metrics=CFG.path("results/eval/imagenet/{source}/{method}/seed{seed}/metrics.json"),
        history=CFG.path("results/eval/imagenet/{source}/{method}/seed{seed}/history.csv"),
        model=CFG.path("results/eval/imagenet/{source}/{method}/seed{seed}/model.pt"),
    log:
        CFG.path("logs/train-imagenet/{source}/{method}/seed{seed}.log"),
    benchmark:
        CFG.path("logs/train-imagenet/{source}/{method}/seed{seed}.bench.tsv")
    params:
        preset=PRESET,
        out=lambda wc: CFG.imagenet_eval_dir(wc.source, wc.method, wc.seed),
        tracked=CFG.tracked("train-imagenet"),
        overrides=overrides("train-imagenet"),
    threads: CFG.eval_settings("imagenet").nproc
    resources:
        gpu=0 if CFG.is_demo else CFG.eval_settings("imagenet").nproc,
        mem_mb=4000 if CFG.is_demo else 256000,
        runtime=30 if CFG.is_demo else 10080,
    conda:
        "../envs/mlonas.yaml"
    shell:
        "mlonas train-imagenet --preset {params.preset}{params.overrides}"
        " --source {wildcards.source}"
        " --method {wildcards.method} --seed {wildcards.seed} --genotype {input.genotype}"
        " --split {input.split} --out {params.out} --log {log}"
