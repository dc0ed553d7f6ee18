from jacobian_spectrum.common.logs import start_log

start_log(snakemake.log[0])
from jacobian_spectrum.spectrum.methods import spectrum_of_file

spectrum_of_file(
    snakemake.input.J,
    snakemake.output[0],
    dict(snakemake.params.settings),
    snakemake.params.device,
    snakemake.params.allow_degenerate,
)
