"""Figure 4: Jacobian spectrum at initialisation on the Definition 3.4 Gaussian mixture (theory.mixture)."""

from jacobian_spectrum.common.logs import start_log

log = start_log(snakemake.log[0])
from jacobian_spectrum.figures import theory as theory_figures
from jacobian_spectrum.theory.mixture import mixture_spectra

settings = dict(snakemake.params.settings)
result = mixture_spectra(settings)
theory_figures.write_mixture_csv(result, snakemake.output.data)
theory_figures.plot_mixture_spectra(result, [snakemake.output.png, *snakemake.output.other])
K, C = result.num_classes, result.clusters_per_class
log.info(
    f"gaussian mixture K={K} C={C}: n={result.n}, large singular values before the gap "
    f"{result.large_before_gap} (K^2 C = {K * K * C}, KC = {K * C})"
)
