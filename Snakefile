# Reproduces Oymak, Fabian, Li, Soltanolkotabi (arXiv 1906.05392) end to end.
# All logic lives in src/jacobian_spectrum; this file and rules/ are the wiring.
from snakemake.utils import min_version

min_version("9.0")


# The embedded default, unless the user names config files (--configfile): those then replace
# it instead of being merged into it, so that a config's runs are exactly the runs it lists.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


report: "workflow/report/workflow.rst"


# An architecture-table config (architectures: one entry per network) runs this workflow once
# per network as a module (rules/architectures.smk); any other config runs it once.
if "architectures" in config:

    include: "rules/architectures.smk"

    rule all:
        default_target: True
        input:
            architecture_targets(),

else:

    include: "rules/common.smk"

    wildcard_constraints:
        run="[A-Za-z0-9_\-]+",
        owner="init|runs/[A-Za-z0-9_\-]+",
        split="train|test",
        epoch="[0-9]+",
        chunk="[0-9]+",
        level="[0-9.]+",
        fold="[0-9]+",

    rule all:
        default_target: True
        input:
            all_targets(),

    include: "rules/data.smk"
    include: "rules/train.smk"
    include: "rules/jacobian.smk"
    include: "rules/spectrum.smk"
    include: "rules/theory.smk"
    include: "rules/figures.smk"
    include: "rules/analysis.smk"
