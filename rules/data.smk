# Data stage: class-balanced subset of the configured data set, then label corruption.


rule subsample:
    output:
        f"{R}/data/subset.h5",
    params:
        dataset=config["dataset"],
        code=code_version("data.py"),
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    log:
        f"{R}/logs/data/subsample.log",
    script:
        "../workflow/scripts/subsample.py"


rule corrupt_labels:
    input:
        f"{R}/data/subset.h5",
    output:
        f"{R}/data/labels_noise{{level}}.h5",
    params:
        seed=config["corruption"]["seed"],
        code=code_version("data.py"),
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    log:
        f"{R}/logs/data/corrupt_labels_noise{{level}}.log",
    script:
        "../workflow/scripts/corrupt_labels.py"
