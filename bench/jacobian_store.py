"""How J is stored: a virtual dataset over the chunk files (written once) against a gathered copy.

Writes chunk files of a random float32 J as the chunk jobs do (contiguous, rows in blocks),
then times, in one run on the same files:

  gather_virtual  jacobian_store.gather: checks every chunk, writes the virtual dataset
  gather_copy     the former gather: the same checks, and a copy of J in HDF5 chunks of
                  1024 rows x ~1 MiB (what the Gram step's column slabs read fastest)
  gram_virtual    spectrum.gram through the virtual dataset
  gram_copy       spectrum.gram from the copy

Prints seconds, the ratios virtual / copy (below 1.0: the virtual dataset is faster) and
the bytes on disk of each layout (chunks + virtual file against chunks + copy) as JSON.

  python bench/jacobian_store.py [--rows 2700] [--cols 100000] [--chunks 9] [--threads 2]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from jacobian_spectrum.common.h5io import write_provenance
from jacobian_spectrum.jacobian.store import ParameterEntry, _checked_chunks, _write_table, gather
from jacobian_spectrum.spectrum.dense import gram


def write_chunks(folder: Path, rows: int, cols: int, n_chunks: int, k: int = 3) -> list[Path]:
    rng = np.random.default_rng(0)
    samples = rows // k
    per = -(-samples // n_chunks)
    paths = []
    for c in range(n_chunks):
        a, b = c * per, min(samples, (c + 1) * per)
        path = folder / f"train_epoch0.chunk{c}.h5"
        with h5py.File(path, "w") as f:
            dset = f.create_dataset("J", shape=((b - a) * k, cols), dtype=np.float32)
            for r in range(0, (b - a) * k, 256):  # rows in blocks, as compute_chunk writes them
                n = min(256, (b - a) * k - r)
                dset[r : r + n] = rng.standard_normal((n, cols), dtype=np.float32)
            write_provenance(
                f,
                "jacobian_chunk",
                None,
                checkpoint="bench.pt",
                checkpoint_epoch=0,
                split="train",
                dtype="float32",
                num_classes=k,
                row_start=a * k,
                row_stop=b * k,
                probe_error_jvp=0.0,
                probe_error_vjp=0.0,
            )
            _write_table(f, [ParameterEntry("w", 0, cols, (cols,))])
        paths.append(path)
    return paths


def gather_copy(paths: list[Path], out: Path) -> None:
    """The gather before the virtual dataset: the same checks, then a chunked copy of J."""
    metas = _checked_chunks(paths)
    rows, p = int(metas[-1][1]["row_stop"]), metas[0][2][1]
    with h5py.File(out, "w") as f:
        write_provenance(f, "jacobian", None, dtype="float32")
        col_chunk = min(p, max(1, (1 << 20) // max(1, min(rows, 1024))))
        dset = f.create_dataset("J", shape=(rows, p), dtype=np.float32, chunks=(min(rows, 1024), col_chunk))
        for path, a, shape, _ in metas:
            with h5py.File(path, "r") as src:
                block = src["J"][...]
                if not np.isfinite(block).all():
                    raise ValueError(f"{path}: NaN or Inf")
                dset[int(a["row_start"]) : int(a["row_stop"])] = block


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2700)
    ap.add_argument("--cols", type=int, default=100_000)
    ap.add_argument("--chunks", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--budget-mb", type=float, default=1500)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        folder = Path(tmp)
        (folder / "chunks").mkdir()
        paths = write_chunks(folder / "chunks", args.rows, args.cols, args.chunks)
        out = {
            "gather_virtual": timed(lambda: gather(paths, folder / "virtual.h5")),
            "gather_copy": timed(lambda: gather_copy(paths, folder / "copy.h5")),
        }
        # the Gram step twice each, taking turns, so that load from other processes hits both alike
        for _ in range(2):
            for name in ("virtual", "copy"):
                t = timed(lambda: gram(folder / f"{name}.h5", args.budget_mb, args.threads))
                out[f"gram_{name}"] = min(out.get(f"gram_{name}", float("inf")), t)
        G_virtual = gram(folder / "virtual.h5", args.budget_mb, args.threads)
        G_copy = gram(folder / "copy.h5", args.budget_mb, args.threads)
        chunk_bytes = sum(p.stat().st_size for p in paths)
        out.update(
            {
                # slab widths follow each layout's HDF5 chunks, so the sums' order (not the values) differs
                "gram_max_relative_difference": float(np.abs(G_virtual - G_copy).max() / np.abs(G_copy).max()),
                "ratio_gather_virtual_over_copy": out["gather_virtual"] / out["gather_copy"],
                "ratio_gram_virtual_over_copy": out["gram_virtual"] / out["gram_copy"],
                "bytes_chunks": chunk_bytes,
                "bytes_virtual_file": (folder / "virtual.h5").stat().st_size,
                "bytes_copy_file": (folder / "copy.h5").stat().st_size,
                "peak_disk_virtual_over_J": (chunk_bytes + (folder / "virtual.h5").stat().st_size) / chunk_bytes,
                "peak_disk_copy_over_J": (chunk_bytes + (folder / "copy.h5").stat().st_size) / chunk_bytes,
                "shape": [args.rows, args.cols],
                "threads": args.threads,
            }
        )
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
