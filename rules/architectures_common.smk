# Helpers of the architecture table (rules/architectures.smk): each network's config, and the
# files and targets the table reads and asks for.
from snakemake.utils import validate

from jacobian_spectrum.architectures.configs import architecture_configs, table_jacobians


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
    """What the table reads of one network: its subset and initial checkpoint, J_init's spectrum,
    and per run the trajectory and J_final's spectrum (the Jacobians of table_jacobians)."""
    out = f"{R}/{arch}"
    files = {
        "subset": f"{out}/data/subset.h5",
        "checkpoint": f"{out}/init/checkpoints/epoch0.pt",
    }
    for (owner, split, epoch), runs in table_jacobians(ARCHITECTURES[arch], config["architecture_table"]).items():
        path = f"{out}/{owner}/spectrum/{split}_epoch{epoch}.h5"
        if owner == "init":
            files["init"] = path
        for role in runs:
            files[f"{role}_final"] = path
            files[f"{role}_trajectory"] = f"{out}/{owner}/trajectory.h5"
    return files


def architecture_targets():
    """The table and figure, which ask of each network only what they read: its two trainings
    and three training spectra. A network's whole workflow (test spectra, measurements, the
    paper's figures) is its own target, e.g. `snakemake resnet18_all`."""
    return list(rules.architecture_table.output)
