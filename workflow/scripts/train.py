from jacobian_spectrum.common.logs import start_log

log = start_log(snakemake.log[0])
from jacobian_spectrum.train.loop import train_run

train_run(
    run=snakemake.wildcards.run,
    subset_path=snakemake.input.subset,
    labels_path=snakemake.input.labels,
    init_path=snakemake.input.init,
    run_config=snakemake.params.settings,
    training=snakemake.params.training,
    checkpoint_epochs=snakemake.params.checkpoint_epochs,
    device=snakemake.params.device,
    threads=snakemake.threads,
    resume_path=snakemake.params.resume,
    trajectory_path=snakemake.output.trajectory,
    checkpoint_dir=snakemake.output.checkpoints,
    normalisation=snakemake.params.normalisation,
)
