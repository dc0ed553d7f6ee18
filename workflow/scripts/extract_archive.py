from jacobian_spectrum.common.logs import start_log

log = start_log(snakemake.log[0])
from jacobian_spectrum.data.archive import extract_archive

log.info("checking and unpacking %s into %s", snakemake.input[0], snakemake.output[0])
info = extract_archive(snakemake.input[0], snakemake.output[0], snakemake.params.sha256)
log.info(
    "%d classes; images per class: train %s, test %s",
    len(info.class_names),
    dict(zip(info.class_names, info.per_class["train"].tolist())),
    dict(zip(info.class_names, info.per_class["test"].tolist())),
)
