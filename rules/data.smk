# Data stage: the image archive unpacked once (when one is configured), a class-balanced
# subset of the configured data set, then label corruption.


if ARCHIVE:

    rule extract_archive:
        input:
            # ancient: a copied or re-mounted archive gets a new mtime but holds the same images;
            # which images is said by its sha256, a param (a new archive_sha256 unpacks again)
            ancient(ARCHIVE),
        output:
            directory(config["dataset"]["root"]),
        log:
            f"{R}/logs/data/extract_archive.log",
        conda:
            "../workflow/envs/jacobian-spectrum.yaml"
        params:
            sha256=config["dataset"]["archive_sha256"],
            code=code_version("extract_archive.py"),
        script:
            "../workflow/scripts/extract_archive.py"


rule subsample:
    input:
        images=[config["dataset"]["root"]] if ARCHIVE else [],
    output:
        f"{R}/data/subset.h5",
    log:
        f"{R}/logs/data/subsample.log",
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    params:
        dataset=config["dataset"],
        code=code_version("subsample.py"),
    script:
        "../workflow/scripts/subsample.py"


rule corrupt_labels:
    input:
        f"{R}/data/subset.h5",
    output:
        f"{R}/data/labels_noise{{level}}.h5",
    log:
        f"{R}/logs/data/corrupt_labels_noise{{level}}.log",
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    params:
        seed=config["corruption"]["seed"],
        code=code_version("corrupt_labels.py"),
    script:
        "../workflow/scripts/corrupt_labels.py"
