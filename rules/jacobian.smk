# Jacobian stage: one job per chunk of samples (scatter), then one consolidated J (gather).


rule jacobian_chunk:
    input:
        subset=f"{R}/data/subset.h5",
        checkpoint=checkpoint_input,
    output:
        temp(f"{R}/{{owner}}/jacobian/chunks/{{split}}_epoch{{epoch}}.chunk{{chunk}}.h5"),
    log:
        f"{R}/logs/jacobian/{{owner}}/{{split}}_epoch{{epoch}}.chunk{{chunk}}.log",
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
        code=code_version("jacobian_chunk.py"),
    script:
        "../workflow/scripts/jacobian_chunk.py"


rule jacobian_gather:
    input:
        lambda w: expand(
            f"{R}/{w.owner}/jacobian/chunks/{w.split}_epoch{w.epoch}.chunk{{chunk}}.h5",
            chunk=range(n_chunks(w.split)),
        ),
    output:
        jacobian_output(f"{R}/{{owner}}/jacobian/{{split}}_epoch{{epoch}}.h5"),
    log:
        f"{R}/logs/jacobian/{{owner}}/{{split}}_epoch{{epoch}}.gather.log",
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    params:
        code=code_version("jacobian_gather.py"),
    script:
        "../workflow/scripts/jacobian_gather.py"
