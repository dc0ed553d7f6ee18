from jacobian_spectrum.common.logs import start_log

log = start_log(snakemake.log[0])
from jacobian_spectrum.figures.paper import comparison_table, measured_network, scale_statement

scale = scale_statement(snakemake.input.subset, snakemake.input.checkpoint, snakemake.params.info_dim)
network, n = measured_network(snakemake.input.subset, snakemake.input.checkpoint)
text = comparison_table(
    dict(zip(snakemake.params.numbers, snakemake.input.tables)),
    snakemake.output[0],
    scale,
    {int(number): settings for number, settings in snakemake.params.settings.items()},
    network,
    n,
)
log.info("%s", text)
