"""Figure 2: population loss of gradient descent on the Section 2.1 linear model (theory.linear)."""

from jacobian_spectrum.common.logs import start_log

log = start_log(snakemake.log[0])
from jacobian_spectrum.figures import theory as theory_figures
from jacobian_spectrum.theory.linear import run_linear

settings = dict(snakemake.params.settings)
result = run_linear(settings)
theory_figures.write_linear_csv(result, snakemake.output.data)
theory_figures.plot_linear_model(result, [snakemake.output.png, *snakemake.output.other])
best = int(result.loss.argmin())
log.info(
    f"linear model n={result.n} d={result.d} r={result.rank} eta={result.step_size:.4g}: "
    f"E L {result.loss[0]:.4f} -> min {result.loss[best]:.4f} at iteration {best} -> {result.loss[-1]:.4f}"
)
