from jacobian_spectrum.common.logs import start_log

start_log(snakemake.log[0])
import torch

from jacobian_spectrum.jacobian.chunk import compute_chunk

torch.set_num_threads(snakemake.threads)
compute_chunk(
    checkpoint=snakemake.params.checkpoint,
    subset_path=snakemake.input.subset,
    split=snakemake.wildcards.split,
    chunk=int(snakemake.wildcards.chunk),
    chunk_size=snakemake.params.chunk_size,
    out_path=snakemake.output[0],
    dtype=snakemake.params.dtype,
    device=snakemake.params.device,
    normalisation=snakemake.params.normalisation,
    allow_degenerate=snakemake.params.allow_degenerate,
)
