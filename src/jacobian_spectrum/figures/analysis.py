"""Figures and CSVs of the analysis beyond the paper, from the measurement files.

alignment_over_training  the alignment of y (and of y_clean and the label noise y - y_clean for
                         corrupted runs) with each tracked epoch's information space, the overlap
                         of that space with J_init's and J_final's, and the errors per epoch
cutoff                   every column of Tables 1-3 and the share of ||J||_F^2 over the cut-off
                         r, and Figure 9's label energy on N over r
theorem_terms            Theorem 3.2's bias + variance, minimised over r, against the observed
                         final test error over the corruption levels
memorisation             J's label energy on N against the fraction of corrupted labels the
                         network has memorised, one point per run and measured epoch
init_spectrum            J_init's computed singular values and the label energy over the
                         cut-off r, with Table 1's J_init row (no training needed: the
                         whole-CIFAR-10 spectrum, config/cifar10-full*.yaml)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..analysis.measure import LABEL_SYMBOLS, TABLE_COLUMNS, TABLE_ROWS, InitAlignment, read_measurements
from ..analysis.quantities import rank_correlation
from ..common.h5io import atomic_path
from ..train.trajectory import TrajectoryData, read_trajectory
from .paper import format_value, markdown_columns, plt, save_figure, window_min, write_csv

LABEL_COLOURS = {"labels": "k", "clean_labels": "tab:green", "label_noise": "tab:red"}
LABEL_TEX = {"labels": "y", "clean_labels": r"y_{\rm clean}", "label_noise": r"(y - y_{\rm clean})"}
CONSTANTS = {"paper": "paper's constants (12B, Gamma)", "unit": "constants set to 1"}


def _epoch_axis(ax, last: int) -> None:
    ax.set_xscale("symlog", linthresh=1)  # epoch 0 stays on a log-spread axis
    ax.set_xlim(0, last)
    ax.set_xlabel("epoch")


# ---------------------------------------------------------------- alignment over training
def _read_runs(runs: Mapping[str, tuple[str | Path, str | Path]]) -> dict[str, tuple[dict, TrajectoryData]]:
    """Each run's measurements and trajectory, read once."""
    return {run: (read_measurements(m), read_trajectory(t)) for run, (m, t) in runs.items()}


def alignment_rows(data: Mapping[str, tuple[dict, TrajectoryData]]) -> list[dict]:
    """One row per run and tracked epoch: the alignment values, the overlaps and the errors."""
    rows = []
    for run, (m, traj) in data.items():
        for i, e in enumerate(m["tracking/epochs"]):
            row = {"run": run, "epoch": int(e)}
            for name, sym in LABEL_SYMBOLS.items():
                values = m.get(f"tracking/{name}")
                for j, part in enumerate(("P_I", "P_N", "J_I^+")):
                    row[f"||{part} {sym}||/||{sym}||"] = float(values[i, j]) if values is not None else ""
            row["overlap with J_init's I"] = float(m["tracking/overlap_init"][i])
            row["overlap with J_final's I"] = float(m["tracking/overlap_final"][i])
            row["train_error"] = float(traj.train_error[int(e)])
            row["test_error"] = float(traj.test_error[int(e)])
            rows.append(row)
    return rows


def alignment_figure(
    runs: Mapping[str, tuple[str | Path, str | Path]],
    paths: Sequence[str | Path],
    csv_path: str | Path,
    caption: str,
) -> list[dict]:
    data = _read_runs(runs)
    rows = alignment_rows(data)
    fig, axes = plt.subplots(len(runs), 3, figsize=(14, 3.2 * len(runs)), squeeze=False)
    for ax_row, (run, (m, traj)) in zip(axes, data.items()):
        epochs = m["tracking/epochs"]
        for name, sym in LABEL_TEX.items():
            if f"tracking/{name}" in m:
                ax_row[0].plot(
                    epochs,
                    m[f"tracking/{name}"][:, 0],
                    "o-",
                    color=LABEL_COLOURS[name],
                    label=rf"$\|P_I {sym}\|/\|{sym}\|$",
                )
        ax_row[0].set_ylim(0, 1.02)
        ax_row[0].set_ylabel("fraction on I (top r)")
        ax_row[0].set_title(f"{run}: alignment with this epoch's I", fontsize=9)
        for key, style in (("init", "s--"), ("final", "D-")):
            ax_row[1].plot(epochs, m[f"tracking/overlap_{key}"], style, label=f"overlap with J_{key}'s I")
        ax_row[1].set_ylim(0, 1.02)
        ax_row[1].set_ylabel(r"mean $\cos^2$ of principal angles")
        ax_row[1].set_title(f"{run}: how I moves", fontsize=9)
        all_epochs = np.arange(len(traj.test_error))
        ax_row[2].plot(all_epochs, 100 * traj.train_error, label="training error")
        ax_row[2].plot(all_epochs, 100 * traj.test_error, color="k", label="test error")
        for e in epochs:
            ax_row[2].axvline(e, color="0.85", linewidth=0.8, zorder=0)
        ax_row[2].set_ylabel("error (%)")
        ax_row[2].set_title(f"{run}: errors (grey: tracked epochs)", fontsize=9)
        for ax in ax_row:
            _epoch_axis(ax, len(traj.test_error) - 1)
            ax.legend(fontsize=7)
    fig.suptitle(f"Alignment over training ({caption})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    save_figure(fig, paths)
    write_csv(csv_path, list(rows[0]), [list(r.values()) for r in rows])
    return rows


# ---------------------------------------------------------------- the cut-off as a knob
def cutoff_rows(data: Mapping[str, dict], corruption: Mapping[str, float]) -> list[list]:
    rows = []
    for run, m in data.items():
        for jac in TABLE_ROWS:
            curves, share = m[f"cutoff/{jac}"], m[f"cutoff/energy_share_{jac}"]
            for r in range(len(curves)):
                rows.append([run, corruption[run], jac, r + 1, *curves[r].tolist(), float(share[r])])
    return rows


def cutoff_figure(
    measurements: Mapping[str, str | Path],
    corruption: Mapping[str, float],
    table_runs: Mapping[int, str],
    corruption_runs: Sequence[str],
    info_dim: int,
    paths: Sequence[str | Path],
    csv_path: str | Path,
    caption: str,
) -> dict:
    """Tables 1-3's columns and ||J||_F^2's share over r; Figure 9's J_final energy on N over r."""
    data = {run: read_measurements(path) for run, path in measurements.items()}
    panels = [(0, "||P_I y||/||y||"), (2, "||J_I^+ y||/||y||"), (3, "||P_I r0||/||r0||"), (None, "share of ||J||_F^2")]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    flat = axes.ravel()
    for ax, (col, title) in zip(flat[:4], panels):
        for number, run in table_runs.items():
            for jac, style in (("J_init", "--"), ("J_final", "-")):
                m = data[run]
                y = m[f"cutoff/energy_share_{jac}"] if col is None else m[f"cutoff/{jac}"][:, col]
                ax.plot(np.arange(1, len(y) + 1), y, style, label=f"Table {number} ({run}), {jac}")
        ax.set_title(title, fontsize=9)
    flat[1].set_yscale("log")  # ||J_I^+ y|| grows like 1/s_r
    for ax, jac in zip(flat[4:], TABLE_ROWS):
        for run in corruption_runs:
            nuis = data[run][f"cutoff/{jac}"][:, 1] ** 2
            ax.plot(np.arange(1, len(nuis) + 1), nuis, label=f"{100 * corruption[run]:g}% corrupted ({run})")
        ax.set_title(f"Figure 9 over r: ||P_N y||^2/||y||^2, N of {jac}", fontsize=9)
    for ax in flat:
        ax.axvline(info_dim, color="0.5", linestyle=":", label=f"r = info_dim = {info_dim}")
        ax.set_xscale("log")
        ax.set_xlabel("cut-off r")
        ax.legend(fontsize=6)
    fig.suptitle(f"The cut-off r as a knob ({caption})", fontsize=10)
    fig.tight_layout()
    save_figure(fig, paths)
    columns = ["run", "corruption", "jacobian", "r", *TABLE_COLUMNS, "share of ||J||_F^2 in top r"]
    write_csv(csv_path, columns, cutoff_rows(data, corruption))
    return {
        run: {jac: float(data[run][f"cutoff/{jac}"][info_dim - 1, 1] ** 2) for jac in TABLE_ROWS}
        for run in corruption_runs
    }


# ---------------------------------------------------------------- Theorem 3.2's terms
def theorem_rows(
    data: Mapping[str, tuple[dict, TrajectoryData]], corruption: Mapping[str, float], window: int
) -> list[dict]:
    """Per run, tracked epoch and set of constants: the minimising r and the terms there."""
    rows = []
    for run, (m, traj) in data.items():
        final_error = float(window_min(traj.test_error, window)[-1])
        for i, e in enumerate(m["tracking/epochs"]):
            for tag in CONSTANTS:
                rows.append(
                    {
                        "run": run,
                        "corruption": float(corruption[run]),
                        "epoch": int(e),
                        "constants": tag,
                        "best_r": int(m[f"theorem/{tag}_r"][i]),
                        "bias": float(m[f"theorem/{tag}_bias"][i]),
                        "variance": float(m[f"theorem/{tag}_variance"][i]),
                        "bound": float(m[f"theorem/{tag}_bound"][i]),
                        "final_test_error": final_error,
                    }
                )
    return rows


def theorem_figure(
    runs: Mapping[str, tuple[str | Path, str | Path]],
    corruption: Mapping[str, float],
    window: int,
    paths: Sequence[str | Path],
    csv_path: str | Path,
    caption: str,
) -> dict:
    """The bound minimised over r against the observed final test error, at J_init and J_final,
    with Spearman's rank correlation over the corruption levels."""
    rows = theorem_rows(_read_runs(runs), corruption, window)
    finals = {run: max(r["epoch"] for r in rows if r["run"] == run) for run in runs}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    correlations = {}
    for ax, (tag, label) in zip(axes, CONSTANTS.items()):
        for which, marker in (("J_init", "o"), ("J_final", "s")):
            pts = sorted(
                (r["corruption"], r["final_test_error"], r["bound"])
                for r in rows
                if r["constants"] == tag and r["epoch"] == (0 if which == "J_init" else finals[r["run"]])
            )
            level, err, bound = (np.array(v) for v in zip(*pts))
            rho = rank_correlation(err, bound)
            correlations[f"{tag}/{which}"] = rho
            shown = f"{rho:.2f}" if np.isfinite(rho) else "n/a (fewer than 3 levels)"
            ax.plot(100 * err, bound, marker + "-", label=f"{which}: Spearman rho = {shown}")
            for lv, x, yv in zip(level, err, bound):
                ax.annotate(f"{100 * lv:g}%", (100 * x, yv), fontsize=6, textcoords="offset points", xytext=(3, 3))
        ax.set_yscale("log")
        ax.set_xlabel(f"observed final test error (%, min over the last {window} epochs)")
        ax.set_ylabel("bias + variance, minimised over r")
        ax.set_title(f"Theorem 3.2's terms, {label}", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"Theorem 3.2's terms against the test error over label corruption ({caption})", fontsize=10)
    fig.tight_layout()
    save_figure(fig, paths)
    write_csv(csv_path, list(rows[0]), [list(r.values()) for r in rows])
    return correlations


# ---------------------------------------------------------------- memorisation
def memorisation_rows(data: Mapping[str, tuple[dict, TrajectoryData]], corruption: Mapping[str, float]) -> list[dict]:
    """One row per run and measured epoch (the tracked epochs, else J_init and J_final): J's label
    energy on N at that epoch, the fraction of corrupted labels memorised, and the errors."""
    rows = []
    for run, (m, traj) in data.items():
        if "tracking/epochs" in m:
            epochs = [int(e) for e in m["tracking/epochs"]]
            energy = m["tracking/labels"][:, 1] ** 2
        else:
            epochs = [0, len(traj.test_error) - 1]
            energy = m["label_energy_nuisance"]
        for e, value in zip(epochs, energy):
            rows.append(
                {
                    "run": run,
                    "corruption": float(corruption[run]),
                    "epoch": e,
                    "memorised_fraction": float(1 - traj.train_error_corrupted[e]),
                    "kept_error": float(traj.train_error_kept[e]),
                    "train_error": float(traj.train_error[e]),
                    "test_error": float(traj.test_error[e]),
                    "label_energy_nuisance": float(value),
                    "no_memorisation_energy": float(m["no_memorisation"][1]),
                }
            )
    return rows


def memorisation_correlations(rows: Sequence[dict]) -> dict[str, float]:
    """Spearman's rank correlation of J's label energy on N with the memorised fraction (corrupted
    runs) and with the training error (all runs), over every measured epoch."""
    corrupted = [r for r in rows if r["corruption"] > 0]
    return {
        "memorised_fraction": rank_correlation(
            np.array([r["memorised_fraction"] for r in corrupted]),
            np.array([r["label_energy_nuisance"] for r in corrupted]),
        ),
        "train_error": rank_correlation(
            np.array([r["train_error"] for r in rows]), np.array([r["label_energy_nuisance"] for r in rows])
        ),
    }


def memorisation_figure(
    runs: Mapping[str, tuple[str | Path, str | Path]],
    corruption: Mapping[str, float],
    paths: Sequence[str | Path],
    csv_path: str | Path,
    caption: str,
) -> dict[str, float]:
    """J's label energy on N against the memorised fraction of corrupted labels (left) and against
    the training error (right), every measured epoch of every run; the dotted lines are each
    level's no-memorisation reference."""
    rows = memorisation_rows(_read_runs(runs), corruption)
    rho = memorisation_correlations(rows)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    cmap = plt.get_cmap("viridis")
    for run in runs:
        pts = [r for r in rows if r["run"] == run]
        level = corruption[run]
        colour = cmap(min(level, 1.0) * 0.9)
        label = f"{100 * level:g}% corrupted ({run})"
        energy = [r["label_energy_nuisance"] for r in pts]
        if level > 0:
            axes[0].plot([r["memorised_fraction"] for r in pts], energy, "o-", color=colour, label=label)
            axes[0].axhline(pts[0]["no_memorisation_energy"], color=colour, linestyle=":", linewidth=1)
            for r in (pts[0], pts[-1]):
                axes[0].annotate(
                    f"ep {r['epoch']}",
                    (r["memorised_fraction"], r["label_energy_nuisance"]),
                    fontsize=6,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        axes[1].plot([100 * r["train_error"] for r in pts], energy, "o-", color=colour, label=label)
    axes[0].set_xlabel("fraction of corrupted labels memorised (1 - their training error)")
    axes[0].set_title(
        f"J's label energy on N against memorisation (Spearman rho = {rho['memorised_fraction']:.2f}); "
        "dotted: no-memorisation reference",
        fontsize=8,
    )
    axes[1].set_xlabel("training error against the trained labels (%)")
    axes[1].set_title(f"against the training error, all runs (Spearman rho = {rho['train_error']:.2f})", fontsize=8)
    for ax in axes:
        ax.set_ylabel(r"$\|P_N y\|^2/\|y\|^2$, N of J at that epoch")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
    fig.suptitle(f"Memorisation of corrupted labels and the Jacobian's nuisance space ({caption})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    save_figure(fig, paths)
    write_csv(csv_path, list(rows[0]), [list(r.values()) for r in rows])
    return rho


# ---------------------------------------------------------------- J_init's spectrum without training
def init_spectrum_figure(
    a: InitAlignment, info_dim: int, classes: int, paths: Sequence[str | Path], csv_path: str | Path, caption: str
) -> None:
    """J_init's computed singular values, and the energy of y and r0 = f(W0) - y on I over r."""
    r = np.arange(1, len(a.cutoff) + 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.loglog(np.arange(1, len(a.singular_values) + 1), a.singular_values, ".-", ms=3)
    left.set_xlabel("index i")
    left.set_ylabel("s_i")
    left.set_title(f"J_init: the {len(a.singular_values)} computed singular values ({a.method})", fontsize=9)
    for col, label in ((0, "y"), (3, "r0 = f(W0) - y")):
        right.semilogx(r, a.cutoff[:, col] ** 2, label=f"||P_I {label}||^2 / ||{label}||^2")
    right.set_xlabel("cut-off r")
    right.set_ylim(0, 1)
    right.set_title("label energy on the information space of J_init", fontsize=9)
    for ax in (left, right):
        ax.axvline(classes, color="0.7", linestyle="--", label=f"r = K = {classes}")
        ax.axvline(info_dim, color="0.5", linestyle=":", label=f"r = info_dim = {info_dim}")
    right.legend(fontsize=7)
    fig.suptitle(f"J_init's spectrum ({caption})", fontsize=10)
    fig.tight_layout()
    save_figure(fig, paths)
    write_csv(
        csv_path,
        ["r", "singular_value", *TABLE_COLUMNS],
        [[int(i), float(a.singular_values[i - 1]), *a.cutoff[i - 1].tolist()] for i in r],
    )


def write_init_row(a: InitAlignment, out: Mapping[str, str | Path], scale: str) -> None:
    """Table 1's J_init row (clean labels, no training) as CSV and Markdown."""
    name = "J_init (degenerate)" if a.degenerate else "J_init"
    write_csv(out["csv"], ["jacobian", *TABLE_COLUMNS], [[name, *(repr(float(v)) for v in a.row)]])
    md = [
        f"**Table 1, J_init row: clean labels, the initial network ({scale}; {a.method} spectrum)**",
        "",
        "| | " + " | ".join(markdown_columns()) + " |",
        "|---" * (len(TABLE_COLUMNS) + 1) + "|",
        f"| {name} | " + " | ".join(format_value(v) for v in a.row) + " |",
    ]
    if a.degenerate:
        md += ["", f"J_init is degenerate, measured anyway (jacobian.allow_degenerate): {a.degenerate}"]
    with atomic_path(out["md"]) as tmp:
        tmp.write_text("\n".join(md) + "\n")
