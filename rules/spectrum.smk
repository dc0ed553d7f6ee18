# Spectrum stage: singular values and top-r left singular vectors of every stored J.


rule spectrum:
    input:
        f"{R}/{{owner}}/jacobian/{{split}}_epoch{{epoch}}.h5",
    output:
        f"{R}/{{owner}}/spectrum/{{split}}_epoch{{epoch}}.h5",
    params:
        settings=config["spectrum"],
        device=config["device"],
        code=code_version("spectrum.py"),
    threads: config["spectrum"]["threads"]
    resources:
        # the Gram matrix (nK)^2 * 8 bytes plus the slab budget, doubled on each retry
        mem_mb=lambda w, attempt: attempt
        * int(
            (N_SPLIT[w.split] * K) ** 2 * 8 / 1e6 + config["spectrum"]["memory_budget_mb"] + 500
        ),
        runtime=lambda w, attempt: 60 * attempt,
    log:
        f"{R}/logs/spectrum/{{owner}}/{{split}}_epoch{{epoch}}.log",
    script:
        "../workflow/scripts/spectrum.py"
