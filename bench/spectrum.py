"""Spectrum throughput, in one run on the same matrix:

  gram_hdf5     G = J J^T from an HDF5 file through jacobian_spectrum.spectrum.dense.gram
  gram_memory   the same product with J already in memory (float64 BLAS: J @ J.T)
  eigh          the float64 symmetric eigensolver on G
  topk          randomized SVD of the stored J (dask svd_compressed), and its accuracy
                (max relative error of the top-r singular values against eigh's)
Prints one JSON record: seconds, the ratio gram_memory / gram_hdf5 (1.0 = no cost for reading
from disk) and topk accuracy.

  python bench/spectrum.py [--rows 3000] [--cols 60000] [--rank 60] [--threads 2]

Smallest: --rows 200 --cols 3000 --rank 10 --info-dim 5
"""

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from timing import emit

from jacobian_spectrum.common.h5io import write_provenance
from jacobian_spectrum.spectrum.dense import eigh_descending, gram, topk_spectrum


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--cols", type=int, default=60000)
    ap.add_argument("--rank", type=int, default=60, help="size of the spectrum's large part (a Jacobian-like gap)")
    ap.add_argument("--info-dim", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget-mb", type=float, default=1000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "J.h5"
        with h5py.File(path, "w") as f:
            write_provenance(f, "jacobian", None, dtype="float32")
            d = f.create_dataset(
                "J", shape=(args.rows, args.cols), dtype=np.float32, chunks=(min(args.rows, 1024), 1024)
            )
            left = rng.standard_normal((args.rows, args.rank)) * np.logspace(1, 0, args.rank)
            for i in range(0, args.cols, 4096):
                w = min(4096, args.cols - i)
                d[:, i : i + w] = (
                    left @ rng.standard_normal((args.rank, w)) / np.sqrt(args.cols)
                    + 0.01 * rng.standard_normal((args.rows, w))
                ).astype(np.float32)
        with h5py.File(path) as f:
            J = f["J"][...].astype(np.float64)
        t0 = time.perf_counter()
        G_mem = J @ J.T
        t_mem = time.perf_counter() - t0
        del J
        t0 = time.perf_counter()
        G = gram(path, args.budget_mb, args.threads)
        t_hdf5 = time.perf_counter() - t0
        assert np.allclose(G, G_mem, rtol=1e-10, atol=1e-8)
        del G_mem
        t0 = time.perf_counter()
        w, _ = eigh_descending(G)
        t_eigh = time.perf_counter() - t0
        s_full = np.sqrt(np.maximum(w, 0))
        t0 = time.perf_counter()
        top = topk_spectrum(path, args.info_dim, 2 * args.info_dim, 20, 4, args.budget_mb, args.threads)
        t_topk = time.perf_counter() - t0
        err = np.abs(top.singular_values[: args.info_dim] - s_full[: args.info_dim]) / s_full[: args.info_dim]
    emit(
        "spectrum",
        "cpu",
        {"gram_hdf5_over_memory_throughput": t_mem / t_hdf5, "topk_over_eigh_time": t_topk / t_eigh},
        rows=args.rows,
        cols=args.cols,
        threads=args.threads,
        seconds={"gram_hdf5": t_hdf5, "gram_memory": t_mem, "eigh": t_eigh, "topk": t_topk},
        topk_max_relative_error_top_r=float(err.max()),
    )


if __name__ == "__main__":
    main()
