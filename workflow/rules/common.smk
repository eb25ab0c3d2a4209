# Input and params functions shared by the rules (the Snakemake catalog's common.smk).
#
# Resources have one owner each. The rules declare what a job needs wherever it runs
# (`gpu`, eval.imagenet.nproc for ImageNet from params.yaml, and `mem_mb`, both scaled
# down for the demo). The SLURM profile (profiles/slurm) declares cluster policy only:
# `runtime` (one attempt's wall-time limit, chosen together with `retries` so that the
# attempts cover the papers' GPU-days; it means nothing locally, so no rule sets one),
# CPUs per GPU, nodes, partitions. tests/test_cluster.py checks neither sets the other's.
import os
import shlex

from mlonas.config import PATHS


def pattern(name, suffix="", **fields):
    """The preset's root + ``PATHS[name]``, wildcards left as wildcards, + ``suffix``: an
    extension (".log") or a file in the directory ("alphas.json").

    mlonas.config.PATHS is the one definition of where artifacts live (the Config methods
    and these rules share it; dvc.yaml is checked against it). ``fields`` fills or renames
    some wildcards: ``pattern("cell", dataset="{source}")`` is a transfer's cell.
    """
    template = PATHS[name]
    for key, value in fields.items():
        template = template.replace("{" + key + "}", value)
    if suffix and not suffix.startswith("."):
        return CFG.path(os.path.join(template, suffix))
    return CFG.path(f"{template}{suffix}")


def overrides(stage, **wildcards):
    """` --set KEY=VALUE` arguments of the overrides on keys the job reads.

    Only those (CFG.job_overrides): an override of search.lr reaches every search and
    changes its command, but leaves splits, evaluations and tables as they were.
    """
    return "".join(f" --set {shlex.quote(a)}" for a in CFG.job_overrides(stage, **wildcards))
