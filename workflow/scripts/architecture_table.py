from jacobian_spectrum.common.logs import start_log

log = start_log(snakemake.log[0])
from jacobian_spectrum.architectures.table import architecture_table

text = architecture_table(
    snakemake.params.networks,
    dict(snakemake.input),
    snakemake.params.info_dim,
    dict(snakemake.output),
)
log.info("%s", text)
