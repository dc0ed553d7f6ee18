"""Spectrum stage: singular values of J and its top-r left singular vectors (information space).

Methods
  full     G = J J^T accumulated in float64 over column slabs read from HDF5 (Dask reads and
           casts slabs in parallel; one in-place BLAS update per slab), then a float64
           symmetric eigensolver; s = sqrt(max(lambda, 0)). Peak memory: G plus at most
           ``threads`` slabs, the slab width set by the memory budget.
  topk     randomized SVD of the stored J (``dask.array.linalg.svd_compressed``, float64
           blocks, QR normalisation between power iterations).
  (matrix-free randomized SVD by JVP/VJP passes lives in :mod:`jacobian_spectrum.matrix_free`.)

Squaring through the Gram matrix squares the condition number: singular values below
``1e-8 * s_max`` are float64 noise; the floor is stored in the file's attrs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .h5io import atomic_h5, open_checked, require_finite, write_provenance
from .logs import logger

GRAM_FLOOR = 1e-8  # relative to s_max: below it, Gram-based singular values are noise


@dataclass
class Spectrum:
    singular_values: np.ndarray  # descending; all nK for full, top-k otherwise
    U: np.ndarray  # (nK, stored) top left singular vectors: the first info_dim span I
    method: str
    checks: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


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


def read_slab(path: str | Path, start: int, stop: int) -> np.ndarray:
    """Columns [start, stop) of the file's J as float64. Opens the file itself, so a Dask task
    can run it in any thread, process or cluster node that sees the file."""
    with h5py.File(path, "r") as f:
        return f["J"][:, start:stop].astype(np.float64)


def gram(
    path: str | Path, memory_budget_mb: float = 2000, threads: int = 2, scheduler: str | None = None
) -> np.ndarray:
    """G = J J^T (float64) from the HDF5 file's ``J``, never holding J whole.

    Locally, Dask's threaded scheduler reads and casts ``threads`` slabs at a time, one batch
    ahead, while the main thread adds each finished slab into G with one in-place BLAS
    rank-w update (dsyrk); the slab width keeps the 2 x ``threads`` slabs in memory within
    ``memory_budget_mb``.
    With ``scheduler`` (a dask.distributed address) each worker returns the partial Gram
    matrix of its slabs and the partials are summed as they arrive.
    """
    import dask
    from scipy.linalg.blas import dsyrk

    with open_checked(path, ["J"]) as f:
        rows, cols = f["J"].shape
        chunk_cols = f["J"].chunks[1] if f["J"].chunks else None
    width = slab_width(rows, cols, memory_budget_mb, 2 * threads, chunk_cols)
    bounds = [(a, min(cols, a + width)) for a in range(0, cols, width)]
    G = np.zeros((rows, rows), dtype=np.float64, order="F")

    def add(slab: np.ndarray, start: int) -> np.ndarray:
        if not np.isfinite(slab).all():
            raise ValueError(f"{path}: J holds NaN or Inf in columns {start}..{start + slab.shape[1]}")
        # slab.T is a Fortran-ordered view of the C-ordered slab: no copy; trans=1 gives slab slab^T
        return dsyrk(1.0, slab.T, beta=1.0, c=G, trans=1, lower=0, overwrite_c=1)

    if scheduler:
        return _gram_distributed(path, bounds, G, scheduler)
    from concurrent.futures import ThreadPoolExecutor

    # Dask reads and casts a batch of `threads` slabs while the previous batch is added into
    # G: at most two batches (2 x threads slabs) are in memory at once.
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
                G = add(slab, start)
            del done
    # dsyrk fills the upper triangle only
    return symmetrize_upper(G)


def _gram_distributed(path: str | Path, bounds: list[tuple[int, int]], G: np.ndarray, scheduler: str) -> np.ndarray:
    """G += slab slab^T for every column slab, each on a dask.distributed worker, summed as they arrive."""
    from dask.distributed import Client, as_completed

    def partial_gram(a: int, b: int) -> np.ndarray:
        slab = read_slab(path, a, b)
        if not np.isfinite(slab).all():
            raise ValueError(f"{path}: J holds NaN or Inf in columns {a}..{b}")
        return slab @ slab.T

    with Client(scheduler) as client:
        futures = [client.submit(partial_gram, a, b, pure=False) for a, b in bounds]
        for fut in as_completed(futures):
            G += fut.result()
            fut.release()
    return G


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
    :func:`jacobian_spectrum.spectrum_device.eigh_checked`."""
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
    """Checks stored with every spectrum, from one extra pass over J.

    orthogonality_error  max |U^T U - I|
    eigen_residual       max_i ||J J^T u_i - s_i^2 u_i|| / s_1^2 over the top ``top`` vectors
    norm_residual        max_i | ||J^T u_i|| - s_i | / s_1 (||J^T u - s v|| with v = J^T u / ||J^T u||)
    """
    import dask

    t = min(top, U.shape[1])
    f, Jd = _dask_J(path, memory_budget_mb, threads)
    with f, dask.config.set(scheduler="threads", num_workers=threads):
        JtU = Jd.T @ U[:, :t]  # (p, t), columns blocked as J's slabs
        Z, norms2 = dask.compute(Jd @ JtU, (JtU**2).sum(axis=0))
    return spectrum_checks(s, U, Z, np.sqrt(norms2))


def spectrum_checks(s: np.ndarray, U: np.ndarray, JJtU: np.ndarray, JtU_norms: np.ndarray) -> dict:
    """The stored checks of a spectrum from J J^T U_t and ||J^T u_i|| of its top t vectors
    (t = the columns of ``JJtU``): see :func:`verify`."""
    t = JJtU.shape[1]
    s1 = s[0] if s[0] > 0 else 1.0
    return {
        "orthogonality_error": float(np.abs(U.T @ U - np.eye(U.shape[1])).max()),
        "eigen_residual": float(np.linalg.norm(JJtU - U[:, :t] * s[:t] ** 2, axis=0).max() / s1**2),
        "norm_residual": float(np.abs(JtU_norms - s[:t]).max() / s1),
        "checked_vectors": t,
    }


def full_spectrum(
    path: str | Path,
    keep: int,
    memory_budget_mb: float,
    threads: int,
    scheduler: str | None = None,
    device: str = "cpu",
) -> Spectrum:
    t0 = time.perf_counter()
    if device == "cuda":  # G accumulates on the GPU, and eigh runs there (checked, CPU fallback)
        from .spectrum_device import eigh_checked, gram_on_device

        G = gram_on_device(path, device, memory_budget_mb)
        t1 = time.perf_counter()
        w, V = eigh_checked(G)
    else:
        G = gram(path, memory_budget_mb, threads, scheduler)
        t1 = time.perf_counter()
        w, V = eigh_descending(G)
    del G
    t2 = time.perf_counter()
    s = np.sqrt(np.maximum(w, 0.0))
    return Spectrum(s, V[:, :keep].copy(), "full", seconds={"gram": t1 - t0, "eigh": t2 - t1})


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


def stored_vector_count(settings: dict, available: int) -> int:
    """How many left singular vectors a spectrum file keeps: spectrum.stored_vectors ("all" =
    every one the method computes), never fewer than info_dim nor more than ``available``."""
    stored = settings.get("stored_vectors", "all")
    keep = available if stored == "all" else min(int(stored), available)
    return max(keep, min(int(settings["info_dim"]), available))


def choose_method(method: str, rows: int, memory_budget_mb: float) -> str:
    """``auto``: full when the Gram matrix (rows^2 float64) fits the memory budget, else topk."""
    if method != "auto":
        return method
    return "full" if rows * rows * 8 / 1e6 <= memory_budget_mb else "topk"


RANDOMIZED_KEYS = ("topk", "oversampling", "power_iterations")


def method_settings(settings: Mapping, rows: int) -> dict:
    """The spectrum settings that a J of ``rows`` rows is computed with: those of the method
    that ``settings["method"]`` picks for it, without the randomized SVD's keys (topk,
    oversampling, power_iterations) where the method is ``full``. The spectrum rules take this
    as their param, so that tuning one method does not rerun the spectra of another."""
    method = choose_method(settings["method"], rows, settings["memory_budget_mb"])
    return {key: value for key, value in settings.items() if method != "full" or key not in RANDOMIZED_KEYS}


def compute_spectrum(path: str | Path, settings: dict, device: str = "cpu") -> Spectrum:
    """Spectrum of the stored J with the configured method, checked by one extra pass."""
    with open_checked(path, ["J"], artifact="jacobian") as f:
        rows, cols = f["J"].shape
    r = int(settings["info_dim"])
    if r > min(rows, cols):
        raise ValueError(f"{path}: info_dim {r} exceeds min(nK, p) = {min(rows, cols)} of this J")
    method = choose_method(settings["method"], rows, settings["memory_budget_mb"])
    budget, threads = settings["memory_budget_mb"], settings["threads"]
    if method == "full":
        keep = stored_vector_count(settings, rows)
        spec = full_spectrum(path, keep, budget, threads, settings.get("scheduler"), device)
    elif method == "topk":
        keep = stored_vector_count(settings, min(settings["topk"], rows, cols))
        spec = topk_spectrum(
            path, keep, settings["topk"], settings["oversampling"], settings["power_iterations"], budget, threads
        )
    else:
        raise ValueError(f"spectrum.method {method!r} cannot read a stored J; allowed here: auto, full, topk")
    t0 = time.perf_counter()
    spec.checks = verify(path, spec.singular_values, spec.U, min(r, 10), budget, threads)
    spec.seconds["verify"] = time.perf_counter() - t0
    return spec


def write_spectrum(
    path: str | Path, spec: Spectrum, info_dim: int, source: str | Path, source_attrs: dict, settings: dict
) -> None:
    """``spectrum/{split}_epoch{epoch}.h5``: singular_values (descending), U (nK x stored), attrs."""
    s = spec.singular_values
    require_finite(s, f"{path}: singular values")
    smax = float(s[0]) if len(s) else 0.0
    with atomic_h5(path) as f:
        write_provenance(
            f,
            "spectrum",
            settings,
            method=spec.method,
            info_dim=int(info_dim),
            precision="float64",
            numerical_floor=GRAM_FLOOR * smax if spec.method == "full" else 0.0,
            numerical_floor_meaning="singular values below this are float64 noise of the Gram route (1e-8 * s_max)",
            storage_floor=float(np.finfo(np.float32).eps) * smax
            if source_attrs.get("dtype") == "float32"
            else float(np.finfo(np.float64).eps) * smax,
            storage_floor_meaning="relative rounding of J's stored entries times s_max: values below are not resolved",
            all_singular_values=spec.method == "full",
            jacobian=str(source),
            split=source_attrs.get("split", ""),
            checkpoint=source_attrs.get("checkpoint", ""),
            checkpoint_epoch=int(source_attrs.get("checkpoint_epoch", -1)),
            num_rows=int(spec.U.shape[0]),
            row_order=source_attrs.get("row_order", ""),
            **{f"check_{k}": v for k, v in spec.checks.items()},
            **{f"seconds_{k}": v for k, v in spec.seconds.items()},
        )
        f.create_dataset("singular_values", data=s)
        f.create_dataset("U", data=spec.U)
        f["U"].attrs["meaning"] = (
            "top left singular vectors of J (columns, descending), rows ordered as J's rows; "
            "the first info_dim span the information space"
        )


@dataclass
class SpectrumData:
    singular_values: np.ndarray
    U: np.ndarray
    attrs: dict


def read_spectrum(path: str | Path) -> SpectrumData:
    with open_checked(path, ["singular_values", "U"], artifact="spectrum") as f:
        s, U, attrs = f["singular_values"][...], f["U"][...], dict(f.attrs)
    require_finite(U, f"{path}: U")
    if U.shape[1] > len(s):
        raise ValueError(f"{path}: U has {U.shape[1]} columns but only {len(s)} singular values")
    return SpectrumData(s, U, attrs)


def spectrum_of_file(jacobian_path: str | Path, out_path: str | Path, settings: dict, device: str = "auto") -> Spectrum:
    """The spectrum rule: compute, check and write the spectrum of one stored J."""
    from .device import select_device

    dev = select_device(device).type
    with open_checked(jacobian_path, ["J"], artifact="jacobian") as f:
        source_attrs = dict(f.attrs)
    spec = compute_spectrum(jacobian_path, settings, dev)
    write_spectrum(out_path, spec, settings["info_dim"], jacobian_path, source_attrs, settings)
    s = spec.singular_values
    r = settings["info_dim"]
    logger.info(
        "%s spectrum of %s: s_1 = %.4g, s_r = %.4g (r = %d), %d values; checks %s; seconds %s -> %s",
        spec.method,
        jacobian_path,
        s[0],
        s[r - 1],
        r,
        len(s),
        spec.checks,
        spec.seconds,
        out_path,
    )
    return spec
