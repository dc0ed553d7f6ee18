"""How many probe columns and power iterations the streamed top-k spectrum needs.

Computes a 10-class J small enough for Gram + eigh, then runs the streamed randomized SVD
(jacobian_spectrum.spectrum.matrix_free) for each oversampling p and power-iteration count q, and
prints the top-k singular values' largest relative error against eigh, the subspace overlap
(mean squared cosine of the principal angles) and how much the last power iteration moved the
top k (what a run without a reference can see). Passes = q + 1. ``--iteration`` picks
matrix_free's iteration (subspace: the numbers in docs/benchmarks.md; block_krylov: fewer
passes for the same error). Not a timing benchmark.

  python bench/topk_parameters.py [--samples 200] [--classes 10] [--width 0.125] [--size 8] [--k 50]
                                  [--iteration subspace]
"""

import argparse

import numpy as np
import torch

from jacobian_spectrum.jacobian.compute import jacobian
from jacobian_spectrum.spectrum.dense import eigh_descending
from jacobian_spectrum.spectrum.matrix_free import JacobianOperator, randomized_svd
from jacobian_spectrum.train.models import ModelSpec, build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--width", type=float, default=0.125)
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--oversampling", type=int, nargs="+", default=[30, 50, 100])
    ap.add_argument("--iterations", type=int, nargs="+", default=[2, 4, 6, 8])
    ap.add_argument("--iteration", choices=["subspace", "block_krylov"], default="subspace")
    a = ap.parse_args()
    torch.set_num_threads(1)
    model = build_model(ModelSpec("resnet20", 3, a.size, a.classes, width=a.width), seed=0).eval()
    x = torch.randn(a.samples, 3, a.size, a.size, generator=torch.Generator().manual_seed(0))
    J = jacobian(model, x).double().numpy()
    w, V = eigh_descending(J @ J.T)
    s_ref = np.sqrt(np.maximum(w, 0))
    print(f"J: {J.shape[0]} x {J.shape[1]}; decay s_k / s_(k+p):", end="")
    print(", ".join(f" p={p}: {s_ref[a.k - 1] / s_ref[a.k + p - 1]:.3f}" for p in a.oversampling))
    op = JacobianOperator(model, x, batch_size=100)
    for p in a.oversampling:
        for q in a.iterations:
            op.passes = 0
            top = randomized_svd(op, a.k, p, q, iteration=a.iteration)
            err = np.abs(top.singular_values - s_ref[: a.k]).max() / s_ref[a.k - 1]
            overlap = np.linalg.norm(top.U.T @ V[:, : a.k]) ** 2 / a.k
            print(
                f"p = {p:3d}  q = {q}  passes {op.passes:2d}  max relative error {err:.1e}  "
                f"overlap {overlap:.6f}  last iteration moved the top {a.k} by {top.movement(a.k):.1e}"
            )


if __name__ == "__main__":
    main()
