# Measurement stage: labels, initial residual and per-epoch residuals on I and N.


rule measure:
    input:
        unpack(lambda w: {"trajectory": f"{R}/runs/{w.run}/trajectory.h5", **spectra_of_run(w.run)}),
    output:
        f"{R}/runs/{{run}}/measurements.h5",
    log:
        f"{R}/logs/measure/{{run}}.log",
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    params:
        info_dim=config["spectrum"]["info_dim"],
        reference_epoch=lambda w: reference_epoch(w.run),
        code=code_version("measure.py"),
    script:
        "../workflow/scripts/measure.py"
