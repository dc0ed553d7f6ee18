# The paper's synthetic experiments (Figures 2 and 4): no dependence on the data set or runs.


rule linear_model:
    output:
        **figure_output("fig2", "fig2"),
        data=f"{R}/figures/fig2.csv",
    log:
        f"{R}/logs/theory/linear_model.log",
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    params:
        settings=config["theory"]["linear"],
        code=code_version("theory_linear.py"),
    script:
        "../workflow/scripts/theory_linear.py"


rule gaussian_mixture:
    output:
        **figure_output("fig4", "fig4"),
        data=f"{R}/figures/fig4.csv",
    log:
        f"{R}/logs/theory/gaussian_mixture.log",
    conda:
        "../workflow/envs/jacobian-spectrum.yaml"
    params:
        settings=config["theory"]["mixture"],
        code=code_version("theory_mixture.py"),
    script:
        "../workflow/scripts/theory_mixture.py"
