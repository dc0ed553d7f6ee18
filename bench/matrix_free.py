"""Matrix-free top-k spectrum against the materialised path, on the same network and samples.

  materialised  J computed (jacobian_spectrum.jacobian.jacobian), then G = J J^T and eigh
  matrix_free   randomized SVD driven by JVP/VJP passes (jacobian_spectrum.matrix_free)
Prints seconds of each, the matrix-free cost in passes over the data, and the agreement of
the top-k singular values (max relative error against the materialised ones) as JSON.

  python bench/matrix_free.py [--samples 300] [--width 0.25] [--k 50] [--oversampling 50] [--iterations 6]
"""

import argparse
import json
import time

import numpy as np
import torch

from jacobian_spectrum.jacobian import jacobian
from jacobian_spectrum.matrix_free import JacobianOperator, randomized_svd
from jacobian_spectrum.models import ModelSpec, build_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--oversampling", type=int, default=50)
    ap.add_argument("--iterations", type=int, default=6)
    args = ap.parse_args()
    model = build_model(ModelSpec("resnet20", args.channels, args.size, 3, width=args.width), seed=0).double().eval()
    x = torch.randn(
        args.samples,
        args.channels,
        args.size,
        args.size,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(0),
    )
    t0 = time.perf_counter()
    J = jacobian(model, x).numpy()
    t_jac = time.perf_counter() - t0
    t0 = time.perf_counter()
    w = np.linalg.eigvalsh(J @ J.T)[::-1]
    t_spec = time.perf_counter() - t0
    s_full = np.sqrt(np.maximum(w, 0))
    op = JacobianOperator(model, x, batch_size=256)
    t0 = time.perf_counter()
    s = randomized_svd(op, args.k, args.oversampling, args.iterations).singular_values
    t_mf = time.perf_counter() - t0
    err = np.abs(s - s_full[: args.k]) / s_full[: args.k]
    print(
        json.dumps(
            {
                "rows": J.shape[0],
                "parameters": J.shape[1],
                "k": args.k,
                "seconds": {
                    "materialised_jacobian": t_jac,
                    "materialised_gram_eigh": t_spec,
                    "materialised_total": t_jac + t_spec,
                    "matrix_free": t_mf,
                },
                "matrix_free_passes": op.passes,
                "matrix_free_over_materialised_time": t_mf / (t_jac + t_spec),
                "max_relative_error_top_k": float(err.max()),
                "stored_bytes": {"materialised_J_float32": J.shape[0] * J.shape[1] * 4, "matrix_free": 0},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
