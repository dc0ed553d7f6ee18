"""Label energy on the nuisance space of J at a finished run's kept checkpoints.

For each named run and epoch: the training error at that epoch (from ``trajectory.h5``) and
||P_N y||^2/||y||^2 of J(W_epoch) on the training data at several cut-offs r, for y the run's
trained labels. It reads the checkpoints a workflow run left (epochs 1..10 and multiples of
``training.checkpoint_every``) and computes each J in memory (float32 Gram, a probe, not the
pipeline's float64 route; J_final's value matches the run's measurements.h5 to 3 digits).
Asks whether Figure 9's J_final finding depends on the corruption or on what is left unfitted.
Not a benchmark (no baseline ratio): a measurement tool.

  python bench/label_energy_checkpoints.py results/cifar10-small \\
      '{"sgd_clean": [30, 60, 90], "sgd_corrupt50": [40, 100, 150]}'
"""

import argparse
import json
import time

import numpy as np
import torch

from jacobian_spectrum.analysis import projection_curves
from jacobian_spectrum.data import read_split
from jacobian_spectrum.jacobian import jacobian
from jacobian_spectrum.measure import trained_labels
from jacobian_spectrum.models import load_checkpoint
from jacobian_spectrum.spectrum import eigh_descending
from jacobian_spectrum.trajectory import read_trajectory

CUTOFFS = (10, 20, 50, 100, 200)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="a finished run's results folder")
    p.add_argument("epochs", help="JSON {run: [epoch, ...]}; epoch 0 reads init/checkpoints/epoch0.pt")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    x = torch.from_numpy(read_split(f"{a.results}/data/subset.h5", "train").x)
    print("run epoch train_error " + " ".join(f"r={r}" for r in CUTOFFS), flush=True)
    for run, epochs in json.loads(a.epochs).items():
        traj = read_trajectory(f"{a.results}/runs/{run}/trajectory.h5")
        y = trained_labels(traj)
        for epoch in epochs:
            t = time.perf_counter()
            ckpt = (
                f"{a.results}/init/checkpoints/epoch0.pt"
                if epoch == 0
                else f"{a.results}/runs/{run}/checkpoints/epoch{epoch}.pt"
            )
            model, _ = load_checkpoint(ckpt)
            J = jacobian(model.eval(), x)
            s2, U = eigh_descending((J @ J.T).double().numpy())
            del J
            nuisance2 = projection_curves(y, U[:, : max(CUTOFFS)], np.sqrt(np.maximum(s2, 0.0)))[:, 1] ** 2
            row = " ".join(f"{nuisance2[r - 1]:.4f}" for r in CUTOFFS)
            err = traj.train_error[list(traj.epoch).index(epoch)]
            print(f"{run} {epoch} {err:.3f} {row}  ({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
