# Jacobian stage: one job per chunk of samples (scatter), then J as one virtual dataset over
# the chunk files (gather): each Jacobian is written once. A J that jacobian.keep does not keep
# is made by the same two rules under jacobian/temporary/, marked temp(): Snakemake deletes it
# and its chunks once its spectrum is written.


rule jacobian_chunk:
    input:
        subset=f"{R}/data/subset.h5",
        checkpoint=checkpoint_input,
    output:
        f"{R}/{{owner}}/jacobian/chunks/{{split}}_epoch{{epoch}}.chunk{{chunk}}.h5",
    log:
        f"{R}/logs/jacobian/{{owner}}/{{split}}_epoch{{epoch}}.chunk{{chunk}}.log",
    benchmark:
        f"{R}/benchmarks/jacobian/{{owner}}/{{split}}_epoch{{epoch}}.chunk{{chunk}}.tsv"
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    threads: 1
    resources:
        mem_mb=lambda w, attempt: attempt * config["jacobian"]["mem_mb"],
        runtime=lambda w, attempt: 60 * attempt,
    params:
        checkpoint=lambda w: checkpoint_path(w.owner, w.epoch),
        chunk_size=config["jacobian"]["chunk_size"],
        dtype=config["jacobian"]["dtype"],
        device=config["device"],
        normalisation=config["model"]["normalisation"],
        allow_degenerate=config["jacobian"]["allow_degenerate"],
        code=code_version("jacobian_chunk.py"),
    script:
        "../workflow/scripts/jacobian_chunk.py"


rule jacobian_gather:
    input:
        jacobian_chunks,
    output:
        f"{R}/{{owner}}/jacobian/{{split}}_epoch{{epoch}}.h5",
    log:
        f"{R}/logs/jacobian/{{owner}}/{{split}}_epoch{{epoch}}.gather.log",
    benchmark:
        f"{R}/benchmarks/jacobian/{{owner}}/{{split}}_epoch{{epoch}}.gather.tsv"
    # a gathered J goes to its spectrum before new chunk jobs start: few J's on disk at once
    priority: 1
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    params:
        code=code_version("jacobian_gather.py"),
    script:
        "../workflow/scripts/jacobian_gather.py"


use rule jacobian_chunk as jacobian_chunk_temporary with:
    output:
        temp(f"{R}/{{owner}}/jacobian/temporary/chunks/{{split}}_epoch{{epoch}}.chunk{{chunk}}.h5"),
    log:
        f"{R}/logs/jacobian/{{owner}}/temporary/{{split}}_epoch{{epoch}}.chunk{{chunk}}.log",
    benchmark:
        f"{R}/benchmarks/jacobian/{{owner}}/temporary/{{split}}_epoch{{epoch}}.chunk{{chunk}}.tsv"


use rule jacobian_gather as jacobian_gather_temporary with:
    input:
        temporary_jacobian_chunks,
    output:
        temp(f"{R}/{{owner}}/jacobian/temporary/{{split}}_epoch{{epoch}}.h5"),
    log:
        f"{R}/logs/jacobian/{{owner}}/temporary/{{split}}_epoch{{epoch}}.gather.log",
    benchmark:
        f"{R}/benchmarks/jacobian/{{owner}}/temporary/{{split}}_epoch{{epoch}}.gather.tsv"
