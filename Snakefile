# mlonas: split -> search -> export -> evaluate -> tables.
#   snakemake --cores all results/table2.csv            (papers' protocol, params.yaml)
#   snakemake --cores all --config preset=demo          (offline demo, artifacts under demo/)
# Rules hold no logic: each is one `mlonas <stage>` call. Targets come from the job
# table in mlonas.config; tests/test_workflow.py checks dvc.yaml against the same jobs.
from snakemake.utils import min_version, validate

from mlonas.config import Config, resolve_preset
from mlonas.report.figures import report_targets

min_version("9.0")


configfile: "params.yaml"


# `snakemake --report results/report.html` (after a run): tables, cells, alpha trajectories
# and curves of every search and evaluation; captions in workflow/report/.
report: "workflow/report/workflow.rst"


# `--config preset=demo` selects a preset; it is not a key of params.yaml itself.
# mlonas' checks first: they stop with one line naming the key (the same as `mlonas`
# prints); Snakemake's validate then checks the same schema.
PRESET = config.pop("preset", "paper")
CFG = Config(resolve_preset(config, PRESET))
validate(config, "workflow/schemas/params.schema.yaml")


wildcard_constraints:
    dataset="cifar10|cifar100|imagenet",
    source="cifar10|cifar100",
    method="[a-z0-9][a-z0-9-]*",
    seed=r"\d+",
    table=r"table[234]",


rule all:
    default_target: True
    input:
        [CFG.table_path(t, ext) for t in CFG.tables() for ext in ("csv", "md")],
        # the report's figures and table pages (cheap, torch-free jobs; workflow/rules/report.smk)
        report_targets(CFG),


include: "workflow/rules/data.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/report.smk"
