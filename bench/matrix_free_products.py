"""The products of the streamed spectrum's passes against forming the rows they read.

  rows            forming J's rows of the samples, block by block (the pass's own kernel batches)
  jty_fresh_casts J^T Y as the check pass of the gram iteration computed it before: the rows cast
                  to float64 a few at a time (PRODUCT_BYTES), each few rows' p x l product a fresh
                  array added into the sum
  jty             J^T Y now (matrix_free._jty): float64 slabs of J's columns in reused buffers,
                  (J^T Y)^T = Y^T J read as J lies
  jx_float64      J X as a block-Krylov pass computed it before: R and X cast to float64 a slab
                  of R's columns at a time, float64 products
  jx              J X now (matrix_free._jx, precise): float32 products over slabs of SUM_SLAB
                  columns, summed in float64 (matrix_free.slab_product)

Y has ``--columns`` columns (the gram iteration's check: 10), X ``--panel`` (a block-Krylov panel).
Prints JSON: the seconds of each (best of ``--repeats`` interleaved rounds), each over rows,
jty_fresh_casts / jty and jx_float64 / jx, with the largest relative difference of each pair.

  python bench/matrix_free_products.py [--model mlp] [--width 1] [--samples 60] [--classes 3]
                                       [--columns 10] [--panel 100] [--repeats 2] [--threads 1]
"""

import argparse
import json

import numpy as np
import torch
from timing import best_of_interleaved

from jacobian_spectrum.spectrum import matrix_free as M
from jacobian_spectrum.train.models import build_model, count_parameters, model_spec


def jty_fresh_casts(model, x, Y, batch_size):
    """The former J^T Y: every PRODUCT_BYTES of rows cast afresh, each part a new p x l array."""
    Yt, out = torch.as_tensor(Y), None
    for off, R in M._products(model, x, batch_size, torch.float64):
        part = R.T @ Yt[off : off + len(R)].to(R.dtype)
        out = part.double() if out is None else out.add_(part)
    return out.numpy()


def jx_float64(model, x, X, batch_size):
    """The former precise J X: float64 products of R and X cast a slab of R's columns at a time
    (what matrix_free._times still does for a float64 X; X's float32 values, so the same panel)."""
    Xt, slabs = torch.as_tensor(X).double(), M.Float64Slabs()
    parts = [M._times(R, Xt, True, slabs) for _, R in M._products(model, x, batch_size, x.dtype)]
    return torch.cat(parts).numpy()


def rows(model, x, batch_size):
    for _ in M._products(model, x, batch_size, x.dtype):
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="mlp", help="a built-in model name (mlp: 3072-512-512-K)")
    ap.add_argument("--width", type=float, default=1.0, help="resnet20's width")
    ap.add_argument("--samples", type=int, default=60)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--columns", type=int, default=10)
    ap.add_argument("--panel", type=int, default=100)
    ap.add_argument("--batch", type=int, default=30, help="samples per kernel batch")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = build_model(
        model_spec({"name": a.model, "hidden": 512, "depth": 2, "width": a.width}, 3, 32, a.classes)
    ).eval()
    x = torch.randn(a.samples, 3, 32, 32)
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((a.samples * a.classes, a.columns))
    p = count_parameters(model)
    X = rng.standard_normal((p, a.panel)).astype(np.float32)
    out = {}
    fns = {
        "rows": lambda: rows(model, x, a.batch),
        "jty_fresh_casts": lambda: out.__setitem__("old", jty_fresh_casts(model, x, Y, a.batch)),
        "jty": lambda: out.__setitem__("new", M._jty(model, x, Y, a.batch)),
        "jx_float64": lambda: out.__setitem__("jx_old", jx_float64(model, x, X, a.batch)),
        "jx": lambda: out.__setitem__("jx_new", M._jx(model, x, X, a.batch)),
    }
    best = best_of_interleaved(fns, a.repeats, torch.device("cpu"))

    def diff(old, new):
        return float(np.abs(out[old] - out[new]).max() / np.abs(out[old]).max())

    result = {
        "model": a.model,
        "parameters": p,
        "rows": a.samples * a.classes,
        "seconds": best,
        "over_rows": {k: v / best["rows"] for k, v in best.items() if k != "rows"},
        "jty_fresh_casts_over_jty": best["jty_fresh_casts"] / best["jty"],
        "max_relative_difference_jty": diff("old", "new"),
        "jx_float64_over_jx": best["jx_float64"] / best["jx"],
        "max_relative_difference_jx": diff("jx_old", "jx_new"),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
