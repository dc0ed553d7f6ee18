"""Beyond the paper: the cut-off r as a knob, the alignment over training, Theorem 3.2's terms.

Every quantity is a function of the cut-off r (I = span(u_1..u_r), N = I^perp) computed from
one stored spectrum (s, U with its stored columns) and a vector x in J's row order. With
c = U^T x:

  ||P_I x||^2 = sum_{i<=r} c_i^2,   ||P_N x||^2 = sum_{i>r} c_i^2 + ||x - U U^T x||^2,
  ||J_I^+ x||^2 = sum_{i<=r} c_i^2 / s_i^2,

so every r from 1 to the stored vectors costs one product U^T x (no new SVD). Theorem 3.2
(paper, Section 3) bounds the classification error by

  bias     2 ||P_N y|| / sqrt(n)
  variance 12 B sqrt(K / n) (||J_I^+ y|| + Gamma / alpha_0 ||P_N y||),   alpha_0 = s_r.

Where s_r is below the spectrum's numerical floor, 1/s_r is float64 noise: J_I^+ values and
the theorem's terms are NaN there. All reductions in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CUTOFF_COLUMNS = ("||P_I x||/||x||", "||P_N x||/||x||", "||J_I^+ x||/||x||")


def projection_curves(x: np.ndarray, U: np.ndarray, s: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """(R, 3): ||P_I x||, ||P_N x||, ||J_I^+ x||, each over ||x||, for r = 1..R (R = U's columns).

    ||J_I^+ x|| is NaN from the first r whose s_r is at or below ``floor``."""
    x = np.asarray(x, dtype=np.float64)
    norm2 = float(x @ x)
    if norm2 == 0:
        raise ValueError("cannot measure a zero vector (||x|| = 0)")
    c = U.T @ x
    c2 = c**2
    info2 = np.cumsum(c2)
    # ||P_N x||^2 as a sum of non-negative parts (the stored vectors after r, and what lies
    # outside all of them), not ||x||^2 - ||P_I x||^2, which cancels to rounding noise
    outside = float(np.sum((x - U @ c) ** 2))
    nuis2 = np.concatenate([np.cumsum(c2[::-1])[::-1][1:], [0.0]]) + outside
    sr = s[: U.shape[1]]
    with np.errstate(divide="ignore"):
        pinv2 = np.cumsum(np.where(sr > floor, c2 / np.where(sr > 0, sr, 1.0) ** 2, np.nan))
    return np.sqrt(np.stack([info2, nuis2, pinv2], axis=1) / norm2)


def energy_share(s: np.ndarray) -> np.ndarray:
    """Share of ||J||_F^2 = sum s_i^2 held by the top r singular values, r = 1..len(s)."""
    e = np.cumsum(np.asarray(s, dtype=np.float64) ** 2)
    return e / e[-1] if e[-1] > 0 else np.zeros_like(e)


def principal_cosines(Ua: np.ndarray, Ub: np.ndarray) -> np.ndarray:
    """Cosines of the principal angles between span(Ua) and span(Ub) (orthonormal columns),
    descending: 1 for a shared direction, 0 for an orthogonal one."""
    return np.clip(np.linalg.svd(Ua.T @ Ub, compute_uv=False), 0.0, 1.0)


def subspace_overlap(cosines: np.ndarray) -> float:
    """Mean squared cosine of the principal angles: ||Ua^T Ub||_F^2 / r, 1 for equal subspaces
    and r/nK on average for a random r-dimensional one."""
    return float(np.mean(np.asarray(cosines) ** 2))


@dataclass
class TheoremTerms:
    """Theorem 3.2's terms over the cut-off r = 1..R for one Jacobian and label vector y."""

    bias: np.ndarray  # 2 ||P_N y|| / sqrt(n)
    pinv: np.ndarray  # sqrt(K / n) ||J_I^+ y||
    nuisance: np.ndarray  # sqrt(K / n) ||P_N y|| / s_r

    def bound(self, factor: float, gamma: float) -> np.ndarray:
        """bias + factor (pinv + gamma nuisance): the paper's constants are factor = 12 B and
        gamma = Gamma; both 1 give the terms' shape alone."""
        return self.bias + factor * (self.pinv + gamma * self.nuisance)


def theorem_terms(y: np.ndarray, U: np.ndarray, s: np.ndarray, num_classes: int, floor: float = 0.0) -> TheoremTerms:
    """Theorem 3.2's bias and variance pieces for y (length nK, ||y|| = sqrt(n) for one-hot labels)."""
    y = np.asarray(y, dtype=np.float64)
    n = len(y) // num_classes
    norm = np.linalg.norm(y)
    curves = projection_curves(y, U, s, floor) * norm  # unnormalised
    nuis, pinv = curves[:, 1], curves[:, 2]
    sr = s[: U.shape[1]]
    scale = np.sqrt(num_classes / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        nuisance = np.where(sr > floor, scale * nuis / sr, np.nan)
    return TheoremTerms(bias=2 * nuis / np.sqrt(n), pinv=scale * pinv, nuisance=nuisance)


def best_cutoff(bound: np.ndarray) -> tuple[int, float]:
    """The r (1-based) that minimises a bound over r, and the bound there (NaN entries skipped)."""
    if not np.isfinite(bound).any():
        raise ValueError("the bound is NaN for every cut-off r: every singular value is below the floor")
    i = int(np.nanargmin(bound))
    return i + 1, float(bound[i])


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two equally long sequences (NaN below 3 points)."""
    from scipy.stats import spearmanr

    if len(a) < 3:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def no_memorisation_alignment(y: np.ndarray, clean: np.ndarray, num_classes: int) -> tuple[float, float]:
    """(||P_I y||/||y||, ||P_N y||^2/||y||^2) with I = span of the K*K vectors "output k on the
    samples of true class c": the alignment of the trained labels y (length nK, J's row order)
    if the network held exactly the true-class structure and none of the noise. Those vectors
    have disjoint supports, so P_I y replaces each sample's row of y by its true class's mean
    row. With a fraction w of each class moved uniformly to the other K - 1 classes,
    ||P_I y||/||y|| = sqrt((1 - w)^2 + w^2 / (K - 1))."""
    rows = np.asarray(y, dtype=np.float64).reshape(-1, num_classes)
    clean = np.asarray(clean)
    fitted = np.empty_like(rows)
    for c in np.unique(clean):
        fitted[clean == c] = rows[clean == c].mean(0)
    total = float(np.sum(rows**2))
    if total == 0:
        raise ValueError("cannot measure a zero vector (||y|| = 0)")
    # the nuisance part as its own sum of squares, not 1 - the information part (no cancellation)
    return float(np.sqrt(np.sum(fitted**2) / total)), float(np.sum((rows - fitted) ** 2) / total)


def sample_energies(x: np.ndarray, U: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's share of ||P_I x||^2 and of ||P_N x||^2 (two arrays (n,)), I = span(U): the
    squares of P_I x and x - P_I x summed over the sample's K rows. Summed over the samples they
    are ||P_I x||^2 and ||P_N x||^2 (a sample's two need not add up to ||x_i||^2: the projections
    are orthogonal over all rows, not within one sample's)."""
    x = np.asarray(x, dtype=np.float64)
    p = U @ (U.T @ x)
    info = (p**2).reshape(-1, num_classes).sum(axis=1)
    nuisance = ((x - p) ** 2).reshape(-1, num_classes).sum(axis=1)
    return info, nuisance


def sample_nuisance_over_r(x: np.ndarray, U: np.ndarray, num_classes: int, ranks: np.ndarray) -> np.ndarray:
    """(len(ranks), n): each sample's ||(P_N x)_i||^2 with I = the top r columns of U, for each r
    of ``ranks`` (1-based, at most U's columns), from one running sum of the projections."""
    x = np.asarray(x, dtype=np.float64)
    c = U.T @ x
    out = np.empty((len(ranks), len(x) // num_classes))
    p = np.zeros_like(x)
    done = 0
    for i, r in enumerate(ranks):
        p += U[:, done:r] @ c[done:r]
        done = r
        out[i] = ((x - p) ** 2).reshape(-1, num_classes).sum(axis=1)
    return out


def cutoff_grid(available: int, info_dim: int, points: int = 40) -> np.ndarray:
    """Cut-offs r from 1 to ``available``, log-spaced (``points`` of them at most), with info_dim."""
    grid = np.unique(np.round(np.logspace(0, np.log10(max(1, available)), points)).astype(int))
    return np.unique(np.concatenate([grid, [min(info_dim, available)]]))
