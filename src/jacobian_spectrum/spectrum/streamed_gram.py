"""The gram iteration: G = J J^T from J's rows streamed, J never stored, and its eigenpairs.

Where nK is small enough for G (nK x nK, float64) but J (nK x p) is too large to store, G gives
every singular value of J and its left singular vectors exactly, from (n / held + 1) / 2
passes' worth of rows when the rows of ``held`` samples fit at a time, plus one check pass.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..common.logs import logger
from ..jacobian.compute import batch_slices, jacobian_blocks
from .dense import eigh_descending
from .operator import PROGRESS_SECONDS, JacobianOperator, slab_product
from .store import spectrum_checks

GRAM_CHECKED = 10  # top vectors whose ||J^T u_i|| the gram iteration's check pass measures


def gram_formations(n: int, held: int) -> float:
    """Passes' worth of J's rows that :func:`streamed_gram` forms for n samples with ``held``
    samples held at a time: every held block once, then the rows after it (streamed)."""
    return sum(n - block.start for block in batch_slices(n, held)) / n


def streamed_gram(op: JacobianOperator, held: int) -> np.ndarray:
    """G = J J^T (nK x nK, float64), J never stored: the rows of ``held`` samples at a time are
    held, multiplied with themselves and with the rows of every later sample, formed
    ``op.batch_size`` samples at a time (as many as the held block, :func:`.budget.gram_plan`) and
    dropped. Products in float32 over slabs of columns, summed in float64 (:func:`slab_product`).
    Costs :func:`gram_formations` passes' worth of rows."""
    n, k, p = len(op.x), op.k, op.cols
    G = torch.zeros(n * k, n * k, dtype=torch.float64)
    held_rows = torch.empty(min(held, n) * k, p, dtype=op.x.dtype, device=op.x.device)
    t0 = last = time.perf_counter()
    formed = 0
    for A in batch_slices(n, held):
        a = slice(A.start * k, A.stop * k)
        RA = held_rows[: a.stop - a.start]
        for _ in jacobian_blocks(op.model, op.x[A], out=RA):
            pass
        G[a, a] = slab_product(RA, RA).cpu()
        formed += A.stop - A.start
        later = op.x[A.stop :]
        for B, RB in jacobian_blocks(op.model, later, op.batch_size) if len(later) else ():
            b = slice((A.stop + B.start) * k, (A.stop + B.stop) * k)
            G[a, b] = slab_product(RA, RB).cpu()
            G[b, a] = G[a, b].T
            formed += B.stop - B.start
            if time.perf_counter() - last > PROGRESS_SECONDS:
                last = time.perf_counter()
                logger.info(
                    "Gram matrix: rows of samples %d-%d against %d-%d; %.2f passes' worth of rows in %.0fs",
                    A.start,
                    A.stop,
                    A.stop + B.start,
                    A.stop + B.stop,
                    formed / n,
                    last - t0,
                )
    op.passes += int(round(formed / n))
    op.seconds += time.perf_counter() - t0
    logger.info(
        "Gram matrix of J (%d x %d): %.2f passes' worth of rows in %.1fs",
        n * k,
        p,
        formed / n,
        time.perf_counter() - t0,
    )
    return G.numpy()


def gram_spectrum(op: JacobianOperator, held: int, check: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Every singular value of J and its left singular vectors from the streamed Gram matrix,
    checked by one more pass: J^T U_t (t = ``check``) gives ||J^T u_i|| against s_i, which the
    Gram matrix did not make (as ``full``'s check of the stored J)."""
    G = streamed_gram(op, held)
    w, V = eigh_descending(G)
    s = np.sqrt(np.maximum(w, 0.0))
    t = min(check, len(s))
    JtU = op.rmatmat(V[:, :t])
    checks = spectrum_checks(s, V[:, :t], G @ V[:, :t], np.linalg.norm(JtU, axis=0))
    return s, V, checks
