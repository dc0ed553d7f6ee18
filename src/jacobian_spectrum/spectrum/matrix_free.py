"""Matrix-free top-k spectrum: randomized SVD of J whose products stream J's rows, J never stored.

For J too large to store (full CIFAR-10, 10 classes: 500k x 270k, 538 GB in float32, a 2 TB
Gram matrix), each product J X (p x l -> nK x l) or J^T Y (nK x l -> p x l) forms J's rows a
block of samples at a time with the Jacobian kernel (:func:`jacobian_spectrum.jacobian.compute.jacobian`:
the per-layer kernel for Conv2d/Linear networks, ``torch.func`` otherwise), multiplies the block
in float64 and drops it. A pass therefore costs about one J's worth of rows, whatever the
number of probe columns l, and holds one block (not J). Earlier versions applied J with one
JVP/VJP per probe column: ``bench/matrix_free.py`` measured that 82x slower than forming J at
900 images, so this engine replaced it. The blocks of one pass are independent tasks: locally
they run one after the other (each uses torch's threads); with a ``dask.distributed`` client
active (a local cluster, or one on SLURM through dask-jobqueue, docs/cluster.md) they run on its
workers and their products are summed as they arrive.

Randomized SVD (Halko, Martinsson, Tropp 2011, Algorithm 4.4), iterated in parameter space so
that one pass gives both products of a power iteration: forming a block's rows R_b once gives
R_b Z and R_b^T (R_b Z), so J Z and J^T J Z cost one pass, not two:

  Z = qr(Omega);  repeat q + 1 times: (Y, W) = (J Z, J^T J Z), and Z = qr(W) but the last time;
  Y = U_Y S V_Y^T;  U = U_Y,  s = S

range(Y) = range(J (J^T J)^q Omega): the subspace of Algorithm 4.4 with q power iterations,
from q + 1 passes instead of 2q + 2. The singular values of each Y (Z orthonormal) estimate the
top ones, so how much the top r moved in the last iteration says whether q sufficed. The last
pass's W also gives J^T U = W V_Y S^-1, so each vector's residual ||J J^T u_i - s_i^2 u_i|| / s_i^2
costs one more pass (J (J^T U)).
"""

from __future__ import annotations

import functools
import pickle
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from ..common.logs import logger
from ..jacobian.compute import batch_slices, jacobian_blocks, jacobian_shape
from ..jacobian.store import ROW_ORDER
from .store import Spectrum, spectrum_checks, stored_vector_count, write_spectrum

ROWS_BUDGET_BYTES = 1e9  # one block of J's rows (float32) when no batch size is given
PRODUCT_BYTES = 256 << 20  # rows cast to float64 at a time for a product: the float64 copy stays small
LOCAL_TASKS = 20  # parts of a pass run here (no dask client), for its progress lines
PROGRESS_SECONDS = 60  # at most one progress line a minute within a pass


@dataclass
class JacobianOperator:
    """J of a model on samples x (rows sample-major, row = i*K + k), applied without storing it:
    each product forms the rows of ``batch_size`` samples at a time (by default as many as fit
    ROWS_BUDGET_BYTES) with the Jacobian kernel and multiplies them in float64. ``passes``
    counts the passes over the data, ``seconds`` their time."""

    model: torch.nn.Module
    x: torch.Tensor
    batch_size: int | None = None
    passes: int = 0
    seconds: float = 0.0

    def __post_init__(self) -> None:
        self.model.eval()
        rows, self.cols = jacobian_shape(self.model, self.x)
        self.k = rows // len(self.x)
        if self.batch_size is None:
            self.batch_size = max(1, int(ROWS_BUDGET_BYTES // (self.k * self.cols * self.x.element_size())))

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.x) * self.k, self.cols

    def matmat(self, X: np.ndarray) -> np.ndarray:
        """J X for X (p x l): one pass over the data."""
        out = np.empty((self.shape[0], X.shape[1]))
        for rows, part in self._pass("J X", _jx, X):
            out[rows] = part
        return out

    def rmatmat(self, Y: np.ndarray) -> np.ndarray:
        """J^T Y for Y (nK x l): one pass, the blocks' contributions summed in float64."""
        out = np.zeros((self.shape[1], Y.shape[1]))
        for _, part in self._pass("J^T Y", _jty, Y, split_rows=True):
            out += part
        return out

    def normal_matmat(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(J X, J^T J X) for X (p x l) from one pass: each block's rows are formed once."""
        JX, JtJX = np.empty((self.shape[0], X.shape[1])), np.zeros((self.shape[1], X.shape[1]))
        for rows, (y, w) in self._pass("J X, J^T J X", _jtjx, X):
            JX[rows] = y
            JtJX += w
        return JX, JtJX

    def _pass(self, what: str, fn, M: np.ndarray, split_rows: bool = False):
        """One pass: yields (J's rows of a task, fn's result) for every task of sample ranges."""
        t0 = last = time.perf_counter()
        M = np.ascontiguousarray(M, dtype=np.float64)
        done, total = 0, self.shape[0]
        for rows, part in _run(fn, self.model, self.x, M, self.k, self.batch_size, split_rows):
            yield rows, part
            done += rows.stop - rows.start
            if time.perf_counter() - last > PROGRESS_SECONDS and done < total:
                last = time.perf_counter()
                logger.info(
                    "pass %d (%s): %d of %d rows (%.0f%%) in %.0fs",
                    self.passes + 1,
                    what,
                    done,
                    total,
                    100 * done / total,
                    last - t0,
                )
        self.passes += 1
        dt = time.perf_counter() - t0
        self.seconds += dt
        logger.info(
            "pass %d (%s, %d columns): %d rows in %.1fs, %.0f rows/s",
            self.passes,
            what,
            M.shape[1],
            self.shape[0],
            dt,
            self.shape[0] / dt,
        )


def _products(model: torch.nn.Module, x: torch.Tensor, batch_size: int):
    """J's rows of the samples x, one kernel batch at a time (one reused buffer), with their
    offset, cast to float64 PRODUCT_BYTES at a time."""
    for batch, rows in jacobian_blocks(model, x, batch_size):
        k = len(rows) // (batch.stop - batch.start)
        step = max(1, PRODUCT_BYTES // (8 * rows.shape[1]))
        for i in range(0, len(rows), step):
            yield batch.start * k + i, rows[i : i + step].double()


def _jx(model: torch.nn.Module, x: torch.Tensor, X: np.ndarray, batch_size: int) -> np.ndarray:
    """J_x X: the rows of the samples x times X (p x l)."""
    Xt = torch.as_tensor(X, device=x.device)
    parts = [R @ Xt for _, R in _products(model, x, batch_size)]
    return torch.cat(parts).cpu().numpy()


def _jty(model: torch.nn.Module, x: torch.Tensor, Y: np.ndarray, batch_size: int) -> np.ndarray:
    """J_x^T Y_x: the rows of the samples x transposed, times their rows of Y."""
    Yt, out = torch.as_tensor(Y, device=x.device), None
    for off, R in _products(model, x, batch_size):
        part = R.T @ Yt[off : off + len(R)]
        out = part if out is None else out.add_(part)
    return out.cpu().numpy()


def _jtjx(model: torch.nn.Module, x: torch.Tensor, X: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(J_x X, J_x^T J_x X) with each of the samples' rows formed once."""
    Xt, parts, out = torch.as_tensor(X, device=x.device), [], None
    for _, R in _products(model, x, batch_size):
        y = R @ Xt
        parts.append(y)
        out = R.T @ y if out is None else out.addmm_(R.T, y)
    return torch.cat(parts).cpu().numpy(), out.cpu().numpy()


@functools.lru_cache(maxsize=1)
def _unpickled(blob: bytes) -> torch.nn.Module:
    """The pass's model on a worker, unpickled once for all its tasks."""
    return pickle.loads(blob)


def _on_worker(fn, blob: bytes, *args):
    return fn(_unpickled(blob), *args)


def _run(fn, model, x, M, k: int, batch_size: int, split_rows: bool) -> Iterator[tuple[slice, object]]:
    """Yield (a task's rows of J, fn(model, x of the task, M or its rows, batch_size)) for each
    task of one pass.

    Without a ``dask.distributed`` client the tasks run here one after the other (their blocks
    each on torch's threads). With one, the samples are cut into about four tasks
    per worker; the model and M go to the workers once per pass (scattered), and results are
    taken as they finish, so the driver holds one beside the sum. torch.func transforms keep
    process-global state, so two tasks never share a process at once (workers: one thread each).
    """
    try:
        from dask.distributed import as_completed, default_client

        client = default_client()
    except (ImportError, ValueError):
        client = None
    n = len(x)
    if client is None:  # here, in about LOCAL_TASKS parts (each whole kernel batches) for progress lines
        for t in batch_slices(n, max(batch_size, -(-n // LOCAL_TASKS))):
            rows = slice(t.start * k, t.stop * k)
            yield rows, fn(model, x[t], M[rows] if split_rows else M, batch_size)
        return
    workers = max(1, len(client.scheduler_info()["workers"]))
    tasks = batch_slices(n, max(1, -(-n // (4 * workers))))
    # the model as pickled bytes: dask's own torch serialisation loses the modules' hook dicts
    # hash=False: a fresh key per pass, so that releasing the last pass's copy cannot race with this one
    model_f = client.scatter(pickle.dumps(model), broadcast=True, hash=False)
    M_f = None if split_rows else client.scatter(M, broadcast=True, hash=False)
    futures = {}
    for t in tasks:
        rows = slice(t.start * k, t.stop * k)
        arg = M[rows] if split_rows else M_f
        futures[client.submit(_on_worker, fn, model_f, x[t], arg, batch_size, pure=False)] = rows
    for fut in as_completed(futures):
        yield futures[fut], fut.result()
        fut.release()


@dataclass
class TopK:
    """Randomized SVD's result: the top-k singular values and left vectors, J^T U from the same
    pass (for the residuals), and the estimates of the top singular values after each pass (to
    see whether the power iterations sufficed)."""

    singular_values: np.ndarray
    U: np.ndarray
    estimates: list[np.ndarray] = field(default_factory=list)
    JtU: np.ndarray | None = None

    def movement(self, r: int) -> float:
        """Largest relative change of the top-r singular values in the last power iteration
        (NaN without power iterations)."""
        if len(self.estimates) < 2:
            return float("nan")
        a, b = self.estimates[-2][:r], self.estimates[-1][:r]
        return float(np.max(np.abs(b - a) / np.maximum(b, np.finfo(float).tiny)))


def randomized_svd(
    op: JacobianOperator, k: int, oversampling: int = 100, power_iterations: int = 6, seed: int = 0
) -> TopK:
    """Top-k singular values and left singular vectors of the operator's J, from
    ``power_iterations`` + 1 passes (the module's docstring says how)."""
    rows, cols = op.shape
    ell = min(k + oversampling, rows, cols)
    k = min(k, ell)
    Z, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((cols, ell)))
    estimates = []
    for i in range(power_iterations + 1):
        Y, W = op.normal_matmat(Z)  # Y = J Z, Z orthonormal: its singular values estimate J's top ones
        estimates.append(np.linalg.svd(Y, compute_uv=False))
        logger.info(
            "power iteration %d/%d: s_1 = %.6g, s_%d = %.6g",
            i,
            power_iterations,
            estimates[-1][0],
            k,
            estimates[-1][k - 1],
        )
        if i < power_iterations:
            Z, _ = np.linalg.qr(W)
    Uy, s, Vyt = np.linalg.svd(Y, full_matrices=False)
    JtU = W @ (Vyt[:k].T / s[:k])  # J^T U = J^T J Z V_Y S^-1
    return TopK(s[:k], Uy[:, :k], estimates, JtU)


def vector_residuals(
    op: JacobianOperator, s: np.ndarray, U: np.ndarray, JtU: np.ndarray | None = None
) -> tuple[np.ndarray, dict]:
    """||J J^T u_i - s_i^2 u_i|| / s_i^2 for every column of U, and the spectrum's stored checks
    computed from the same products: one pass with J^T U given (TopK.JtU), two without."""
    if JtU is None:
        JtU = op.rmatmat(U)
    JJtU = op.matmat(JtU)
    with np.errstate(divide="ignore", invalid="ignore"):
        residuals = np.linalg.norm(JJtU - U * s**2, axis=0) / s**2
    return residuals, spectrum_checks(s, U, JJtU, np.linalg.norm(JtU, axis=0))


@contextmanager
def dask_workers(scheduler: str | None) -> Iterator[object | None]:
    """A dask.distributed client for the passes while the block is open (``spectrum.scheduler``):
    None = no client (the blocks run here), ``local:N`` = N local worker processes of one thread
    each, anything else = the address of a running scheduler (a cluster's, e.g. dask-jobqueue's)."""
    if not scheduler:
        yield None
        return
    from dask.distributed import Client, LocalCluster

    if scheduler.startswith("local:"):
        n = int(scheduler.split(":", 1)[1])
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            with Client(cluster) as client:
                logger.info("passes on %d local worker processes", n)
                yield client
    else:
        with Client(scheduler) as client:
            logger.info("passes on the dask.distributed cluster at %s", scheduler)
            yield client


def matrix_free_spectrum(
    checkpoint: str,
    subset_path: str,
    split: str,
    info_dim: int,
    k: int,
    oversampling: int,
    power_iterations: int,
    threads: int = 1,
    batch_size: int | None = None,
    keep: int | None = None,
    scheduler: str | None = None,
    device: str = "cpu",
) -> Spectrum:
    """Spectrum of J(checkpoint) on ``split`` without storing J, checked by one more pass. The
    passes run on the workers of ``scheduler`` (see :func:`dask_workers`) when given, else here
    on ``device`` (``auto`` = CUDA when present: rows and float64 products on the GPU)."""
    from ..common.device import select_device
    from ..data.subset import read_split
    from ..train.models import load_checkpoint

    dev = torch.device("cpu") if scheduler else select_device(device)
    model, _ = load_checkpoint(checkpoint, dev)
    model.eval()  # J's rows in the checkpoint's precision (float32), every product in float64
    data = read_split(subset_path, split)
    torch.set_num_threads(max(1, threads))
    op = JacobianOperator(model, torch.from_numpy(data.x).to(dev), batch_size)
    with dask_workers(scheduler):
        t0 = time.perf_counter()
        top = randomized_svd(op, k, oversampling, power_iterations)
        t1 = time.perf_counter()
        residuals, checks = vector_residuals(op, top.singular_values, top.U, top.JtU)
    r = min(info_dim, len(top.singular_values))
    checks.update(
        passes=op.passes,
        vector_residuals=residuals,
        max_residual_top_r=float(residuals[:r].max()),
        movement_top_r=top.movement(r),
    )
    keep = info_dim if keep is None else min(keep, top.U.shape[1])  # the stored vectors (spectrum.stored_vectors)
    logger.info(
        "matrix-free spectrum of %s on %s: %d x %d, %d passes, %.1fs; top-%d residuals <= %.2e, last power "
        "iteration moved the top %d values by <= %.2e",
        checkpoint,
        split,
        *op.shape,
        op.passes,
        t1 - t0,
        r,
        checks["max_residual_top_r"],
        r,
        checks["movement_top_r"],
    )
    return Spectrum(
        top.singular_values,
        top.U[:, :keep].copy(),
        "matrix_free",
        checks,
        {"matrix_free": t1 - t0, "verify": time.perf_counter() - t1},
    )


def spectrum_matrix_free(
    checkpoint: str,
    subset_path: str,
    split: str,
    out_path: str,
    settings: dict,
    threads: int = 1,
    device: str = "cpu",
) -> Spectrum:
    """The matrix-free spectrum rule: compute and write ``spectrum/{split}_epoch{E}.h5``."""
    from ..train.models import read_checkpoint

    spec = matrix_free_spectrum(
        checkpoint,
        subset_path,
        split,
        settings["info_dim"],
        settings["topk"],
        settings["oversampling"],
        settings["power_iterations"],
        threads,
        keep=stored_vector_count(settings, settings["topk"]),
        scheduler=settings.get("scheduler"),
        device=device,
    )
    payload = read_checkpoint(checkpoint)
    source = {
        "split": split,
        "checkpoint": str(checkpoint),
        "checkpoint_epoch": payload["epoch"],
        "dtype": "float32",  # J's rows are formed in the checkpoint's float32; products sum in float64
        "row_order": ROW_ORDER,
    }
    write_spectrum(out_path, spec, settings["info_dim"], f"matrix-free J of {checkpoint} on {split}", source, settings)
    return spec
