"""Label corruption: a seeded share of the training labels replaced by another class (``labels_noise{level}.h5``)."""

from __future__ import annotations

import os

import numpy as np

from ..common.h5io import atomic_h5, open_checked, write_provenance


# ---------------------------------------------------------------- label corruption
def one_hot(labels: np.ndarray, num_classes: int, dtype: type = np.float64) -> np.ndarray:
    """One-hot rows (n, K) of int labels: the least-squares targets y of the paper."""
    return np.eye(num_classes, dtype=dtype)[np.asarray(labels)]


def corrupt_labels(y: np.ndarray, num_classes: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Replace exactly round(fraction * n) labels by a label drawn uniformly from the K - 1 others.

    The corrupted rows are the first m of one seeded permutation and the offsets come from one
    seeded draw, so for a fixed seed the rows corrupted at a lower level are a subset of those
    at a higher level (the levels are nested, differing only in how much is corrupted).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"corruption fraction {fraction} is outside [0, 1]")
    if num_classes < 2:
        raise ValueError("label corruption needs at least 2 classes")
    n = len(y)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    offsets = rng.integers(1, num_classes, size=n)  # 1..K-1: never the same class
    m = int(round(fraction * n))
    corrupted = np.zeros(n, dtype=bool)
    corrupted[order[:m]] = True
    y_new = np.where(corrupted, (y + offsets) % num_classes, y)
    return y_new.astype(np.int64), corrupted


def write_labels(path: str | os.PathLike, subset_path: str | os.PathLike, fraction: float, seed: int) -> None:
    """Write ``labels_noise{level}.h5``: y (used for training), y_clean, corrupted."""
    with open_checked(subset_path, ["train/y"], artifact="subset") as f:
        y_clean = f["train/y"][...]
        k = int(f.attrs["num_classes"])
    y, corrupted = corrupt_labels(y_clean, k, fraction, seed)
    with atomic_h5(path) as f:
        write_provenance(
            f,
            "labels",
            None,
            fraction=float(fraction),
            seed=int(seed),
            num_classes=k,
            num_corrupted=int(corrupted.sum()),
            subset=str(subset_path),
            rule="exactly round(fraction * n) training labels replaced by a uniformly drawn different class",
        )
        f.create_dataset("y", data=y)
        f.create_dataset("y_clean", data=y_clean)
        f.create_dataset("corrupted", data=corrupted)


def read_labels(path: str | os.PathLike, n: int | None = None) -> np.ndarray:
    """Training labels of a label file, checked against the subset size when given."""
    with open_checked(path, ["y", "y_clean", "corrupted"], artifact="labels") as f:
        y = f["y"][...]
    if n is not None and len(y) != n:
        raise ValueError(f"{path}: {len(y)} labels but the subset has {n} training images; rerun corrupt_labels")
    return y
