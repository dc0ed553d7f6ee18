"""Which labels are wrong: per-sample shares of the label vector on N, their sum, a known
answer, and the detection scores against the stored corrupted mask."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from jacobian_spectrum.analysis.label_noise import area_under_margin, detection, margins, run_detection
from jacobian_spectrum.analysis.quantities import cutoff_grid, sample_energies, sample_nuisance_over_r


def test_per_sample_energies_sum_to_the_aggregate_and_follow_the_cutoff():
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.standard_normal((30, 12)))
    y = rng.standard_normal(30)
    info, nuisance = sample_energies(y, U[:, :5], 3)
    P = U[:, :5] @ U[:, :5].T
    assert abs(nuisance.sum() - np.sum((y - P @ y) ** 2)) <= 1e-12 * (y @ y)
    assert abs(info.sum() - np.sum((P @ y) ** 2)) <= 1e-12 * (y @ y)
    grid = cutoff_grid(12, 5, points=6)
    assert 5 in grid and grid[0] == 1 and grid[-1] == 12
    over_r = sample_nuisance_over_r(y, U, 3, grid)
    assert np.allclose(over_r[list(grid).index(5)], nuisance, rtol=0, atol=1e-12)
    assert np.all(np.diff(over_r.sum(axis=1)) <= 1e-12)  # a larger I leaves less of y on N


def test_a_flipped_label_scores_highest_on_a_linear_model_whose_J_is_known():
    """f(x) = W x: J = X (x) I_K, so J's top directions are the clusters' (K clusters x K
    outputs): the one sample labelled as another cluster has the largest share of y on N."""
    from jacobian_spectrum.spaces import information_space, label_vector

    k, per, d = 3, 10, 20
    gen = torch.Generator().manual_seed(0)
    centres = 5 * torch.randn(k, d, generator=gen)
    x = torch.cat([centres[c] + 0.3 * torch.randn(per, d, generator=gen) for c in range(k)])
    labels = np.repeat(np.arange(k), per)
    labels[13] = 2  # a sample of cluster 1 labelled 2
    model = torch.nn.Linear(d, k, bias=False)
    space = information_space(model, x, rank=k * k)
    _, nuisance = space.sample_energies(label_vector(labels, k))
    assert int(np.argmax(nuisance)) == 13
    assert nuisance[13] > 5 * np.delete(nuisance, 13).max()


def test_aum_is_the_mean_training_margin():
    p = np.array([[[9.0, 0, 0], [0, 9, 0]], [[1.0, 0, 0], [0, 2, 1]], [[0.5, 0.7, 0], [0, 0, 3]]])
    y = np.array([0, 1])
    assert np.allclose(margins(p[1], y), [1.0, 1.0])
    assert np.allclose(area_under_margin(p, y), [(1.0 - 0.2) / 2, (1.0 - 3.0) / 2])  # epoch 0 is not training


def test_detection_is_judged_against_the_stored_corrupted_mask():
    rng = np.random.default_rng(1)
    n, k, epochs = 40, 3, 6
    corrupted = rng.random(n) < 0.3
    labels = rng.integers(0, k, n)
    predictions = rng.standard_normal((epochs + 1, n, k))
    grid = np.array([1, 2, 4])
    over_r = rng.random((2, 3, n))
    m = {
        "per_sample/r_grid": grid,
        "per_sample/label_nuisance_over_r": over_r,
        "attrs": {"info_dim": 2},
    }
    d = run_detection("r", m, predictions, labels, np.linspace(1, 0, epochs + 1), corrupted, 0.3, 1, {})
    rows = {row["score"]: row for row in d.rows()}
    assert rows["J_init nuisance"]["auroc"] == pytest.approx(roc_auc_score(corrupted, over_r[0, 1]))
    assert rows["small loss"]["epoch"] == epochs  # the test error falls to the last epoch
    flipped = run_detection("r", m, predictions, labels, np.zeros(epochs + 1), ~corrupted, 0.3, 1, {})
    assert flipped.rows()[0]["auroc"] == pytest.approx(1 - rows["J_init nuisance"]["auroc"])
    assert np.isnan(detection(np.arange(5.0), np.ones(5, bool))[0])  # all corrupted: nothing to tell apart
    with pytest.raises(ValueError, match="no per-sample scores"):
        run_detection("r", {"attrs": {"info_dim": 2}}, predictions, labels, np.zeros(7), corrupted, 0.3, 1, {})


def test_the_default_style_run_writes_per_sample_scores_that_sum_to_its_tables(tiny_results):
    """The tiny workflow's measurement files: per sample, summed, the aggregate ||P_N y||^2 of
    Tables 1-3 (to 1e-12); tables/label_noise.csv's AUROC is that of the stored mask."""
    import csv

    import h5py

    from jacobian_spectrum.analysis.measure import read_measurements

    m = read_measurements(tiny_results / "runs/sgd_corrupt50/measurements.h5")
    with h5py.File(tiny_results / "runs/sgd_corrupt50/trajectory.h5") as f:
        n = len(f["train/y"])
    total = m["per_sample/label_nuisance"].sum(axis=1)
    aggregate = m["alignment/values"][:, 1] ** 2 * n  # ||y||^2 = n for one-hot labels
    assert np.allclose(total, aggregate, rtol=1e-12, atol=0)
    assert np.allclose(m["per_sample/label_nuisance"].sum(1), m["label_energy_nuisance"] * n, rtol=1e-12)
    with h5py.File(tiny_results / "data/labels_noise0.5.h5") as f:
        corrupted = f["corrupted"][...]
    i = list(m["per_sample/r_grid"]).index(int(m["attrs"]["info_dim"]))
    expected = roc_auc_score(corrupted, m["per_sample/label_nuisance_over_r"][0, i])
    rows = list(csv.DictReader(open(tiny_results / "tables/label_noise.csv")))
    row = next(r for r in rows if r["run"] == "sgd_corrupt50" and r["score"] == "J_init nuisance")
    assert float(row["auroc"]) == pytest.approx(expected)
    assert {"J_init nuisance", "J_final nuisance", "AUM", "small loss"} <= {r["score"] for r in rows}
