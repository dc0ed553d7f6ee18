"""The factor table of docs/cifar10.md: what decides whether J_final takes up the label noise
(``python -m jacobian_spectrum factors CONFIG[=TIME_LOG] ...``).

Reads finished workflow runs (one results folder per config) and gives one Markdown row per
config: the final training error on the kept and on the corrupted samples at each corruption
level, the 50% run's test-error dip (lowest windowed average, then the final one), Table 3's
J_final ||P_I y||/||y|| beside its no-memorisation reference, Figure 9's J_final energy on N at
each level, the rank correlations of J's label energy on N with the training error and with the
memorised fraction over every measured epoch (the memorisation figure's CSV), whether the
augmented training loss had levelled off before the step size was divided, and, given the
``/usr/bin/time -v`` output of the run, its wall time and peak memory.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np
import yaml

from ..train.trajectory import centred_mean
from .analysis import memorisation_correlations

FACTOR_COLUMNS = (
    "configuration",
    "final training error, kept samples (%)",
    "corrupted samples (%)",
    "50% run's test error: lowest windowed average, final",
    "Table 3 J_final ‖P_I y‖/‖y‖",
    "Figure 9 J_final ‖P_N y‖²/‖y‖²",
    "rho(energy on N, training error) / rho(energy on N, memorised)",
    "batch loss change, 20 epochs before the step-size division",
    "wall, peak",
)


def time_log(text: str) -> str:
    """Wall time and peak RSS from the text of a ``/usr/bin/time -v`` log ("n/a" if absent)."""
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if not wall or not rss:
        return "n/a"
    return f"{wall.group(1)}, {int(rss.group(1)) / 1e6:.1f} GB"


def levelled_off(batch_loss: np.ndarray, milestones: Sequence[int]) -> float:
    """Relative change of the mean (augmented) batch loss between the two 20-epoch windows before
    the first step-size division (or the end): near 0 once the loss has levelled off.
    ``batch_loss`` is per epoch from epoch 1 (the trajectory's entry 0 is the initialisation)."""
    m = (list(milestones) or [len(batch_loss)])[0]
    a, b = batch_loss[max(0, m - 40) : m - 20].mean(), batch_loss[m - 20 : m].mean()
    return float((b - a) / a)


def corruption_cells(cfg: Mapping, results: Path) -> dict[str, list[str]]:
    """Per corruption level (the config's figures.corruption_runs): final errors, energy on N, loss change."""
    cells: dict[str, list[str]] = {k: [] for k in ("kept", "corrupted", "energy", "loss")}
    for run in cfg["figures"]["corruption_runs"]:
        with h5py.File(results / "runs" / run / "trajectory.h5") as f:
            cells["kept"].append(f"{100 * f['train/error_kept'][-1]:.1f}")
            c = f["train/error_corrupted"][-1]
            cells["corrupted"].append("-" if np.isnan(c) else f"{100 * c:.1f}")
            change = levelled_off(f["batch_loss"][1:], cfg["runs"][run].get("milestones", []))
            cells["loss"].append(f"{100 * change:+.0f}%")
        with h5py.File(results / "runs" / run / "measurements.h5") as f:
            cells["energy"].append(f"{f['label_energy_nuisance'][1]:.3f}")
    return cells


def factor_row(config: str | Path, time_log_path: str | Path | None = None) -> list[str]:
    """One Markdown row's cells for a config whose workflow has finished."""
    cfg = yaml.safe_load(Path(config).read_text())
    results = Path(cfg["results"])
    window = cfg["figures"]["min_window"]
    aug = cfg["training"]["augment_crop"] or cfg["training"]["augment_flip"]
    n = cfg["dataset"]["train_per_class"] * len(cfg["dataset"]["classes"])
    head = f"{Path(config).name}: n = {n}, augmentation {'on' if aug else 'off'}, batch {cfg['training']['batch_size']}"
    cells = corruption_cells(cfg, results)
    run50 = results / "runs" / cfg["figures"]["table3"]
    with h5py.File(run50 / "trajectory.h5") as f:
        test = (f["test/predictions"][...].argmax(-1) != f["test/y"][...]).mean(-1)
    curve = centred_mean(test, window)
    best = int(np.argmin(curve))
    with h5py.File(run50 / "measurements.h5") as f:
        table3 = f"{f['alignment/values'][1, 0]:.3f} (reference {f['no_memorisation'][0]:.3f})"
    with open(results / "figures" / "memorisation.csv", newline="") as fh:
        rows = [{k: v if k == "run" else float(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    rho = memorisation_correlations(rows)
    return [
        head,
        " / ".join(cells["kept"]),
        " / ".join(cells["corrupted"]),
        f"{100 * curve[best]:.1f}% (epoch {best}), {100 * test[-window:].mean():.1f}%",
        table3,
        " / ".join(cells["energy"]),
        f"{rho['train_error']:.2f} / {rho['memorised_fraction']:.2f} ({len(rows)} points)",
        " / ".join(cells["loss"]),
        time_log(Path(time_log_path).read_text()) if time_log_path else "n/a",
    ]


def factor_table(specs: Sequence[str]) -> str:
    """The Markdown table of ``CONFIG[=TIME_LOG]`` specs, one row each."""
    lines = ["| " + " | ".join(FACTOR_COLUMNS) + " |", "|---" * len(FACTOR_COLUMNS) + "|"]
    for spec in specs:
        config, _, log = spec.partition("=")
        lines.append("| " + " | ".join(factor_row(config, log or None)) + " |")
    lines += ["", "Levels in each cell, in order: the config's figures.corruption_runs (0, 25, 50, 75%[, 100%])."]
    return "\n".join(lines) + "\n"
