"""Which method a J gets, and the spectrum rule: singular values of J and its top-r left singular
vectors (information space).

Methods
  full     G = J J^T accumulated in float64 over column slabs read from HDF5 (Dask reads and
           casts slabs in parallel; one in-place BLAS update per slab), then a float64
           symmetric eigensolver; s = sqrt(max(lambda, 0)). Peak memory: G plus at most
           ``threads`` slabs, the slab width set by the memory budget.
  topk     randomized SVD of the stored J (``dask.array.linalg.svd_compressed``, float64
           blocks, QR normalisation between power iterations).
  matrix_free  randomized SVD by passes over J's rows, J never stored (:mod:`.matrix_free`).

Squaring through the Gram matrix squares the condition number: singular values below
``1e-8 * s_max`` are float64 noise; the floor is stored in the file's attrs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..common.h5io import open_checked
from ..common.logs import logger
from .dense import eigh_descending, gram, topk_spectrum, verify
from .store import Spectrum, checked_degeneracy, stored_vector_count, write_spectrum


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
        from .device import eigh_checked, gram_on_device

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


def choose_method(method: str, rows: int, memory_budget_mb: float) -> str:
    """``auto``: full when the Gram matrix (rows^2 float64) fits the memory budget, else topk."""
    if method != "auto":
        return method
    return "full" if rows * rows * 8 / 1e6 <= memory_budget_mb else "topk"


# multiply-adds of a Gram matrix that the CPU does in about a second (143 G/s measured on 2 cores
# by `python -m jacobian_spectrum plan`), less than `import torch` (1.6 s) to ask for a GPU
SMALL_GRAM = 1.5e11

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


def spectrum_of_file(
    jacobian_path: str | Path,
    out_path: str | Path,
    settings: dict,
    device: str = "auto",
    allow_degenerate: bool = False,
) -> Spectrum:
    """The spectrum rule: compute, check and write the spectrum of one stored J.

    With ``device="auto"`` a J whose Gram matrix is small (:data:`SMALL_GRAM`) stays on the CPU
    without importing torch, whose import alone costs more than its Gram matrix there. A J of
    numerical rank at most K stops the job naming its checkpoint, unless ``allow_degenerate``
    (:func:`.store.checked_degeneracy`)."""
    with open_checked(jacobian_path, ["J"], artifact="jacobian") as f:
        source_attrs = dict(f.attrs)
        rows, cols = f["J"].shape
    if device == "cpu" or (device == "auto" and rows * rows * cols <= SMALL_GRAM):
        dev = "cpu"
    else:
        from ..common.device import select_device

        dev = select_device(device).type
    spec = compute_spectrum(jacobian_path, settings, dev)
    what = f"{source_attrs.get('checkpoint', '?')} (J {jacobian_path})"
    degenerate = checked_degeneracy(spec, source_attrs, allow_degenerate, what)
    write_spectrum(out_path, spec, settings["info_dim"], jacobian_path, source_attrs, settings, degenerate)
    s = spec.singular_values
    r = settings["info_dim"]
    logger.info(
        "%s spectrum of %s (batch-norm statistics: %s): s_1 = %.4g, s_r = %.4g (r = %d), %d values; checks %s; "
        "seconds %s -> %s",
        spec.method,
        jacobian_path,
        source_attrs.get("normalisation", "?"),
        s[0],
        s[r - 1],
        r,
        len(s),
        spec.checks,
        spec.seconds,
        out_path,
    )
    return spec
