"""The factor table of docs/cifar10.md: what decides whether J_final takes up the label noise.

Reads finished workflow runs (one results folder per config) and prints one Markdown row per
config: the final training error on the kept and on the corrupted samples at each corruption
level, the 50% run's test-error dip (lowest 10-epoch average, then the final one), Table 3's
J_final ||P_I y||/||y|| beside its no-memorisation reference, Figure 9's J_final energy on N at
each level, the rank correlations of J's label energy on N with the training error and with
the memorised fraction over every measured epoch (the memorisation figure's CSV), whether the
augmented training loss had levelled off before the step size was divided, and, given the
``/usr/bin/time -v`` output of the run, its wall time and peak memory. Not a benchmark: a measurement tool over results.

  python bench/cifar10_factors.py config/cifar10-small.yaml=/tmp/run_small.log \\
      config/cifar10-recipe.yaml=/tmp/run_recipe.log
"""

import argparse
import csv
import re
from pathlib import Path

import h5py
import numpy as np
import yaml

from jacobian_spectrum.analysis.quantities import centred_mean
from jacobian_spectrum.figures.analysis import memorisation_correlations


def time_log(path: Path) -> str:
    """Wall time and peak RSS from a ``/usr/bin/time -v`` log."""
    text = path.read_text()
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if not wall or not rss:
        return "n/a"
    return f"{wall.group(1)}, {int(rss.group(1)) / 1e6:.1f} GB"


def levelled_off(traj: h5py.File, milestones: list[int]) -> float:
    """Relative change of the mean (augmented) batch loss between the two 20-epoch windows
    before the first step-size division (or the end): near 0 once the loss has levelled off."""
    loss = traj["batch_loss"][1:]
    m = (milestones or [len(loss)])[0]
    a, b = loss[max(0, m - 40) : m - 20].mean(), loss[m - 20 : m].mean()
    return float((b - a) / a)


def factor_row(config: Path, log: Path | None) -> tuple[list[str], list[str]]:
    cfg = yaml.safe_load(config.read_text())
    results = Path(cfg["results"])
    window = cfg["figures"]["min_window"]
    aug = cfg["training"]["augment_crop"] or cfg["training"]["augment_flip"]
    n = cfg["dataset"]["train_per_class"] * len(cfg["dataset"]["classes"])
    head = [f"{config.name}: n = {n}, augmentation {'on' if aug else 'off'}, batch {cfg['training']['batch_size']}"]
    kept, corrupted, energy, levels, loss_change = [], [], [], [], []
    for run in cfg["figures"]["corruption_runs"]:
        level = cfg["runs"][run]["corruption"]
        with h5py.File(results / "runs" / run / "trajectory.h5") as f:
            kept.append(f"{100 * f['train/error_kept'][-1]:.1f}")
            c = f["train/error_corrupted"][-1]
            corrupted.append("-" if np.isnan(c) else f"{100 * c:.1f}")
            loss_change.append(f"{100 * levelled_off(f, cfg['runs'][run].get('milestones', [])):+.0f}%")
        with h5py.File(results / "runs" / run / "measurements.h5") as f:
            energy.append(f"{f['label_energy_nuisance'][1]:.3f}")
        levels.append(f"{100 * level:g}%")
    run50 = cfg["figures"]["table3"]
    with h5py.File(results / "runs" / run50 / "trajectory.h5") as f:
        test = (f["test/predictions"][...].argmax(-1) != f["test/y"][...]).mean(-1)
    curve = centred_mean(test, window)
    best = int(np.argmin(curve))
    dip = f"{100 * curve[best]:.1f}% (epoch {best}), {100 * test[-window:].mean():.1f}%"
    with h5py.File(results / "runs" / run50 / "measurements.h5") as f:
        table3 = f"{f['alignment/values'][1, 0]:.3f} (reference {f['no_memorisation'][0]:.3f})"
    with open(results / "figures" / "memorisation.csv", newline="") as fh:
        rows = [{k: v if k == "run" else float(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    rho = memorisation_correlations(rows)
    cells = [
        " / ".join(kept),
        " / ".join(corrupted),
        dip,
        table3,
        " / ".join(energy),
        f"{rho['train_error']:.2f} / {rho['memorised_fraction']:.2f} ({len(rows)} points)",
        " / ".join(loss_change),
        time_log(log) if log else "n/a",
    ]
    return head, cells


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="CONFIG[=TIME_LOG]: a config whose workflow has finished")
    a = p.parse_args()
    print(
        "| configuration | final training error, kept samples (%) | corrupted samples (%) | 50% run's test error: "
        "lowest 10-epoch average, final | Table 3 J_final ‖P_I y‖/‖y‖ | Figure 9 J_final ‖P_N y‖²/‖y‖² | "
        "rho(energy on N, training error) / rho(energy on N, memorised) | "
        "batch loss change, 20 epochs before the step-size division | wall, peak |"
    )
    print("|---" * 9 + "|")
    for spec in a.runs:
        config, _, log = spec.partition("=")
        head, cells = factor_row(Path(config), Path(log) if log else None)
        print("| " + " | ".join(head + cells) + " |")
    print("\nLevels in each cell, in order: the config's figures.corruption_runs (0, 25, 50, 75%[, 100%]).")


if __name__ == "__main__":
    main()
