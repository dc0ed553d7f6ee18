# Spectrum stage: singular values and top-r left singular vectors of every J.


if config["spectrum"]["method"] == "matrix_free":

    # J is never stored: randomized SVD whose passes form J's rows block by block and drop them.
    rule spectrum_matrix_free:
        input:
            subset=f"{R}/data/subset.h5",
            checkpoint=checkpoint_input,
        output:
            f"{R}/{{owner}}/spectrum/{{split}}_epoch{{epoch}}.h5",
        log:
            f"{R}/logs/spectrum/{{owner}}/{{split}}_epoch{{epoch}}.log",
        benchmark:
            f"{R}/benchmarks/spectrum/{{owner}}/{{split}}_epoch{{epoch}}.tsv"
        priority: 2
        conda:
            "../workflow/envs/jacobian-spectrum.yaml"
        threads: config["spectrum"]["threads"]
        resources:
            # the job plans within the budget (matrix_free_plan); 1 GB more for the process and model
            mem_mb=lambda w, attempt: attempt * int(config["spectrum"]["memory_budget_mb"] + 1000),
            runtime=lambda w, attempt: 120 * attempt,
        params:
            checkpoint=lambda w: checkpoint_path(w.owner, w.epoch),
            settings=spectrum_settings,
            device=config["device"],
            normalisation=config["model"]["normalisation"],
            allow_degenerate=config["jacobian"]["allow_degenerate"],
            code=code_version("spectrum_matrix_free.py"),
        script:
            "../workflow/scripts/spectrum_matrix_free.py"

else:

    rule spectrum:
        input:
            unpack(jacobian_of_spectrum),
        output:
            f"{R}/{{owner}}/spectrum/{{split}}_epoch{{epoch}}.h5",
        log:
            f"{R}/logs/spectrum/{{owner}}/{{split}}_epoch{{epoch}}.log",
        benchmark:
            f"{R}/benchmarks/spectrum/{{owner}}/{{split}}_epoch{{epoch}}.tsv"
        priority: 2
        conda:
            "../workflow/envs/jacobian-spectrum.yaml"
        threads: config["spectrum"]["threads"]
        resources:
            # the Gram matrix (nK)^2 * 8 bytes plus the slab budget, doubled on each retry
            mem_mb=lambda w, attempt: attempt
            * int((N_SPLIT[w.split] * K) ** 2 * 8 / 1e6 + config["spectrum"]["memory_budget_mb"] + 500),
            runtime=lambda w, attempt: 60 * attempt,
        params:
            settings=spectrum_settings,
            device=config["device"],
            allow_degenerate=config["jacobian"]["allow_degenerate"],
            code=code_version("spectrum.py"),
        script:
            "../workflow/scripts/spectrum.py"
