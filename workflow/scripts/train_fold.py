from jacobian_spectrum.common.logs import start_log

log = start_log(snakemake.log[0])
from jacobian_spectrum.train.folds import train_fold_run

train_fold_run(
    run=snakemake.wildcards.run,
    subset_path=snakemake.input.subset,
    labels_path=snakemake.input.labels,
    init_path=snakemake.input.init,
    trajectory_path=snakemake.input.trajectory,
    run_config=snakemake.params.settings,
    training=snakemake.params.training,
    fold=int(snakemake.wildcards.fold),
    folds=snakemake.params.folds,
    seed=snakemake.params.seed,
    window=snakemake.params.window,
    device=snakemake.params.device,
    threads=snakemake.threads,
    out_path=snakemake.output[0],
    normalisation=snakemake.params.normalisation,
)
