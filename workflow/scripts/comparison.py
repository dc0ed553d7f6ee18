from jacobian_spectrum.common.logs import start_log

log = start_log(snakemake.log[0])
from jacobian_spectrum.figures.paper import comparison_table, scale_statement

scale = scale_statement(snakemake.input.subset, snakemake.input.checkpoint, snakemake.params.info_dim)
text = comparison_table(dict(zip(snakemake.params.numbers, snakemake.input.tables)), snakemake.output[0], scale)
log.info("%s", text)
