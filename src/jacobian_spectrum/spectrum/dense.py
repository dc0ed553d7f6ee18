"""Methods on a stored J (CPU): the Gram matrix over column slabs and its eigendecomposition,
Dask's randomized SVD, and the check pass."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np

from ..common.h5io import open_checked
from .store import Spectrum, spectrum_checks


def slab_width(
    rows: int, columns: int, memory_budget_mb: float, in_flight: int, hdf5_chunk_cols: int | None = None
) -> int:
    """Columns per slab so that ``in_flight`` slabs (float32 read + float64 copy) fit the budget."""
    per_column = rows * (4 + 8) * max(1, in_flight)
    width = max(1, int(memory_budget_mb * 1e6 // per_column))
    if hdf5_chunk_cols and width >= hdf5_chunk_cols:
        width -= width % hdf5_chunk_cols  # whole HDF5 chunks: no chunk is read twice
    elif hdf5_chunk_cols:
        width = hdf5_chunk_cols // -(-hdf5_chunk_cols // width)  # an even share of one chunk
    return min(columns, width)


# OpenBLAS's threaded dsyrk (0.3.31, as numpy and scipy ship it) segfaults from about 16,000 rows
# on 2 threads (OpenBLAS#2821, numpy#19685); dgemm, which computes both triangles (1.75x the
# time here), does not. Measured: 15,000 rows pass, 16,384 and 20,000 fail, at 1,000 columns.
SYRK_MAX_ROWS = 15_000


def rank_update(G: np.ndarray, slab: np.ndarray) -> np.ndarray:
    """G += slab slab^T in place (G Fortran-ordered, float64): the upper triangle by dsyrk, or
    both triangles by dgemm above :data:`SYRK_MAX_ROWS`. Returns G."""
    from scipy.linalg.blas import dgemm, dsyrk

    # slab.T is a Fortran-ordered view of the C-ordered slab: no copy; trans=1 gives slab slab^T
    if G.shape[0] <= SYRK_MAX_ROWS:
        return dsyrk(1.0, slab.T, beta=1.0, c=G, trans=1, lower=0, overwrite_c=1)
    return dgemm(1.0, slab.T, slab.T, trans_a=1, beta=1.0, c=G, overwrite_c=1)


def read_slab(path: str | Path, start: int, stop: int) -> np.ndarray:
    """Columns [start, stop) of the file's J as float64. Opens the file itself, so a Dask task
    can run it in any thread, process or cluster node that sees the file."""
    with h5py.File(path, "r") as f:
        return f["J"][:, start:stop].astype(np.float64)


def _slab_bounds(path: str | Path, memory_budget_mb: float, in_flight: int) -> tuple[int, list[tuple[int, int]]]:
    """J's row count and the (start, stop) columns of its slabs, ``in_flight`` of them within the budget."""
    with open_checked(path, ["J"]) as f:
        rows, cols = f["J"].shape
        chunk_cols = f["J"].chunks[1] if f["J"].chunks else None
    width = slab_width(rows, cols, memory_budget_mb, in_flight, chunk_cols)
    return rows, [(a, min(cols, a + width)) for a in range(0, cols, width)]


def float64_slabs(path: str | Path, bounds: list[tuple[int, int]], threads: int) -> Iterator[tuple[np.ndarray, int]]:
    """J's column slabs ``bounds`` (:func:`_slab_bounds`, sized for 2 x ``threads`` in flight) in
    float64, in order, with their first column: Dask's threaded scheduler reads and casts
    ``threads`` slabs at a time, one batch ahead of the slabs handed out, so at most two batches
    are in memory at once. One pass over J for the Gram step and one for the check pass.

    A J of one slab is read here: there is nothing to read ahead, and importing Dask (which
    imports dask.distributed to look for a client) would cost a small spectrum job 0.6 s."""
    if len(bounds) == 1:
        yield read_slab(path, *bounds[0]), bounds[0][0]
        return
    import dask

    slabs = [dask.delayed(read_slab)(str(path), a, b) for a, b in bounds]
    batches = [(slabs[i : i + threads], bounds[i : i + threads]) for i in range(0, len(slabs), threads)]

    def load(batch: list) -> tuple:
        return dask.compute(*batch, scheduler="threads", num_workers=threads)

    with ThreadPoolExecutor(max_workers=1) as prefetch:
        pending = prefetch.submit(load, batches[0][0])
        for b, (_, batch_bounds) in enumerate(batches):
            done = pending.result()
            if b + 1 < len(batches):
                pending = prefetch.submit(load, batches[b + 1][0])
            for slab, (start, _) in zip(done, batch_bounds):
                yield slab, start
            del done


def _check_finite(path: str | Path, slab: np.ndarray, start: int) -> None:
    if not np.isfinite(slab).all():
        raise ValueError(f"{path}: J holds NaN or Inf in columns {start}..{start + slab.shape[1]}")


def gram(
    path: str | Path, memory_budget_mb: float = 2000, threads: int = 2, scheduler: str | None = None
) -> np.ndarray:
    """G = J J^T (float64) from the HDF5 file's ``J``, never holding J whole.

    Locally the slabs come from :func:`float64_slabs` (read and cast a batch ahead) while the
    main thread adds each into G with one in-place BLAS rank-w update (:func:`rank_update`);
    a J that fits in one slab is one product, slab @ slab.T.
    With ``scheduler`` (a dask.distributed address) each worker returns the partial Gram
    matrix of its slabs and the partials are summed as they arrive.
    """
    rows, bounds = _slab_bounds(path, memory_budget_mb, 2 * threads)
    if scheduler:
        return _gram_distributed(path, bounds, np.zeros((rows, rows), order="F"), scheduler)
    if len(bounds) == 1 and rows <= SYRK_MAX_ROWS:
        # J in one slab: numpy's A @ A.T is dsyrk with both triangles filled, without the
        # 0.4 s import of scipy.linalg that an in-place update needs (a small job's fifth)
        slab = read_slab(path, *bounds[0])
        _check_finite(path, slab, 0)
        return slab @ slab.T
    G = np.zeros((rows, rows), dtype=np.float64, order="F")
    for slab, start in float64_slabs(path, bounds, threads):
        _check_finite(path, slab, start)
        G = rank_update(G, slab)
    # dsyrk fills the upper triangle only
    return symmetrize_upper(G)


def _gram_distributed(path: str | Path, bounds: list[tuple[int, int]], G: np.ndarray, scheduler: str) -> np.ndarray:
    """G += slab slab^T for every column slab, each on a dask.distributed worker, summed as they arrive."""
    from dask.distributed import Client, as_completed

    def partial_gram(a: int, b: int) -> np.ndarray:
        slab = read_slab(path, a, b)
        _check_finite(path, slab, a)
        return rank_update(np.zeros((len(slab), len(slab)), order="F"), slab)

    with Client(scheduler) as client:
        futures = [client.submit(partial_gram, a, b, pure=False) for a, b in bounds]
        for fut in as_completed(futures):
            G += fut.result()
            fut.release()
    return symmetrize_upper(G)  # partials from dsyrk hold the upper triangle


def symmetrize_upper(G: np.ndarray, block: int = 1024) -> np.ndarray:
    """Copy the upper triangle (what dsyrk fills) into the lower one, in place, block by block."""
    n = G.shape[0]
    for i in range(0, n, block):
        G[i : i + block, :i] = G[:i, i : i + block].T
        tile = G[i : i + block, i : i + block]
        tile[...] = np.triu(tile) + np.triu(tile, 1).T
    return G


def eigh_descending(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors of a symmetric float64 matrix: LAPACK through
    numpy (32-bit LAPACK indices fail beyond n ~ 32,766). On a GPU:
    :func:`.device.eigh_checked`."""
    w, V = np.linalg.eigh(G)
    return w[::-1].copy(), V[:, ::-1].copy()


def _dask_J(path: str | Path, memory_budget_mb: float, threads: int):
    import dask.array as da

    f = open_checked(path, ["J"])
    dset = f["J"]
    rows, cols = dset.shape
    width = slab_width(rows, cols, memory_budget_mb, threads + 1, dset.chunks[1] if dset.chunks else None)
    return f, da.from_array(dset, chunks=(rows, width), lock=True).astype(np.float64)


def verify(path: str | Path, s: np.ndarray, U: np.ndarray, top: int, memory_budget_mb: float, threads: int) -> dict:
    """Checks stored with every spectrum, from one extra pass over J's slabs (:func:`float64_slabs`;
    importing dask.array for it cost a small spectrum job 0.7 s, a third of its time).

    orthogonality_error  max |U^T U - I|
    eigen_residual       max_i ||J J^T u_i - s_i^2 u_i|| / s_1^2 over the top ``top`` vectors
    norm_residual        max_i | ||J^T u_i|| - s_i | / s_1 (||J^T u - s v|| with v = J^T u / ||J^T u||)
    """
    Ut = np.ascontiguousarray(U[:, : min(top, U.shape[1])], dtype=np.float64)
    Z, norms2 = np.zeros(Ut.shape), np.zeros(Ut.shape[1])
    _, bounds = _slab_bounds(path, memory_budget_mb, 2 * threads)
    for slab, _ in float64_slabs(path, bounds, threads):
        JtU = slab.T @ Ut  # this slab's rows of J^T U
        Z += slab @ JtU
        norms2 += (JtU**2).sum(axis=0)
    return spectrum_checks(s, U, Z, np.sqrt(norms2))


def topk_spectrum(
    path: str | Path,
    keep: int,
    k: int,
    oversampling: int,
    power_iterations: int,
    memory_budget_mb: float,
    threads: int,
    seed: int = 0,
) -> Spectrum:
    import dask
    import dask.array as da

    t0 = time.perf_counter()
    f, Jd = _dask_J(path, memory_budget_mb, threads)
    k = min(k, *Jd.shape)
    with f, dask.config.set(scheduler="threads", num_workers=threads):
        u, s, _ = da.linalg.svd_compressed(
            Jd, k=k, iterator="QR", n_power_iter=power_iterations, n_oversamples=oversampling, seed=seed, compute=True
        )
        U, s = dask.compute(u[:, :keep], s)
    return Spectrum(np.asarray(s), np.asarray(U), "topk", seconds={"topk": time.perf_counter() - t0})
