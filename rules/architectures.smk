# Architecture table (beyond the paper): the whole workflow once per network of
# `architectures:`, each as a Snakemake module of this Snakefile with that network's config
# (artifacts under {results}/{network}), then the table and figure that compare them.


include: "architectures_common.smk"


for arch, arch_config in ARCHITECTURES.items():
    arch_module = f"architecture_{arch}"
    arch_prefix = f"{arch}_"

    module:
        name: arch_module
        snakefile:
            "../Snakefile"
        config:
            arch_config

    if arch == ARCHIVE_OWNER:

        use rule * from arch_module as arch_prefix*

    else:

        use rule * from arch_module exclude extract_archive as arch_prefix*


rule architecture_table:
    input:
        **{f"{arch}__{key}": path for arch in ARCHITECTURES for key, path in architecture_files(arch).items()},
    output:
        csv=f"{R}/tables/architectures.csv",
        md=report(f"{R}/tables/architectures.md", caption="../workflow/report/architectures.rst", category="Tables"),
        png=report(
            f"{R}/figures/architectures.png",
            caption="../workflow/report/architectures.rst",
            category="Figures",
            labels={"figure": "architectures"},
        ),
        other=[f"{R}/figures/architectures.{fmt}" for fmt in config["figures"]["formats"] if fmt != "png"],
    log:
        f"{R}/logs/tables/architectures.log",
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    params:
        networks=list(ARCHITECTURES),
        info_dim={arch: ARCHITECTURES[arch]["spectrum"]["info_dim"] for arch in ARCHITECTURES},
        code=code_version("architecture_table.py"),
    script:
        "../workflow/scripts/architecture_table.py"
