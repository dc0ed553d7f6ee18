from jacobian_spectrum.common.logs import start_log

log = start_log(snakemake.log[0])
from jacobian_spectrum.figures.paper import figure9

runs = {
    run: (m, t) for run, m, t in zip(snakemake.params.runs, snakemake.input.measurements, snakemake.input.trajectories)
}
rows = figure9(
    runs,
    snakemake.params.corruption,
    snakemake.params.plot["window"],
    [snakemake.output.png, *snakemake.output.other],
    snakemake.output.data,
)
log.info("figure 9: %s", rows)
