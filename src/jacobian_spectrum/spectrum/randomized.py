"""Randomized SVD of the row operator's J, iterated in parameter space.

One pass over J's rows gives both products of a power iteration, (J Z, J^T J Z)
(:meth:`.operator.JacobianOperator.normal_matmat`). Two iterations (``spectrum.iteration``):

  block_krylov  Z_0 = orth(Omega); pass i gives (J Z_i, J^T J Z_i), and Z_{i+1} = J^T J Z_i
                orthonormalised against Z_0 .. Z_i; Rayleigh-Ritz on span(Z_0 .. Z_q) (Musco and
                Musco 2015): fewer passes for the same accuracy, 2 (q + 1) panels of p x l.
  subspace      Z_{i+1} = orth(J^T J Z_i); Rayleigh-Ritz on the last Z (Halko, Martinsson,
                Tropp 2011, Alg. 4.4, with q power iterations from q + 1 passes): 2 panels.

The panels are float32; J Z is summed in float64 where Rayleigh-Ritz reads it. Each pass's Ritz
values estimate the top ones, so how much the top r moved in the last pass says whether q
sufficed; the last pass's J^T J Z also gives each returned pair's residual
||J^T J v_i - s_i^2 v_i|| / s_i^2, with no extra pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..common.logs import logger
from .dense import eigh_descending
from .operator import JacobianOperator
from .store import spectrum_checks

ITERATIONS = ("block_krylov", "subspace")  # the randomized ones; "gram" forms G = J J^T instead
SLAB_BYTES = 64 << 20  # rows of a p x l panel cast to float64 at a time (orthonormalisation, residuals)
DROP = 1e-5  # a new Krylov direction shorter than this (relative) lies in the basis to float32 rounding


@dataclass
class TopK:
    """Randomized SVD's result: the top-k singular values and left vectors; the residuals of
    their pairs, ||J^T J v_i - s_i^2 v_i|| / s_i^2, and ||J^T u_i||, from the last pass; and
    the estimates of the top singular values after each pass (to see whether the passes
    sufficed)."""

    singular_values: np.ndarray
    U: np.ndarray
    estimates: list[np.ndarray] = field(default_factory=list)
    residuals: np.ndarray | None = None
    JtU_norms: np.ndarray | None = None

    def movement(self, r: int) -> float:
        """Largest relative change of the top-r singular values in the last pass (NaN with one
        pass)."""
        if len(self.estimates) < 2:
            return float("nan")
        a, b = self.estimates[-2][:r], self.estimates[-1][:r]
        return float(np.max(np.abs(b - a) / np.maximum(b, np.finfo(float).tiny)))

    def checks(self) -> dict:
        """The stored checks (:func:`.store.spectrum_checks`' keys) from the last pass: the
        residuals of the right singular vectors v_i (u_i = J v_i / s_i), the same pairs."""
        s, s1 = self.singular_values, self.singular_values[0] if self.singular_values[0] > 0 else 1.0
        return {
            "orthogonality_error": float(np.abs(self.U.T @ self.U - np.eye(self.U.shape[1])).max()),
            "eigen_residual": float(np.max(self.residuals * s**2) / s1**2),
            "norm_residual": float(np.abs(self.JtU_norms - s).max() / s1),
            "checked_vectors": len(s),
        }


def _row_slabs(p: int, cols: int) -> range:
    return range(0, p, max(1, SLAB_BYTES // (8 * max(cols, 1))))


def _orthonormal(W: np.ndarray, basis: list[np.ndarray], in_place: bool = False) -> np.ndarray | None:
    """W's columns orthonormalised against the blocks of ``basis`` and among themselves: block
    classical Gram-Schmidt and a Gram-matrix (eigh) normalisation, twice, in float64 on slabs
    of rows, stored in W's dtype. Directions that lie in the basis to within DROP of their
    length are dropped; None when none is left (the space is invariant)."""
    Z = W if in_place else W.copy()
    # the longest column's squared length, a slab at a time (a whole float64 copy is 2 panels)
    norms = sum(np.einsum("ij,ij->j", *(2 * [Z[a : a + n].astype(np.float64)])) for a, n in _slab_spans(Z))
    scale = float(np.max(norms)) if Z.size else 0.0
    for _ in range(2):
        for Q in basis:
            C = sum(Q[a : a + n].astype(np.float64).T @ Z[a : a + n] for a, n in _slab_spans(Q))
            for a, n in _slab_spans(Q):
                Z[a : a + n] -= (Q[a : a + n].astype(np.float64) @ C).astype(Z.dtype)
        G = sum(Z[a : a + n].astype(np.float64).T @ Z[a : a + n].astype(np.float64) for a, n in _slab_spans(Z))
        lam, V = np.linalg.eigh(G)
        keep = lam > DROP**2 * max(scale, np.finfo(float).tiny)
        if not keep.any():
            return None
        T = V[:, keep] / np.sqrt(lam[keep])
        out = np.empty((len(Z), int(keep.sum())), dtype=Z.dtype) if T.shape[1] != Z.shape[1] else Z
        for a, n in _slab_spans(Z):
            out[a : a + n] = Z[a : a + n].astype(np.float64) @ T
        Z, scale = out, 1.0
    return Z


def _slab_spans(A: np.ndarray, cols: int | None = None) -> list[tuple[int, int]]:
    """(start, length) of the slabs of A's rows that SLAB_BYTES holds in float64 at ``cols``
    columns (A's own by default)."""
    step = _row_slabs(len(A), A.shape[1] if cols is None else cols).step
    return [(a, min(step, len(A) - a)) for a in range(0, len(A), step)]


def _gram(Ys: list[np.ndarray], G: np.ndarray | None) -> np.ndarray:
    """[Y_1 .. Y_m]^T [Y_1 .. Y_m] from the previous m - 1 blocks' G and the new block, without
    joining the blocks (each is rows x l in float64: a copy would double their memory)."""
    new = [Y.T @ Ys[-1] for Y in Ys]
    L = sum(Y.shape[1] for Y in Ys)
    out = np.zeros((L, L))
    m = L - Ys[-1].shape[1]
    if G is not None:
        out[:m, :m] = G
    column = np.vstack(new)
    out[:, m:], out[m:, :] = column, column.T
    return out


def _ritz(Qs: list[np.ndarray], Ws: list[np.ndarray], Ys: list[np.ndarray], G: np.ndarray, k: int):
    """Rayleigh-Ritz of J on the span of the blocks Qs (J Qs = Ys, whose Gram matrix is G;
    J^T J Qs = Ws): the top k singular values and left vectors, the residuals
    ||J^T J v - s^2 v|| / s^2 and ||J^T u||. Q^T Q is measured (the blocks are float32,
    orthonormal to 1e-7) and corrected for. From Gram matrices: s_i^2 within eps s_1^2, ample
    for the top k, and no rows x L copy."""
    L = sum(q.shape[1] for q in Qs)
    M = np.zeros((L, L))
    offs = np.cumsum([0] + [q.shape[1] for q in Qs])
    spans = _slab_spans(Qs[0], L)  # slabs of all L columns in SLAB_BYTES
    for a, n in spans:
        Qa = np.hstack([q[a : a + n].astype(np.float64) for q in Qs])
        M += Qa.T @ Qa
    R = np.linalg.cholesky(M).T  # M = R^T R: Q R^-1 is orthonormal
    Rinv = np.linalg.solve(R, np.eye(L))
    lam, Vb = eigh_descending(Rinv.T @ G @ Rinv)  # (J Q R^-1)^T (J Q R^-1)
    k = min(k, L)
    s = np.sqrt(np.maximum(lam[:k], 0))
    V = Rinv @ Vb[:, :k]  # v_i = Q V[:, i], unit vectors
    with np.errstate(divide="ignore", invalid="ignore"):
        T = np.where(s > 0, V / s, 0)
    U = sum(Y @ T[o:e] for Y, o, e in zip(Ys, offs[:-1], offs[1:]))  # u_i = J v_i / s_i
    r2, n2 = np.zeros(k), np.zeros(k)
    for a, n in spans:
        QV = sum(q[a : a + n].astype(np.float64) @ V[o:e] for q, o, e in zip(Qs, offs[:-1], offs[1:]))
        AV = sum(w[a : a + n].astype(np.float64) @ V[o:e] for w, o, e in zip(Ws, offs[:-1], offs[1:]))
        r2 += ((AV - QV * s**2) ** 2).sum(axis=0)
        n2 += (AV**2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return s, U, np.sqrt(r2) / s**2, np.sqrt(n2) / s


def randomized_svd(
    op: JacobianOperator,
    k: int,
    oversampling: int = 100,
    power_iterations: int = 6,
    seed: int = 0,
    iteration: str = "block_krylov",
) -> TopK:
    """Top-k singular values and left singular vectors of the operator's J from
    ``power_iterations`` + 1 passes, each forming every row once and giving J Z and J^T J Z
    for a block Z of l = k + oversampling columns.

    block_krylov  Z_0 random, Z_{i+1} = J^T J Z_i orthonormalised against Z_0 .. Z_i; then
                  Rayleigh-Ritz on their whole span (Musco and Musco 2015), whose J Q the passes
                  gave: the same accuracy from fewer passes than subspace iteration. Holds
                  2 (q + 1) p x l panels.
    subspace      Z_{i+1} = orth(J^T J Z_i), Rayleigh-Ritz on the last Z only (Halko, Martinsson,
                  Tropp 2011, Alg. 4.4): 2 panels, for J's too wide for the Krylov basis.

    Panels are stored in the rows' dtype (float32: p x l x 4 bytes). J Z is summed in float64
    for Rayleigh-Ritz (every pass for block_krylov, the last for subspace) from float32
    products over slabs of SUM_SLAB columns; the rest in the rows' dtype. The residuals come
    from the last pass's products."""
    if iteration not in ITERATIONS:
        raise ValueError(f"iteration {iteration!r}; allowed: {', '.join(ITERATIONS)}")
    rows, cols = op.shape
    ell = min(k + oversampling, rows, cols)
    k = min(k, ell)
    dtype = np.float64 if op.x.dtype == torch.float64 else np.float32
    # drawn in the panels' dtype: a float64 draw to cast would double the largest panel for a moment
    Z = _orthonormal(np.random.default_rng(seed).standard_normal((cols, ell), dtype=dtype), [], in_place=True)
    krylov = iteration == "block_krylov"
    Qs, Ws, Ys, estimates, G = [], [], [], [], None
    for i in range(power_iterations + 1):
        last = i == power_iterations
        Y, W = op.normal_matmat(Z, precise=krylov or last)
        Qs, Ws, Ys = ([*Qs, Z], [*Ws, W], [*Ys, Y]) if krylov else ([Z], [W], [Y])
        G = _gram(Ys, G if krylov else None)
        # Ritz values with the blocks taken as orthonormal (they are, to float32 rounding)
        estimates.append(np.sqrt(np.maximum(np.linalg.eigvalsh(G)[::-1], 0)))
        logger.info(
            "pass %d/%d (%s, %d columns): s_1 = %.6g, s_%d = %.6g",
            i + 1,
            power_iterations + 1,
            iteration,
            sum(q.shape[1] for q in Qs),
            estimates[-1][0],
            k,
            estimates[-1][min(k, len(estimates[-1])) - 1],
        )
        if last:
            break
        # subspace: W becomes the next Z in place, and the last Z is let go before the next
        # pass allocates its J^T J Z: two panels at a time, not three
        Z = _orthonormal(W, Qs if krylov else [], in_place=not krylov)
        if not krylov and Z is not None:
            Qs, Ws, Ys, Y, W = [], [], [], None, None
        room = cols - sum(q.shape[1] for q in Qs) if krylov else cols
        if Z is None or room <= 0:
            logger.info("the space is invariant (or all of R^p) after %d passes: stopping", i + 1)
            break
        Z = Z[:, :room]
    s, U, residuals, norms = _ritz(Qs, Ws, Ys, G, k)
    estimates[-1] = s
    return TopK(s, U, estimates, residuals, norms)


def vector_residuals(op: JacobianOperator, s: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, dict]:
    """||J J^T u_i - s_i^2 u_i|| / s_i^2 for every column of U, and the spectrum's stored checks,
    by two more passes (J^T U, then J (J^T U)): an independent check of the last pass's
    residuals (:class:`TopK`), for tests and benches."""
    JtU = op.rmatmat(U)
    JJtU = op.matmat(JtU)
    with np.errstate(divide="ignore", invalid="ignore"):
        residuals = np.linalg.norm(JJtU - U * s**2, axis=0) / s**2
    return residuals, spectrum_checks(s, U, JJtU, np.linalg.norm(JtU, axis=0))
