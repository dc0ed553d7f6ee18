# Training stage: one shared initialisation, then every configured run from it.


rule initialise:
    input:
        f"{R}/data/subset.h5",
        # model.weights: a changed weights file re-initialises (and so reruns everything after)
        weights=config["model"]["weights"] or [],
    output:
        f"{R}/init/checkpoints/epoch0.pt",
    log:
        f"{R}/logs/train/initialise.log",
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    params:
        model=config["model"],
        code=code_version("initialise.py"),
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
    log:
        f"{R}/logs/train/{{run}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{run}}.tsv"
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    threads: config["training"]["threads"]
    resources:
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=lambda w, attempt: 120 * attempt,
    params:
        settings=lambda w: RUNS[w.run],
        training=config["training"],
        checkpoint_epochs=lambda w: checkpoint_epochs(w.run),
        device=config["device"],
        resume=lambda w: f"{R}/runs/{w.run}/resume/state.pt",
        normalisation=config["model"]["normalisation"],
        code=code_version("train.py"),
    script:
        "../workflow/scripts/train.py"


# cleanlab's out-of-fold outputs (analysis.label_noise.cleanlab): the run's network and recipe
# trained without one fold, up to the full run's epoch of lowest test error
rule train_fold:
    input:
        subset=f"{R}/data/subset.h5",
        labels=lambda w: labels_path(w.run),
        init=f"{R}/init/checkpoints/epoch0.pt",
        trajectory=f"{R}/runs/{{run}}/trajectory.h5",
    output:
        f"{R}/runs/{{run}}/folds/fold{{fold}}.h5",
    log:
        f"{R}/logs/train/{{run}}_fold{{fold}}.log",
    benchmark:
        f"{R}/benchmarks/train/{{run}}_fold{{fold}}.tsv"
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    threads: config["training"]["threads"]
    resources:
        mem_mb=lambda w, attempt: 4000 * attempt,
        runtime=lambda w, attempt: 120 * attempt,
    params:
        settings=lambda w: RUNS[w.run],
        training=config["training"],
        folds=LABEL_NOISE["folds"],
        seed=LABEL_NOISE["seed"],
        window=config["figures"]["min_window"],
        device=config["device"],
        normalisation=config["model"]["normalisation"],
        code=code_version("train_fold.py"),
    script:
        "../workflow/scripts/train_fold.py"
