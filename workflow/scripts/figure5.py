from jacobian_spectrum.logs import start_log

log = start_log(snakemake.log[0])
from jacobian_spectrum.figures import figure5

summary = figure5(snakemake.input.init, snakemake.input.final, [snakemake.output.png, *snakemake.output.other])
log.info("figure 5: %s", summary)
