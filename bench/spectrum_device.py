"""The Gram step and eigh on a torch device (CUDA where present, else the CPU), in one run:

  gram_stream   spectrum_device.gram_on_device: J streamed from HDF5 through host buffers,
                G accumulated in float64 on the device
  gram_memory   the same product with J already on the device in float64 (J @ J.T): the
                device's own speed for this shape, the baseline
  eigh          spectrum_device.eigh_checked on G (the residual check included)
  spectrum      the whole step, HDF5 to U and s (jacobian_spectrum.spectrum.methods.full_spectrum)

Prints seconds and the ratio gram_memory / gram_stream (1.0 = streaming from disk costs
nothing; the goal on a GPU is at least 0.7) as JSON. The paper's size is --rows 30000 (nK of
the paper's training J); --cols sets p (the file is rows x cols float32 on disk).

  python bench/spectrum_device.py [--rows 30000] [--cols 20000] [--budget-mb 4000]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from jacobian_spectrum.common.h5io import write_provenance
from jacobian_spectrum.spectrum.device import eigh_checked, gram_on_device
from jacobian_spectrum.spectrum.methods import full_spectrum


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def gram_in_memory(path: Path, device: torch.device) -> float:
    """Seconds of J @ J.T with J already on the device in float64."""
    with h5py.File(path) as f:
        J = torch.from_numpy(f["J"][...]).to(device).double()
    return timed(lambda: J @ J.T, device)[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--cols", type=int, default=20000)
    ap.add_argument("--budget-mb", type=float, default=2000)
    ap.add_argument("--dir", default=".", help="where the temporary J file is written")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "J.h5"
        with h5py.File(path, "w") as f:
            write_provenance(f, "jacobian", None, dtype="float32")
            dset = f.create_dataset("J", shape=(args.rows, args.cols), dtype=np.float32)
            for r in range(0, args.rows, 1000):
                n = min(1000, args.rows - r)
                dset[r : r + n] = rng.standard_normal((n, args.cols), dtype=np.float32)
        gram_on_device(path, device, args.budget_mb)  # warm-up: page cache, CUDA context, kernels
        G, t_stream = timed(lambda: gram_on_device(path, device, args.budget_mb), device)
        t_memory = gram_in_memory(path, device)
        _, t_eigh = timed(lambda: eigh_checked(G), device)
        _, t_spectrum = timed(lambda: full_spectrum(path, 50, args.budget_mb, 2, device=device.type), device)
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "shape": [args.rows, args.cols],
                "gram_stream": t_stream,
                "gram_memory": t_memory,
                "ratio_memory_over_stream": t_memory / t_stream,
                "eigh": t_eigh,
                "spectrum": t_spectrum,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
