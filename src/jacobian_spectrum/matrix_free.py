"""Matrix-free top-k spectrum: randomized SVD of J whose products stream J's rows, J never stored.

For J too large to store (full CIFAR-10, 10 classes: 500k x 270k, 538 GB in float32, a 2 TB
Gram matrix), each product J X (p x l -> nK x l) or J^T Y (nK x l -> p x l) forms J's rows a
block of samples at a time with the Jacobian kernel (:func:`jacobian_spectrum.jacobian.jacobian`:
the per-layer kernel for Conv2d/Linear networks, ``torch.func`` otherwise), multiplies the block
in float64 and drops it. A pass therefore costs about one J's worth of rows, whatever the
number of probe columns l, and holds one block (not J). Earlier versions applied J with one
JVP/VJP per probe column: ``bench/matrix_free.py`` measured that 82x slower than forming J at
900 images, so this engine replaced it. The blocks of one pass are independent tasks: locally
they run one after the other (each uses torch's threads); with a ``dask.distributed`` client
active (a local cluster, or one on SLURM through dask-jobqueue, docs/cluster.md) they run on its
workers and their products are summed as they arrive.

Randomized SVD (Halko, Martinsson, Tropp 2011, Algorithm 4.4 with QR between power iterations):

  Y = J Omega;  repeat q times: Q = qr(Y), Z = J^T Q, Q' = qr(Z), Y = J Q';  Q = qr(Y);
  B^T = J^T Q;  B = U_B S V_B^T;  U = Q U_B

costs 2q + 2 passes. The singular values of each Y = J Q' estimate the top ones, so how much
the top r moved in the last power iteration says whether q sufficed; two more passes give each
vector's residual ||J J^T u_i - s_i^2 u_i|| / s_i^2.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from .jacobian import ROW_ORDER, batch_slices, jacobian, jacobian_shape
from .logs import logger
from .spectrum import Spectrum, spectrum_checks, stored_vector_count, write_spectrum

ROWS_BUDGET_BYTES = 1e9  # one block of J's rows (float32) when no batch size is given
PRODUCT_ROWS = 4096  # rows cast to float64 at a time for a product: the float64 copy stays small


@dataclass
class JacobianOperator:
    """J of a model on samples x (rows sample-major, row = i*K + k), applied without storing it:
    each product forms the rows of ``batch_size`` samples at a time (by default as many as fit
    ROWS_BUDGET_BYTES) and multiplies them in float64."""

    model: torch.nn.Module
    x: torch.Tensor
    batch_size: int | None = None
    passes: int = 0

    def __post_init__(self) -> None:
        self.model.eval()
        rows, self.cols = jacobian_shape(self.model, self.x)
        self.k = rows // len(self.x)
        if self.batch_size is None:
            self.batch_size = max(1, int(ROWS_BUDGET_BYTES // (self.k * self.cols * self.x.element_size())))

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.x) * self.k, self.cols

    def _blocks(self) -> list[slice]:
        return batch_slices(len(self.x), self.batch_size)

    def _jv_block(self, xb: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        rows = jacobian(self.model, xb)
        return torch.cat([rows[i : i + PRODUCT_ROWS].double() @ X for i in range(0, len(rows), PRODUCT_ROWS)])

    def _jtu_block(self, xb: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        rows = jacobian(self.model, xb)
        out = torch.zeros(rows.shape[1], Y.shape[1], dtype=torch.float64)
        for i in range(0, len(rows), PRODUCT_ROWS):
            out += rows[i : i + PRODUCT_ROWS].double().T @ Y[i : i + PRODUCT_ROWS]
        return out

    def matmat(self, X: np.ndarray) -> np.ndarray:
        """J X for X (p x l): one pass over the data."""
        Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float64))
        blocks = self._blocks()
        out = np.empty((self.shape[0], X.shape[1]))
        for i, part in _run(self._jv_block, [(self.x[b], Xt) for b in blocks]):
            out[blocks[i].start * self.k : blocks[i].stop * self.k] = part
        self.passes += 1
        return out

    def rmatmat(self, Y: np.ndarray) -> np.ndarray:
        """J^T Y for Y (nK x l): one pass, the blocks' contributions summed in float64."""
        Yt = torch.from_numpy(np.ascontiguousarray(Y, dtype=np.float64))
        out = np.zeros((self.shape[1], Y.shape[1]))
        for _, part in _run(
            self._jtu_block, [(self.x[b], Yt[b.start * self.k : b.stop * self.k]) for b in self._blocks()]
        ):
            out += part
        self.passes += 1
        return out


def _run(fn, args: list[tuple]) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (block index, fn(*args[index]) as numpy) for each block of one pass.

    With a ``dask.distributed`` client active the blocks run on its workers, and results are
    taken as they finish (so the driver holds one at a time beside the sum); otherwise they run
    here one after the other. torch.func transforms keep process-global state, so two blocks
    never share a process at once (workers: one thread each).
    """
    try:
        from dask.distributed import as_completed, default_client

        client = default_client()
    except (ImportError, ValueError):
        for i, a in enumerate(args):
            yield i, fn(*a).numpy()
        return
    futures = {client.submit(fn, *a, pure=False): i for i, a in enumerate(args)}
    for fut in as_completed(futures):
        yield futures[fut], fut.result().numpy()
        fut.release()


@dataclass
class TopK:
    """Randomized SVD's result: the top-k singular values and left vectors, and the estimates
    of the top singular values after each pass pair (to see whether the power iterations sufficed)."""

    singular_values: np.ndarray
    U: np.ndarray
    estimates: list[np.ndarray] = field(default_factory=list)

    def movement(self, r: int) -> float:
        """Largest relative change of the top-r singular values in the last power iteration
        (NaN without power iterations)."""
        if len(self.estimates) < 2:
            return float("nan")
        a, b = self.estimates[-2][:r], self.estimates[-1][:r]
        return float(np.max(np.abs(b - a) / np.maximum(b, np.finfo(float).tiny)))


def randomized_svd(
    op: JacobianOperator, k: int, oversampling: int = 20, power_iterations: int = 4, seed: int = 0
) -> TopK:
    """Top-k singular values and left singular vectors of the operator's J."""
    rows, cols = op.shape
    ell = min(k + oversampling, rows, cols)
    rng = np.random.default_rng(seed)
    Y = op.matmat(rng.standard_normal((cols, ell)))
    estimates = []
    for i in range(power_iterations):
        Q, _ = np.linalg.qr(Y)
        Z, _ = np.linalg.qr(op.rmatmat(Q))
        Y = op.matmat(Z)  # J Z, Z orthonormal: its singular values estimate J's top ones
        estimates.append(np.linalg.svd(Y, compute_uv=False))
        top_k = min(k, ell)
        logger.info(
            "power iteration %d/%d: s_1 = %.6g, s_%d = %.6g",
            i + 1,
            power_iterations,
            estimates[-1][0],
            top_k,
            estimates[-1][top_k - 1],
        )
    Q, _ = np.linalg.qr(Y)
    Bt = op.rmatmat(Q)  # (p x l) = (Q^T J)^T
    Ub, s, _ = np.linalg.svd(Bt.T, full_matrices=False)
    k = min(k, ell)
    return TopK(s[:k], (Q @ Ub)[:, :k], estimates)


def vector_residuals(op: JacobianOperator, s: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, dict]:
    """||J J^T u_i - s_i^2 u_i|| / s_i^2 for every column of U (two passes), and the spectrum's
    stored checks computed from the same products."""
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
) -> Spectrum:
    """Spectrum of J(checkpoint) on ``split`` without storing J; checked by two more passes,
    which run on the workers of ``scheduler`` (see :func:`dask_workers`) when given."""
    from .data import read_split
    from .models import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    model.eval()  # J's rows in the checkpoint's precision (float32), every product in float64
    data = read_split(subset_path, split)
    torch.set_num_threads(max(1, threads))
    op = JacobianOperator(model, torch.from_numpy(data.x), batch_size)
    with dask_workers(scheduler):
        t0 = time.perf_counter()
        top = randomized_svd(op, k, oversampling, power_iterations)
        t1 = time.perf_counter()
        residuals, checks = vector_residuals(op, top.singular_values, top.U)
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
    checkpoint: str, subset_path: str, split: str, out_path: str, settings: dict, threads: int = 1
) -> Spectrum:
    """The matrix-free spectrum rule: compute and write ``spectrum/{split}_epoch{E}.h5``."""
    from .models import read_checkpoint

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
