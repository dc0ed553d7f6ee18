from jacobian_spectrum.common.logs import start_log

log = start_log(snakemake.log[0])
from jacobian_spectrum.train.models import count_parameters, initialise

model, spec = initialise(snakemake.input[0], snakemake.params.model, snakemake.output[0])
log.info("initialised %s (%d parameters) -> %s", spec, count_parameters(model), snakemake.output[0])
