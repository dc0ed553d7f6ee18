"""Which labels are wrong: per-sample shares of the label vector on N, their sum, a known
answer, and the detection scores against the stored corrupted mask."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from jacobian_spectrum.analysis.label_noise import (
    area_under_margin,
    cleanlab_scores,
    detection,
    fitted_temperature,
    margins,
    output_probabilities,
    run_detection,
)
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


def test_folds_are_stratified_and_hold_out_each_sample_once(tmp_path):
    from jacobian_spectrum.train.folds import FoldPredictions, fold_assignment, read_out_of_fold, write_fold

    labels = np.repeat([0, 1, 2], [12, 9, 9])
    a = fold_assignment(labels, 3, seed=0)
    assert np.array_equal(a, fold_assignment(labels, 3, seed=0))
    assert not np.array_equal(a, fold_assignment(labels, 3, seed=1))
    for k in range(3):  # each fold holds a third of each class
        assert [int(np.sum((a == k) & (labels == c))) for c in range(3)] == [4, 3, 3]
    outputs = np.arange(30 * 3, dtype=np.float32).reshape(30, 3)
    paths = []
    for k in range(3):
        idx = np.flatnonzero(a == k)
        paths.append(tmp_path / f"fold{k}.h5")
        write_fold(paths[-1], FoldPredictions(k, 3, idx, outputs[idx], 2, 1.5), {"run": "r"})
    got, seconds = read_out_of_fold(paths, 30)
    assert np.array_equal(got, outputs) and seconds == 4.5
    with pytest.raises(ValueError, match="10 of 30 training samples are not held out by exactly one fold"):
        read_out_of_fold(paths[:2], 30)
    with pytest.raises(ValueError, match="are not held out by exactly one fold"):
        read_out_of_fold([paths[0], paths[0], paths[1], paths[2]], 30)


def test_a_held_out_samples_label_never_reaches_its_out_of_fold_outputs():
    """Out-of-fold means out of fold: relabelling the held-out samples leaves their outputs bit for
    bit as they were, relabelling one training sample moves them."""
    from jacobian_spectrum.train.folds import fold_assignment, train_fold
    from jacobian_spectrum.train.loop import TrainSettings

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(24, 1, 4, 4, generator=gen)
    labels = np.tile([0, 1, 2], 8)
    a = fold_assignment(labels, 3, seed=0)
    s = TrainSettings("sgd", 0.1, 3, batch_size=8, augment_crop=False)

    def out_of_fold(y):
        torch.manual_seed(1)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        return train_fold(model, s, x, y, a, 0, 3)

    p = out_of_fold(labels)
    assert np.array_equal(p.indices, np.flatnonzero(a == 0)) and p.outputs.shape == (8, 3) and p.stop_epoch == 3
    relabelled = labels.copy()
    relabelled[a == 0] = (labels[a == 0] + 1) % 3
    assert np.array_equal(out_of_fold(relabelled).outputs, p.outputs)
    relabelled = labels.copy()
    i = np.flatnonzero(a == 1)[0]
    relabelled[i] = (labels[i] + 1) % 3
    assert not np.array_equal(out_of_fold(relabelled).outputs, p.outputs)


def test_probabilities_of_least_squares_outputs_and_the_fitted_temperature():
    f = np.array([[0.7, 0.4, -0.1], [-0.2, -0.3, -0.1], [1.4, 0.0, 0.0]])
    p = output_probabilities(f, "clipped")
    assert np.allclose(p.sum(1), 1) and np.allclose(p[0], [0.7 / 1.1, 0.4 / 1.1, 0])
    assert np.allclose(p[1], 1 / 3) and np.allclose(p[2], [1, 0, 0])  # none claimed: uniform; above 1: clipped
    rng = np.random.default_rng(0)
    logits = 3 * rng.standard_normal((4000, 3))
    true_t = 2.5  # labels drawn from softmax(logits / 2.5): the fitted T recovers it
    p_true = output_probabilities(logits / true_t, "softmax")
    labels = np.array([rng.choice(3, p=row) for row in p_true])
    assert fitted_temperature(logits, labels) == pytest.approx(true_t, rel=0.1)
    with pytest.raises(ValueError, match="allowed"):
        output_probabilities(f, "sigmoid")


def test_cleanlab_scores_a_flipped_label_highest():
    """Out-of-fold outputs that know the true class: the sample whose label was flipped has the
    lowest label quality under every probability mapping."""
    pytest.importorskip("cleanlab")
    rng = np.random.default_rng(0)
    true = np.tile([0, 1, 2], 10)
    outputs = np.eye(3)[true] * 0.8 + 0.1 * rng.standard_normal((30, 3))
    labels = true.copy()
    labels[7] = (true[7] + 1) % 3
    scores = cleanlab_scores(outputs, labels)
    assert set(scores) == {"cleanlab", "cleanlab, softmax", "cleanlab, softmax, fitted T"}
    for s in scores.values():
        assert int(np.argmax(s)) == 7


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
    assert {"J_init nuisance", "J_final nuisance", "AUM", "small loss", "cleanlab"} <= {r["score"] for r in rows}


def test_cleanlab_rows_come_from_the_out_of_fold_outputs_of_the_fold_jobs(tiny_results):
    """The tiny config's three fold trainings: each held out a third, stopped at the run's epoch of
    lowest test error; the table's cleanlab AUROC is cleanlab's own score of those outputs."""
    import csv

    import h5py
    from cleanlab.rank import get_label_quality_scores

    from jacobian_spectrum.train.folds import read_out_of_fold
    from jacobian_spectrum.train.trajectory import lowest_test_error_epoch, read_trajectory

    run = tiny_results / "runs/sgd_corrupt50"
    folds = sorted(run.glob("folds/fold*.h5"))
    traj = read_trajectory(run / "trajectory.h5")
    outputs, _ = read_out_of_fold(folds, len(traj.train_y))
    with h5py.File(folds[0]) as f:
        assert f.attrs["stop_epoch"] == max(1, lowest_test_error_epoch(traj.test_error, 2))
        assert len(folds) == f.attrs["folds"] == 3
    with h5py.File(tiny_results / "data/labels_noise0.5.h5") as f:
        corrupted = f["corrupted"][...]
    probs = np.clip(outputs, 0, 1)
    probs = np.where(probs.sum(1, keepdims=True) > 0, probs / probs.sum(1, keepdims=True), 1 / 3)
    expected = roc_auc_score(corrupted, 1 - get_label_quality_scores(traj.train_y, probs))
    rows = list(csv.DictReader(open(tiny_results / "tables/label_noise.csv")))
    row = next(r for r in rows if r["run"] == "sgd_corrupt50" and r["score"] == "cleanlab")
    assert float(row["auroc"]) == pytest.approx(expected)
    assert float(row["seconds"]) > 0
