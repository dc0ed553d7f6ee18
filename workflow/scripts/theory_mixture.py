"""Figure 4: Jacobian spectrum at initialisation on the Definition 3.4 Gaussian mixture (see theory.py)."""

import sys

from jacobian_spectrum.logs import start_log

start_log(snakemake.log[0])  # noqa: F821 (snakemake injects the global)

from jacobian_spectrum import theory  # noqa: E402

settings = dict(snakemake.params.settings)  # noqa: F821
result = theory.mixture_spectra(settings)
theory.write_mixture_csv(result, snakemake.output.data)  # noqa: F821
theory.plot_mixture_spectra(result, [snakemake.output.png, *snakemake.output.other])  # noqa: F821
K, C = result.num_classes, result.clusters_per_class
print(
    f"gaussian mixture K={K} C={C}: n={result.n}, large singular values before the gap "
    f"{result.large_before_gap} (K^2 C = {K * K * C}, KC = {K * C})",
    file=sys.stderr,
)
