"""Figure 2: population loss of gradient descent on the Section 2.1 linear model (see theory.py)."""

import sys

from jacobian_spectrum.logs import start_log

start_log(snakemake.log[0])  # noqa: F821 (snakemake injects the global)

from jacobian_spectrum import theory  # noqa: E402

settings = dict(snakemake.params.settings)  # noqa: F821
result = theory.run_linear(settings)
theory.write_linear_csv(result, snakemake.output.data)  # noqa: F821
theory.plot_linear_model(result, [snakemake.output.png, *snakemake.output.other])  # noqa: F821
best = int(result.loss.argmin())
print(
    f"linear model n={result.n} d={result.d} r={result.rank} eta={result.step_size:.4g}: "
    f"E L {result.loss[0]:.4f} -> min {result.loss[best]:.4f} at iteration {best} -> {result.loss[-1]:.4f}",
    file=sys.stderr,
)
