"""The paper's qualitative findings, asserted on the numbers the embedded default produces.

Runs the whole default workflow (config.yaml) once: about 5 minutes on 2 CPU cores.
"""

import csv

import h5py
import numpy as np
import pytest
from conftest import ROOT, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("default") / "results"
    snakemake("--cores", "2", "--config", f"results={out}", timeout=1800)
    return out


def alignment(results, run):
    with h5py.File(results / "runs" / run / "measurements.h5") as f:
        return f["alignment/values"][...]


@pytest.mark.parametrize("run", ["sgd_clean", "adam_clean", "sgd_corrupt50"])
def test_final_jacobian_aligns_with_the_labels_more_than_the_initial_one(default_results, run):
    a = alignment(default_results, run)
    # ||P_I y||/||y|| rises from J_init to J_final (Tables 1-3), and so does ||P_I r0||/||r0||
    assert a[1, 0] > a[0, 0]
    assert a[1, 3] > a[0, 3]


def test_label_energy_on_the_nuisance_space_rises_with_corruption(default_results):
    rows = list(csv.DictReader(open(default_results / "figures" / "fig9.csv")))
    by_level = {float(r["corruption"]): r for r in rows}
    for key in ("label_energy_nuisance_init", "label_energy_nuisance_final"):
        energy = [float(by_level[level][key]) for level in (0.0, 0.25, 0.5, 0.75)]
        assert all(b > a for a, b in zip(energy, energy[1:])), (key, energy)
    errors = [float(by_level[level]["final_test_error"]) for level in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(b > a for a, b in zip(errors, errors[1:])), errors


def test_corrupted_run_test_error_dips_before_the_last_epoch(default_results):
    with h5py.File(default_results / "runs" / "sgd_corrupt50" / "trajectory.h5") as f:
        test_error = f["test/error"][...]
        train_error = f["train/error"][...]
    best = int(np.argmin(test_error))
    assert best < len(test_error) - 1
    assert test_error[-1] - test_error[best] > 0.1  # then rises again, as the network fits the noise
    assert train_error[-1] < 0.1  # while the training error falls towards zero


def test_every_run_fits_its_training_data(default_results):
    import yaml

    for run in yaml.safe_load(open(ROOT / "config.yaml"))["runs"]:
        with h5py.File(default_results / "runs" / run / "trajectory.h5") as f:
            assert f["train/error"][-1] < 0.1, run


def test_disk_use_of_the_default_stays_under_3_gb(default_results):
    total = sum(p.stat().st_size for p in default_results.rglob("*") if p.is_file())
    assert total < 3e9


@pytest.mark.parametrize("run", ["sgd_corrupt25", "sgd_corrupt50", "sgd_corrupt75"])
def test_jacobian_aligns_with_the_clean_labels_first_and_the_noise_later(default_results, run):
    with h5py.File(default_results / "runs" / run / "measurements.h5") as f:
        clean = f["tracking/clean_labels"][:, 0]  # ||P_I y_clean|| / ||y_clean|| per tracked epoch
        noise = f["tracking/label_noise"][:, 0]
    # before the end, every tracked epoch's I holds far more of the clean labels than of the noise
    assert np.all(clean[:-1] > noise[:-1] + 0.1), (clean, noise)
    # then fitting the noise turns I away from the clean labels
    assert clean[:-1].max() - clean[-1] > 0.05, clean


def test_figure9_rise_does_not_hang_on_the_cut_off(default_results):
    rows = list(csv.DictReader(open(default_results / "figures" / "cutoff.csv")))
    for r in (50, 100, 200):
        energy = {  # the SGD runs, one per corruption level (Adam is clean too)
            float(row["corruption"]): float(row["||P_N y||/||y||"]) ** 2
            for row in rows
            if row["jacobian"] == "J_final" and int(row["r"]) == r and row["run"].startswith("sgd_")
        }
        levels = [energy[level] for level in (0.0, 0.25, 0.5, 0.75)]
        assert all(b > a for a, b in zip(levels, levels[1:])), (r, levels)
