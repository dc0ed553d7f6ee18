"""The Gram step and eigh on a torch device (CUDA where present, else the CPU), in one run:

  gram_stream   spectrum.device.gram_on_device: J streamed from HDF5 through host buffers,
                G accumulated in float64 on the device
  gram_memory   spectrum.device.gram_in_memory with J already on the device in float64, in one
                slab (one J @ J.T): the device's own speed for this shape, the baseline
  eigh          spectrum.device.eigh_checked on G (the residual check included)
  spectrum      the whole step, HDF5 to U and s (jacobian_spectrum.spectrum.methods.full_spectrum)

--gram-only leaves out eigh and spectrum (bench/paper_gpu.py's step 3 runs it so). Prints one JSON
record with the ratio gram_memory / gram_stream (1.0 = streaming from disk costs
nothing; the goal on a GPU is at least 0.7). The paper's size is --rows 30000 (nK of the paper's
training J); --cols sets p (the file is rows x cols float32 on disk). Runs on the CPU where no
GPU is present (a check of the script, not a GPU measurement).

  python bench/spectrum_device.py [--rows 30000] [--cols 20000] [--budget-mb 4000] [--gram-only]

Smallest: --rows 100 --cols 500
"""

import argparse
import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch
from timing import emit, timed

from jacobian_spectrum.common.device import select_device
from jacobian_spectrum.common.h5io import write_provenance
from jacobian_spectrum.spectrum.device import eigh_checked, gram_in_memory, gram_on_device
from jacobian_spectrum.spectrum.methods import full_spectrum


def write_random_J(path: Path, rows: int, cols: int) -> None:
    """A rows x cols float32 J of standard normal entries, written 1000 rows at a time."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        write_provenance(f, "jacobian", None, dtype="float32")
        dset = f.create_dataset("J", shape=(rows, cols), dtype=np.float32)
        for r in range(0, rows, 1000):
            dset[r : r + min(1000, rows - r)] = rng.standard_normal((min(1000, rows - r), cols), dtype=np.float32)


def memory_gram_seconds(path: Path, device: torch.device) -> float:
    """Seconds of G from J already on the device in float64, in one slab: one J @ J.T."""
    with h5py.File(path) as f:
        J = torch.from_numpy(f["J"][...]).to(device).double()
    one_slab_mb = 2 * J.numel() * 12 / 1e6  # slab_width counts float32 + float64 per column: all of J
    return timed(lambda: gram_in_memory(J, one_slab_mb), device)[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--cols", type=int, default=20000)
    ap.add_argument("--budget-mb", type=float, default=2000)
    ap.add_argument("--dir", default=".", help="where the temporary J file is written")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--gram-only", action="store_true", help="the two Gram products only: no eigh, no spectrum")
    args = ap.parse_args()
    device = select_device(args.device)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "J.h5"
        write_random_J(path, args.rows, args.cols)
        gram_on_device(path, device, args.budget_mb)  # warm-up: page cache, CUDA context, kernels
        G, t_stream = timed(lambda: gram_on_device(path, device, args.budget_mb), device)
        seconds = {"gram_stream": t_stream, "gram_memory": memory_gram_seconds(path, device)}
        if not args.gram_only:
            seconds["eigh"] = timed(lambda: eigh_checked(G), device)[1]
            seconds["spectrum"] = timed(lambda: full_spectrum(path, 50, args.budget_mb, 2, device=device.type), device)[
                1
            ]
    ratios = {"gram_memory_over_stream": seconds["gram_memory"] / seconds["gram_stream"]}
    emit("spectrum_device", device, ratios, shape=[args.rows, args.cols], seconds=seconds)


if __name__ == "__main__":
    main()
