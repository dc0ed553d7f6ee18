"""The analysis beyond the paper on cases with a known answer: cut-off curves, principal
angles, Theorem 3.2's terms, and the tracking grid."""

import numpy as np
import pytest

from jacobian_spectrum.analysis.measure import projection_ratios
from jacobian_spectrum.analysis.quantities import (
    best_cutoff,
    energy_share,
    no_memorisation_alignment,
    principal_cosines,
    projection_curves,
    subspace_overlap,
    theorem_terms,
)
from jacobian_spectrum.config import log_uniform_epochs, run_epochs_needed, tracked_epochs
from jacobian_spectrum.train.trajectory import split_errors


def svd_of(rng, rows, cols):
    J = rng.standard_normal((rows, cols))
    U, s, _ = np.linalg.svd(J, full_matrices=False)
    return J, U, s


def test_a_vector_inside_the_top_k_span_has_no_nuisance_part_from_r_equal_k():
    rng = np.random.default_rng(0)
    _, U, s = svd_of(rng, 12, 20)
    k = 4
    y = U[:, :k] @ np.array([1.0, -2.0, 0.5, 3.0])
    curves = projection_curves(y, U, s)
    assert curves.shape == (12, 3)
    assert np.all(curves[k - 1 :, 1] < 1e-12)  # ||P_N y|| = 0 for every r >= k
    assert np.all(curves[: k - 1, 1] > 0.1)  # and not before: u_k carries weight 3
    assert np.allclose(curves[k - 1 :, 0], 1.0, atol=1e-12)
    # information and nuisance parts are orthogonal: squares add to 1 at every r
    assert np.allclose(curves[:, 0] ** 2 + curves[:, 1] ** 2, 1.0, atol=1e-12)


def test_curves_end_in_the_table_values_at_the_stored_cut_off():
    rng = np.random.default_rng(1)
    _, U, s = svd_of(rng, 30, 50)
    x = rng.standard_normal(30)
    curves = projection_curves(x, U, s)
    for r in (1, 7, 30):
        assert np.allclose(curves[r - 1], projection_ratios(x, U[:, :r], s), atol=1e-12)


def test_pseudo_inverse_part_is_not_resolved_below_the_floor():
    s = np.array([4.0, 2.0, 1e-9, 1e-10])
    U = np.eye(4)
    curves = projection_curves(np.ones(4), U, s, floor=1e-8)
    assert np.isfinite(curves[:2, 2]).all() and np.isnan(curves[2:, 2]).all()
    assert np.allclose(curves[:2, 2], [np.sqrt(1 / 16) / 2, np.sqrt(1 / 16 + 1 / 4) / 2])


def test_principal_angles_of_a_rotated_subspace():
    theta, phi = 0.3, 1.1
    e = np.eye(5)
    A = e[:, :2]
    B = np.stack([np.cos(theta) * e[:, 0] + np.sin(theta) * e[:, 2], np.cos(phi) * e[:, 1] + np.sin(phi) * e[:, 3]], 1)
    cos = principal_cosines(A, B)
    assert np.allclose(cos, [np.cos(theta), np.cos(phi)], atol=1e-12)
    assert subspace_overlap(cos) == pytest.approx((np.cos(theta) ** 2 + np.cos(phi) ** 2) / 2)
    # any basis of the same subspace: all angles zero; an orthogonal subspace: all 90 degrees
    Q = np.linalg.qr(np.random.default_rng(2).standard_normal((2, 2)))[0]
    assert np.allclose(principal_cosines(A, A @ Q), 1.0, atol=1e-12)
    assert np.allclose(principal_cosines(A, e[:, 2:4]), 0.0, atol=1e-12)


def test_theorem_terms_equal_hand_computed_values_on_a_4_by_6_jacobian():
    rng = np.random.default_rng(3)
    J = rng.standard_normal((4, 6))  # n = 2 samples, K = 2 classes: rows i*K + k
    y = np.array([1.0, 0.0, 0.0, 1.0])  # one-hot: ||y|| = sqrt(n)
    n, K = 2, 2
    U, s, Vt = np.linalg.svd(J, full_matrices=False)
    terms = theorem_terms(y, U, s, K)
    for r in range(1, 5):
        # by hand, another route: the truncated J's pseudo-inverse and the projector on its range
        J_r = U[:, :r] @ np.diag(s[:r]) @ Vt[:r]
        pinv = np.linalg.norm(np.linalg.pinv(J_r, rcond=1e-12) @ y)
        nuis = np.linalg.norm(y - J_r @ np.linalg.pinv(J_r, rcond=1e-12) @ y)
        assert terms.bias[r - 1] == pytest.approx(2 * nuis / np.sqrt(n), abs=1e-12)
        assert terms.pinv[r - 1] == pytest.approx(np.sqrt(K / n) * pinv, rel=1e-10)
        assert terms.nuisance[r - 1] == pytest.approx(np.sqrt(K / n) * nuis / s[r - 1], abs=1e-12)
        bound = 2 * nuis / np.sqrt(n) + 12 * np.sqrt(K / n) * (pinv + 5 * nuis / s[r - 1])
        assert terms.bound(12.0, 5.0)[r - 1] == pytest.approx(bound, rel=1e-10)
    r, value = best_cutoff(terms.bound(1.0, 1.0))
    assert value == pytest.approx(np.min(terms.bound(1.0, 1.0))) and 1 <= r <= 4


def test_best_cutoff_skips_unresolved_values_and_refuses_all_of_them():
    assert best_cutoff(np.array([3.0, 1.0, np.nan])) == (2, 1.0)
    with pytest.raises(ValueError, match="below the floor"):
        best_cutoff(np.array([np.nan, np.nan]))


def test_energy_share_is_the_frobenius_share():
    rng = np.random.default_rng(4)
    J, _, s = svd_of(rng, 8, 11)
    share = energy_share(s)
    assert share[-1] == pytest.approx(1.0) and np.all(np.diff(share) >= 0)
    assert share[2] == pytest.approx(np.sum(s[:3] ** 2) / np.linalg.norm(J, "fro") ** 2)


def test_tracking_grid_is_log_uniform_and_lands_on_kept_checkpoints():
    assert log_uniform_epochs(800, 5) == [0, 1, 9, 86, 800]
    config = {"training": {"checkpoint_every": 10}, "analysis": {"track_epochs": 5}}
    run = {"epochs": 800, "reference_epoch": 100}
    kept = set(run_epochs_needed(run, 10))
    epochs = tracked_epochs(run, config)
    assert epochs == [0, 1, 9, 90, 800] and set(epochs) <= kept
    # a list: entries beyond the run are left out, 0 and the final epoch are always there
    config["analysis"]["track_epochs"] = [5, 300, 600]
    assert tracked_epochs({"epochs": 400}, config) == [0, 5, 300, 400]
    # the kept checkpoints do not depend on the tracking grid: a new grid never retrains
    assert run_epochs_needed(run, 10) == sorted(kept)
    assert kept >= set(range(11)) | set(range(0, 801, 10)) | {100}


def test_split_errors_of_a_clean_run_have_no_corrupted_group():
    preds = np.eye(3)[[[0, 1, 2, 2]]]  # one epoch, four samples
    kept, corrupted = split_errors(preds, np.array([0, 1, 2, 0]), np.array([0, 1, 2, 0]))
    assert kept[0] == 0.25 and np.isnan(corrupted[0])


@pytest.mark.parametrize("k", [3, 4])
@pytest.mark.parametrize("w", [0.0, 0.25, 0.5, 0.75])
def test_no_memorisation_reference_matches_the_closed_form_for_uniform_corruption(k, w):
    # each class of 12 (K - 1) samples has a fraction w moved, evenly, to each of the K - 1 others
    per_class = 12 * (k - 1)
    clean = np.repeat(np.arange(k), per_class)
    y = clean.copy()
    moved = int(round(w * per_class))
    for c in range(k):
        rows = np.flatnonzero(clean == c)[:moved]
        y[rows] = (c + 1 + np.arange(moved) % (k - 1)) % k
    onehot = np.eye(k)[y].ravel()
    info, nuis = no_memorisation_alignment(onehot, clean, k)
    expected = np.sqrt((1 - w) ** 2 + w**2 / (k - 1))
    assert info == pytest.approx(expected, abs=1e-12)
    assert nuis == pytest.approx(1 - expected**2, abs=1e-12)
    if w == 0.5 and k == 3:
        assert info == pytest.approx(0.612, abs=5e-4)  # the number


def test_no_memorisation_reference_is_a_projection_onto_the_class_structure():
    rng = np.random.default_rng(3)
    k, n = 3, 60
    clean = rng.integers(0, k, n)
    y = np.eye(k)[rng.integers(0, k, n)].ravel()
    # the K*K vectors "output j on the samples of true class c", normalised: orthonormal
    B = np.zeros((n * k, k * k))
    for c in range(k):
        rows = np.flatnonzero(clean == c)
        for j in range(k):
            B[rows * k + j, c * k + j] = 1 / np.sqrt(len(rows))
    assert np.allclose(B.T @ B, np.eye(k * k))  # every class is present
    info, nuis = no_memorisation_alignment(y, clean, k)
    projected = B @ (B.T @ y)
    assert info == pytest.approx(np.linalg.norm(projected) / np.linalg.norm(y), abs=1e-12)
    assert nuis == pytest.approx(np.sum((y - projected) ** 2) / np.sum(y**2), abs=1e-12)


def small_run(tmp_path, s):
    """A run of n = 4 samples, K = 2 classes, 3 epochs, and every spectrum equal: U the first
    three unit vectors of R^8, singular values ``s``, floors as a full spectrum writes them."""
    from jacobian_spectrum.spectrum.store import SpectrumData
    from jacobian_spectrum.train.trajectory import Trajectory, read_trajectory, write_trajectory

    rng = np.random.default_rng(0)
    y = np.array([0, 1, 1, 0])
    preds = [rng.standard_normal((4, 2)).astype(np.float32) for _ in range(3)]
    traj = Trajectory(preds, [p[:2] for p in preds], [0.1] * 3, [1.0] * 3, [0.0] * 3)
    write_trajectory(tmp_path / "trajectory.h5", traj, y, y, y[:2], 2, {"run": "r"})
    attrs = {"numerical_floor": 1e-8 * s[0], "storage_floor": 1.2e-7 * s[0]}
    sp = SpectrumData(np.asarray(s, dtype=float), np.eye(8)[:, :3], attrs)
    test_sp = SpectrumData(np.asarray(s, dtype=float), np.eye(4)[:, :3], attrs)
    spectra = {"init": sp, "final": sp, "ref_train": sp, "ref_test": test_sp}
    return read_trajectory(tmp_path / "trajectory.h5"), spectra


def test_tables_measure_the_pseudo_inverse_with_the_floor_as_the_cutoff_curves_do(tmp_path):
    from jacobian_spectrum.analysis.measure import measure, measure_cutoff

    traj, spectra = small_run(tmp_path, [3.0, 2.0, 1e-9])
    tables = measure(traj, spectra, 3).alignment
    cutoff, _ = measure_cutoff(traj, spectra)
    assert np.isnan(tables[:, [2, 5]]).all()  # s_3 lies below the floor: ||J_I^+ y|| is not resolved
    assert np.array_equal(np.isnan(cutoff["J_init"][2]), np.isnan(tables[0]))
    resolved = measure(traj, spectra, 2).alignment
    assert np.allclose(resolved[0], cutoff["J_init"][1])


def write_measurement_file(path, degenerate_final=""):
    import h5py

    from jacobian_spectrum.common.h5io import write_provenance

    with h5py.File(path, "w") as f:
        write_provenance(f, "measurements", None, run="fit", degenerate_J_init="", degenerate_J_final=degenerate_final)
        f.create_dataset("alignment/values", data=np.full((2, 6), 0.5))
        f.create_dataset("no_memorisation", data=np.array([1.0, 0.0]))


def test_table_titles_come_from_the_configured_run_and_degenerate_rows_are_marked(tmp_path):
    from jacobian_spectrum.figures.paper import comparison_table, write_table

    write_measurement_file(tmp_path / "m.h5", degenerate_final="J has numerical rank 3")
    out = {fmt: tmp_path / f"table1.{fmt}" for fmt in ("csv", "md", "tex")}
    adam = {"optimizer": "adam", "lr": 0.001, "epochs": 40, "corruption": 0.25}
    write_table(1, tmp_path / "m.h5", out, "digits, n = 300", adam)
    md = out["md"].read_text()
    assert md.startswith("**Table 1: 25% corrupted labels, Adam lr 0.001, 40 epochs (run fit;")
    assert "SGD" not in md and "Adam" in out["tex"].read_text()
    assert "| J_final (degenerate) |" in md and "J has numerical rank 3" in md
    text = comparison_table({1: out["csv"]}, tmp_path / "comparison.md", "scale", {1: adam}, "torchvision:x", 60)
    for words in (
        "Not the paper's setting",
        "network torchvision:x",
        "n = 60 training images",
        "Adam, not the paper's SGD",
        "25% corrupted labels, not the paper's clean labels",
    ):
        assert words in text
    sgd = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "epochs": 400, "corruption": 0.0}
    assert "Not the paper's" not in comparison_table(
        {1: out["csv"]}, tmp_path / "c.md", "scale", {1: sgd}, "resnet20", 9999
    )


def test_alignment_by_labels_gives_each_label_sets_six_columns_and_reference():
    from jacobian_spectrum.analysis.measure import alignment_by_labels, flatten_rows
    from jacobian_spectrum.analysis.quantities import no_memorisation_alignment
    from jacobian_spectrum.data.corruption import one_hot

    rng = np.random.default_rng(0)
    clean, noisy = np.arange(20) % 3, rng.integers(0, 3, 20)
    U, _ = np.linalg.qr(rng.standard_normal((60, 5)))
    s, f0 = np.linspace(5, 1, 5), rng.standard_normal((20, 3))
    rows, reference = alignment_by_labels(U, s, {"clean": clean, "noisy": noisy}, clean, f0)
    y = flatten_rows(one_hot(noisy, 3))
    assert rows["noisy"] == [*projection_ratios(y, U, s), *projection_ratios(flatten_rows(f0) - y, U, s)]
    assert reference["noisy"] == list(no_memorisation_alignment(y, clean, 3))
    assert reference["clean"][0] == pytest.approx(1.0)  # no noise to leave out


def test_measured_table_puts_values_beside_the_papers_and_says_why_a_row_is_missing():
    from jacobian_spectrum.figures.paper import PAPER_TABLES, format_value, measured_table

    values = [0.5, 0.25, 0.125, 0.75, 0.5, 0.5]
    spectra = {"J_init": {"alignment": {"a": values}, "no_memorisation": {"a": [0.7, 0.3]}}}
    steps = [
        {"step": "train a + b", "status": "partial", "reason": "budget ended"},
        {"step": "spectrum J_final a", "status": "skipped", "reason": "a is at epoch 3 of 6"},
    ]
    text = measured_table(3, "a", spectra, "tiny", steps)
    assert text.startswith("**Table 3: 50% corrupted labels, SGD** (tiny)")
    init = next(line for line in text.splitlines() if line.startswith("| J_init |"))
    assert f"{format_value(values[0])} (paper {format_value(PAPER_TABLES[3][0][0])})" in init
    assert "| J_final | - (paper" in text and "J_final: not measured (a is at epoch 3 of 6)" in text
    assert "\u2016P_I y\u2016/\u2016y\u2016 = 0.700" in text  # the no-memorisation reference
    assert "J_final: not measured (budget ended)" in measured_table(3, "a", spectra, "tiny", steps[:1])
    assert "J_init: not measured (not reached yet)" in measured_table(1, "b", {}, "tiny", [])
