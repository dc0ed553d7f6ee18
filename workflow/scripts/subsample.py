from jacobian_spectrum.common.logs import start_log

log = start_log(snakemake.log[0])
from jacobian_spectrum.data.subset import build_subset, write_subset

subset, source = build_subset(snakemake.params.dataset)
write_subset(snakemake.output[0], subset, source, snakemake.params.dataset)
log.info(
    "subset of %s: classes %s, %d train and %d test images -> %s",
    source.name,
    subset.class_names,
    len(subset.y["train"]),
    len(subset.y["test"]),
    snakemake.output[0],
)
