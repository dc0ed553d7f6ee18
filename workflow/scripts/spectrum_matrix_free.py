from jacobian_spectrum.common.logs import start_log

start_log(snakemake.log[0])
from jacobian_spectrum.spectrum.matrix_free import spectrum_matrix_free

spectrum_matrix_free(
    snakemake.params.checkpoint,
    snakemake.input.subset,
    snakemake.wildcards.split,
    snakemake.output[0],
    dict(snakemake.params.settings),
    snakemake.threads,
    snakemake.params.device,
    normalisation=snakemake.params.normalisation,
    allow_degenerate=snakemake.params.allow_degenerate,
)
