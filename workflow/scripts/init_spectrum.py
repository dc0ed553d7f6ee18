from jacobian_spectrum.common.logs import start_log

log = start_log(snakemake.log[0])
import torch

from jacobian_spectrum.analysis.measure import init_alignment
from jacobian_spectrum.data.subset import read_split
from jacobian_spectrum.figures.analysis import init_spectrum_figure, write_init_row
from jacobian_spectrum.figures.paper import scale_statement
from jacobian_spectrum.spectrum.store import read_spectrum
from jacobian_spectrum.train.loop import predict
from jacobian_spectrum.train.models import load_checkpoint

info_dim = snakemake.params.info_dim
data = read_split(snakemake.input.subset, "train")
model, _ = load_checkpoint(snakemake.input.checkpoint, normalisation=snakemake.params.normalisation)
torch.set_num_threads(snakemake.threads)
a = init_alignment(
    data.y, predict(model, torch.from_numpy(data.x)).numpy(), read_spectrum(snakemake.input.spectrum), info_dim
)
scale = scale_statement(snakemake.input.subset, snakemake.input.checkpoint, info_dim)
init_spectrum_figure(
    a,
    info_dim,
    snakemake.params.classes,
    [snakemake.output.png, *snakemake.output.other],
    snakemake.output.data,
    snakemake.params.caption,
)
write_init_row(a, {"csv": snakemake.output.table_csv, "md": snakemake.output.table_md}, scale)
log.info(
    "Table 1's J_init row (%s): %s",
    scale,
    dict(zip(("P_I y", "P_N y", "J_I^+ y", "P_I r0", "P_N r0", "J_I^+ r0"), a.row.round(4))),
)
