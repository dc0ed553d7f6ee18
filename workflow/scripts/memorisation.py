from jacobian_spectrum.common.logs import start_log

log = start_log(snakemake.log[0])
from jacobian_spectrum.figures.analysis import memorisation_figure

runs = dict(zip(snakemake.params.runs, zip(snakemake.input.measurements, snakemake.input.trajectories)))
rho = memorisation_figure(
    runs,
    snakemake.params.corruption,
    [snakemake.output.png, *snakemake.output.other],
    snakemake.output.data,
    snakemake.params.caption,
)
log.info("memorisation: Spearman rank correlations of J's label energy on N: %s", rho)
