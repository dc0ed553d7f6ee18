from jacobian_spectrum.common.logs import start_log

log = start_log(snakemake.log[0])
from jacobian_spectrum.figures.paper import scale_statement, write_table

scale = scale_statement(snakemake.input.subset, snakemake.input.checkpoint, snakemake.params.info_dim)
values = write_table(
    int(snakemake.wildcards.number), snakemake.input.measurements, dict(snakemake.output), scale, snakemake.params.run
)
log.info("table %s: %s", snakemake.wildcards.number, values.tolist())
