"""Figure 2 -- Section 2.1: population loss of gradient descent on the linear model.

A rank-r clean feature matrix ``Xbar = U Sigma V^T`` (n x d) with
uniformly random orthonormal ``U`` (n x r), ``V`` (d x r) and ``Sigma = I_r``; training
features ``X = Xbar + Z`` with ``Z`` i.i.d. N(0, sigma_x^2 / n); labels ``y = ybar + z`` with
``ybar = Xbar w*`` and ``z`` i.i.d. N(0, sigma_y^2 / n). Gradient descent (2.2)
``w <- w - eta X^T (X w - y)`` from ``w_0 = 0``. The population loss is the expected loss on
fresh test noise ``(Z', z')`` with the same law:

    E L(w)   = 1/2 ||Xbar w - ybar||^2 + 1/2 sigma_x^2 ||w||^2 + 1/2 sigma_y^2,
    E L_I(w) = E 1/2 ||Pi_I ((Xbar + Z') w - (ybar + z'))||^2
             = 1/2 ||Xbar w - ybar||^2 + r / (2n) (sigma_x^2 ||w||^2 + sigma_y^2),
    E L_N(w) = E 1/2 ||Pi_N ((Xbar + Z') w - (ybar + z'))||^2
             = 1/2 (1 - r/n) (sigma_x^2 ||w||^2 + sigma_y^2),

with ``Pi_I = U U^T`` and ``Pi_N = I - U U^T``. The paper prints E L_I without the 1/2 on the
first term (and the definitions E||Pi (...)||^2 without the 1/2 of the loss); we keep the
1/2 everywhere, which is the only choice for which E L_I + E L_N = E L as the paper states
(``Xbar w - ybar = U Sigma V^T (w - w*)`` lies in span(U), so Pi_N removes it, and
``Z' w - z'`` is isotropic N(0, (sigma_x^2 ||w||^2 + sigma_y^2)/n I_n), so a rank-r
projection keeps an r/n share of its energy).

Choice of w*: ``w* = V a`` with ``a`` uniform on the sphere of radius sqrt(r), so
``||ybar|| = ||w*|| = sqrt(r)`` and E L(w_0 = 0) = (r + sigma_y^2) / 2 = 5.5 for the paper's
r = 10, sigma_y = 1 -- the top of the paper's Figure 2a (whose axis spans ~5 to 5.4).

"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

# --------------------------------------------------------------------------------------
# Figure 2: the linear model of Section 2.1
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearModel:
    """One instance of the Section 2.1 problem (all float64 numpy arrays)."""

    Xbar: np.ndarray  # n x d, rank r
    X: np.ndarray  # n x d, Xbar + Z
    ybar: np.ndarray  # n, Xbar w*
    y: np.ndarray  # n, ybar + z
    U: np.ndarray  # n x r, information subspace
    V: np.ndarray  # d x r
    w_star: np.ndarray  # d, in Range(V)
    sigma_x: float
    sigma_y: float

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def d(self) -> int:
        return self.X.shape[1]

    @property
    def rank(self) -> int:
        return self.U.shape[1]


@dataclass(frozen=True)
class LinearLosses:
    """Population losses along gradient descent; index t = iteration t (w_0 = 0 included)."""

    iteration: np.ndarray  # 0..iterations
    loss: np.ndarray  # E L(w_t)
    loss_information: np.ndarray  # E L_I(w_t)
    loss_nuisance: np.ndarray  # E L_N(w_t)
    train_loss: np.ndarray  # L(w_t) = 1/2 ||X w_t - y||^2
    step_size: float
    n: int
    d: int
    rank: int


def random_orthonormal(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-uniform ``rows x cols`` matrix with orthonormal columns (QR with sign fix)."""
    if cols > rows:
        raise ValueError(f"cannot have {cols} orthonormal columns in R^{rows}")
    q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q * np.sign(np.diag(r))


def linear_model_instance(
    n: int, d: int, rank: int, sigma_x: float = 1.0, sigma_y: float = 1.0, seed: int = 0
) -> LinearModel:
    """Draw the Section 2.1 instance: Sigma = I_r, w* = V a with ||a|| = sqrt(r) (see module doc)."""
    if not 1 <= rank <= min(n, d):
        raise ValueError(f"rank must be in [1, min(n, d)] = [1, {min(n, d)}], got {rank}")
    rng = np.random.default_rng(seed)
    U = random_orthonormal(n, rank, rng)
    V = random_orthonormal(d, rank, rng)
    Xbar = U @ V.T  # Sigma = I_r
    a = rng.standard_normal(rank)
    a *= math.sqrt(rank) / np.linalg.norm(a)
    w_star = V @ a
    ybar = Xbar @ w_star
    X = Xbar + rng.standard_normal((n, d)) * (sigma_x / math.sqrt(n))
    y = ybar + rng.standard_normal(n) * (sigma_y / math.sqrt(n))
    return LinearModel(Xbar, X, ybar, y, U, V, w_star, float(sigma_x), float(sigma_y))


def population_losses(model: LinearModel, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form ``(E L, E L_I, E L_N)`` for weights ``w`` (shape (d,) or (T, d))."""
    w = np.atleast_2d(w)
    misfit = 0.5 * np.sum((w @ model.Xbar.T - model.ybar) ** 2, axis=1)
    noise = model.sigma_x**2 * np.sum(w**2, axis=1) + model.sigma_y**2
    share = model.rank / model.n
    info = misfit + 0.5 * share * noise
    nuis = 0.5 * (1.0 - share) * noise
    return misfit + 0.5 * noise, info, nuis


def monte_carlo_losses(
    model: LinearModel, w: np.ndarray, draws: int, seed: int = 0, batch: int = 100
) -> dict[str, tuple[float, float]]:
    """Monte-Carlo ``{name: (mean, standard error)}`` of L, L_I, L_N on fresh test noise.

    Each draw is a new ``Z'`` (n x d, N(0, sigma_x^2/n)) and ``z'`` (n, N(0, sigma_y^2/n));
    L = 1/2 ||(Xbar + Z') w - (ybar + z')||^2, L_I / L_N the same with Pi_I / Pi_N applied.
    """
    rng = np.random.default_rng(seed)
    n, d = model.n, model.d
    totals: dict[str, list[np.ndarray]] = {"loss": [], "loss_information": [], "loss_nuisance": []}
    done = 0
    while done < draws:
        b = min(batch, draws - done)
        Zp = rng.standard_normal((b, n, d)) * (model.sigma_x / math.sqrt(n))
        zp = rng.standard_normal((b, n)) * (model.sigma_y / math.sqrt(n))
        resid = (model.Xbar @ w - model.ybar)[None, :] + Zp @ w - zp  # b x n
        info_part = (resid @ model.U) @ model.U.T
        totals["loss"].append(0.5 * np.sum(resid**2, axis=1))
        totals["loss_information"].append(0.5 * np.sum(info_part**2, axis=1))
        totals["loss_nuisance"].append(0.5 * np.sum((resid - info_part) ** 2, axis=1))
        done += b
    out = {}
    for name, parts in totals.items():
        v = np.concatenate(parts)
        out[name] = (float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))))
    return out


def gradient_descent_losses(model: LinearModel, iterations: int, step_size: float | None = None) -> LinearLosses:
    """Run (2.2) from w_0 = 0 for ``iterations`` steps; ``step_size=None`` means 1 / ||X||^2."""
    X, y = model.X, model.y
    eta = 1.0 / np.linalg.norm(X, 2) ** 2 if step_size is None else float(step_size)
    if eta <= 0:
        raise ValueError(f"step_size must be positive, got {eta}")
    ws = np.zeros((iterations + 1, model.d))
    w = np.zeros(model.d)
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(iterations):
            w = w - eta * (X.T @ (X @ w - y))
            ws[t + 1] = w
            if not np.all(np.isfinite(w)):
                break
    if not np.all(np.isfinite(ws)):
        raise FloatingPointError(f"gradient descent diverged with step size {eta:g} (use <= 2/||X||^2)")
    loss, info, nuis = population_losses(model, ws)
    train = 0.5 * np.sum((ws @ X.T - y) ** 2, axis=1)
    return LinearLosses(np.arange(iterations + 1), loss, info, nuis, train, eta, model.n, model.d, model.rank)


def run_linear(settings: Mapping) -> LinearLosses:
    """Figure 2 from the ``theory.linear`` config section."""
    model = linear_model_instance(
        settings["n"], settings["d"], settings["rank"], settings["sigma_x"], settings["sigma_y"], settings["seed"]
    )
    return gradient_descent_losses(model, settings["iterations"], settings.get("step_size"))
