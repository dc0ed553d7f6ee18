from jacobian_spectrum.common.logs import start_log

log = start_log(snakemake.log[0])
from jacobian_spectrum.figures.analysis import alignment_figure

runs = dict(zip(snakemake.params.runs, zip(snakemake.input.measurements, snakemake.input.trajectories)))
rows = alignment_figure(
    runs, [snakemake.output.png, *snakemake.output.other], snakemake.output.data, snakemake.params.caption
)
log.info("alignment over training: %d rows (runs x tracked epochs) -> %s", len(rows), snakemake.output.data)
