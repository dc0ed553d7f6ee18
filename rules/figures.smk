# Figures 5-9 and Tables 1-3 of Section 4, and the comparison with the paper's tables.


rule figure5:
    input:
        init=lambda w: spectrum_path(TABLE_RUNS[1], "train", 0),
        final=lambda w: spectrum_path(TABLE_RUNS[1], "train", final_epoch(TABLE_RUNS[1])),
    output:
        **figure_output("fig5", "fig5"),
    log:
        f"{R}/logs/figures/fig5.log",
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    params:
        code=code_version("figure5.py"),
    script:
        "../workflow/scripts/figure5.py"


rule residual_figure:
    input:
        unpack(lambda w: run_files(TABLE_RUNS[{"6": 1, "7": 2, "8": 3}[w.number]])),
    output:
        png=report(
            f"{R}/figures/fig{{number}}.png",
            caption="../workflow/report/residual.rst",
            category="Figures",
            labels={"figure": "fig{number}"},
        ),
        other=[f"{R}/figures/fig{{number}}.{fmt}" for fmt in config["figures"]["formats"] if fmt != "png"],
    log:
        f"{R}/logs/figures/fig{{number}}.log",
    wildcard_constraints:
        number="6|7|8",
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    params:
        plot=PLOT,
        test_panel=lambda w: w.number != "7",
        code=code_version("residual_figure.py"),
    script:
        "../workflow/scripts/residual_figure.py"


rule figure9:
    input:
        measurements=[f"{R}/runs/{run}/measurements.h5" for run in config["figures"]["corruption_runs"]],
        trajectories=[f"{R}/runs/{run}/trajectory.h5" for run in config["figures"]["corruption_runs"]],
    output:
        **figure_output("fig9", "fig9"),
        data=report(f"{R}/figures/fig9.csv", caption="../workflow/report/fig9.rst", category="Tables"),
    log:
        f"{R}/logs/figures/fig9.log",
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    params:
        runs=config["figures"]["corruption_runs"],
        corruption={run: RUNS[run]["corruption"] for run in config["figures"]["corruption_runs"]},
        plot=PLOT,
        code=code_version("figure9.py"),
    script:
        "../workflow/scripts/figure9.py"


rule table:
    input:
        measurements=lambda w: f"{R}/runs/{TABLE_RUNS[int(w.number)]}/measurements.h5",
        subset=f"{R}/data/subset.h5",
        checkpoint=checkpoint_path("init", 0),
    output:
        csv=report(
            f"{R}/tables/table{{number}}.csv",
            caption="../workflow/report/table.rst",
            category="Tables",
            labels={"table": "table{number}"},
        ),
        md=f"{R}/tables/table{{number}}.md",
        tex=f"{R}/tables/table{{number}}.tex",
    log:
        f"{R}/logs/tables/table{{number}}.log",
    wildcard_constraints:
        number="1|2|3",
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    params:
        info_dim=config["spectrum"]["info_dim"],
        run=lambda w: RUNS[TABLE_RUNS[int(w.number)]],
        code=code_version("table.py"),
    script:
        "../workflow/scripts/table.py"


rule comparison:
    input:
        tables=[f"{R}/tables/table{i}.csv" for i in TABLE_RUNS],
        subset=f"{R}/data/subset.h5",
        checkpoint=checkpoint_path("init", 0),
    output:
        report(f"{R}/tables/comparison.md", caption="../workflow/report/comparison.rst", category="Tables"),
    log:
        f"{R}/logs/tables/comparison.log",
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    params:
        numbers=list(TABLE_RUNS),
        settings={number: RUNS[run] for number, run in TABLE_RUNS.items()},
        info_dim=config["spectrum"]["info_dim"],
        code=code_version("comparison.py"),
    script:
        "../workflow/scripts/comparison.py"
