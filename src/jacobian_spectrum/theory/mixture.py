"""Figure 4 -- Definition 3.4 and Section 3.3: the Gaussian mixture and the one-hidden-layer network.

K classes of C clusters each, unit-norm centres
``mu`` at pairwise distance >= min_distance (rejection sampling), points N(mu, sigma^2/d I_d),
label = one-hot class. By default cluster membership is *balanced* (each of the KC clusters
gets n // (KC) points, the remainder goes to randomly chosen distinct clusters) instead of
the paper's i.i.d. uniform membership: it has the same mean count n/(KC) and makes the
sqrt(n) growth of the top singular values exact at sigma = 0 (``balanced=False`` gives the
paper's i.i.d. draw).

The network is :class:`jacobian_spectrum.train.models.OneHiddenLayerNet` (f(x) = V phi(W x),
W0 ~ N(0, 1), V ~ Rademacher * nu / sqrt(k K)). Its Jacobian with respect to W is stored
*sample-major*: row ``i*K + l`` is d f_l(x_i) / d vec(W) with vec(W) row-major
(column ``s*d + j`` is W[s, j]), i.e. row = (V[l, :] * phi'(W x_i)) kron x_i.

Expected Jacobian. For rows (i, l), (j, m):
``(J J^T) = sum_s V[l,s] V[m,s] phi'(w_s.x_i) phi'(w_s.x_j) x_i.x_j``. With E V[l,s] V[m,s]
= delta_lm nu^2 / (k K) and the k rows w_s i.i.d. N(0, I_d), summing k identical
expectations gives

    E[J J^T] = (nu^2 / K) * (Sigma_1(X) kron I_K)        (sample-major ordering),
    Sigma_1(X) = E_w[(phi'(X w) phi'(X w)^T) ⊙ (X X^T)],

i.e. (nu^2 / K) Sigma(X) with the paper's Sigma(X) = I_K kron Sigma_1(X) up to the row
permutation class-major <-> sample-major. The paper's sentence "V with variance nu^2/K gives
E[J J^T] = nu^2 Sigma(X)" does not match its own Theorem 3.2 scaling nu/sqrt(kK); with the
variance nu^2/(kK) actually used the factor is nu^2/K (test_theory checks this numerically).
The "expected Jacobian" spectrum plotted beside the sampled one is therefore
sqrt(eig((nu^2/K) Sigma(X))) (each eigenvalue of Sigma_1 repeated K times), normalised by
the same sqrt(KC/n) as the sampled spectrum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.corruption import one_hot

# --------------------------------------------------------------------------------------
# Figure 4: the Gaussian mixture of Definition 3.4 and the one-hidden-layer net
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mixture:
    X: np.ndarray  # n x d inputs
    Y: np.ndarray  # n x K one-hot labels
    classes: np.ndarray  # n, class index l
    clusters: np.ndarray  # n, global cluster index l * C + c
    centres: np.ndarray  # KC x d, row l * C + c is mu_{l, c}


def cluster_centres(
    num_centres: int, dim: int, min_distance: float, rng: np.random.Generator, max_tries: int = 10_000
) -> np.ndarray:
    """``num_centres`` uniform unit vectors in R^dim, pairwise distance >= min_distance.

    Sequential rejection sampling; raises ValueError when ``max_tries`` draws in a row fail
    to place a centre (the separation is then impossible or very unlikely).
    """
    if min_distance > 2.0:
        raise ValueError(f"unit vectors are at most 2 apart; min_distance={min_distance} is impossible")
    centres: list[np.ndarray] = []
    while len(centres) < num_centres:
        for _ in range(max_tries):
            v = rng.standard_normal(dim)
            v /= np.linalg.norm(v)
            if all(np.linalg.norm(v - c) >= min_distance for c in centres):
                centres.append(v)
                break
        else:
            raise ValueError(
                f"could not place centre {len(centres) + 1} of {num_centres} unit vectors in R^{dim} at "
                f"pairwise distance >= {min_distance} after {max_tries} tries; lower min_distance, "
                f"raise dim or use fewer clusters"
            )
    return np.stack(centres)


def gaussian_mixture(
    n: int,
    num_classes: int,
    clusters_per_class: int,
    dim: int,
    sigma: float,
    min_distance: float,
    rng: np.random.Generator,
    centres: np.ndarray | None = None,
    balanced: bool = True,
) -> Mixture:
    """n points of Definition 3.4; pass ``centres`` to reuse the cluster centres of another draw."""
    KC = num_classes * clusters_per_class
    if centres is None:
        centres = cluster_centres(KC, dim, min_distance, rng)
    if centres.shape != (KC, dim):
        raise ValueError(f"centres must be {KC} x {dim}, got {centres.shape}")
    if balanced:
        clusters = np.repeat(np.arange(KC), n // KC)
        clusters = np.concatenate([clusters, rng.choice(KC, n % KC, replace=False)])
        clusters = rng.permutation(clusters)
    else:
        clusters = rng.integers(0, KC, n)
    classes = clusters // clusters_per_class
    X = centres[clusters] + rng.standard_normal((n, dim)) * (sigma / math.sqrt(dim))
    Y = one_hot(classes, num_classes)
    return Mixture(X, Y, classes, clusters, centres)


def activation_derivative(activation: str, z: np.ndarray) -> np.ndarray:
    """phi'(z): sigmoid for softplus, the step 1{z > 0} for relu."""
    if activation == "softplus":
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # numerically stable sigmoid
    if activation == "relu":
        return (z > 0).astype(z.dtype)
    raise ValueError(f"unknown activation {activation!r}")


def make_network(d: int, hidden: int, num_classes: int, activation: str, output_scale: float = 1.0, seed: int = 0):
    """A float64 :class:`OneHiddenLayerNet` with W0 ~ N(0,1), V ~ Rademacher nu/sqrt(kK) (seeded)."""
    from ..train.models import OneHiddenLayerNet

    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        net = OneHiddenLayerNet(d, hidden, num_classes, activation, output_scale).double()
    finally:
        torch.random.set_rng_state(gen_state)
    return net


def one_hidden_jacobian(model: torch.nn.Module, X: np.ndarray | torch.Tensor) -> np.ndarray:
    """J(W) of ``model`` at its current W for inputs X: (n K) x (k d), sample-major rows.

    Row ``i*K + l`` = d f_l(x_i) / d vec(W), column ``s*d + j`` = W[s, j]: the workflow's
    Jacobian (:func:`jacobian_spectrum.jacobian.compute.jacobian`, torch.func) in the model's dtype.
    """
    from ..jacobian.compute import jacobian

    W = model.W.detach()
    X = torch.as_tensor(np.asarray(X), dtype=W.dtype)
    return jacobian(model, X).detach().numpy()


def closed_form_jacobian(model: torch.nn.Module, X: np.ndarray) -> np.ndarray:
    """Rows (V[l] * phi'(W x_i)) kron x_i in the ordering of :func:`one_hidden_jacobian`."""
    W = model.W.detach().double().numpy()
    V = model.V.detach().double().numpy()
    D = activation_derivative(model.activation, X @ W.T)  # n x k
    rows = (D[:, None, :] * V[None, :, :])[:, :, :, None] * X[:, None, None, :]  # n x K x k x d
    return rows.reshape(X.shape[0] * V.shape[0], -1)


def kernel_single(
    X: np.ndarray, activation: str, samples: int, rng: np.random.Generator, batch: int = 4096
) -> np.ndarray:
    """Monte-Carlo Sigma_1(X) = E_w[(phi'(Xw) phi'(Xw)^T) ⊙ (X X^T)], w ~ N(0, I_d) (n x n)."""
    n, d = X.shape
    acc = np.zeros((n, n))
    done = 0
    while done < samples:
        b = min(batch, samples - done)
        D = activation_derivative(activation, X @ rng.standard_normal((d, b)))  # n x b
        acc += D @ D.T
        done += b
    return (acc / samples) * (X @ X.T)


def multiclass_kernel(
    X: np.ndarray, num_classes: int, activation: str, samples: int, rng: np.random.Generator, ordering: str = "class"
) -> np.ndarray:
    """Sigma(X) of Definition 3.1 (nK x nK): I_K kron Sigma_1 ("class"-major, the paper's
    ordering) or Sigma_1 kron I_K ("sample"-major, the ordering of our Jacobians)."""
    S1 = kernel_single(X, activation, samples, rng)
    eye = np.eye(num_classes)
    if ordering == "class":
        return np.kron(eye, S1)
    if ordering == "sample":
        return np.kron(S1, eye)
    raise ValueError(f"ordering must be 'class' or 'sample', got {ordering!r}")


def expected_jacobian_singular_values(kernel1: np.ndarray, num_classes: int, output_scale: float = 1.0) -> np.ndarray:
    """Singular values of a square root of E[J J^T] = (nu^2/K) Sigma(X), descending (length nK)."""
    ev = np.linalg.eigvalsh(kernel1) * (output_scale**2 / num_classes)
    sv = np.sqrt(np.clip(ev, 0.0, None))
    return np.sort(np.repeat(sv, num_classes))[::-1]


def count_before_gap(sv: np.ndarray, rel_floor: float = 1e-10) -> int:
    """Index of the largest ratio s_i / s_{i+1} among singular values above rel_floor * s_1:
    the number of 'large' singular values before the biggest gap."""
    s = sv[sv > rel_floor * sv[0]]
    if len(s) < 2:
        return len(s)
    return int(np.argmax(s[:-1] / s[1:]) + 1)


@dataclass
class MixtureSpectra:
    """Sampled and expected Jacobian spectra at W0 for each sample size (Figure 4)."""

    num_classes: int
    clusters_per_class: int
    n: list[int]
    singular_values: list[np.ndarray]  # unnormalised, descending, length n K
    expected_singular_values: list[np.ndarray]  # sqrt eig((nu^2/K) Sigma(X)), length n K
    output_scale: float = 1.0
    large_before_gap: list[int] = field(default_factory=list)

    def normalisation(self, n: int) -> float:
        return math.sqrt(self.num_classes * self.clusters_per_class / n)


def mixture_spectra(settings: Mapping, output_scale: float = 1.0, balanced: bool = True) -> MixtureSpectra:
    """Figure 4 from the ``theory.mixture`` config section.

    One set of cluster centres and one network W0 (seeded by ``seed``) are shared by every
    sample size n = n_over_C * C; each n gets its own fresh mixture draw.
    """
    K, C = settings["num_classes"], settings["clusters_per_class"]
    dim, act = settings["dim"], settings["activation"]
    rng = np.random.default_rng(settings["seed"])
    centres = cluster_centres(K * C, dim, settings["min_distance"], rng)
    net = make_network(dim, settings["hidden"], K, act, output_scale, seed=settings["seed"])
    result = MixtureSpectra(K, C, [], [], [], output_scale)
    for m in settings["n_over_C"]:
        n = int(m) * C
        data = gaussian_mixture(n, K, C, dim, settings["sigma"], settings["min_distance"], rng, centres, balanced)
        J = one_hidden_jacobian(net, data.X)
        sv = np.linalg.svd(J, compute_uv=False)
        S1 = kernel_single(data.X, act, settings["kernel_samples"], rng)
        result.n.append(n)
        result.singular_values.append(sv)
        result.expected_singular_values.append(expected_jacobian_singular_values(S1, K, output_scale))
        result.large_before_gap.append(count_before_gap(sv))
    return result
