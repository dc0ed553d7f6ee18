# Analysis stage. First the measurements of each run: labels, initial residual and per-epoch
# residuals on I and N, the cut-off curves, the alignment at the tracked epochs and Theorem
# 3.2's terms. Then the analyses beyond the paper: the alignment over training, the cut-off r as
# a knob, Theorem 3.2's terms against the observed test error, memorisation (all from the
# measurement files), and J_init's spectrum with Table 1's J_init row (from the spectrum alone:
# no training).


rule measure:
    input:
        unpack(
            lambda w: {
                "trajectory": f"{R}/runs/{w.run}/trajectory.h5",
                **spectra_of_run(w.run),
                "tracked": tracked_spectra(w.run),
            }
        ),
    output:
        f"{R}/runs/{{run}}/measurements.h5",
    log:
        f"{R}/logs/measure/{{run}}.log",
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    params:
        info_dim=config["spectrum"]["info_dim"],
        reference_epoch=lambda w: reference_epoch(w.run),
        tracked_epochs=lambda w: TRACKED[w.run],
        theorem=config["analysis"]["theorem"],
        code=code_version("measure.py"),
    script:
        "../workflow/scripts/measure.py"


rule alignment_over_training:
    input:
        measurements=[f"{R}/runs/{run}/measurements.h5" for run in TRACK_RUNS],
        trajectories=[f"{R}/runs/{run}/trajectory.h5" for run in TRACK_RUNS],
    output:
        **figure_output("alignment_over_training", "alignment_over_training"),
        data=report(
            f"{R}/figures/alignment_over_training.csv",
            caption="../workflow/report/alignment_over_training.rst",
            category="Beyond the paper",
        ),
    log:
        f"{R}/logs/figures/alignment_over_training.log",
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    params:
        runs=TRACK_RUNS,
        caption=CAPTION,
        code=code_version("alignment_over_training.py"),
    script:
        "../workflow/scripts/alignment_over_training.py"


rule cutoff:
    input:
        measurements=[f"{R}/runs/{run}/measurements.h5" for run in RUNS],
    output:
        **figure_output("cutoff", "cutoff"),
        data=report(f"{R}/figures/cutoff.csv", caption="../workflow/report/cutoff.rst", category="Beyond the paper"),
    log:
        f"{R}/logs/figures/cutoff.log",
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    params:
        runs=list(RUNS),
        corruption={run: RUNS[run]["corruption"] for run in RUNS},
        table_runs=TABLE_RUNS,
        corruption_runs=config["figures"]["corruption_runs"],
        info_dim=config["spectrum"]["info_dim"],
        caption=CAPTION,
        code=code_version("cutoff.py"),
    script:
        "../workflow/scripts/cutoff.py"


rule theorem_terms:
    input:
        measurements=[f"{R}/runs/{run}/measurements.h5" for run in THEOREM_RUNS],
        trajectories=[f"{R}/runs/{run}/trajectory.h5" for run in THEOREM_RUNS],
    output:
        **figure_output("theorem_terms", "theorem_terms"),
        data=report(
            f"{R}/figures/theorem_terms.csv",
            caption="../workflow/report/theorem_terms.rst",
            category="Beyond the paper",
        ),
    log:
        f"{R}/logs/figures/theorem_terms.log",
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    params:
        runs=THEOREM_RUNS,
        corruption={run: RUNS[run]["corruption"] for run in THEOREM_RUNS},
        plot=PLOT,
        caption=CAPTION,
        code=code_version("theorem_terms.py"),
    script:
        "../workflow/scripts/theorem_terms.py"


rule memorisation:
    input:
        measurements=[f"{R}/runs/{run}/measurements.h5" for run in MEMORISATION_RUNS],
        trajectories=[f"{R}/runs/{run}/trajectory.h5" for run in MEMORISATION_RUNS],
    output:
        **figure_output("memorisation", "memorisation"),
        data=report(
            f"{R}/figures/memorisation.csv",
            caption="../workflow/report/memorisation.rst",
            category="Beyond the paper",
        ),
    log:
        f"{R}/logs/figures/memorisation.log",
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    params:
        runs=MEMORISATION_RUNS,
        corruption={run: RUNS[run]["corruption"] for run in MEMORISATION_RUNS},
        caption=CAPTION,
        code=code_version("memorisation.py"),
    script:
        "../workflow/scripts/memorisation.py"


rule init_spectrum:
    input:
        subset=f"{R}/data/subset.h5",
        checkpoint=checkpoint_path("init", 0),
        spectrum=f"{R}/init/spectrum/train_epoch0.h5",
    output:
        **figure_output("init_spectrum", "init_spectrum"),
        data=report(
            f"{R}/figures/init_spectrum.csv",
            caption="../workflow/report/init_spectrum.rst",
            category="Beyond the paper",
        ),
        table_csv=f"{R}/tables/table1_init.csv",
        table_md=report(f"{R}/tables/table1_init.md", caption="../workflow/report/init_spectrum.rst", category="Tables"),
    log:
        f"{R}/logs/figures/init_spectrum.log",
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    threads: 2
    params:
        info_dim=config["spectrum"]["info_dim"],
        classes=K,
        normalisation=config["model"]["normalisation"],
        caption=CAPTION,
        code=code_version("init_spectrum.py"),
    script:
        "../workflow/scripts/init_spectrum.py"


rule label_noise:
    input:
        measurements=[f"{R}/runs/{run}/measurements.h5" for run in LABEL_NOISE_RUNS],
        trajectories=[f"{R}/runs/{run}/trajectory.h5" for run in LABEL_NOISE_RUNS],
        labels=[labels_path(run) for run in LABEL_NOISE_RUNS],
        folds=[path for run in LABEL_NOISE_RUNS for path in fold_files(run)],
    output:
        **figure_output("label_noise", "label_noise"),
        csv=f"{R}/tables/label_noise.csv",
        md=report(f"{R}/tables/label_noise.md", caption="../workflow/report/label_noise.rst", category="Tables"),
    log:
        f"{R}/logs/figures/label_noise.log",
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    params:
        runs=LABEL_NOISE_RUNS,
        corruption={run: RUNS[run]["corruption"] for run in LABEL_NOISE_RUNS},
        folds={run: fold_files(run) for run in LABEL_NOISE_RUNS},
        window=config["figures"]["min_window"],
        caption=CAPTION,
        code=code_version("label_noise.py"),
    script:
        "../workflow/scripts/label_noise.py"
