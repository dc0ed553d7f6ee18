"""Figures 5-9 and Tables 1-3 of the paper's Section 4, from the measurement files.

Curves over epochs show the minimum over a window of the last ``window`` epochs, as the
paper does "for visual clarity" (window 1 = raw values).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..analysis.measure import TABLE_COLUMNS, TABLE_ROWS  # noqa: E402
from ..common.h5io import atomic_path, open_checked  # noqa: E402
from ..train.trajectory import TrajectoryData, read_trajectory  # noqa: E402

# The paper's printed Tables 1-3 (CIFAR-10, 3 classes, n = 9999, ResNet20, r = 50):
# rows J_init, J_final; columns as TABLE_COLUMNS.
PAPER_TABLES = {
    1: np.array([[0.724, 0.690, 5.44e-3, 0.886, 0.465, 4.10e-3], [0.987, 0.158, 3.16e-3, 0.976, 0.217, 3.43e-3]]),
    2: np.array([[0.702, 0.712, 5.36e-3, 0.814, 0.582, 4.43e-3], [0.997, 0.078, 3.10e-3, 0.991, 0.136, 3.06e-3]]),
    3: np.array([[0.587, 0.810, 1.72e-3, 0.643, 0.766, 1.98e-3], [0.751, 0.660, 1.87e-3, 0.763, 0.646, 1.20e-3]]),
}
# the paper's tables as the paper titles them (the measured tables are titled by their runs: table_title)
PAPER_TABLE_TITLES = {
    1: "Table 1: clean labels, SGD",
    2: "Table 2: clean labels, Adam",
    3: "Table 3: 50% corrupted labels, SGD",
}
# the paper's setting of each table: (optimizer, corruption); all on ResNet20, n = 9,999
PAPER_TABLE_SETTINGS = {1: ("sgd", 0.0), 2: ("adam", 0.0), 3: ("sgd", 0.5)}
PAPER_NETWORK, PAPER_SAMPLES = "resnet20", 9999
OPTIMIZER_NAMES = {"sgd": "SGD", "adam": "Adam"}
LATEX_COLUMNS = (
    r"$\|\Pi_I(y)\|/\|y\|$",
    r"$\|\Pi_N(y)\|/\|y\|$",
    r"$\|J_I^\dagger y\|/\|y\|$",
    r"$\|\Pi_I(r_0)\|/\|r_0\|$",
    r"$\|\Pi_N(r_0)\|/\|r_0\|$",
    r"$\|J_I^\dagger r_0\|/\|r_0\|$",
)
INFO_COLOUR, NUIS_COLOUR = "tab:blue", "tab:red"


def window_min(values: np.ndarray, window: int) -> np.ndarray:
    """out[t] = min(values[t - window + 1 .. t]): the paper's minimum over the last epochs."""
    values = np.asarray(values, dtype=np.float64)
    out = np.empty_like(values)
    for t in range(len(values)):
        out[t] = values[max(0, t - window + 1) : t + 1].min()
    return out


def write_csv(path: str | Path, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A CSV file with a header row, written atomically (every figure's data file)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        writer.writerows(rows)


def save_figure(fig: plt.Figure, paths: Sequence[str | Path]) -> None:
    """Save one figure to every path (format from the suffix), atomically, then close it."""
    for path in paths:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=Path(path).suffix.lstrip("."), bbox_inches="tight", dpi=150)
    plt.close(fig)


def _read(path: str | Path, names: Sequence[str]) -> dict:
    with open_checked(path, names) as f:
        out = {n: f[n][...] for n in names}
        out["attrs"] = dict(f.attrs)
        return out


# ---------------------------------------------------------------- Figure 5
def figure5(spectrum_init: str | Path, spectrum_final: str | Path, paths: Sequence[str | Path]) -> dict:
    """Histogram of the singular values of J_init and J_final, log-spaced bins, cut-off s_r marked."""
    sp = {name: _read(p, ["singular_values"]) for name, p in (("J_init", spectrum_init), ("J_final", spectrum_final))}
    fig, ax = plt.subplots(figsize=(6, 4))
    floors = {k: float(v["attrs"].get("numerical_floor", 0.0)) for k, v in sp.items()}
    kept = {k: v["singular_values"][v["singular_values"] > max(floors[k], 0.0)] for k, v in sp.items()}
    lo = min(s.min() for s in kept.values())
    hi = max(s.max() for s in kept.values())
    bins = np.logspace(np.log10(lo), np.log10(hi), 40)
    summary = {}
    for (name, s), colour in zip(kept.items(), ("tab:cyan", "tab:red")):
        r = int(sp[name]["attrs"]["info_dim"])
        dropped = len(sp[name]["singular_values"]) - len(s)
        label = f"{name} ({len(s)} values" + (f", {dropped} below the float64 floor left out" if dropped else "") + ")"
        ax.hist(s, bins=bins, histtype="step", linewidth=1.8, color=colour, label=label)
        ax.axvline(
            sp[name]["singular_values"][r - 1], color=colour, linestyle="--", linewidth=1, label=f"{name} cut-off s_{r}"
        )
        summary[name] = {"s_max": float(s.max()), "s_r": float(sp[name]["singular_values"][r - 1]), "r": r}
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("singular value of J (training data)")
    ax.set_ylabel("count")
    ax.set_title("Figure 5: singular values of the initial and final Jacobian")
    ax.legend(fontsize=7)
    save_figure(fig, paths)
    return summary


# ---------------------------------------------------------------- Figures 6-8
def _residual_panel(ax, m: dict, split: str, window: int, title: str) -> None:
    info = window_min(m[f"residual/{split}/information"] / m[f"residual/{split}/r0_energy"], window)
    nuis = window_min(m[f"residual/{split}/nuisance"] / m[f"residual/{split}/r0_energy"], window)
    epochs = np.arange(len(info))
    ax.plot(epochs, info, color=INFO_COLOUR, label=r"information space $\|\Pi_I(r_\tau)\|^2/\|r_0\|^2$")
    ax.plot(epochs, nuis, color=NUIS_COLOUR, label=r"nuisance space $\|\Pi_N(r_\tau)\|^2/\|r_0\|^2$")
    ax.plot(
        epochs,
        window_min(
            (m[f"residual/{split}/information"] + m[f"residual/{split}/nuisance"]) / m[f"residual/{split}/r0_energy"],
            window,
        ),
        color="0.4",
        linestyle=":",
        label=r"total $\|r_\tau\|^2/\|r_0\|^2$",
    )
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("residual energy / initial residual energy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def _error_panel(ax, traj: TrajectoryData, window: int, title: str, mark_epoch: int | None = None) -> None:
    epochs = np.arange(len(traj.test_error))
    ax.plot(epochs, 100 * window_min(traj.train_error, window), label="training error (training labels)")
    if not np.array_equal(traj.train_y, traj.train_y_clean):
        ax.plot(
            epochs,
            100 * window_min(traj.train_error_clean, window),
            linestyle="--",
            label="training error (clean labels)",
        )
        # memorisation: the corrupted samples against their corrupted labels, the kept ones apart
        ax.plot(epochs, 100 * window_min(traj.train_error_kept, window), linestyle="-.", label="kept samples")
        ax.plot(
            epochs,
            100 * window_min(traj.train_error_corrupted, window),
            linestyle=":",
            label="corrupted samples (100% - memorised)",
        )
    ax.plot(epochs, 100 * window_min(traj.test_error, window), color="k", label="test error")
    best = int(np.argmin(traj.test_error))
    ax.plot([best], [100 * traj.test_error[best]], "kv", label=f"lowest test error (epoch {best})")
    if mark_epoch is not None:
        ax.axvline(
            mark_epoch, color="0.5", linestyle="--", linewidth=1, label=f"reference Jacobian (epoch {mark_epoch})"
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("misclassification error (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def _read_run(measurements: str | Path, trajectory: str | Path) -> tuple[dict, TrajectoryData]:
    from ..analysis.measure import read_measurements

    return read_measurements(measurements), read_trajectory(trajectory)


def residual_figure(
    number: int,
    measurements: str | Path,
    trajectory: str | Path,
    window: int,
    paths: Sequence[str | Path],
    test_panel: bool = True,
) -> dict:
    """Figures 6, 7, 8: residual on I and N over epochs (train, test) and train/test error."""
    m, traj = _read_run(measurements, trajectory)
    ref = int(m["attrs"]["reference_epoch"])
    run = m["attrs"]["run"]
    jname = f"J at epoch {ref}" if ref != len(traj.test_error) - 1 else "J_final"
    panels = 3 if test_panel else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
    _residual_panel(axes[0], m, "train", window, f"(a) residual on I/N of {jname}, training data")
    if test_panel:
        _residual_panel(axes[1], m, "test", window, f"(b) residual on I/N of {jname} (test set), test data")
    _error_panel(
        axes[-1],
        traj,
        window,
        f"({'c' if test_panel else 'b'}) training and test error",
        ref if ref != len(traj.test_error) - 1 else None,
    )
    fig.suptitle(f"Figure {number}: run {run} (curves: minimum over the last {window} epochs)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, paths)
    info_norm = m["residual/train/information"] / m["residual/train/r0_energy"]
    return {
        "run": run,
        "reference_epoch": ref,
        "best_test_epoch": int(np.argmin(traj.test_error)),
        "best_test_error": float(np.min(traj.test_error)),
        "final_test_error": float(traj.test_error[-1]),
        "final_train_error": float(traj.train_error[-1]),
        "final_info_residual_fraction": float(info_norm[-1]),
    }


# ---------------------------------------------------------------- Figure 9
def figure9_rows(
    runs: Mapping[str, tuple[str | Path, str | Path]], corruption: Mapping[str, float], window: int
) -> list[dict]:
    """Figure 9's values per run (measurements and trajectory files), by corruption level."""
    rows = []
    for run, (meas_path, traj_path) in runs.items():
        m, traj = _read_run(meas_path, traj_path)
        rows.append(
            {
                "run": run,
                "corruption": float(corruption[run]),
                "label_energy_nuisance_init": float(m["label_energy_nuisance"][0]),
                "label_energy_nuisance_final": float(m["label_energy_nuisance"][1]),
                "no_memorisation_energy": float(m["no_memorisation"][1]),
                "final_corrupted_error": float(traj.train_error_corrupted[-1]),
                "final_test_error": float(window_min(traj.test_error, window)[-1]),
            }
        )
    return sorted(rows, key=lambda r: r["corruption"])


def figure9(
    runs: Mapping[str, tuple[str | Path, str | Path]],
    corruption: Mapping[str, float],
    window: int,
    paths: Sequence[str | Path],
    csv_path: str | Path | None = None,
) -> list[dict]:
    """Label energy on N of J_init and J_final, and test error, versus corruption level."""
    rows = figure9_rows(runs, corruption, window)
    x = 100 * np.array([r["corruption"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(
        x,
        [r["label_energy_nuisance_init"] for r in rows],
        "o-",
        color="tab:cyan",
        label=r"$\|\Pi_N(y)\|^2/\|y\|^2$, N of J_init",
    )
    ax.plot(
        x,
        [r["label_energy_nuisance_final"] for r in rows],
        "s-",
        color="tab:red",
        label=r"$\|\Pi_N(y)\|^2/\|y\|^2$, N of J_final",
    )
    ax.plot(
        x,
        [r["no_memorisation_energy"] for r in rows],
        "x:",
        color="tab:red",
        label=r"$\|\Pi_N(y)\|^2/\|y\|^2$ with I = true classes only (no noise memorised)",
    )
    ax.plot(
        x,
        [r["final_test_error"] for r in rows],
        "p-",
        color="k",
        label=f"test error (final, min over last {window} epochs)",
    )
    corrupted = [(xi, r["final_corrupted_error"]) for xi, r in zip(x, rows) if np.isfinite(r["final_corrupted_error"])]
    if corrupted:
        ax.plot(*zip(*corrupted), "^--", color="0.5", label="final training error of the corrupted samples")
    ax.set_xlabel("label corruption (%)")
    ax.set_ylabel("fraction")
    ax.set_ylim(0, 1)
    ax.set_title("Figure 9: label energy on the nuisance space and test error", fontsize=10)
    ax.legend(fontsize=7)
    save_figure(fig, paths)
    if csv_path is not None:
        write_csv(csv_path, list(rows[0]), [list(r.values()) for r in rows])
    return rows


# ---------------------------------------------------------------- Tables 1-3
def markdown_columns() -> list[str]:
    """Column titles with the norm bars as U+2016, since a '|' would end a Markdown cell."""
    return [c.replace("||", "\u2016") for c in TABLE_COLUMNS]


def format_value(v: float) -> str:
    return f"{v:.3f}" if abs(v) >= 0.01 else f"{v:.2e}"


def labels_and_recipe(settings: Mapping) -> tuple[str, str]:
    """("clean labels" or "50% corrupted labels", "SGD lr 0.05, momentum 0.9, 400 epochs") of a run's settings."""
    corruption = float(settings.get("corruption", 0.0))
    labels = "clean labels" if corruption == 0 else f"{corruption:.0%} corrupted labels"
    optimizer = OPTIMIZER_NAMES.get(settings["optimizer"], settings["optimizer"])
    momentum = f", momentum {settings['momentum']:g}" if settings.get("momentum") else ""
    return labels, f"{optimizer} lr {settings['lr']:g}{momentum}, {settings['epochs']} epochs"


def table_title(number: int, run: str, settings: Mapping, scale: str) -> str:
    """A table's title from the run it shows: its labels, optimiser and recipe, and the scale."""
    labels, recipe = labels_and_recipe(settings)
    return f"Table {number}: {labels}, {recipe} (run {run}; {scale})"


def degenerate_rows(attrs: Mapping) -> dict[str, str]:
    """Table row -> why its Jacobian is degenerate, from a measurement file's attrs (measured
    anyway under jacobian.allow_degenerate)."""
    return {row: str(attrs[f"degenerate_{row}"]) for row in TABLE_ROWS if str(attrs.get(f"degenerate_{row}", ""))}


def write_table(
    number: int, measurements: str | Path, out: Mapping[str, str | Path], scale: str, settings: Mapping
) -> np.ndarray:
    """Table ``number`` as CSV, Markdown and LaTeX from a run's measurement file; ``settings``:
    the run's (runs.<run> in the config), for the title. A row whose Jacobian is degenerate is
    marked (its name ends in " (degenerate)", and a note says why)."""
    with open_checked(measurements, ["alignment/values", "no_memorisation"], artifact="measurements") as f:
        values = f["alignment/values"][...]
        reference = f["no_memorisation"][...]
        run = f.attrs["run"]
        degenerate = degenerate_rows(f.attrs)
    title = table_title(number, run, settings, scale)
    names = [f"{name} (degenerate)" if name in degenerate else name for name in TABLE_ROWS]
    write_csv(
        out["csv"],
        ["jacobian", *TABLE_COLUMNS],
        [[name, *(repr(float(v)) for v in row)] for name, row in zip(names, values)],
    )
    md = [f"**{title}**", "", "| | " + " | ".join(markdown_columns()) + " |", "|---" * (len(TABLE_COLUMNS) + 1) + "|"]
    md += [f"| {name} | " + " | ".join(format_value(v) for v in row) + " |" for name, row in zip(names, values)]
    md += [
        "",
        *(
            f"{row} is degenerate, measured anyway (jacobian.allow_degenerate): {why}"
            for row, why in degenerate.items()
        ),
    ]
    if reference[0] < 1:  # a corrupted run: how much of y a network that memorised no noise would hold
        md += [
            "",
            f"No-memorisation reference (I = the true-class structure, none of the label noise): "
            f"\u2016P_I y\u2016/\u2016y\u2016 = {format_value(reference[0])}, "
            f"\u2016P_N y\u2016\u00b2/\u2016y\u2016\u00b2 = {format_value(reference[1])}",
        ]
    with atomic_path(out["md"]) as tmp:
        tmp.write_text("\n".join(md) + "\n")
    tex = [
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{l" + "c" * len(TABLE_COLUMNS) + "}",
        r"\hline",
        " & " + " & ".join(LATEX_COLUMNS) + r" \\",
        r"\hline",
    ]
    tex += [
        f"$J_{{\\mathrm{{{name.split('_')[1]}}}}}$ & " + " & ".join(format_value(v) for v in row) + r" \\"
        for name, row in zip(TABLE_ROWS, values)
    ]
    tex += [
        r"\hline",
        r"\end{tabular}",
        f"\\caption{{{title.replace('%', chr(92) + '%').replace('_', chr(92) + '_')}}}",
        r"\end{table}",
    ]
    with atomic_path(out["tex"]) as tmp:
        tmp.write_text("\n".join(tex) + "\n")
    return values


def beside_paper_markdown(
    number: int,
    measured: Mapping[str, Sequence[float] | None],
    caption: str,
    missing: Mapping[str, str] | None = None,
    reference: float | None = None,
) -> str:
    """Table ``number`` in Markdown, each measured value beside the paper's printed one: ``measured``
    maps a row of TABLE_ROWS to its six values, or to None where it was not measured ("-", and
    ``missing`` says why); a note per row gives the largest difference over the four projection
    columns, and ``reference`` (||P_I y||/||y|| with no label noise memorised) is added below 1."""
    lines = [f"**{PAPER_TABLE_TITLES[number]}** ({caption})", "", "| | " + " | ".join(markdown_columns()) + " |"]
    lines.append("|---" * (len(TABLE_COLUMNS) + 1) + "|")
    notes = []
    for row, paper in zip(TABLE_ROWS, PAPER_TABLES[number]):
        values = measured.get(row)
        cells = [
            (format_value(v) if values else "-") + f" (paper {format_value(q)})" for v, q in zip(values or paper, paper)
        ]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
        if values:
            diff = max(abs(values[i] - paper[i]) for i in (0, 1, 3, 4))
            notes.append(f"{row}: largest |measured - paper| over the four projection columns {diff:.3f}")
        else:
            notes.append(f"{row}: not measured ({(missing or {}).get(row, 'not reached yet')})")
    lines += ["", *notes]
    if reference is not None and reference < 1:
        lines.append(
            "No-memorisation reference (I = the true-class structure, none of the label noise): "
            f"\u2016P_I y\u2016/\u2016y\u2016 = {format_value(reference)}"
        )
    return "\n".join(lines) + "\n"


def measured_table(
    number: int, run: str, spectra: Mapping[str, Mapping], caption: str, steps: Sequence[Mapping]
) -> str:
    """:func:`beside_paper_markdown` of run ``run`` from spectra keyed "J_init" and "J_final {run}",
    each holding "alignment" and "no_memorisation" per run (bench/paper_gpu.py's results.json); a
    row not measured says the last reason ``steps`` (records with "step" and "reason") gave for its
    spectrum or its run's training."""
    init, final = spectra.get("J_init", {}), spectra.get(f"J_final {run}", {})
    measured = {"J_init": init.get("alignment", {}).get(run), "J_final": final.get("alignment", {}).get(run)}

    def why(spectrum: str, trained: str = "") -> str:
        def about(step: str) -> bool:  # the spectrum's own step, or the training of its run
            return step == spectrum or (step.startswith("train ") and trained in step[6:].split(" + "))

        hits = [e["reason"] for e in steps if e.get("reason") and about(e["step"])]
        return hits[-1] if hits else "not reached yet"

    missing = {"J_init": why("spectrum J_init"), "J_final": why(f"spectrum J_final {run}", run)}
    reference = (final or init).get("no_memorisation", {}).get(run, [None])[0]
    return beside_paper_markdown(number, measured, caption, missing, reference)


def error_curves_figure(
    rows: Sequence[Mapping[str, float]], title: str, milestones: Sequence[int], paths: Sequence[str | Path]
) -> None:
    """Figure 8's panel from per-epoch rows ("epoch" and train.trajectory.epoch_errors' keys) of the
    evaluated epochs only (no window): the errors against the training and the clean labels, the
    kept and the corrupted samples, the test error with its lowest point, the step-size divisions."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if rows:
        epochs = [row["epoch"] for row in rows]
        for key, label, style in (
            ("train_error", "training error (training labels)", "-"),
            ("train_error_clean", "training error (clean labels)", "--"),
            ("train_error_kept", "kept samples", "-."),
            ("train_error_corrupted", "corrupted samples (100% - memorised)", ":"),
            ("test_error", "test error", "k-"),
        ):
            ax.plot(epochs, [100 * row[key] for row in rows], style, label=label)
        best = min(rows, key=lambda row: row["test_error"])
        ax.plot([best["epoch"]], [100 * best["test_error"]], "kv", label=f"lowest test error (epoch {best['epoch']})")
        for m in milestones:
            ax.axvline(m, color="0.6", linewidth=0.8)
        ax.set_title(title, fontsize=9)
    ax.set_xlabel("epoch")
    ax.set_ylabel("misclassification error (%)")
    ax.legend(fontsize=7)
    save_figure(fig, paths)


def setting_differences(settings: Mapping[int, Mapping], network: str, n: int) -> list[str]:
    """Where the measured setting differs from the paper's: the network and n for all tables,
    then each table's recipe (optimiser, corruption) against the paper's for that table."""
    out = []
    if network != PAPER_NETWORK:
        out.append(f"network {network}, not the paper's ResNet20")
    if n != PAPER_SAMPLES:
        out.append(f"n = {n:,} training images, not the paper's {PAPER_SAMPLES:,}")
    for number, run in sorted(settings.items()):
        optimizer, corruption = PAPER_TABLE_SETTINGS[number]
        if run["optimizer"] != optimizer:
            ours = OPTIMIZER_NAMES.get(run["optimizer"], run["optimizer"])
            out.append(f"Table {number}: {ours}, not the paper's {OPTIMIZER_NAMES[optimizer]}")
        if float(run.get("corruption", 0.0)) != corruption:
            paper_labels = "clean labels" if corruption == 0 else f"{corruption:.0%} corrupted labels"
            out.append(f"Table {number}: {labels_and_recipe(run)[0]}, not the paper's {paper_labels}")
    return out


def comparison_table(
    tables: Mapping[int, str | Path],
    out_path: str | Path,
    scale: str,
    settings: Mapping[int, Mapping] | None = None,
    network: str = PAPER_NETWORK,
    n: int = PAPER_SAMPLES,
) -> str:
    """One Markdown table: every measured value beside the paper's printed value, and where the
    measured setting differs from the paper's (``settings``: table number -> its run's settings;
    ``network``: model.name, the paper's "resnet20" at width 1 only; ``n``: training images)."""
    lines = [
        "# Measured versus the paper's Tables 1-3",
        "",
        f"Measured: {scale}.",
        "Paper: CIFAR-10 (airplane, automobile, bird), n = 9999, ResNet20 without batch-norm (p ~ 0.27M), r = 50.",
        "",
    ]
    differences = setting_differences({k: v for k, v in (settings or {}).items() if k in tables}, network, n)
    if differences:
        lines += ["**Not the paper's setting**, so these values are no reproduction of the paper's:", ""]
        lines += [f"- {d}." for d in differences] + [""]
    lines += [
        "| table | Jacobian | " + " | ".join(markdown_columns()) + " |",
        "|---|---|" + "---|" * len(TABLE_COLUMNS),
    ]
    for number, path in sorted(tables.items()):
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))[1:]
        for (name, *vals), paper in zip(rows, PAPER_TABLES[number]):
            cells = [f"{format_value(float(v))} (paper {format_value(p)})" for v, p in zip(vals, paper)]
            lines.append(f"| {number} | {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    with atomic_path(out_path) as tmp:
        tmp.write_text(text)
    return text


def measured_network(subset_path: str | Path, checkpoint_path: str | Path) -> tuple[str, int]:
    """(the network as the comparison names it: model.name, with its width where not 1; n)."""
    from ..train.models import read_checkpoint

    with open_checked(subset_path, ["train/y"], artifact="subset") as f:
        n = len(f["train/y"])
    spec = read_checkpoint(checkpoint_path)["model"]
    width = f" width {spec['width']:g}" if spec["name"] in ("resnet20", "vgg11_bn") and spec["width"] != 1 else ""
    return f"{spec['name']}{width}", n


def scale_statement(subset_path: str | Path, checkpoint_path: str | Path, info_dim: int) -> str:
    """Which data set and scale produced the measured numbers, for table captions."""
    from ..train.models import count_parameters, load_checkpoint

    with open_checked(subset_path, ["train/y"], artifact="subset") as f:
        dataset = f.attrs["dataset"]
        classes = [str(c) for c in f.attrs["classes"]]
        n = len(f["train/y"])
    model, payload = load_checkpoint(checkpoint_path)
    spec = payload["model"]
    width = f" width {spec['width']:g}" if spec["name"] == "resnet20" else ""
    return (
        f"{dataset} classes {', '.join(classes)}, n = {n} (nK = {n * len(classes)}), "
        f"{spec['name']}{width} (p = {count_parameters(model)}), r = {info_dim}"
    )
