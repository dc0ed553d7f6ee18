"""Outputs of the synthetic experiments (:mod:`jacobian_spectrum.theory`): CSV files and Figures 2 and 4."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..theory.linear import LinearLosses
from ..theory.mixture import MixtureSpectra
from .paper import plt, save_figure, write_csv

FIG2_COLUMNS = ("iteration", "loss", "loss_information", "loss_nuisance")
FIG4_COLUMNS = ("n", "index", "singular_value_normalised", "expected_singular_value_normalised")


def write_linear_csv(result: LinearLosses, path: str | Path) -> None:
    """fig2.csv: iteration, loss (E L), loss_information (E L_I), loss_nuisance (E L_N)."""
    rows = [
        (int(t), repr(float(a)), repr(float(b)), repr(float(c)))
        for t, a, b, c in zip(result.iteration, result.loss, result.loss_information, result.loss_nuisance)
    ]
    write_csv(path, FIG2_COLUMNS, rows)


def write_mixture_csv(result: MixtureSpectra, path: str | Path) -> None:
    """fig4.csv (long format, one row per (n, index)): n, index (1-based, descending order),
    singular_value_normalised = sqrt(KC/n) s_index(J(W0)), expected_singular_value_normalised =
    sqrt(KC/n) sqrt(lambda_index((nu^2/K) Sigma(X))) for the same data."""
    rows = []
    for n, sv, ev in zip(result.n, result.singular_values, result.expected_singular_values):
        c = result.normalisation(n)
        for i in range(max(len(sv), len(ev))):
            s = repr(float(c * sv[i])) if i < len(sv) else ""
            e = repr(float(c * ev[i])) if i < len(ev) else ""
            rows.append((n, i + 1, s, e))
    write_csv(path, FIG4_COLUMNS, rows)


def plot_linear_model(result: LinearLosses, paths: Sequence[str | Path]) -> None:
    """Figure 2: (a) E L along GD, (b) E L_I and E L_N; saved to every path (format by suffix)."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    t = result.iteration
    best = int(np.argmin(result.loss))
    a.plot(t, result.loss, color="k", label=r"$\mathbb{E}\,\mathcal{L}(w_\tau)$")
    a.axvline(t[best], color="0.6", ls=":", label=f"minimum at $\\tau={t[best]}$")
    a.set_xlabel(r"Iterations ($\tau$)")
    a.set_ylabel("Test error")
    a.set_title("(a) Total test error")
    a.legend()
    b.plot(t, result.loss_information, color="tab:blue", label=r"information $\mathbb{E}\,\mathcal{L}_I(w_\tau)$")
    b.plot(t, result.loss_nuisance, color="tab:red", label=r"nuisance $\mathbb{E}\,\mathcal{L}_N(w_\tau)$")
    b.set_xlabel(r"Iterations ($\tau$)")
    b.set_ylabel("Test error")
    b.set_title("(b) Test error along information and nuisance spaces")
    b.legend()
    fig.suptitle(
        f"Linear model (Section 2.1): n={result.n}, d={result.d}, r={result.rank}, $\\eta$={result.step_size:.3g}",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, paths)


def plot_mixture_spectra(result: MixtureSpectra, paths: Sequence[str | Path]) -> None:
    """Figure 4: normalised singular values sqrt(KC/n) J(W0) (left) and of the expected
    Jacobian (nu^2/K Sigma(X))^(1/2) (right); solid / dashed / ... = the sample sizes."""
    K, C = result.num_classes, result.clusters_per_class
    styles = ["-", "--", "-.", ":"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    panels = (
        (axes[0], result.singular_values, r"(a) $\sqrt{KC/n}\,\mathcal{J}(W_0)$"),
        (axes[1], result.expected_singular_values, r"(b) expected: $\sqrt{KC/n}\,(\nu^2\Sigma(X)/K)^{1/2}$"),
    )
    for ax, spectra, title in panels:
        for j, (n, sv) in enumerate(zip(result.n, spectra)):
            c = result.normalisation(n)
            m = n // C
            keep = sv > 1e-12 * sv[0]
            idx = np.arange(1, len(sv) + 1)
            ax.semilogy(idx[keep], c * sv[keep], styles[j % len(styles)], color="k", lw=1.2, label=f"n = {m}C = {n}")
        ax.axvline(K * C, color="tab:blue", ls=":", lw=1, label=f"KC = {K * C}")
        ax.axvline(K * K * C, color="tab:red", ls=":", lw=1, label=f"$K^2C$ = {K * K * C}")
        ax.set_xlabel("Singular value index")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    axes[0].set_ylabel("Normalised singular value")
    fig.suptitle(f"Gaussian mixture (Definition 3.4): K={K} classes, C={C} clusters per class", fontsize=10)
    fig.tight_layout()
    save_figure(fig, paths)
