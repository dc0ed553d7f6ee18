# Training stage: one shared initialisation, then every configured run from it.


rule initialise:
    input:
        f"{R}/data/subset.h5",
    output:
        f"{R}/init/checkpoints/epoch0.pt",
    params:
        model=config["model"],
        code=code_version("models.py"),
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    log:
        f"{R}/logs/train/initialise.log",
    script:
        "../workflow/scripts/initialise.py"


rule train:
    input:
        subset=f"{R}/data/subset.h5",
        labels=lambda w: labels_path(w.run),
        init=f"{R}/init/checkpoints/epoch0.pt",
    output:
        trajectory=f"{R}/runs/{{run}}/trajectory.h5",
        checkpoints=directory(f"{R}/runs/{{run}}/checkpoints"),
    params:
        settings=lambda w: RUNS[w.run],
        training=config["training"],
        checkpoint_epochs=lambda w: run_epochs_needed(RUNS[w.run]),
        device=config["device"],
        resume=lambda w: f"{R}/runs/{w.run}/resume/state.pt",
        code=code_version("models.py", "train.py", "data.py"),
    threads: 2
    resources:
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=lambda w, attempt: 120 * attempt,
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    log:
        f"{R}/logs/train/{{run}}.log",
    script:
        "../workflow/scripts/train.py"
