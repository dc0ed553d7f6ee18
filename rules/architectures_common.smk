# Helpers of the architecture table (rules/architectures.smk): each network's config, and the
# files and targets the table reads and asks for.
from pathlib import Path

from snakemake.utils import validate

from jacobian_spectrum.architectures.configs import architecture_configs


include: "codeversion.smk"


SCHEMA = workflow.source_path("../workflow/schemas/config.schema.yaml")
# the shared sections first (the schema fills their defaults), then each network's whole config
validate(config, SCHEMA)
ARCHITECTURES = architecture_configs(config)
for arch_config in ARCHITECTURES.values():
    validate(arch_config, SCHEMA)
R = config.get("results", "results")
ARCHIVE_OWNER = next(iter(ARCHITECTURES))  # one network's module unpacks the shared image archive


def architecture_files(arch):
    """What the table reads of one network: its subset, J_init's spectrum, and per run the
    measurements, trajectory and J_final's spectrum."""
    net = ARCHITECTURES[arch]
    out = f"{R}/{arch}"
    files = {
        "subset": f"{out}/data/subset.h5",
        "checkpoint": f"{out}/init/checkpoints/epoch0.pt",
        "init": f"{out}/init/spectrum/train_epoch0.h5",
    }
    for role in ("clean", "corrupted"):
        run = config["architecture_table"][role]
        epochs = net["runs"][run]["epochs"]
        files[f"{role}_measurements"] = f"{out}/runs/{run}/measurements.h5"
        files[f"{role}_trajectory"] = f"{out}/runs/{run}/trajectory.h5"
        files[f"{role}_final"] = f"{out}/runs/{run}/spectrum/train_epoch{epochs}.h5"
    return files


# Figures 2 and 4 (Sections 2.1 and 3.3) do not depend on the network: made once per config, not per network
THEORY_FIGURES = ("fig2.", "fig4.")


def architecture_targets():
    """Every network's own targets (its module's rule all) but the synthetic experiments' figures,
    then the table and figure."""
    targets = [
        path
        for arch in ARCHITECTURES
        for path in getattr(rules, f"{arch}_all").input
        if not Path(path).name.startswith(THEORY_FIGURES)
    ]
    return targets + list(rules.architecture_table.output)
