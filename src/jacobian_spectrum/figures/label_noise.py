"""Which labels are wrong (:mod:`..analysis.label_noise`): ``tables/label_noise.{csv,md}`` and
``figures/label_noise.{png,pdf}``: the AUROC of each score for picking out the corrupted
labels, over the cut-off r, over the epochs, and the ROC curves at r = info_dim."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from ..analysis.label_noise import TABLE_COLUMNS, RunDetection, run_detection
from ..analysis.measure import read_measurements
from ..common.h5io import atomic_path, open_checked
from ..train.folds import read_out_of_fold
from ..train.trajectory import read_trajectory
from .paper import plt, save_figure, write_csv

SCORE_STYLES = {
    "J_init nuisance": ("tab:blue", "--"),
    "J_final nuisance": ("tab:blue", "-"),
    "AUM": ("tab:orange", "-"),
    "small loss": ("tab:green", "-"),
    "cleanlab": ("tab:red", "-"),
    "cleanlab, softmax": ("tab:red", ":"),
    "cleanlab, softmax, fitted T": ("tab:red", "-."),
}


def spectrum_seconds(path: str | Path) -> float:
    """The seconds a spectrum job recorded for its work (the seconds_* attrs; J's chunk jobs,
    where J is stored, are not counted)."""
    with open_checked(path, [], artifact="spectrum") as f:
        return float(sum(float(v) for k, v in f.attrs.items() if k.startswith("seconds_")))


def read_detection(
    run: str,
    measurements: str | Path,
    trajectory: str | Path,
    labels: str | Path,
    corruption: float,
    window: int,
    folds: Sequence[str | Path] = (),
) -> RunDetection:
    """A run's scores against the corrupted mask stored in its labels file; with the run's fold
    files (the train_fold rule), cleanlab's scores of their out-of-fold outputs too."""
    m = read_measurements(measurements)
    traj = read_trajectory(trajectory)
    with open_checked(labels, ["corrupted", "y"], artifact="labels") as f:
        corrupted, y = f["corrupted"][...], f["y"][...]
    if not np.array_equal(y, traj.train_y):
        raise ValueError(f"{labels}: its labels are not the ones {trajectory} was trained on")
    with h5py.File(trajectory) as f:
        training = float(np.sum(f["epoch_seconds"][...]))
    seconds = {"J_init": spectrum_seconds(m["attrs"]["spectrum_init"]), "training": training}
    out_of_fold = None
    if folds:
        out_of_fold, seconds["folds"] = read_out_of_fold(folds, len(traj.train_y))
    return run_detection(
        run,
        m,
        traj.train_predictions,
        traj.train_y,
        traj.test_error,
        corrupted,
        corruption,
        window,
        seconds,
        out_of_fold,
    )


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "n/a" if not np.isfinite(v) else f"{v:.3f}"
    return str(v)


def write_label_noise_table(detections: Sequence[RunDetection], csv_path: str | Path, md_path: str | Path) -> list:
    """The table: per run, each score's AUROC and average precision at r = info_dim (and the best
    r of each J), and where the ranking inverts."""
    rows = [row for d in detections for row in d.rows()]
    write_csv(csv_path, list(TABLE_COLUMNS), [[row[c] for c in TABLE_COLUMNS] for row in rows])
    md = [
        "**Which labels are wrong: each score's AUROC and average precision for picking out the corrupted "
        "training labels** (1 = every corrupted label ranked first, 0.5 = chance; J nuisance: a sample's "
        "share of the label vector on N; AUM: minus the area under the margin; small loss: the loss at the "
        "epoch of the lowest test error; cleanlab: 1 - its label quality of out-of-fold probabilities from k "
        "trainings stopped at that epoch, the outputs clipped to [0, 1] and renormalised, or softmax of them; "
        "seconds: the J_init spectrum's, the training run's, or the k fold trainings')",
        "",
        "| run | corruption | score | r | epoch | AUROC | average precision | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    md += ["| " + " | ".join(_fmt(row[c]) for c in TABLE_COLUMNS) + " |" for row in rows]
    inverted = sorted({(row["run"], row["corruption"]) for row in rows if row["auroc"] < 0.5})
    if inverted:
        md += [
            "",
            "The ranking inverts (AUROC below 0.5) in "
            + ", ".join(f"{run} ({c:.0%})" for run, c in inverted)
            + ": where a class's corrupted labels outnumber its kept ones, the kept labels are the odd ones out.",
        ]
    with atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(md) + "\n")
    return rows


def label_noise_figure(detections: Sequence[RunDetection], paths: Sequence[str | Path], caption: str) -> None:
    """AUROC against r (J_init dashed, J_final solid), against epoch (the tracked J's, and the
    small loss at every epoch), and the ROC curves of the middle run at r = info_dim."""
    from sklearn.metrics import roc_curve

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colours = plt.cm.viridis(np.linspace(0, 0.85, max(1, len(detections))))
    for d, colour in zip(detections, colours):
        for key, style in (("J_init", "--"), ("J_final", "-")):
            axes[0].plot(d.r_grid, d.auroc_over_r(key), style, color=colour, label=f"{d.run} {key}")
        epochs, j, loss = d.auroc_over_epochs()
        axes[1].plot(np.arange(len(loss)), loss, ":", color=colour, label=f"{d.run} small loss")
        if len(epochs):
            axes[1].plot(epochs, j, "o-", color=colour, label=f"{d.run} J nuisance")
    for ax in axes[:2]:
        ax.axhline(0.5, color="grey", lw=0.8)
        ax.set_ylabel("AUROC")
        ax.legend(fontsize=6)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("cut-off r")
    axes[0].set_title("J's nuisance space over r")
    axes[1].set_xscale("symlog", linthresh=1)
    axes[1].set_xlim(0, max((len(d.losses) - 1 for d in detections), default=1))
    axes[1].set_xlabel("epoch")
    axes[1].set_title("over training")
    if detections:
        d = detections[len(detections) // 2]
        for name, scores in d.scores().items():
            if d.corrupted.any() and not d.corrupted.all():
                fpr, tpr, _ = roc_curve(d.corrupted, scores)
                colour, style = SCORE_STYLES[name]
                axes[2].plot(fpr, tpr, style, color=colour, label=name)
        axes[2].plot([0, 1], [0, 1], color="grey", lw=0.8)
        axes[2].set_xlabel("false positive rate")
        axes[2].set_ylabel("true positive rate")
        axes[2].set_title(f"ROC, {d.run}, r = {d.info_dim}")
        axes[2].legend(fontsize=7)
    fig.suptitle(caption, fontsize=8)
    fig.tight_layout()
    save_figure(fig, paths)


def label_noise(
    runs: Mapping[str, tuple[str | Path, str | Path, str | Path]],
    corruption: Mapping[str, float],
    window: int,
    out: Mapping[str, object],
    caption: str,
    folds: Mapping[str, Sequence[str | Path]] | None = None,
) -> list:
    """The label_noise rule: runs (name -> measurements, trajectory, labels file) with
    0 < corruption < 1 (the others have no two groups to tell apart), and each run's fold files
    where cleanlab's scores are asked for."""
    folds = folds or {}
    detections = [
        read_detection(run, *paths, corruption[run], window, folds.get(run, ()))
        for run, paths in runs.items()
        if 0 < corruption[run] < 1
    ]
    rows = write_label_noise_table(detections, out["csv"], out["md"])
    label_noise_figure(detections, out["figures"], caption)
    return rows
