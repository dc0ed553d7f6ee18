from jacobian_spectrum.common.logs import start_log

log = start_log(snakemake.log[0])
from jacobian_spectrum.figures.paper import residual_figure

summary = residual_figure(
    int(snakemake.wildcards.number),
    snakemake.input.measurements,
    snakemake.input.trajectory,
    snakemake.params.plot["window"],
    [snakemake.output.png, *snakemake.output.other],
    snakemake.params.test_panel,
)
log.info("figure %s: %s", snakemake.wildcards.number, summary)
