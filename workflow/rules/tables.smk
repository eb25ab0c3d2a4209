# tables: mean/std/n over seeds beside the papers' reported numbers (+ Markdown).
rule table:
    input:
        lambda wc: CFG.table_inputs(wc.table),
    output:
        csv=report(
            pattern("table", ext="csv"),
            caption="../report/table_csv.rst",
            category="1. Tables",
            labels={"table": "{table}", "file": "csv"},
        ),
        md=pattern("table", ext="md"),
    log:
        pattern("log:table", ".log"),
    benchmark:
        pattern("log:table", ".bench.tsv")
    params:
        preset=PRESET,
        tracked=lambda wc: CFG.tracked("table", table=wc.table),
        overrides=lambda wc: overrides("table", table=wc.table),
    conda:
        "../envs/mlonas.yaml"
    shell:
        "mlonas table --preset {params.preset}{params.overrides}"
        " --table {wildcards.table}"
        " --out-csv {output.csv} --out-md {output.md} --log {log}"
