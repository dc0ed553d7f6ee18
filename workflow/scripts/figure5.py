from jacobian_spectrum.common.logs import start_log

log = start_log(snakemake.log[0])
from jacobian_spectrum.figures.paper import figure5

summary = figure5(snakemake.input.init, snakemake.input.final, [snakemake.output.png, *snakemake.output.other])
log.info("figure 5: %s", summary)
