from jacobian_spectrum.common.logs import start_log

log = start_log(snakemake.log[0])
from jacobian_spectrum.figures.analysis import cutoff_figure

at_info_dim = cutoff_figure(
    dict(zip(snakemake.params.runs, snakemake.input.measurements)),
    snakemake.params.corruption,
    {int(k): v for k, v in snakemake.params.table_runs.items()},
    snakemake.params.corruption_runs,
    snakemake.params.info_dim,
    [snakemake.output.png, *snakemake.output.other],
    snakemake.output.data,
    snakemake.params.caption,
)
log.info("||P_N y||^2/||y||^2 at r = info_dim (Figure 9): %s", at_info_dim)
