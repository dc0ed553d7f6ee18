"""The streamed (matrix-free) top-k spectrum against its bounds and baselines, on one J.

  rows          forming J's rows with the chunk kernel (jacobian_spectrum.jacobian.compute.jacobian_blocks,
                as a chunk job does), block by block into one reused buffer: the bound of one pass
  pass          one streamed product J X with l probe columns (the same blocks, multiplied)
  normal_pass   one pass of the power iteration: J X and J^T J X from the same rows
  streamed      the whole randomized SVD (q + 1 passes) and its residual pass
  jvp           the engine it replaced, applying J with one JVP per probe column
                (torch.func.jvp, vmapped over the l columns), one product J X, timed here
  materialised  J in memory, then G = J J^T and its top-k eigenpairs (spectrum.method: full's
                route; LAPACK's subset solver for the top k)

Prints the seconds of each and the ratios pass / rows and normal_pass / rows (1 = the pass
costs what forming the rows costs), jvp / pass (one product each, same J and l), the whole
randomized SVD with the JVP engine's 2q + 4 products against the streamed one (estimated from
the measured products) and streamed / materialised, with the
top-k agreement against the materialised spectrum, as JSON. Every timing is the best of
``--repeats`` rounds measured in this run; rows, pass and normal_pass take turns in each round.

  python bench/matrix_free.py [--samples 200] [--classes 10] [--width 0.25] [--size 32]
                              [--k 50] [--oversampling 100] [--iterations 6] [--threads 2]
                              [--skip-jvp]

The issue's verification at the large size (10 classes x 2,000 images, 20,000 rows):
  python bench/matrix_free.py --samples 2000 --repeats 1 --skip-jvp
"""

import argparse
import json
import time

import numpy as np
import scipy.linalg
import torch
from timing import best_of_interleaved
from torch.func import functional_call, jvp, vmap

from jacobian_spectrum.jacobian.compute import batch_slices, jacobian, jacobian_blocks, split_params
from jacobian_spectrum.spectrum.dense import rank_update, symmetrize_upper
from jacobian_spectrum.spectrum.matrix_free import JacobianOperator, randomized_svd, vector_residuals
from jacobian_spectrum.train.models import ModelSpec, build_model


def jvp_product(model: torch.nn.Module, x: torch.Tensor, X: torch.Tensor, batch: int) -> torch.Tensor:
    """J X by one JVP per column of X (the engine matrix_free used before it streamed rows)."""
    params, buffers = split_params(model)
    names, sizes = list(params), [p.numel() for p in params.values()]

    def unflatten(v: torch.Tensor) -> dict:
        out, off = {}, 0
        for n, s in zip(names, sizes):
            out[n] = v[off : off + s].reshape(params[n].shape)
            off += s
        return out

    blocks = []
    for b in batch_slices(len(x), batch):
        f = lambda p, xb=x[b]: functional_call(model, (p, buffers), (xb,))  # noqa: E731
        one = lambda col, f=f: jvp(f, (params,), (unflatten(col),))[1].reshape(-1)  # noqa: E731
        blocks.append(vmap(one, in_dims=1, out_dims=1)(X))
    return torch.cat(blocks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--oversampling", type=int, default=100)
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--batch", type=int, default=64, help="samples per block of rows")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-jvp", action="store_true", help="leave out the JVP engine (the large verification)")
    ap.add_argument(
        "--jvp-batch", type=int, default=4, help="samples per vmapped JVP batch (memory: l tangents x activations)"
    )
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    spec = ModelSpec("resnet20", a.channels, a.size, a.classes, width=a.width)
    model = build_model(spec, seed=0).eval()
    x = torch.randn(a.samples, a.channels, a.size, a.size, generator=torch.Generator().manual_seed(0))
    op = JacobianOperator(model, x, batch_size=a.batch)
    rows, cols = op.shape
    ell = a.k + a.oversampling
    X = np.random.default_rng(0).standard_normal((cols, ell))
    # rows, one pass and one power-iteration pass take turns in each round (with a warm-up), so
    # that load from other processes on a shared machine hits all three alike
    timings = {
        "rows": lambda: [None for _ in jacobian_blocks(model, x, a.batch)],
        "pass": lambda: op.matmat(X),
        "normal_pass": lambda: op.normal_matmat(X),
    }
    Xt = torch.from_numpy(X).float()
    if not a.skip_jvp:
        timings["jvp_product"] = lambda: jvp_product(model, x, Xt, a.jvp_batch)
    t = best_of_interleaved(timings, a.repeats, torch.device("cpu"))
    t_rows, t_pass, t_normal = t["rows"], t["pass"], t["normal_pass"]
    t_jvp = t.get("jvp_product", float("nan"))
    op.passes = 0
    t0 = time.perf_counter()
    top = randomized_svd(op, a.k, a.oversampling, a.iterations)
    residuals, _ = vector_residuals(op, top.singular_values, top.U, top.JtU)
    t_streamed = time.perf_counter() - t0
    t0 = time.perf_counter()
    J = jacobian(model, x).double().numpy()
    # the Gram step's own update (J @ J.T would take OpenBLAS's threaded dsyrk, which segfaults at
    # these sizes: spectrum.dense.SYRK_MAX_ROWS)
    G = symmetrize_upper(rank_update(np.zeros((rows, rows), order="F"), J))
    del J
    # the top k of the dense spectrum (LAPACK's subset solver: the whole eigh of a 20,000-row
    # Gram matrix takes minutes more and gives the same top k)
    w, V = scipy.linalg.eigh(G, subset_by_index=[rows - a.k, rows - 1], overwrite_a=True)
    w, V = w[::-1], V[:, ::-1]
    t_materialised = time.perf_counter() - t0
    s_ref = np.sqrt(np.maximum(w, 0))
    print(
        json.dumps(
            {
                "rows": rows,
                "parameters": cols,
                "k": a.k,
                "probe_columns": ell,
                "power_iterations": a.iterations,
                "passes": op.passes,
                "seconds": {
                    "rows": t_rows,
                    "pass": t_pass,
                    "normal_pass": t_normal,
                    "jvp_product": t_jvp,
                    "streamed": t_streamed,
                    "materialised": t_materialised,
                },
                "pass_over_rows": t_pass / t_rows,
                "normal_pass_over_rows": t_normal / t_rows,
                "jvp_product_over_pass": t_jvp / t_pass,
                # the whole method from the interleaved passes: q + 1 power-iteration passes and one
                # for the residuals; the JVP engine made 2q + 2 products and 2 for the residuals
                "streamed_from_passes": (a.iterations + 1) * t_normal + t_pass,
                "jvp_engine_over_streamed": (2 * a.iterations + 4) * t_jvp / ((a.iterations + 1) * t_normal + t_pass),
                "streamed_over_materialised": t_streamed / t_materialised,
                "max_relative_error_top_k": float(np.max(np.abs(top.singular_values - s_ref) / s_ref)),
                "subspace_overlap_top_k": float(np.linalg.norm(top.U.T @ V[:, : a.k]) ** 2 / a.k),
                "max_vector_residual_top_k": float(residuals.max()),
                "movement_top_k": top.movement(a.k),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
