"""Training trajectories: the per-epoch record of a run, and its file ``trajectory.h5``.

Kept apart from the training code so that measurement and figures read trajectories
without importing torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..common.h5io import atomic_h5, open_checked, require_finite, write_provenance
from ..data.corruption import one_hot


@dataclass
class Trajectory:
    """Per-epoch record; index t = after t epochs (t = 0 is the initialisation)."""

    train_predictions: list[np.ndarray] = field(default_factory=list)
    test_predictions: list[np.ndarray] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    batch_loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def errors(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Misclassification rate per epoch: predictions (..., n, K) against int labels (n,)."""
    return (predictions.argmax(axis=-1) != labels).mean(axis=-1)


def split_errors(predictions: np.ndarray, labels: np.ndarray, clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Error against the trained labels per epoch, on the samples whose label was kept and on those
    whose label was corrupted (NaN where a group is empty). 1 - the corrupted samples' error is the
    fraction of corrupted labels the network has memorised."""
    corrupted = labels != clean
    wrong = predictions.argmax(axis=-1) != labels
    nan = np.full(wrong.shape[:-1], np.nan)
    kept_err = wrong[..., ~corrupted].mean(axis=-1) if (~corrupted).any() else nan
    corrupt_err = wrong[..., corrupted].mean(axis=-1) if corrupted.any() else nan
    return kept_err, corrupt_err


EPOCH_ERRORS = ("train_error", "train_error_clean", "train_error_kept", "train_error_corrupted", "test_error")


def epoch_errors(
    train_pred: np.ndarray, labels: np.ndarray, clean: np.ndarray, test_pred: np.ndarray, test_labels: np.ndarray
) -> dict[str, float]:
    """One epoch's errors as trajectory.h5 has them: against the trained and the clean labels, on
    the kept and the corrupted samples (1 - memorised), and on the test set."""
    kept, corrupted = split_errors(train_pred, labels, clean)
    values = (errors(train_pred, labels), errors(train_pred, clean), kept, corrupted, errors(test_pred, test_labels))
    return {key: float(v) for key, v in zip(EPOCH_ERRORS, values)}


def write_trajectory(
    path: str | Path,
    traj: Trajectory,
    train_labels: np.ndarray,
    train_clean: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    attrs: Mapping[str, object],
) -> None:
    """Write ``trajectory.h5``: per-epoch predictions, losses, errors and learning rate."""
    train_pred = np.stack(traj.train_predictions).astype(np.float32)
    test_pred = np.stack(traj.test_predictions).astype(np.float32)
    require_finite(train_pred, f"{path}: training predictions")
    y_train = one_hot(train_labels, num_classes, np.float32)
    y_test = one_hot(test_labels, num_classes, np.float32)
    with atomic_h5(path) as f:
        write_provenance(
            f,
            "trajectory",
            None,
            loss="1/2 ||f(x) - y||^2 averaged over samples, unaugmented, against the training labels",
            row_index="epoch t = after t epochs of training; t = 0 is the initialisation",
            **attrs,
        )
        f.create_dataset("epoch", data=np.arange(len(train_pred)))
        f.create_dataset("lr", data=np.asarray(traj.lr))
        f.create_dataset("batch_loss", data=np.asarray(traj.batch_loss))
        f.create_dataset("epoch_seconds", data=np.asarray(traj.seconds))
        for split, pred, y, labels in (
            ("train", train_pred, y_train, train_labels),
            ("test", test_pred, y_test, test_labels),
        ):
            g = f.create_group(split)
            g.create_dataset("predictions", data=pred, compression="gzip", chunks=(1,) + pred.shape[1:])
            g.create_dataset("y", data=labels)
            g.create_dataset("loss", data=0.5 * ((pred - y) ** 2).sum(axis=2).mean(axis=1))
            g.create_dataset("error", data=errors(pred, labels))
        f["train"].create_dataset("y_clean", data=train_clean)
        f["train"].create_dataset("error_clean", data=errors(train_pred, train_clean))
        kept_err, corrupt_err = split_errors(train_pred, train_labels, train_clean)
        f["train"].create_dataset("error_kept", data=kept_err).attrs["meaning"] = (
            "error against the trained labels on the samples whose label was kept (unaugmented images)"
        )
        f["train"].create_dataset("error_corrupted", data=corrupt_err).attrs["meaning"] = (
            "error against the trained (corrupted) labels on the samples whose label was corrupted; "
            "1 - this is the fraction of corrupted labels memorised (NaN in a clean run)"
        )
        f["train/y"].attrs["meaning"] = "labels used for training (corrupted where the run is)"
        f["test/y"].attrs["meaning"] = "clean test labels"


@dataclass
class TrajectoryData:
    epoch: np.ndarray
    train_predictions: np.ndarray  # (epochs + 1, n, K)
    test_predictions: np.ndarray
    train_y: np.ndarray
    train_y_clean: np.ndarray
    test_y: np.ndarray
    train_error: np.ndarray
    train_error_clean: np.ndarray
    train_error_kept: np.ndarray  # error on the samples whose label was kept
    train_error_corrupted: np.ndarray  # error on the corrupted samples (1 - memorised fraction); NaN if clean
    test_error: np.ndarray
    train_loss: np.ndarray
    test_loss: np.ndarray
    lr: np.ndarray


def read_trajectory(path: str | Path) -> TrajectoryData:
    """Read ``trajectory.h5``, checking every dataset is there and the predictions are finite."""
    names = [
        "train/predictions",
        "test/predictions",
        "train/y",
        "train/y_clean",
        "test/y",
        "train/error",
        "train/error_clean",
        "train/error_kept",
        "train/error_corrupted",
        "test/error",
        "train/loss",
        "test/loss",
        "lr",
        "epoch",
    ]
    with open_checked(path, names, artifact="trajectory") as f:
        d = {n: f[n][...] for n in names}
    require_finite(d["train/predictions"], f"{path}: train/predictions")
    require_finite(d["test/predictions"], f"{path}: test/predictions")
    return TrajectoryData(
        d["epoch"],
        d["train/predictions"],
        d["test/predictions"],
        d["train/y"],
        d["train/y_clean"],
        d["test/y"],
        d["train/error"],
        d["train/error_clean"],
        d["train/error_kept"],
        d["train/error_corrupted"],
        d["test/error"],
        d["train/loss"],
        d["test/loss"],
        d["lr"],
    )


def centred_mean(values: np.ndarray, window: int) -> np.ndarray:
    """out[t] = mean of values[t - window//2 .. t + window//2 - 1] (shorter at the ends): a test
    error curve whose single epochs jump by several points, read as a level."""
    values = np.asarray(values, dtype=np.float64)
    h = window // 2
    return np.array([values[max(0, t - h) : t + h].mean() for t in range(len(values))])


def lowest_test_error_epoch(test_error: np.ndarray, window: int) -> int:
    """The epoch of the lowest test error, the curve averaged over ``window`` epochs (Figure 8's)."""
    curve = centred_mean(test_error, window) if window > 1 else np.asarray(test_error, dtype=np.float64)
    return int(np.argmin(curve))
