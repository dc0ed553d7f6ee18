"""The architecture table and figure: the paper's quantities for every network of an
architecture-table config, read from each network's own artifacts.

Per network and Jacobian (J_init, and J_final of the clean and of the corrupted run):

  ||P_I y|| / ||y||, ||P_N y|| / ||y||   Table 1's (clean labels) and Table 3's (corrupted
                                          labels) J_init and J_final rows, I = top info_dim
  s_1 / s_K                               spread of the K class outliers
  s_K / s_{K+1}                           the gap between the class outliers and the bulk
  effective rank                          exp(entropy of s / sum(s)) (Roy and Vetterli 2007);
                                          needs every singular value (NaN for a top-k spectrum)

and each run's test error at its final epoch and its lowest over training, the share of its
corrupted labels the network fits at the end (the corruption findings depend on it,
docs/cifar10.md), and ||P_I y|| / ||y|| of a network that fits the true classes and none of the
noise (Table 3's no-memorisation reference).

The ratios come from the training spectra and the run's trained labels, computed as the measure
stage computes them (:func:`..analysis.measure.projection_ratios`), so that the table needs only
J_init's and each run's J_final's spectrum, not each network's whole workflow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ..analysis.measure import check_rows, projection_ratios, trained_labels
from ..analysis.quantities import no_memorisation_alignment
from ..common.h5io import atomic_path, open_checked
from ..figures.paper import format_value, save_figure, write_csv
from ..spectrum.store import SpectrumData, read_spectrum
from ..train.trajectory import read_trajectory

ROLES = ("clean", "corrupted")
COLUMNS = (
    "network",
    "parameters",
    "rows",
    "jacobian",
    "labels",
    "P_I y / y",
    "P_N y / y",
    "s_1 / s_K",
    "s_K / s_K+1",
    "effective_rank",
    "test_error_final",
    "test_error_min",
    "corrupted_labels_fitted",
    "P_I y / y (no memorisation)",
)


def effective_rank(s: np.ndarray) -> float:
    """exp(H(p)), p_i = s_i / sum(s): 1 for a rank-one J, nK for a flat spectrum."""
    s = np.asarray(s, dtype=np.float64)
    s = s[s > 0]
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def spectrum_summary(path: str | Path, k: int) -> dict:
    """s_1 / s_K, s_K / s_{K+1} and the effective rank of one stored spectrum."""
    sp = read_spectrum(path)
    s = sp.singular_values
    if len(s) <= k:
        raise ValueError(f"{path}: {len(s)} singular values; the table needs more than K = {k}")
    full = bool(sp.attrs.get("all_singular_values", False))
    return {
        "spectrum": sp,
        "s": s,
        "full": full,
        "outlier_spread": float(s[0] / s[k - 1]),
        "outlier_gap": float(s[k - 1] / s[k]),
        "effective_rank": effective_rank(s) if full else float("nan"),
    }


@dataclass
class NetworkRow:
    """One row of the table: a network's Jacobian and the labels its spaces are measured with."""

    network: str
    parameters: int
    rows: int
    jacobian: str
    labels: str
    info: float
    nuisance: float
    outlier_spread: float
    outlier_gap: float
    effective_rank: float
    test_error_final: float
    test_error_min: float
    memorised: float  # share of the corrupted training labels fitted at the last epoch; NaN for clean labels
    no_memorisation: float  # ||P_I y|| / ||y|| for I = the true-class structure alone (1 for clean labels)

    def values(self) -> list:
        return [
            self.network,
            self.parameters,
            self.rows,
            self.jacobian,
            self.labels,
            self.info,
            self.nuisance,
            self.outlier_spread,
            self.outlier_gap,
            self.effective_rank,
            self.test_error_final,
            self.test_error_min,
            self.memorised,
            self.no_memorisation,
        ]


def label_alignment(sp: SpectrumData, y: np.ndarray, info_dim: int, key: str) -> tuple[float, float]:
    """(||P_I y||/||y||, ||P_N y||/||y||) for I = the top ``info_dim`` left singular vectors of
    ``sp``, y in J's row order: Tables 1 and 3's columns, as ``measure`` has them."""
    check_rows(sp, len(y), key)
    if sp.U.shape[1] < info_dim:
        raise ValueError(f"spectrum {key} stores {sp.U.shape[1]} vectors, fewer than info_dim = {info_dim}")
    info, nuisance, _ = projection_ratios(y, sp.U[:, :info_dim], sp.singular_values)
    return info, nuisance


def network_rows(
    network: str, files: Mapping[str, str | Path], parameters: int, k: int, info_dim: int
) -> list[NetworkRow]:
    """The four rows of one network: J_init and J_final with the clean run's labels (Table 1's
    rows), then with the corrupted run's (Table 3's)."""
    init = spectrum_summary(files["init"], k)
    out = []
    for role in ROLES:
        traj = read_trajectory(files[f"{role}_trajectory"])
        run = Path(files[f"{role}_trajectory"]).parent.name
        y = trained_labels(traj)
        reference = no_memorisation_alignment(y, traj.train_y_clean, k)[0]
        final = spectrum_summary(files[f"{role}_final"], k)
        for jacobian, summary, path in (("J_init", init, files["init"]), ("J_final", final, files[f"{role}_final"])):
            info, nuisance = label_alignment(summary["spectrum"], y, info_dim, str(path))
            out.append(
                NetworkRow(
                    network,
                    parameters,
                    len(summary["s"]) if summary["full"] else int(traj.train_y.size),
                    jacobian,
                    f"{role} ({run})",
                    info,
                    nuisance,
                    summary["outlier_spread"],
                    summary["outlier_gap"],
                    summary["effective_rank"],
                    float(traj.test_error[-1]),
                    float(np.min(traj.test_error)),
                    float(1 - traj.train_error_corrupted[-1]),
                    reference,
                )
            )
    return out


def write_architecture_table(rows: Sequence[NetworkRow], csv_path: str | Path, md_path: str | Path, scale: str) -> str:
    """The table as CSV (full precision) and Markdown; returns the Markdown."""
    write_csv(csv_path, COLUMNS, [[repr(v) if isinstance(v, float) else v for v in r.values()] for r in rows])
    head = [
        "network",
        "p",
        "J",
        "labels",
        "\u2016P_I y\u2016/\u2016y\u2016",
        "\u2016P_N y\u2016/\u2016y\u2016",
        "s_1/s_K",
        "s_K/s_K+1",
        "effective rank",
        "test error (final / lowest)",
        "corrupted labels fitted",
        "\u2016P_I y\u2016/\u2016y\u2016 if no noise were fitted",
    ]
    md = [f"**The Jacobian's structure across architectures** ({scale})", ""]
    md += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in rows:
        erank = "n/a" if np.isnan(r.effective_rank) else f"{r.effective_rank:.1f}"
        md.append(
            f"| {r.network} | {r.parameters:,} | {r.jacobian} | {r.labels} | {format_value(r.info)} | "
            f"{format_value(r.nuisance)} | {r.outlier_spread:.2f} | {r.outlier_gap:.2f} | {erank} | "
            f"{100 * r.test_error_final:.1f}% / {100 * r.test_error_min:.1f}% | "
            f"{'-' if np.isnan(r.memorised) else f'{100 * r.memorised:.0f}%'} | {format_value(r.no_memorisation)} |"
        )
    text = "\n".join(md) + "\n"
    with atomic_path(md_path) as tmp:
        Path(tmp).write_text(text)
    return text


def architecture_figure(
    spectra: Mapping[str, Mapping[str, str | Path]], info_dim: Mapping[str, int], paths: Sequence[str | Path]
) -> None:
    """One panel per network: histograms of s / s_1 of J_init and the two J_final, log-spaced
    bins, the cut-off s_r / s_1 of J_init dashed."""
    names = list(spectra)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False, sharey=True)
    colours = {"J_init": "tab:cyan", "J_final clean": "tab:red", "J_final corrupted": "tab:purple"}
    for ax, name in zip(axes[0], names):
        for label, path in spectra[name].items():
            sp = read_spectrum(path)
            s = sp.singular_values
            floor = max(float(sp.attrs.get("numerical_floor", 0.0)), float(sp.attrs.get("storage_floor", 0.0)))
            rel = s[s > floor] / s[0]
            bins = np.logspace(np.log10(max(rel.min(), 1e-8)), 0, 40)
            ax.hist(rel, bins=bins, histtype="step", linewidth=1.5, color=colours[label], label=label)
            if label == "J_init":
                r = info_dim[name]
                ax.axvline(s[r - 1] / s[0], color=colours[label], linestyle="--", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("s / s_1")
    axes[0][0].set_ylabel("count")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("Singular values of J across architectures (dashed: J_init's cut-off s_r)", fontsize=10)
    save_figure(fig, paths)


def _parameters(checkpoint: str | Path) -> int:
    from ..train.models import count_parameters, load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    return count_parameters(model)


def architecture_table(
    networks: Sequence[str],
    inputs: Mapping[str, str | Path],
    info_dim: Mapping[str, int],
    outputs: Mapping[str, object],
) -> str:
    """The architecture_table rule: ``inputs`` keyed ``{network}__{file}`` (subset, checkpoint,
    init, and per role trajectory, final), ``outputs`` csv, md, png and other
    (the figure's further formats). Returns the Markdown table."""
    rows: list[NetworkRow] = []
    spectra: dict[str, dict[str, str | Path]] = {}
    scale = ""
    for name in networks:
        files = {key.split("__", 1)[1]: path for key, path in inputs.items() if key.startswith(f"{name}__")}
        with open_checked(files["subset"], ["train/y"], artifact="subset") as f:
            classes = [str(c) for c in f.attrs["classes"]]
            n = len(f["train/y"])
            dataset = str(f.attrs["dataset"])
        scale = f"{dataset} classes {', '.join(classes)}, n = {n} (nK = {n * len(classes)}), r = {info_dim[name]}"
        rows += network_rows(name, files, _parameters(files["checkpoint"]), len(classes), info_dim[name])
        spectra[name] = {
            "J_init": files["init"],
            "J_final clean": files["clean_final"],
            "J_final corrupted": files["corrupted_final"],
        }
    text = write_architecture_table(rows, outputs["csv"], outputs["md"], scale)
    architecture_figure(spectra, info_dim, [outputs["png"], *outputs.get("other", [])])
    return text
