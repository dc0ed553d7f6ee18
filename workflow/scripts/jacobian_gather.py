from jacobian_spectrum.common.logs import start_log

start_log(snakemake.log[0])
from jacobian_spectrum.jacobian.store import gather

gather(
    snakemake.input, snakemake.output[0], {"owner": snakemake.wildcards.owner, "epoch": int(snakemake.wildcards.epoch)}
)
