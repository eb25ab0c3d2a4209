# mlonas: split -> search -> export -> evaluate -> tables.
#   snakemake --cores all results/table2.csv            (papers' protocol, params.yaml)
#   snakemake --cores all --config preset=demo          (offline demo, artifacts under demo/)
# Rules hold no logic: each is one `mlonas <stage>` call. Targets come from the job
# table in mlonas.config; tests/test_workflow.py checks dvc.yaml against the same jobs.
import sys

from snakemake.utils import min_version, validate

from mlonas.config import TABLES, Config, deep_merge, load_raw, overrides_of, resolve_preset
from mlonas.errors import MlonasError
from mlonas.report.figures import report_targets

min_version("9.0")


configfile: "params.yaml"


# `snakemake --report results/report.html` (after a run): tables, cells, alpha trajectories
# and curves of every search and evaluation; captions in workflow/report/.
report: "workflow/report/workflow.rst"


# `--config preset=demo` selects a preset; it is not a key of params.yaml itself.
# Whatever else --config/--configfile put over params.yaml is an override: it is merged
# over the preset here and handed to each job that reads its key as `--set KEY=VALUE`
# (params.overrides in each rule's command; workflow/rules/common.smk), so the jobs run
# exactly what Snakemake schedules and tracks, and their provenance records it. Jobs read
# params.yaml themselves; without --set they would not see an override at all. Each rule's
# `tracked` param holds the values its job reads (mlonas.config.STAGE_PARAMS), which
# Snakemake's params trigger compares. mlonas' checks run first: they stop with one line
# naming the key (blaming the override when the override is at fault); Snakemake's
# validate then checks the same schema.
PRESET = config.pop("preset", "paper")
try:
    RAW = load_raw("params.yaml")
    OVERRIDES = overrides_of(config, RAW)
    CFG = Config(resolve_preset(RAW, PRESET, overrides=OVERRIDES))
except MlonasError as exc:
    sys.exit(f"mlonas: error: {exc}")  # one line, as the jobs print it; no traceback
validate(deep_merge(RAW, OVERRIDES), "workflow/schemas/params.schema.yaml")



wildcard_constraints:
    dataset="cifar10|cifar100|imagenet",
    source="cifar10|cifar100",
    method="[a-z0-9][a-z0-9-]*",
    seed=r"\d+",
    table="|".join(TABLES),


rule all:
    default_target: True
    input:
        [CFG.table_path(t, ext) for t in CFG.tables() for ext in ("csv", "md")],
        # the report's figures and table pages (cheap, torch-free jobs; workflow/rules/report.smk)
        report_targets(CFG),


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/report.smk"
