import copy
import json
import re
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

from jacobian_spectrum.analysis.measure import flatten_rows, projection_ratios, residual_energies
from jacobian_spectrum.common.h5io import write_provenance
from jacobian_spectrum.data.corruption import one_hot
from jacobian_spectrum.spectrum.dense import eigh_descending, gram, slab_width, symmetrize_upper
from jacobian_spectrum.spectrum.methods import compute_spectrum, spectrum_of_file
from jacobian_spectrum.spectrum.store import read_spectrum


def write_J(path, J, chunks=None):
    with h5py.File(path, "w") as f:
        write_provenance(
            f,
            "jacobian",
            None,
            dtype=str(J.dtype),
            split="train",
            checkpoint="none",
            checkpoint_epoch=0,
            row_order="sample-major",
        )
        f.create_dataset("J", data=J, chunks=chunks or (J.shape[0], min(J.shape[1], 256)))
    return path


SETTINGS = dict(info_dim=10, method="full", memory_budget_mb=2, threads=2, topk=40, oversampling=20, power_iterations=4)


def random_J(kind, rng):
    if kind == "random":
        return rng.standard_normal((120, 700))
    # low rank 15 plus tiny noise: a gap like the Jacobian's
    return rng.standard_normal((120, 15)) @ rng.standard_normal((15, 700)) * 10 + 1e-3 * rng.standard_normal((120, 700))


@pytest.mark.parametrize("kind", ["random", "low_rank"])
def test_full_spectrum_equals_numpy_svd(tmp_path, kind):
    J = random_J(kind, np.random.default_rng(0))
    path = write_J(tmp_path / "J.h5", J)
    spec = compute_spectrum(path, SETTINGS)
    U, s, _ = np.linalg.svd(J, full_matrices=False)
    assert len(spec.singular_values) == 120
    assert np.abs(spec.singular_values - s).max() <= 1e-10 * s[0]
    # same information space (singular vectors up to sign)
    assert spec.U.shape == (120, 120)  # spectrum.stored_vectors "all": every vector of the full method
    assert np.allclose(np.abs(np.sum(spec.U[:, :10] * U[:, :10], axis=0)), 1, atol=1e-8)
    assert spec.checks["orthogonality_error"] < 1e-12 and spec.checks["eigen_residual"] < 1e-12
    assert spec.checks["norm_residual"] < 1e-12


def test_gram_matches_in_memory_product_for_any_slab_width(tmp_path):
    J = np.random.default_rng(1).standard_normal((50, 333)).astype(np.float32)
    path = write_J(tmp_path / "J.h5", J, chunks=(50, 64))
    ref = J.astype(np.float64) @ J.astype(np.float64).T
    for budget in (0.01, 0.2, 100):  # one column per slab .. the whole matrix
        assert np.allclose(gram(path, budget, threads=2), ref, rtol=1e-12, atol=1e-9)
    assert slab_width(50, 333, 0.01, 3) == 5


@pytest.mark.parametrize("budget", [0.05, 100])  # many slabs (Dask reads them) and one (read here)
def test_gram_names_the_columns_holding_nan(tmp_path, budget):
    J = np.random.default_rng(1).standard_normal((50, 333)).astype(np.float32)
    J[7, 200] = np.nan
    path = write_J(tmp_path / "J.h5", J, chunks=(50, 64))
    with pytest.raises(ValueError, match=r"J.h5: J holds NaN or Inf in columns (\d+)\.\.(\d+)") as err:
        gram(path, budget, threads=2)
    start, stop = (int(v) for v in re.search(r"columns (\d+)\.\.(\d+)", str(err.value)).groups())
    assert start <= 200 < stop and (stop - start < 333) == (budget < 1)


def test_the_check_pass_reads_every_slab_and_catches_a_wrong_spectrum(tmp_path):
    from jacobian_spectrum.spectrum.dense import verify

    J = np.random.default_rng(3).standard_normal((40, 300)).astype(np.float32)
    path = write_J(tmp_path / "J.h5", J, chunks=(40, 32))
    U, s, _ = np.linalg.svd(J.astype(np.float64), full_matrices=False)
    for budget in (0.01, 0.2, 100):  # a few columns per slab .. the whole matrix
        good = verify(path, s, U, 10, budget, threads=2)
        assert good["eigen_residual"] < 1e-12 and good["norm_residual"] < 1e-12
    # one singular value 1% off, or one slab of J left out, must show
    assert verify(path, s * np.r_[1.01, np.ones(len(s) - 1)], U, 10, 0.01, threads=2)["norm_residual"] > 1e-3
    half = write_J(tmp_path / "half.h5", np.hstack([J[:, :150], np.zeros((40, 150), np.float32)]), chunks=(40, 32))
    assert verify(half, s, U, 10, 0.01, threads=2)["eigen_residual"] > 1e-3


def test_a_tall_gram_takes_dgemm_and_gives_the_same_matrix(tmp_path, monkeypatch):
    # above SYRK_MAX_ROWS OpenBLAS's threaded dsyrk segfaults; the dgemm route must agree
    from jacobian_spectrum.spectrum import dense

    J = np.random.default_rng(2).standard_normal((60, 200)).astype(np.float32)
    path = write_J(tmp_path / "J.h5", J, chunks=(60, 32))
    syrk = gram(path, 0.05, threads=2)
    monkeypatch.setattr(dense, "SYRK_MAX_ROWS", 59)
    gemm = gram(path, 0.05, threads=2)
    assert np.allclose(gemm, J.astype(np.float64) @ J.astype(np.float64).T, rtol=1e-12, atol=1e-9)
    assert np.allclose(gemm, syrk, rtol=1e-12, atol=1e-9) and np.array_equal(gemm, gemm.T)


def test_symmetrize_upper_in_blocks():
    A = np.random.default_rng(0).standard_normal((70, 70))
    S = A + A.T
    assert np.array_equal(symmetrize_upper(np.triu(S), block=16), S)


def test_topk_agrees_with_full_on_the_leading_values(tmp_path):
    J = random_J("low_rank", np.random.default_rng(2))
    path = write_J(tmp_path / "J.h5", J)
    full = compute_spectrum(path, SETTINGS)
    topk = compute_spectrum(path, {**SETTINGS, "method": "topk"})
    assert len(topk.singular_values) == 40
    assert np.abs(topk.singular_values[:15] - full.singular_values[:15]).max() <= 1e-8 * full.singular_values[0]
    assert topk.U.shape == (120, 40)  # all that topk computes
    assert np.allclose(np.abs(np.sum(topk.U[:, :15] * full.U[:, :15], axis=0)), 1, atol=1e-6)


def test_spectrum_file_contract(tmp_path):
    J = random_J("low_rank", np.random.default_rng(3)).astype(np.float32)
    write_J(tmp_path / "J.h5", J)
    settings = {**SETTINGS, "method": "auto", "stored_vectors": 12}
    spectrum_of_file(tmp_path / "J.h5", tmp_path / "s.h5", settings, "cpu")
    sp = read_spectrum(tmp_path / "s.h5")
    assert sp.U.shape == (120, 12) and np.all(np.diff(sp.singular_values) <= 0)
    assert sp.attrs["method"] == "full" and sp.attrs["info_dim"] == 10
    assert sp.attrs["numerical_floor"] == pytest.approx(1e-8 * sp.singular_values[0])


def test_a_small_spectrum_job_and_a_gather_job_never_import_torch(tmp_path):
    # torch's import alone (1.6 s here) is more than such a job's work: the default's 29 spectrum
    # and 29 gather jobs would each pay it
    write_J(tmp_path / "J.h5", random_J("low_rank", np.random.default_rng(3)).astype(np.float32))
    one_slab = {**SETTINGS, "memory_budget_mb": 100}  # SETTINGS' 2 MB give J several slabs
    code = textwrap.dedent(
        f"""
        import sys
        from jacobian_spectrum.spectrum.methods import spectrum_of_file
        from jacobian_spectrum.jacobian.store import gather, layer_norms
        spectrum_of_file({str(tmp_path / "J.h5")!r}, {str(tmp_path / "s.h5")!r}, {one_slab!r}, "auto")
        # a J of one slab needs neither Dask's read-ahead (which imports dask.distributed) nor
        # scipy's in-place dsyrk: 1 s of the default's 2.4 s spectrum jobs
        heavy = [m for m in ("torch", "dask", "distributed", "scipy") if m in sys.modules]
        assert not heavy, f"imported {{heavy}}"
        spectrum_of_file({str(tmp_path / "J.h5")!r}, {str(tmp_path / "s2.h5")!r}, {SETTINGS!r}, "auto")
        assert "torch" not in sys.modules, "torch imported"
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert read_spectrum(tmp_path / "s.h5").attrs["method"] == "full"


def test_nan_in_J_is_refused(tmp_path):
    J = np.ones((10, 30))
    J[4, 7] = np.nan
    write_J(tmp_path / "J.h5", J)
    with pytest.raises(ValueError, match="NaN"):
        compute_spectrum(tmp_path / "J.h5", {**SETTINGS, "info_dim": 2})


GRAM_PEAK = textwrap.dedent("""
    import json, sys
    import numpy as np
    from jacobian_spectrum.spectrum.dense import gram

    def high_water_mb():  # VmHWM is per process image (ru_maxrss survives exec on Linux)
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) / 1e3

    before = high_water_mb()
    G = gram(sys.argv[1], memory_budget_mb=float(sys.argv[2]), threads=2)
    print(json.dumps({"grew_mb": high_water_mb() - before, "trace": float(np.trace(G))}))
""")


def gram_peak(path, budget):
    out = subprocess.run(
        [sys.executable, "-c", GRAM_PEAK, str(path), str(budget)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_gram_peak_memory_stays_under_its_budget(tmp_path):
    # J is 1200 x 60000 float32 = 288 MB on disk, 14x the 20 MB budget; G is 11.5 MB.
    # The same Gram step on a J of a single 512-column slab measures the fixed cost (G, thread
    # pools, BLAS buffers); the large J may add at most the budget on top of it.
    rows, cols, budget = 1200, 60000, 20
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "J.h5", "w") as f:
        write_provenance(f, "jacobian", None)
        d = f.create_dataset("J", shape=(rows, cols), dtype=np.float32, chunks=(rows, 512))
        for i in range(0, cols, 6000):
            d[:, i : i + 6000] = rng.standard_normal((rows, 6000), dtype=np.float32)
    write_J(tmp_path / "small.h5", rng.standard_normal((rows, 512)).astype(np.float32), chunks=(rows, 512))
    small = gram_peak(tmp_path / "small.h5", budget)
    large = gram_peak(tmp_path / "J.h5", budget)
    assert large["trace"] == pytest.approx(rows * cols, rel=0.01)  # it did read all of J
    assert large["grew_mb"] < small["grew_mb"] + budget, (small, large)


def test_projections_energies_sum_to_the_norm():
    rng = np.random.default_rng(0)
    U, _ = np.linalg.qr(rng.standard_normal((60, 8)))
    s = np.sort(rng.uniform(1, 10, 8))[::-1]
    x = rng.standard_normal(60)
    pi, pn, pinv = projection_ratios(x, U, s)
    assert pi**2 + pn**2 == pytest.approx(1.0, abs=1e-12)
    assert pinv == pytest.approx(np.linalg.norm((U.T @ x) / s) / np.linalg.norm(x))
    R = rng.standard_normal((5, 60))
    info, nuis = residual_energies(R, U)
    assert np.allclose(info + nuis, (R**2).sum(1))


def test_vectors_are_ordered_as_J_rows():
    # predictions (n, K) flatten to row i*K + k, the Jacobian's row order
    P = np.arange(12).reshape(4, 3)
    v = flatten_rows(P)
    assert all(v[i * 3 + k] == P[i, k] for i in range(4) for k in range(3))
    # a J whose only column is y: the information space is exactly span(y) in that order
    labels = np.random.default_rng(1).integers(0, 3, 40)
    y = flatten_rows(one_hot(labels, 3))
    U = (y / np.linalg.norm(y))[:, None]
    assert projection_ratios(y, U, np.array([np.linalg.norm(y)]))[0] == pytest.approx(1.0)
    class_major = np.eye(3)[labels].T.reshape(-1)
    assert projection_ratios(class_major, U, np.array([1.0]))[0] < 0.9


def test_a_long_matrix_free_pass_logs_its_progress(monkeypatch, caplog):
    import torch

    from jacobian_spectrum.spectrum import operator as matrix_free
    from jacobian_spectrum.train.models import ModelSpec, build_model

    model = build_model(ModelSpec("resnet20", 1, 8, 3, width=0.125), seed=0).double().eval()
    x = torch.randn(40, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    op = matrix_free.JacobianOperator(model, x, batch_size=16)  # three parts of 13 or 14 samples
    monkeypatch.setattr(matrix_free, "PROGRESS_SECONDS", -1.0)  # a line after every part
    with caplog.at_level("INFO", logger="jacobian_spectrum"):
        op.matmat(np.ones((op.shape[1], 2)))
    lines = [r.getMessage() for r in caplog.records]
    done = [int(re.match(r"pass 1 \(J X\): (\d+) of 120 rows \(\d+%\) in \d+s$", m)[1]) for m in lines[:-1]]
    assert len(done) == 2 and 0 < done[0] < done[1] < 120 and done[0] % 3 == 0  # whole samples (K = 3)
    assert lines[-1].startswith("pass 1 (J X, 2 columns): 120 rows in")


def test_matrix_free_randomized_svd_matches_the_materialised_spectrum():
    import torch

    from jacobian_spectrum.jacobian.compute import jacobian
    from jacobian_spectrum.spectrum.matrix_free import JacobianOperator, randomized_svd, vector_residuals
    from jacobian_spectrum.train.models import ModelSpec, build_model

    model = build_model(ModelSpec("resnet20", 1, 8, 3, width=0.125), seed=0).double().eval()
    x = torch.randn(40, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    J = jacobian(model, x).numpy()
    op = JacobianOperator(model, x, batch_size=16)
    X = np.random.default_rng(0).standard_normal((J.shape[1], 3))
    assert np.allclose(op.matmat(X), J @ X, rtol=1e-10, atol=1e-12)
    Y = np.random.default_rng(1).standard_normal((J.shape[0], 3))
    assert np.allclose(op.rmatmat(Y), J.T @ Y, rtol=1e-10, atol=1e-12)
    JX, JtJX = op.normal_matmat(X)  # both products of a power iteration from one pass
    assert np.allclose(JX, J @ X, rtol=1e-10, atol=1e-12) and np.allclose(JtJX, J.T @ (J @ X), rtol=1e-10, atol=1e-12)
    assert op.passes == 3
    op.passes = 0
    top = randomized_svd(op, k=10, oversampling=30, power_iterations=6)
    s, U = top.singular_values, top.U
    U_ref, s_ref, _ = np.linalg.svd(J, full_matrices=False)
    assert np.abs(s - s_ref[:10]).max() <= 1e-6 * s_ref[0]
    assert np.allclose(np.abs(np.sum(U * U_ref[:, :10], axis=0)), 1, atol=1e-6)
    # one pass per block; the checks come from the last. Z_1 .. Z_3 span J's whole row space
    # (120 rows, blocks of 40), so the iteration stops at 4 passes of the 7 it may take
    assert op.passes == 4
    # the last pass's values are exact, so the movement is the error of the pass before (3 blocks
    # do not yet hold all of the row space: Z_0 lies mostly outside it); each pair (u_i, v_i) is
    # a singular pair to rounding
    previous_error = np.max(np.abs(top.estimates[-2][:10] - s_ref[:10]) / s_ref[:10])
    assert len(top.estimates) == 4 and np.isclose(top.movement(10), previous_error, rtol=1e-3)
    assert top.residuals.shape == (10,) and top.residuals.max() < 1e-8
    assert np.allclose(top.JtU_norms, np.linalg.norm(J.T @ U, axis=0), rtol=1e-8)
    assert top.checks()["eigen_residual"] < 1e-8 and top.checks()["norm_residual"] < 1e-8
    # the last pass's residuals bound the independent ones of two more passes: u_i = J v_i / s_i,
    # so ||J J^T u_i - s_i^2 u_i|| / s_i^2 <= (s_1 / s_i) ||J^T J v_i - s_i^2 v_i|| / s_i^2
    left, _ = vector_residuals(op, s, U)
    assert op.passes == 4 + 2 and np.all(left <= (s[0] / s) * top.residuals * (1 + 1e-6) + 1e-13)
    # subspace iteration: the same values from the last block only
    sub = randomized_svd(op, k=10, oversampling=30, power_iterations=6, iteration="subspace")
    assert np.abs(sub.singular_values - s_ref[:10]).max() <= 1e-6 * s_ref[0]
    assert sub.residuals[0] < 1e-10 and sub.residuals.max() < 1e-3


@pytest.mark.parametrize("held", [17, 40])  # part of J (a task straddles the held samples' end), all of it
def test_held_rows_give_the_same_products_and_later_passes_form_only_the_rest(monkeypatch, held):
    import torch

    from jacobian_spectrum.jacobian.compute import jacobian
    from jacobian_spectrum.spectrum import matrix_free, operator
    from jacobian_spectrum.train.models import ModelSpec, build_model

    model = build_model(ModelSpec("resnet20", 1, 8, 3, width=0.125), seed=0).double().eval()
    x = torch.randn(40, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    J = jacobian(model, x).numpy()
    formed = []
    kernel = operator.jacobian_blocks

    def counted(model, x, batch_size=None, out=None):
        formed[-1] += len(x)
        return kernel(model, x, batch_size, out)

    monkeypatch.setattr(operator, "jacobian_blocks", counted)
    op = matrix_free.JacobianOperator(model, x, batch_size=16, held=held)
    monkeypatch.setattr(operator, "LOCAL_TASKS", 3)  # tasks of 13 or 14 samples
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((J.shape[1], 3)), rng.standard_normal((J.shape[0], 3))
    for _ in range(2):  # the second round reads every held row again
        formed.append(0)
        JX, JtJX = op.normal_matmat(X)
        assert np.allclose(JX, J @ X, rtol=1e-10, atol=1e-12)
        assert np.allclose(JtJX, J.T @ (J @ X), rtol=1e-10, atol=1e-12)
        formed.append(0)
        assert np.allclose(op.rmatmat(Y), J.T @ Y, rtol=1e-10, atol=1e-12)
        formed.append(0)
        assert np.allclose(op.matmat(X), J @ X, rtol=1e-10, atol=1e-12)
    # the first pass formed every sample's rows, the later ones those of the samples not held
    assert formed == [40] + [40 - held] * 5 and op.passes == 6
    # the randomized SVD from held rows: the values of the streamed one
    streamed = matrix_free.randomized_svd(matrix_free.JacobianOperator(model, x, batch_size=16), 10, 30, 3)
    top = matrix_free.randomized_svd(matrix_free.JacobianOperator(model, x, batch_size=16, held=held), 10, 30, 3)
    assert np.allclose(top.singular_values, streamed.singular_values, rtol=1e-10)


def test_the_plan_holds_the_rows_the_budget_leaves_room_for():
    # beyond the panels, a streamed block and the float64 pieces, the budget holds samples' rows:
    # all of a J that fits, part of a larger one, none at the least budget; never over the budget
    from jacobian_spectrum.spectrum.matrix_free import STREAM_BLOCK_BYTES, matrix_free_plan

    rows, k, p = 20_000, 10, 17_154  # the 2,000-image verification J: 1.37 GB in float32
    sample = k * p * 4
    plans = {mb: matrix_free_plan(rows, k, p, 50, 150, 3, mb, "block_krylov") for mb in (1300, 2500, 4000)}
    assert plans[4000].held_samples == 2000 and plans[4000].formations == 1.0
    assert 0 < plans[2500].held_samples < 2000 and plans[2500].block_bytes == STREAM_BLOCK_BYTES
    assert plans[2500].formations == pytest.approx(1 + 3 * (2000 - plans[2500].held_samples) / 2000)
    assert plans[1300].held_samples == 0 and plans[1300].formations == 4
    for mb, plan in plans.items():
        assert plan.bytes <= mb * 1e6 and plan.held_bytes == plan.held_samples * sample
    # a single pass (q = 0) has no later pass to hold rows for; Dask workers form every row
    assert matrix_free_plan(rows, k, p, 50, 150, 0, 4000, "block_krylov").held_samples == 0
    assert matrix_free_plan(rows, k, p, 50, 150, 3, 4000, "block_krylov", hold=False).held_samples == 0


def test_a_planted_error_in_a_pass_shows_in_the_residuals(monkeypatch):
    """The stored residuals are those of the pairs the method returns: a J^T J Z off by 1e-4 of
    its size in a pass whose block those pairs are built from (the last one for subspace
    iteration; any for block Krylov, whose top pairs lie mostly in the first block) is seen."""
    import torch

    from jacobian_spectrum.spectrum import matrix_free
    from jacobian_spectrum.train.models import ModelSpec, build_model

    model = build_model(ModelSpec("resnet20", 1, 8, 3, width=0.125), seed=0).double().eval()
    x = torch.randn(40, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    op = matrix_free.JacobianOperator(model, x, batch_size=16)
    for iteration, passes, wrong in (("block_krylov", 4, 1), ("subspace", 7, 7)):
        good = matrix_free.randomized_svd(op, k=10, oversampling=30, power_iterations=6, iteration=iteration)
        real, calls = op.normal_matmat, []

        def one_pass_off(X, precise=True, real=real, calls=calls, wrong=wrong):
            Y, W = real(X, precise)
            calls.append(1)
            if len(calls) == wrong:
                W = W + 1e-4 * np.abs(W).max() * np.random.default_rng(0).standard_normal(W.shape)
            return Y, W

        monkeypatch.setattr(op, "normal_matmat", one_pass_off)
        bad = matrix_free.randomized_svd(op, k=10, oversampling=30, power_iterations=6, iteration=iteration)
        monkeypatch.undo()
        assert len(calls) == passes and good.residuals[0] < 1e-8 and bad.residuals.min() > 1e-6


def test_matrix_free_panels_follow_the_rows_dtype_and_the_memory_budget():
    import torch

    from jacobian_spectrum.spectrum.matrix_free import JacobianOperator, matrix_free_plan

    model, x = streamed_case(samples=20)
    op = JacobianOperator(model, x, batch_size=8)
    Z = np.random.default_rng(0).standard_normal((op.shape[1], 4)).astype(np.float32)
    JZ, W = op.normal_matmat(Z)
    assert W.dtype == np.float32 and JZ.dtype == np.float64  # a p x l panel of 4 bytes a value
    assert torch.get_default_dtype() == torch.float32
    # ResNet-18 at nK = 2,700: 7 passes of 100 columns
    args = (2700, 3, 11_178_051, 50, 50, 6)
    krylov = matrix_free_plan(*args, budget_mb=70_000, iteration="block_krylov")
    assert krylov.iteration == "block_krylov" and krylov.panels == 14 and krylov.bytes <= 70_000e6
    assert matrix_free_plan(*args, budget_mb=70_000).iteration == "gram"  # 2.5 passes: J in two held blocks
    sub = matrix_free_plan(*args, budget_mb=12_000)
    assert sub.iteration == "subspace" and sub.panels == 2 and sub.bytes <= 12_000e6
    assert sub.panel_bytes == 11_178_051 * 100 * 4
    with pytest.raises(ValueError, match=r"spectrum.memory_budget_mb = 2000: .* needs at least ([\d,]+) MB") as refused:
        matrix_free_plan(*args, budget_mb=2000)
    # the minimum it names is the true one: one MB more fits, one less does not
    least = int(re.search(r"at least ([\d,]+) MB", str(refused.value)).group(1).replace(",", ""))
    assert matrix_free_plan(*args, budget_mb=least + 1).iteration == "subspace"
    with pytest.raises(ValueError):
        matrix_free_plan(*args, budget_mb=least - 1)
    with pytest.raises(ValueError, match=r"spectrum.iteration = block_krylov: its 14 panels"):
        matrix_free_plan(*args, budget_mb=12_000, iteration="block_krylov")


def streamed_case(samples=200, classes=10, width=0.125):
    """A 10-class J of (samples * 10) rows whose dense spectrum still fits: the issue's check size."""
    import torch

    from jacobian_spectrum.train.models import ModelSpec, build_model

    model = build_model(ModelSpec("resnet20", 3, 8, classes, width=width), seed=0).eval()
    x = torch.randn(samples, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return model, x


def test_streamed_top_50_matches_gram_and_eigh_at_ten_classes():
    from jacobian_spectrum.jacobian.compute import jacobian
    from jacobian_spectrum.spectrum.matrix_free import JacobianOperator, randomized_svd

    model, x = streamed_case()
    J = jacobian(model, x).double().numpy()  # the same float32 rows the stream forms
    w, V = eigh_descending(J @ J.T)
    s_ref = np.sqrt(np.maximum(w[:50], 0))
    # oversampling 100 and 6 power iterations: the measured choice for 1e-6 at this decay
    # (s_50 / s_150 = 1.97; docs/benchmarks.md), 7 passes
    top = randomized_svd(JacobianOperator(model, x, batch_size=64), k=50, oversampling=100, power_iterations=6)
    assert np.abs(top.singular_values - s_ref).max() / s_ref.min() <= 1e-6
    overlap = np.linalg.norm(top.U.T @ V[:, :50]) ** 2 / 50  # mean squared cosine of the principal angles
    assert overlap >= 0.999


def test_a_precise_pass_sums_float32_slab_products_in_float64(monkeypatch):
    from jacobian_spectrum.spectrum import operator as M

    monkeypatch.setattr(M, "SUM_SLAB", 64)  # 5 slabs and a tail of 17 columns
    # 2^24 + 273 is no float32 number: a float32 sum of all columns cannot give it, while each
    # slab's float32 product (2^24, then 64, 64, 64, 64 and 17) is exact and their sum in float64 too
    R = np.ones((2, 5 * 64 + 17), dtype=np.float32)
    X = np.ones((R.shape[1], 1), dtype=np.float32)
    X[0], X[1:64] = 2.0**24, 0.0
    got = M.slab_product(torch.from_numpy(R), torch.from_numpy(X).T)
    assert got.dtype == torch.float64
    assert np.array_equal(got.numpy(), np.full((2, 1), 2.0**24 + 273))  # a missing slab: 64 off
    # a pass's J X from these products equals float64 products of the same float32 rows
    model, x = streamed_case(samples=12, classes=3)
    op = M.JacobianOperator(model, x, batch_size=5)
    Z = np.random.default_rng(3).standard_normal((op.shape[1], 6)).astype(np.float32)
    Y, _ = op.normal_matmat(Z, precise=True)
    Y64 = op.matmat(Z.astype(np.float64))
    assert np.abs(Y - Y64).max() <= 1e-6 * np.abs(Y64).max()


def test_streamed_products_on_a_two_worker_cluster_equal_the_local_ones():
    from dask.distributed import Client, LocalCluster

    from jacobian_spectrum.spectrum.matrix_free import JacobianOperator

    model, x = streamed_case(samples=60)
    op = JacobianOperator(model, x, batch_size=16)  # 8 tasks of 4 blocks: both workers get some
    rng = np.random.default_rng(2)
    X, Y = rng.standard_normal((op.shape[1], 5)), rng.standard_normal((op.shape[0], 5))
    Z = X.astype(np.float32)  # a pass's float32 panel: J Z from float32 slab products
    local = op.matmat(X), op.rmatmat(Y), *op.normal_matmat(X), *op.normal_matmat(Z)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with Client(cluster):
            distributed = op.matmat(X), op.rmatmat(Y), *op.normal_matmat(X), *op.normal_matmat(Z)
    # the same rows and products; only torch's thread count differs (one thread on the workers),
    # which may round J's float32 rows differently (1e-7 relative): a misplaced or missing task
    # would be off by O(1)
    for a, b in zip(local, distributed):
        assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()


def test_gram_on_a_dask_distributed_cluster(tmp_path):
    from dask.distributed import LocalCluster

    J = np.random.default_rng(4).standard_normal((40, 900)).astype(np.float32)
    path = write_J(tmp_path / "J.h5", J, chunks=(40, 128))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        G = gram(path, memory_budget_mb=0.1, threads=2, scheduler=cluster.scheduler_address)
    assert np.allclose(G, J.astype(np.float64) @ J.astype(np.float64).T, rtol=1e-12, atol=1e-9)


# ---------------------------------------------------------------- the Gram step and eigh on a torch device
NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=NO_CUDA)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gram_on_device_equals_the_cpu_gram(tmp_path, device, dtype):
    from jacobian_spectrum.spectrum.device import gram_on_device

    J = random_J("low_rank", np.random.default_rng(1)).astype(dtype)
    path = write_J(tmp_path / "J.h5", J)
    expected = gram(path, 2, 1)
    for budget in (0.05, 0.3, 50):  # many slabs with a short last one, a few, one
        G = gram_on_device(path, device, budget).cpu().numpy()
        assert np.abs(G - expected).max() <= 1e-12 * np.abs(expected).max()


@pytest.mark.parametrize("device", DEVICES)
def test_gram_in_memory_equals_the_streamed_gram_and_names_nan(tmp_path, device):
    from jacobian_spectrum.spectrum.device import gram_in_memory, gram_on_device

    J = random_J("low_rank", np.random.default_rng(1)).astype(np.float32)
    expected = gram_on_device(write_J(tmp_path / "J.h5", J), device, 50).cpu().numpy()
    for budget in (0.05, 50):  # many slabs, one
        G = gram_in_memory(torch.from_numpy(J).to(device), budget).cpu().numpy()
        assert np.abs(G - expected).max() <= 1e-12 * np.abs(expected).max()
    J[7, 650] = np.nan
    with pytest.raises(ValueError, match=r"J holds NaN or Inf in columns \d+\.\.\d+"):
        gram_in_memory(torch.from_numpy(J).to(device), 0.05)


@pytest.mark.parametrize("device", DEVICES)
def test_gram_on_device_names_the_columns_holding_nan(tmp_path, device):
    from jacobian_spectrum.spectrum.device import gram_on_device

    J = random_J("random", np.random.default_rng(2)).astype(np.float32)
    J[7, 650] = np.inf
    path = write_J(tmp_path / "J.h5", J)
    with pytest.raises(ValueError, match=r"J.h5: J holds NaN or Inf in columns (\d+)\.\.(\d+)") as err:
        gram_on_device(path, device, 0.05)
    start, stop = (int(v) for v in re.search(r"columns (\d+)\.\.(\d+)", str(err.value)).groups())
    assert start <= 650 < stop and stop - start < 700  # the slab that holds it, not all of J


@pytest.mark.parametrize("device", DEVICES)
def test_eigh_checked_equals_lapack_and_falls_back_when_the_solver_fails(device, monkeypatch, caplog):
    from jacobian_spectrum.spectrum.device import eigh_checked

    J = random_J("low_rank", np.random.default_rng(3))
    G = J @ J.T
    w_ref, V_ref = eigh_descending(G)
    w, V = eigh_checked(torch.from_numpy(G).to(device))
    assert np.abs(w - w_ref).max() <= 1e-12 * w_ref[0]
    assert np.allclose(np.abs(np.sum(V[:, :15] * V_ref[:, :15], axis=0)), 1, atol=1e-8)
    # a solver that returns wrong vectors (as cuSOLVER's syevd has at some sizes), or fails outright
    real = torch.linalg.eigh
    for broken in (lambda A: (real(A)[0], torch.eye(len(A), dtype=A.dtype, device=A.device)), None):

        def fake(A, broken=broken):
            if broken is None:
                raise RuntimeError("cusolver error: CUSOLVER_STATUS_EXECUTION_FAILED")
            return broken(A)

        monkeypatch.setattr(torch.linalg, "eigh", fake)
        caplog.clear()
        with caplog.at_level("WARNING", logger="jacobian_spectrum"):
            w, V = eigh_checked(torch.from_numpy(G).to(device))
        assert "using the CPU solver (LAPACK) instead" in caplog.text
        assert np.abs(w - w_ref).max() <= 1e-12 * w_ref[0]
        monkeypatch.setattr(torch.linalg, "eigh", real)


@NO_CUDA
def test_full_spectrum_on_the_gpu_equals_the_cpu_path(tmp_path):
    J = random_J("low_rank", np.random.default_rng(4)).astype(np.float32)
    path = write_J(tmp_path / "J.h5", J)
    cpu = compute_spectrum(path, SETTINGS, "cpu")
    gpu = compute_spectrum(path, SETTINGS, "cuda")
    floor = 1e-8 * cpu.singular_values[0]  # the float64 floor of the Gram route
    assert np.abs(gpu.singular_values - cpu.singular_values).max() <= floor
    assert np.allclose(np.abs(np.sum(gpu.U[:, :10] * cpu.U[:, :10], axis=0)), 1, atol=1e-6)


@NO_CUDA
def test_streamed_products_on_a_gpu_equal_the_cpu_ones():
    from jacobian_spectrum.spectrum.matrix_free import JacobianOperator

    model, x = streamed_case(samples=40)
    X = np.random.default_rng(3).standard_normal((sum(p.numel() for p in model.parameters()), 7))
    on_gpu = copy.deepcopy(model).cuda()  # .cuda() moves a module in place
    for panel in (X, X.astype(np.float32)):  # float64 products, and a pass's float32 slab products
        cpu = JacobianOperator(model, x, batch_size=16).normal_matmat(panel)
        gpu = JacobianOperator(on_gpu, x.cuda(), batch_size=16).normal_matmat(panel)
        for a, b in zip(cpu, gpu):  # float32 rows formed by other kernels: rounding apart
            assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()


def test_the_iterations_hold_the_panels_they_plan(monkeypatch):
    """subspace holds 2 p x l panels at a time, block_krylov 2 (q + 1): numpy's own allocations
    (the panels, J Z, the slabs) traced through a whole run, the float64 slabs made small."""
    import tracemalloc

    from jacobian_spectrum.spectrum import matrix_free, operator, randomized

    monkeypatch.setattr(randomized, "SLAB_BYTES", 1 << 16)
    monkeypatch.setattr(operator, "PRODUCT_BYTES", 1 << 16)
    model, x = streamed_case(samples=40, classes=3, width=0.25)
    op = matrix_free.JacobianOperator(model, x, batch_size=8)
    ell, q = 30, 4
    panel = op.shape[1] * ell * 4
    op.normal_matmat(np.zeros((op.shape[1], 1), np.float32))  # the first pass's one-time set-up (19 MB here)
    for iteration, panels in (("subspace", 2), ("block_krylov", 2 * (q + 1))):
        tracemalloc.start()
        matrix_free.randomized_svd(op, 10, ell - 10, q, iteration=iteration)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        # beyond the panels: float64 slabs (SLAB_BYTES each), J Z (120 x 30 x 8 bytes a block) and
        # Rayleigh-Ritz's few L x L matrices (L = the columns of all blocks kept)
        L = ell * panels // 2
        small = 8 * randomized.SLAB_BYTES + 10 * 8 * L**2
        assert panels * panel <= peak < panels * panel + small, (iteration, peak / panel)


def test_the_gram_iteration_gives_every_singular_value_of_the_stored_J(tmp_path):
    """G = J J^T from held and streamed blocks of rows (several of each) equals the stored J's
    Gram + eigh: every singular value, the top vectors, and the check pass's norms."""
    from jacobian_spectrum.jacobian.compute import jacobian
    from jacobian_spectrum.spectrum.matrix_free import JacobianOperator, gram_formations, gram_spectrum, streamed_gram

    model, x = streamed_case(samples=23, classes=3)
    J = jacobian(model, x).double().numpy()
    op = JacobianOperator(model, x, batch_size=4)
    G = streamed_gram(op, held=7)  # blocks of 7 samples held, the rest streamed 4 at a time
    assert np.allclose(G, G.T) and np.allclose(G, J @ J.T, rtol=1e-6, atol=1e-6 * np.abs(J @ J.T).max())
    # held blocks 0-5, 5-11, 11-17, 17-23 (batch_slices' even split): each formed, then all after it
    assert gram_formations(23, 7) == pytest.approx((23 + 18 + 12 + 6) / 23)
    s, V, checks = gram_spectrum(JacobianOperator(model, x, batch_size=4), held=7, check=5)
    s_ref = np.linalg.svd(J, compute_uv=False)
    assert len(s) == len(J) and np.allclose(s, s_ref, rtol=0, atol=1e-6 * s_ref[0])
    u_ref = np.linalg.svd(J)[0][:, :3]
    assert np.allclose(np.abs(np.sum(V[:, :3] * u_ref, axis=0)), 1, atol=1e-5)
    assert checks["checked_vectors"] == 5 and checks["norm_residual"] < 1e-6 and checks["eigen_residual"] < 1e-12


def test_auto_takes_the_gram_iteration_where_it_fits_and_costs_fewer_passes():
    from jacobian_spectrum.spectrum.matrix_free import matrix_free_plan

    # ResNet-18 at nK = 900 in 15 GB: room for 33 samples' rows held and 33 streamed; the 300
    # samples go in ten equal blocks of 30, 6.5 passes with the check
    gram = matrix_free_plan(900, 3, 11_178_051, 50, 50, 6, budget_mb=15_000)
    assert gram.iteration == "gram" and gram.held_samples == 33 and gram.bytes <= 15_000e6
    assert gram.passes == pytest.approx(1 + sum(300 - s for s in range(0, 300, 30)) / 300)
    # in 12 GB, 23 held would form 8.5: subspace's 7 passes are fewer; so at nK = 2,700 in 15 GB
    assert matrix_free_plan(900, 3, 11_178_051, 50, 50, 6, budget_mb=12_000).iteration == "subspace"
    assert matrix_free_plan(2700, 3, 11_178_051, 50, 50, 6, budget_mb=15_000).iteration == "subspace"
    # a small J held whole: one pass, and the check's
    assert matrix_free_plan(900, 3, 50_000, 50, 50, 6, budget_mb=2000).passes == 2
    with pytest.raises(ValueError, match=r"spectrum.iteration = gram: the Gram matrix of J \(100,000 x"):
        matrix_free_plan(100_000, 10, 269_722, 50, 50, 6, budget_mb=4000, iteration="gram")


def test_spectrum_in_memory_is_eigh_of_j_jt_with_its_probe_check_and_costs():
    """J of a small network, its probe check, G and the checked eigh, nothing on disk; and the
    time and memory predictions the fused GPU run budgets with."""
    from jacobian_spectrum.jacobian.compute import jacobian
    from jacobian_spectrum.plan import Rates
    from jacobian_spectrum.spectrum.device import spectrum_bytes, spectrum_in_memory, spectrum_seconds
    from jacobian_spectrum.train.models import ModelSpec, build_model

    model = build_model(ModelSpec("resnet20", 1, 8, 3, width=0.125), seed=0)
    x = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    w, V, info = spectrum_in_memory(model, x, memory_budget_mb=0.05, probe_samples=4)
    J = jacobian(model, x).double().numpy()
    expected = np.linalg.eigvalsh(J @ J.T)[::-1]
    assert np.abs(w - expected).max() <= 1e-10 * expected[0] and V.shape == (30, 30)
    assert np.allclose((J @ J.T) @ V[:, 0], w[0] * V[:, 0], rtol=1e-8, atol=1e-8 * w[0])
    assert max(info["probe_errors"].values()) < 1e-4
    assert set(info["seconds"]) == {"jacobian", "probe", "gram", "eigh", "total"}
    rates = Rates("cpu", 0, 0, 0.01, 1e9, 1e-9, 0, 0, 0, 0, 0)  # 10 ms per sample, 1 G multiply-adds/s
    assert spectrum_seconds(rates, 300, 1000, 3) == pytest.approx(
        (300 + 3 * 64 * 3) / 3 * 0.01 + 300**2 * 1000 / 1e9 + 1e-9 * 300**3 + 3 * 300**2 * 8 / 5e9
    )
    assert spectrum_bytes(300, 1000, 1000) >= 300 * 1000 * 4 + 300 * 300 * 8
