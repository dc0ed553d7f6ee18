from jacobian_spectrum.common.logs import start_log

log = start_log(snakemake.log[0])
from jacobian_spectrum.analysis.measure import measure_run

spectra = {k: snakemake.input[k] for k in ("init", "final", "ref_train", "ref_test")}
m = measure_run(
    snakemake.input.trajectory,
    spectra,
    snakemake.output[0],
    snakemake.params.info_dim,
    {"run": snakemake.wildcards.run, "reference_epoch": snakemake.params.reference_epoch},
    tracked=dict(zip(snakemake.params.tracked_epochs, snakemake.input.tracked)),
    theorem=dict(snakemake.params.theorem),
)
log.info("run %s: alignment (rows J_init, J_final) %s", snakemake.wildcards.run, m.alignment.round(4).tolist())
if m.tracking is not None:
    t = m.tracking
    log.info("tracked epochs %s: ||P_I y||/||y|| %s", t.epochs.tolist(), t.labels["labels"][:, 0].round(4).tolist())
