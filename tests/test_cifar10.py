"""The paper's findings on real CIFAR-10 images (issue: config/cifar10-small.yaml).

Opt-in: ``pytest -m cifar10`` (the default run deselects the marker; see pyproject.toml). It
reads the outputs of ``snakemake --cores 2 --configfile config/cifar10-small.yaml`` when they
are complete, and otherwise runs that workflow first (about 50 minutes on 2 CPU cores). It
skips, saying why, where neither the outputs nor the configured image archive are there.

Every number is recomputed from the produced files: errors from the stored predictions, the
alignment values from the measurement files.
"""

from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from conftest import ROOT, snakemake

from jacobian_spectrum.analysis.quantities import rank_correlation
from jacobian_spectrum.figures.paper import PAPER_TABLES
from jacobian_spectrum.train.trajectory import centred_mean

pytestmark = pytest.mark.cifar10

CONFIG = ROOT / "config" / "cifar10-small.yaml"
RECIPE = ROOT / "config" / "cifar10-recipe.yaml"
RECIPE_1800 = ROOT / "config" / "cifar10-recipe-1800.yaml"
RHO_UNFITTED = 0.8  # measured 0.90 over the 39 trained checkpoints of three configurations (docs/cifar10.md)
LEVELS = (0.0, 0.25, 0.5, 0.75)  # Figure 9's rise is asserted up to 75% (100% is discussed in the README)


def finished_workflow(config: Path, minutes: int) -> tuple[dict, Path]:
    """The config and its results folder, running the workflow first unless every run's
    measurements are there; skips where neither the outputs nor the image archive exist."""
    cfg = yaml.safe_load(config.read_text())
    results = ROOT / cfg["results"]
    done = all((results / "runs" / run / "measurements.h5").is_file() for run in cfg["runs"])
    if not done:
        archive = ROOT / cfg["dataset"]["archive"]
        if not archive.is_file() and not (ROOT / cfg["dataset"]["root"] / "ARCHIVE.json").is_file():
            pytest.skip(f"no CIFAR-10 images: neither {archive} nor the outputs under {results} exist")
        snakemake("--cores", "2", "--configfile", str(config), timeout=minutes * 60)
    return cfg, results


@pytest.fixture(scope="module")
def cifar():
    return finished_workflow(CONFIG, 3 * 60)


@pytest.fixture(scope="module")
def recipe():
    """The paper's recipe (crop and flip, batch 128, SGD at 0.01) at the small config's n."""
    return finished_workflow(RECIPE, 150)


@pytest.fixture(scope="module")
def recipe_1800():
    """The recipe at twice the training data, clean and 50% (1:08 on 2 cores)."""
    return finished_workflow(RECIPE_1800, 100)


def run_errors(results: Path, run: str) -> dict[str, np.ndarray]:
    """Per-epoch errors recomputed from the stored predictions (not the stored error columns)."""
    with h5py.File(results / "runs" / run / "trajectory.h5") as f:
        return {
            "train": (f["train/predictions"][...].argmax(-1) != f["train/y"][...]).mean(-1),
            "test": (f["test/predictions"][...].argmax(-1) != f["test/y"][...]).mean(-1),
        }


def alignment(results: Path, run: str) -> np.ndarray:
    with h5py.File(results / "runs" / run / "measurements.h5") as f:
        return f["alignment/values"][...]


def label_energy_final(results: Path, run: str) -> float:
    with h5py.File(results / "runs" / run / "measurements.h5") as f:
        return float(f["label_energy_nuisance"][1])


def test_every_run_fits_the_labels_it_trains_on(cifar):
    cfg, results = cifar
    for run, settings in cfg["runs"].items():
        final_train_error = run_errors(results, run)["train"][-1]
        limit = 0.02 if settings.get("corruption", 0.0) == 0.0 else 0.05
        assert final_train_error <= limit, (run, final_train_error)


def test_the_50_percent_run_dips_early_and_its_reference_sits_near_the_minimum(cifar):
    cfg, results = cifar
    run = cfg["figures"]["table3"]
    test = run_errors(results, run)["test"]
    # Figure 8c's curve averaged over min_window epochs: at this step size and 300 test images
    # the error jumps by up to 10 points from one epoch to the next, so a minimum of the raw
    # (or windowed-minimum) curve is one lucky epoch, not the early-stopping regime
    curve = centred_mean(test, cfg["figures"]["min_window"])
    best = int(np.argmin(curve))
    assert best < len(curve) // 2, (best, len(curve))  # an early minimum
    assert curve[-1] - curve[best] >= 0.05, (curve[best], curve[-1])  # then the network fits the noise
    ref = cfg["runs"][run]["reference_epoch"]
    assert curve[ref] - curve[best] <= 0.05, (ref, curve[ref], best, curve[best])  # J_ref near the minimum


@pytest.mark.parametrize("table", ["table1", "table2"])
def test_the_final_jacobian_of_a_clean_run_carries_the_labels(cifar, table):
    cfg, results = cifar
    a = alignment(results, cfg["figures"][table])
    assert a[1, 0] >= 0.95, a[1, 0]  # ||P_I y||/||y|| of J_final
    assert a[1, 0] > a[0, 0]


def test_table3_final_jacobian_aligns_more_than_the_initial_one(cifar):
    cfg, results = cifar
    a = alignment(results, cfg["figures"]["table3"])
    assert a[1, 0] > a[0, 0], a[:, 0]


def runs_by_level(cfg: dict) -> dict[float, str]:
    return {float(s["corruption"]): run for run, s in cfg["runs"].items() if run in cfg["figures"]["corruption_runs"]}


def test_figure9_test_error_rises_with_corruption(cifar):
    cfg, results = cifar
    by_level = runs_by_level(cfg)
    test_error = [run_errors(results, by_level[level])["test"][-1] for level in LEVELS]
    assert all(b > a for a, b in zip(test_error, test_error[1:])), test_error


@pytest.mark.xfail(
    strict=True,
    reason="measured 0.077, 0.080, 0.078, 0.050 (a rerun: 0.059, 0.091, 0.064, 0.088) from 0% to 75%: every run "
    "fits its labels and J_final takes "
    "them up in its top 50 directions, and no cut-off r from 3 to 1000 gives the rise (docs/cifar10.md); strict, "
    "so a configuration where it holds reports it",
)
def test_figure9_final_label_energy_on_the_nuisance_space_rises_with_corruption(cifar):
    cfg, results = cifar
    by_level = runs_by_level(cfg)
    energy = [label_energy_final(results, by_level[level]) for level in LEVELS]
    assert all(b > a for a, b in zip(energy, energy[1:])), energy


@pytest.mark.parametrize("table", [1, 2, 3])
def test_the_initial_jacobian_row_matches_the_paper(cifar, table):
    cfg, results = cifar
    a = alignment(results, cfg["figures"][f"table{table}"])
    # ||P_I y||/||y|| and ||P_N y||/||y|| of J_init within 0.05 of the paper's printed values
    assert np.abs(a[0, :2] - PAPER_TABLES[table][0, :2]).max() <= 0.05, (a[0, :2], PAPER_TABLES[table][0, :2])


def cutoff_energy(results: Path, run: str, jacobian: str, r: int) -> float:
    """||P_N y||^2/||y||^2 of J_init or J_final at cut-off r, from the run's measurement file."""
    with h5py.File(results / "runs" / run / "measurements.h5") as f:
        return float(f[f"cutoff/{jacobian}"][r - 1, 1] ** 2)


@pytest.mark.parametrize("r", [5, 10, 20, 50, 100, 200])
def test_initial_jacobian_label_energy_rises_with_corruption_at_every_cut_off(cifar, r):
    cfg, results = cifar
    by_level = runs_by_level(cfg)
    energy = [cutoff_energy(results, by_level[level], "J_init", r) for level in LEVELS]
    assert all(b > a for a, b in zip(energy, energy[1:])), (r, energy)


def test_the_50_percent_run_takes_up_the_label_noise_last(cifar):
    cfg, results = cifar
    with h5py.File(results / "runs" / cfg["figures"]["table3"] / "measurements.h5") as f:
        clean = f["tracking/clean_labels"][:, 0]  # ||P_I y_clean|| / ||y_clean|| per tracked epoch
        noise = f["tracking/label_noise"][:, 0]
    # until the last stretch, I holds far more of the clean labels than of the noise
    assert np.all(clean[:-1] > noise[:-1] + 0.2), (clean, noise)
    # the final I (after fitting every label) takes up the noise
    assert noise[-1] > noise[:-1].max() + 0.2, noise


def test_analysis_figures_and_their_csvs_exist(cifar):
    _, results = cifar
    for name in ("alignment_over_training", "cutoff", "theorem_terms"):
        assert (results / "figures" / f"{name}.png").stat().st_size > 10_000
        assert len((results / "figures" / f"{name}.csv").read_text().splitlines()) > 10


# ---------------------------------------------------------------- the paper's recipe (issue 24)
def memorised(results: Path, run: str) -> np.ndarray:
    """Per epoch, the fraction of corrupted samples predicted as their corrupted label,
    recomputed from the stored predictions on the unaugmented training images."""
    with h5py.File(results / "runs" / run / "trajectory.h5") as f:
        y, clean = f["train/y"][...], f["train/y_clean"][...]
        pred = f["train/predictions"][...].argmax(-1)
    return (pred[:, y != clean] == y[y != clean]).mean(-1)


def unfitted_points(results: Path, cfg: dict) -> tuple[np.ndarray, np.ndarray]:
    """(training error against the trained labels, J's label energy on N) at every trained
    checkpoint (measured epoch >= 1) of every Figure 9 run: the memorisation figure's right
    panel, recomputed from the files. Epoch 0 is left out: before any step the error sits at
    chance and the energy is J_init's own alignment (Figure 9's J_init row, 0.48 to 0.66)."""
    errors, energies = [], []
    for run in cfg["figures"]["corruption_runs"]:
        with h5py.File(results / "runs" / run / "measurements.h5") as f:
            epochs = f["tracking/epochs"][...]
            trained = epochs >= 1
            energies += list(f["tracking/labels"][trained, 1] ** 2)
        errors += list(run_errors(results, run)["train"][epochs[trained]])
    return np.array(errors), np.array(energies)


def test_recipe_figure9_final_label_energy_on_the_nuisance_space_rises_with_corruption(recipe):
    cfg, results = recipe
    by_level = runs_by_level(cfg)
    energy = [label_energy_final(results, by_level[level]) for level in LEVELS]
    assert all(b > a for a, b in zip(energy, energy[1:])), energy


@pytest.mark.parametrize("config", ["recipe", "recipe_1800"])
def test_recipe_memorises_none_of_the_noise_and_table3_sits_at_the_no_memorisation_reference(config, request):
    cfg, results = request.getfixturevalue(config)
    for run in cfg["figures"]["corruption_runs"]:
        level = cfg["runs"][run]["corruption"]
        if not 0 < level < 2 / 3:  # above 2/3 the corrupted labels outvote the true class
            continue
        # the corrupted samples are predicted as their corrupted label less often than chance
        assert memorised(results, run)[-1] < 1 / 3, (run, memorised(results, run)[-1])
    run = cfg["figures"]["table3"]
    with h5py.File(results / "runs" / run / "measurements.h5") as f:
        final, reference = f["alignment/values"][1, 0], f["no_memorisation"][0]
    # measured 0.630 against 0.614 (n = 900), 0.609 against 0.613 (n = 1800)
    assert abs(final - reference) <= 0.05, (final, reference)
    assert PAPER_TABLES[3][1, 0] - final >= 0.1  # the paper's 0.751 needs some memorisation


def test_label_energy_on_the_nuisance_space_follows_what_is_left_unfitted(cifar, recipe, recipe_1800):
    """Over every trained checkpoint of every Figure 9 run of the three configurations
    (augmentation off and on, and on at n = 1800), J's label energy on N rises with the fraction
    of trained labels not yet fitted."""
    runs = (cifar, recipe, recipe_1800)
    errors, energies = zip(*(unfitted_points(results, cfg) for cfg, results in runs))
    errors, energies = np.concatenate(errors), np.concatenate(energies)
    assert len(errors) >= 30
    assert rank_correlation(errors, energies) >= RHO_UNFITTED, rank_correlation(errors, energies)
    # every fitted checkpoint (at most 2% training error) holds the labels in J's top 50
    assert np.all(energies[errors <= 0.02] <= 0.15), energies[errors <= 0.02]


# ---------------------------------------------------------------- the paper's epoch counts at n = 900
PAPER_EPOCHS = ROOT / "config" / "cifar10-paper-epochs.yaml"


@pytest.fixture(scope="module")
def paper_epochs():
    """The recipe with the paper's epoch counts (400 clean and Adam, 800 corrupted): 2:35 on 2 cores."""
    return finished_workflow(PAPER_EPOCHS, 200)


def test_paper_epochs_initial_jacobian_row_is_the_papers(paper_epochs):
    cfg, results = paper_epochs
    a = alignment(results, cfg["figures"]["table1"])
    assert np.abs(a[0, :2] - PAPER_TABLES[1][0, :2]).max() <= 0.03, (a[0, :2], PAPER_TABLES[1][0, :2])


@pytest.mark.parametrize("table", ["table1", "table2"])
def test_paper_epochs_final_jacobian_of_clean_sgd_and_adam_aligns_more(paper_epochs, table):
    cfg, results = paper_epochs
    a = alignment(results, cfg["figures"][table])
    assert a[1, 0] > a[0, 0], a[:, 0]


def test_paper_epochs_50_percent_run_dips_and_rises(paper_epochs):
    cfg, results = paper_epochs
    curve = centred_mean(run_errors(results, cfg["figures"]["table3"])["test"], cfg["figures"]["min_window"])
    best = int(np.argmin(curve))
    assert best < len(curve) - 1 and curve[-1] - curve[best] >= 0.03, (best, curve[best], curve[-1])


def test_paper_epochs_table3_final_is_near_the_papers(paper_epochs):
    cfg, results = paper_epochs
    final = alignment(results, cfg["figures"]["table3"])[1, 0]
    assert abs(final - PAPER_TABLES[3][1, 0]) <= 0.1, final


def test_paper_epochs_figure9_label_energy_and_test_error_rise_with_corruption(paper_epochs):
    cfg, results = paper_epochs
    by_level = runs_by_level(cfg)
    energy = [label_energy_final(results, by_level[level]) for level in LEVELS]
    error = [run_errors(results, by_level[level])["test"][-1] for level in LEVELS]
    assert np.all(np.diff(energy) > 0), energy
    assert np.all(np.diff(error) > 0), error
