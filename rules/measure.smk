# Measurement stage: labels, initial residual and per-epoch residuals on I and N; the cut-off
# curves, the alignment at the tracked epochs and Theorem 3.2's terms.


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
