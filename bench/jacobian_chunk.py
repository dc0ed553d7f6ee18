"""A Jacobian chunk job end to end, as the workflow runs it: a fresh process per job.

Writes a synthetic data subset (random images of the given size) and an initialised
ResNet20 checkpoint to a temporary folder, then runs ``compute_chunk`` (J batch by batch,
the probe check, the HDF5 write) in a new process per round, with PyTorch's 2 MiB pages
off and on (THP_MEM_ALLOC_ENABLE=0/1) taking turns. Prints, per setting, the median
seconds of the job and of its three parts, the peak RSS against the chunk's J in bytes, and
the ratio of the two settings' medians, as one JSON record.

  python bench/jacobian_chunk.py [--samples 512] [--width 1] [--size 32] [--channels 3] [--rounds 3]

Smallest: --samples 4 --width 0.125 --size 8 --rounds 1
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from timing import emit

from jacobian_spectrum.data.sources import Source
from jacobian_spectrum.data.subset import Subset, write_subset
from jacobian_spectrum.train.models import ModelSpec, build_model, save_checkpoint

CHILD = """
import json, resource, sys, time, torch
from dataclasses import asdict
from jacobian_spectrum.jacobian.chunk import compute_chunk
torch.set_num_threads({threads})
t = time.perf_counter()
parts = compute_chunk("{root}/epoch0.pt", "{root}/subset.h5", "train", 0, {samples}, "{root}/chunk.h5")
print(json.dumps({{"job": time.perf_counter() - t, **asdict(parts),
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}}))
"""


def write_inputs(root: Path, samples: int, channels: int, size: int, width: float) -> int:
    """subset.h5 with ``samples`` random training images of 3 classes, and epoch0.pt; returns p."""
    rng = np.random.default_rng(0)
    x = {
        s: rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8) for s, n in (("train", samples), ("test", 3))
    }
    y = {s: np.arange(len(v)) % 3 for s, v in x.items()}
    source = Source("synthetic", ["a", "b", "c"], (channels, size, size), 255.0, y)
    subset = Subset(x, y, {s: np.arange(len(v)) for s, v in y.items()}, ["a", "b", "c"], [0, 1, 2])
    write_subset(root / "subset.h5", subset, source, {"name": "synthetic", "seed": 0})
    spec = ModelSpec("resnet20", channels, size, 3, width=width)
    model = build_model(spec, seed=0)
    save_checkpoint(root / "epoch0.pt", model, spec, 0)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"0": [], "1": []}
    with tempfile.TemporaryDirectory() as tmp:
        p = write_inputs(Path(tmp), args.samples, args.channels, args.size, args.width)
        code = CHILD.format(root=tmp, samples=args.samples, threads=args.threads)
        for _ in range(args.rounds):
            for setting, results in runs.items():
                env = dict(os.environ, THP_MEM_ALLOC_ENABLE=setting)
                out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
                results.append(json.loads(out.stdout.splitlines()[-1]))
    j_bytes = args.samples * 3 * p * 4
    median = {s: {key: statistics.median(r[key] for r in results) for key in results[0]} for s, results in runs.items()}
    emit(
        "jacobian_chunk",
        "cpu",
        {"job_time_THP_1_over_0": median["1"]["job"] / median["0"]["job"]},
        **vars(args),
        parameters=p,
        J_bytes=j_bytes,
        median_seconds={
            f"THP_MEM_ALLOC_ENABLE={s}": {k: round(v, 3) for k, v in m.items() if k != "peak_rss_bytes"}
            for s, m in median.items()
        },
        peak_rss_over_J_bytes={f"THP_MEM_ALLOC_ENABLE={s}": m["peak_rss_bytes"] / j_bytes for s, m in median.items()},
    )


if __name__ == "__main__":
    main()
