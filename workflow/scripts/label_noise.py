from jacobian_spectrum.common.logs import start_log

log = start_log(snakemake.log[0])
from jacobian_spectrum.figures.label_noise import label_noise

runs = dict(
    zip(snakemake.params.runs, zip(snakemake.input.measurements, snakemake.input.trajectories, snakemake.input.labels))
)
out = {
    "csv": snakemake.output.csv,
    "md": snakemake.output.md,
    "figures": [snakemake.output.png, *snakemake.output.other],
}
rows = label_noise(
    runs, snakemake.params.corruption, snakemake.params.window, out, snakemake.params.caption, snakemake.params.folds
)
for row in rows:
    log.info("%s", row)
