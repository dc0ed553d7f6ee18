"""The Gram step and the eigendecomposition on a torch device (a GPU where one is present).

J streams from its HDF5 file in column slabs: a reader thread fills one of ``buffers`` host
buffers (pinned on CUDA, so copies run asynchronously) while the device adds the previous
slab into G = J J^T, which accumulates in float64 on the device. The eigendecomposition runs
there too, and every result is checked by its residual ||G u - lambda u||: GPU eigensolvers
fail on some sizes and library versions (cuSOLVER's syevd above n ~ 25k,
NVIDIA/CUDALibrarySamples#246, pytorch#92141, #105359), so a failed call or check falls
back to LAPACK on the CPU with a log line. The same code runs on ``device="cpu"``, which is
how the tests exercise it where no GPU is present; the workflow's CPU path is
:func:`jacobian_spectrum.spectrum.dense.gram`.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from ..common.h5io import open_checked
from ..common.logs import logger
from .dense import slab_width

# eigenpairs whose residual max_i ||G u_i - lambda_i u_i|| exceeds this share of max |lambda|
# are not trusted (float64 LAPACK-quality solvers stay near n * 1e-16)
EIGH_RESIDUAL_TOLERANCE = 1e-9
HOST_BYTES_PER_S = 5e9  # eigenvectors from the device to the host: assumed


def gram_on_device(path: str | Path, device: str | torch.device, memory_budget_mb: float, buffers: int = 2):
    """G = J J^T (float64, a tensor on ``device``) from the file's ``J``, read slab by slab,
    with reading and the device's work overlapped; ``buffers`` host slabs are in flight."""
    dev = torch.device(device)
    with open_checked(path, ["J"], artifact="jacobian") as f:  # also checks a virtual J's chunk files
        rows, cols = f["J"].shape
        dtype = torch.float64 if f["J"].dtype == np.float64 else torch.float32  # J is stored as one of these
    width = slab_width(rows, cols, memory_budget_mb, buffers)
    host = [torch.empty((rows, width), dtype=dtype, pin_memory=dev.type == "cuda") for _ in range(buffers)]
    free: queue.Queue = queue.Queue()
    filled: queue.Queue = queue.Queue()
    for i in range(buffers):
        free.put(i)
    thread = threading.Thread(target=_read_slabs, args=(path, cols, width, host, free, filled), daemon=True)
    thread.start()
    G = torch.zeros((rows, rows), dtype=torch.float64, device=dev)
    bad = []  # per slab, the count of NaN/Inf on the device: checked once at the end, no sync per slab
    while (item := filled.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        i, a, b = item
        slab = host[i][:, : b - a].to(dev, non_blocking=True)
        copied = torch.cuda.Event() if dev.type == "cuda" else None
        if copied is not None:
            copied.record()
        slab = slab.double()
        bad.append((a, b, (~torch.isfinite(slab)).sum()))
        G.addmm_(slab, slab.T)
        if copied is not None:
            copied.synchronize()  # the host buffer is free once its copy is done, not its product
        free.put(i)
    thread.join()
    for a, b, count in bad:
        if int(count):
            raise ValueError(f"{path}: J holds NaN or Inf in columns {a}..{b}")
    return G


def gram_in_memory(J: torch.Tensor, memory_budget_mb: float) -> torch.Tensor:
    """G = J J^T in float64 on J's device from a J already there, one float64 column slab at a
    time (``memory_budget_mb`` bounds a slab), as :func:`gram_on_device` adds the slabs it
    streams from HDF5: where J was computed on the device, writing it to a file first would
    cost more than G (32 GB at the paper's size)."""
    rows, cols = J.shape
    width = slab_width(rows, cols, memory_budget_mb, 1)
    G = torch.zeros((rows, rows), dtype=torch.float64, device=J.device)
    bad = []  # NaN/Inf counts per slab, read once at the end: no host sync per slab
    for a in range(0, cols, width):
        slab = J[:, a : a + width].double()
        bad.append((a, min(cols, a + width), (~torch.isfinite(slab)).sum()))
        G.addmm_(slab, slab.T)
        del slab
    for a, b, count in bad:
        if int(count):
            raise ValueError(f"J holds NaN or Inf in columns {a}..{b}")
    return G


def spectrum_in_memory(
    model: torch.nn.Module, x: torch.Tensor, memory_budget_mb: float, probe_samples: int = 64
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The spectrum step with nothing on disk, where J fits the device: J of ``model`` on ``x``
    (float32, on x's device), its probe check on the first ``probe_samples`` samples, G = J J^T
    (:func:`gram_in_memory`; J freed before the eigh) and :func:`eigh_checked`. Returns the
    eigenvalues (descending), the eigenvectors, and the parts' seconds and probe errors."""
    from ..common.device import release, synchronize
    from ..jacobian.compute import jacobian
    from ..jacobian.probe import probe_errors

    seconds, t0 = {}, time.perf_counter()
    J = jacobian(model, x)
    synchronize(x.device)
    seconds["jacobian"], t1 = time.perf_counter() - t0, time.perf_counter()
    m = min(len(x), probe_samples)
    probes = probe_errors(model, x[:m], J[: m * (len(J) // len(x))])
    seconds["probe"], t1 = time.perf_counter() - t1, time.perf_counter()
    G = gram_in_memory(J, memory_budget_mb)
    del J
    synchronize(x.device)
    seconds["gram"], t1 = time.perf_counter() - t1, time.perf_counter()
    release(x.device)
    w, V = eigh_checked(G)
    del G
    release(x.device)
    seconds["eigh"], seconds["total"] = time.perf_counter() - t1, time.perf_counter() - t0
    return w, V, {"seconds": seconds, "probe_errors": {"jvp": probes[0], "vjp": probes[1]}}


def spectrum_seconds(rates, rows: int, cols: int, k: int) -> float:
    """:func:`spectrum_in_memory`'s time at ``rates`` (a plan.Rates): J's rows (and the probe
    check's, about three passes over 64 samples) at jacobian_sample_seconds per K rows, G at
    gram_flops multiply-adds per second, eigh scaled by n^3, and the eigenvectors to the host."""
    j = (rows + 3 * 64 * k) / k * rates.jacobian_sample_seconds
    host = 3 * rows**2 * 8 / HOST_BYTES_PER_S
    return j + rows * rows * cols / rates.gram_flops + rates.eigh_seconds_per_n3 * rows**3 + host


def spectrum_bytes(rows: int, cols: int, memory_budget_mb: float) -> float:
    """Device bytes :func:`spectrum_in_memory` holds at its peak: J, G and a slab; then G, V and
    the residual check's two; plus the device's own working memory."""
    j, g = rows * cols * 4.0, rows * rows * 8.0
    return max(j + g + rows * slab_width(rows, cols, memory_budget_mb, 1) * 8.0, 4 * g) + (512 << 20)


def _read_slabs(path, cols: int, width: int, host: list, free: queue.Queue, filled: queue.Queue) -> None:
    """The reader thread: column slabs of J into free host buffers, in order; None at the end,
    or the exception that stopped it."""
    try:
        with h5py.File(path, "r") as f:
            dset = f["J"]
            for a in range(0, cols, width):
                b = min(cols, a + width)
                i = free.get()
                dset.read_direct(host[i].numpy(), np.s_[:, a:b], np.s_[:, : b - a])
                filled.put((i, a, b))
    except BaseException as exc:  # handed to the consumer, which raises it
        filled.put(exc)
        return
    filled.put(None)


def eigh_checked(G) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors of the symmetric float64 tensor ``G`` on its
    device, checked by their residual; on failure, LAPACK on the CPU (logged)."""
    try:
        w, V = torch.linalg.eigh(G)
        scale = float(w.abs().max()) if w.numel() else 1.0
        residual = float(torch.linalg.norm(G @ V - V * w, dim=0).max()) / (scale if scale > 0 else 1.0)
        if not np.isfinite(residual) or residual > EIGH_RESIDUAL_TOLERANCE:
            raise ArithmeticError(f"residual {residual:.1e} above {EIGH_RESIDUAL_TOLERANCE:.0e} of max |lambda|")
        w, V = w.cpu().numpy(), V.cpu().numpy()
    except (RuntimeError, ArithmeticError) as exc:  # torch raises RuntimeError for solver and memory failures
        logger.warning("eigh on %s failed (%s); using the CPU solver (LAPACK) instead", G.device, exc)
        w, V = np.linalg.eigh(G.cpu().numpy())
    return w[::-1].copy(), V[:, ::-1].copy()
