from jacobian_spectrum.common.logs import start_log

log = start_log(snakemake.log[0])
from jacobian_spectrum.figures.analysis import theorem_figure

runs = dict(zip(snakemake.params.runs, zip(snakemake.input.measurements, snakemake.input.trajectories)))
rho = theorem_figure(
    runs,
    snakemake.params.corruption,
    snakemake.params.plot["window"],
    [snakemake.output.png, *snakemake.output.other],
    snakemake.output.data,
    snakemake.params.caption,
)
log.info("Spearman rank correlation of the minimised bound with the final test error: %s", rho)
