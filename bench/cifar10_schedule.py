"""Probe a training schedule on real CIFAR-10 images before committing it to a config.

Trains one run (one corruption level) with the package's own training loop, prints the
training and test error every few epochs, and with ``--jacobian`` the share of the label
vector's energy on the nuisance space of J_final (r = 50): the numbers behind the schedule
choices in config/cifar10-small.yaml. Not a benchmark (no baseline ratio): a measurement tool.

  python bench/cifar10_schedule.py --root data/cifar10-jpeg --level 0.5 --width 1 --epochs 100 --jacobian
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from jacobian_spectrum.analysis.measure import flatten_rows, projection_ratios
from jacobian_spectrum.data.corruption import corrupt_labels, one_hot
from jacobian_spectrum.data.subset import build_subset, read_split, write_subset
from jacobian_spectrum.jacobian.compute import jacobian
from jacobian_spectrum.spectrum.dense import eigh_descending
from jacobian_spectrum.train.loop import TrainSettings, train
from jacobian_spectrum.train.models import initialise
from jacobian_spectrum.train.trajectory import errors


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default="data/cifar10-jpeg", help="image folder (train/<class>/, test/<class>/)")
    p.add_argument("--work", default="/tmp/cifar10-schedule", help="folder for the subset and the initialisation")
    p.add_argument("--per-class", type=int, default=300)
    p.add_argument("--test-per-class", type=int, default=200)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--level", type=float, default=0.5, help="label corruption")
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--milestones", type=int, nargs="*", default=[])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--augment", action="store_true", help="random crop and flip")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--every", type=int, default=5, help="print every this many epochs")
    p.add_argument("--jacobian", action="store_true", help="also measure J_final's label energy on N (r = 50)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    work = Path(a.work) / f"n{a.per_class}_w{a.width}"
    work.mkdir(parents=True, exist_ok=True)
    ds = {
        "name": "imagefolder",
        "root": a.root,
        "classes": ["airplane", "automobile", "bird"],
        "train_per_class": a.per_class,
        "test_per_class": a.test_per_class,
        "seed": 0,
    }
    subset = work / "subset.h5"
    if not subset.exists():
        s, src = build_subset(ds)
        write_subset(subset, s, src, ds)
    tr, te = read_split(subset, "train"), read_split(subset, "test")
    y, _ = corrupt_labels(tr.y, tr.num_classes, a.level, 0)
    model, spec = initialise(subset, {"name": "resnet20", "width": a.width, "init_seed": 0}, work / "init.pt")
    settings = TrainSettings(
        a.optimizer, a.lr, a.epochs, a.momentum, a.milestones, 0.1, a.batch, a.augment, a.augment, 0, 10**9, []
    )
    t0 = time.perf_counter()
    traj, _ = train(model, spec, settings, tr, y, te, torch.device("cpu"))
    train_err, test_err = errors(np.stack(traj.train_predictions), y), errors(np.stack(traj.test_predictions), te.y)
    print(f"{time.perf_counter() - t0:.0f} s, {np.mean(traj.seconds[1:]):.2f} s per epoch")
    for e in range(0, a.epochs + 1, a.every):
        print(f"epoch {e:4d}  train error {train_err[e]:.3f}  test error {test_err[e]:.3f}")
    best = int(np.argmin(test_err))
    print(
        f"lowest test error {test_err[best]:.3f} at epoch {best}; "
        f"final train {train_err[-1]:.3f} test {test_err[-1]:.3f}"
    )
    if a.jacobian:
        model.eval()
        J = jacobian(model, torch.from_numpy(tr.x)).double()
        w, U = eigh_descending((J @ J.T).numpy())
        s = np.sqrt(np.maximum(w, 0))
        p_info, p_nuis, _ = projection_ratios(flatten_rows(one_hot(y, tr.num_classes)), U[:, :50], s)
        print(f"J_final: ||P_I y||/||y|| = {p_info:.3f}, label energy on N = {p_nuis**2:.3f}")


if __name__ == "__main__":
    main()
