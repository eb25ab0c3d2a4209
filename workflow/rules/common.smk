# Input and params functions shared by the rules (the Snakemake catalog's common.smk).
import shlex


def overrides(stage, **wildcards):
    """` --set KEY=VALUE` arguments of the overrides on keys the job reads.

    Only those (CFG.job_overrides): an override of search.lr reaches every search and
    changes its command, but leaves splits, evaluations and tables as they were.
    """
    return "".join(f" --set {shlex.quote(a)}" for a in CFG.job_overrides(stage, **wildcards))
