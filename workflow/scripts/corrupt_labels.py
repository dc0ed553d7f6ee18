from jacobian_spectrum.common.logs import start_log

log = start_log(snakemake.log[0])
from jacobian_spectrum.data.corruption import write_labels

level = float(snakemake.wildcards.level)
write_labels(snakemake.output[0], snakemake.input[0], level, snakemake.params.seed)
log.info("labels at corruption %g -> %s", level, snakemake.output[0])
