"""The measurement from Python, without the workflow: on a model and tensors you already have,
J in chunks, its spectrum, and how a vector splits between the information space I (the top-r
left singular vectors of J) and the nuisance space N = I^perp (docs/python.md).

    space = information_space(model, x, rank=50)        # J formed chunk by chunk, Gram + eigh
    # batch-norm statistics recomputed on x (normalisation="stored": as the model holds them);
    # the model is left as given
    space = information_space(model, x, rank=50, streamed=True)   # top-k, J never stored
    space.fractions(label_vector(labels, K))             # ||P_I y||/||y||, ||P_N y||/||y||, ||J_I^+ y||/||y||

The workflow's stages use the same functions (jacobian.jacobian_blocks, spectrum.eigh_descending,
randomized.randomized_svd, analysis.projection_curves).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .analysis.quantities import projection_curves, sample_energies
from .common.logs import logger
from .data.corruption import one_hot
from .jacobian.compute import jacobian, outputs
from .jacobian.degeneracy import degeneracy, handle_degeneracy, numerical_rank, output_spread
from .spectrum.dense import eigh_descending
from .spectrum.operator import JacobianOperator
from .spectrum.randomized import randomized_svd
from .spectrum.store import GRAM_FLOOR
from .train.normalisation import evaluation_statistics


@dataclass
class InformationSpace:
    """I = span(U[:, :rank]) of J = U diag(s) V^T, in J's row order (row = i*K + k)."""

    singular_values: np.ndarray  # all nK (dense) or the top k (streamed), descending
    U: np.ndarray  # (nK, computed) left singular vectors
    rank: int  # r, the dimension of I
    num_classes: int = 1  # K: rows per sample

    def project(self, v: np.ndarray) -> np.ndarray:
        """P_I v."""
        Ur = self.U[:, : self.rank]
        return Ur @ (Ur.T @ np.asarray(v, dtype=np.float64))

    def fractions(self, v: np.ndarray) -> tuple[float, float, float]:
        """(||P_I v||, ||P_N v||, ||J_I^+ v||), each over ||v||: one row of the paper's Tables 1-3."""
        curves = projection_curves(v, self.U[:, : self.rank], self.singular_values)
        return tuple(float(c) for c in curves[-1])

    def sample_energies(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each sample's share of ||P_I v||^2 and ||P_N v||^2 (two arrays (n,), its K rows summed):
        with v the labels, a sample whose label does not fit the rest has a large share on N."""
        return sample_energies(v, self.U[:, : self.rank], self.num_classes)

    def fractions_over_rank(self, v: np.ndarray) -> np.ndarray:
        """(R, 3): the same for every cut-off r = 1..R up to the computed vectors."""
        return projection_curves(v, self.U, self.singular_values)


def label_vector(labels: np.ndarray | torch.Tensor, num_classes: int) -> np.ndarray:
    """One-hot labels (n,) as a vector in J's row order (nK,)."""
    return one_hot(np.asarray(labels), num_classes).reshape(-1)


def jacobian_matrix(model: torch.nn.Module, x: torch.Tensor, chunk: int | None = None) -> np.ndarray:
    """J (nK x p) in float32, formed ``chunk`` samples at a time into one array (eval mode)."""
    return jacobian(model, x, chunk).detach().cpu().numpy()


def information_space(
    model: torch.nn.Module,
    x: torch.Tensor,
    rank: int = 50,
    streamed: bool = False,
    chunk: int | None = None,
    topk: int | None = None,
    oversampling: int = 100,
    power_iterations: int = 6,
    normalisation: str = "recomputed",
    allow_degenerate: bool = False,
) -> InformationSpace:
    """The information space of J(model) on the samples x, in eval mode. Dense: J chunk by chunk,
    G = J J^T in float64, eigh (every singular value). Streamed: randomized SVD whose passes form
    J's rows ``chunk`` samples at a time and drop them (the top ``topk``, default ``rank``;
    oversampling and power iterations as the workflow's defaults, measured to give the top 50
    to 1e-6).

    ``normalisation``: the batch-norm statistics J is taken with, as model.normalisation in the
    workflow: "recomputed" (each layer's mean and variance over ``x``, the network as in
    training; :mod:`.train.normalisation`) or "stored" (the running statistics the model holds).
    The model is left as it was given: its weights, running statistics and train/eval mode.
    A degenerate network (outputs that do not vary across the samples, or J of numerical rank at
    most K; :mod:`.jacobian.degeneracy`) raises DegenerateNetworkError, unless
    ``allow_degenerate``."""
    modes = {m: m.training for m in model.modules()}
    try:
        with evaluation_statistics(model, x, normalisation):
            model.eval()
            spread = output_spread(outputs(model, x).double().cpu().numpy())
            handle_degeneracy(degeneracy(spread), "information_space", allow_degenerate, logger)
            if streamed:
                top = randomized_svd(JacobianOperator(model, x, chunk), topk or rank, oversampling, power_iterations)
                s, U = top.singular_values, top.U
                floor = 0.0
            else:
                J = jacobian_matrix(model, x, chunk).astype(np.float64)
                w, U = eigh_descending(J @ J.T)
                s = np.sqrt(np.maximum(w, 0.0))
                floor = GRAM_FLOOR * float(s[0])
    finally:
        for m, training in modes.items():
            m.training = training
    floor = max(floor, float(np.finfo(np.float32).eps) * float(s[0]))  # J's rows are float32
    k = U.shape[0] // len(x)
    description = degeneracy(rank=numerical_rank(s, floor), num_classes=k, num_samples=len(x), computed=len(s))
    handle_degeneracy(description, "information_space", allow_degenerate, logger)
    if rank > U.shape[1]:
        raise ValueError(f"rank {rank} exceeds the {U.shape[1]} computed singular vectors")
    return InformationSpace(s, U, rank, k)
