"""Out-of-fold predictions: the same network and recipe trained k times, each time without one
fold of the training split, from the shared initialisation, and stopped at the epoch of the
full run's lowest test error (before it memorises the noise). Each sample's outputs then come
from a network that never saw its label: what cleanlab's label-quality scores expect
(docs/label_noise.md).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..common.device import select_device
from ..common.h5io import atomic_h5, open_checked, require_finite, write_provenance
from ..common.logs import logger
from ..data.corruption import one_hot
from .loop import TrainSettings, make_optimizer, predict, train_epoch
from .normalisation import effective_mode, evaluation_statistics

FOLD_MEANING = (
    "outputs f(x) of the held-out samples (indices) from the network trained on the other folds, "
    "unaugmented, eval mode; stop_epoch = the full run's epoch of lowest test error"
)


def fold_assignment(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(n,) fold index of each sample: stratified by its assigned label (scikit-learn's
    StratifiedKFold, shuffled with ``seed``), so every fold sees each class in proportion."""
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    if folds < 2 or folds > len(labels):
        raise ValueError(f"folds = {folds}: allowed 2..{len(labels)} (the number of training samples)")
    out = np.empty(len(labels), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, held_out) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        out[held_out] = k
    return out


@dataclass
class FoldPredictions:
    """One fold's held-out outputs."""

    fold: int
    folds: int
    indices: np.ndarray  # (m,) held-out samples of the training split
    outputs: np.ndarray  # (m, K) their outputs
    stop_epoch: int
    seconds: float


def train_fold(
    model: nn.Module,
    settings: TrainSettings,
    x: torch.Tensor,
    labels: np.ndarray,
    assignment: np.ndarray,
    fold: int,
    num_classes: int,
) -> FoldPredictions:
    """Train ``model`` (in place, from its current weights) on every sample outside ``fold`` for
    ``settings.epochs`` epochs, then predict the held-out samples with the batch-norm statistics
    of ``settings.normalisation`` taken on the samples it trained on."""
    t0 = time.perf_counter()
    held_out = np.flatnonzero(assignment == fold)
    kept = torch.from_numpy(np.flatnonzero(assignment != fold)).to(x.device)
    x_train = x[kept]
    y_train = torch.from_numpy(one_hot(labels[kept.cpu().numpy()], num_classes, np.float32)).to(x.device)
    model.to(x.device).train()
    opt, sched = make_optimizer(model, settings)
    gen = torch.Generator(device=x.device)
    gen.manual_seed(settings.seed)
    for epoch in range(1, settings.epochs + 1):
        loss = train_epoch(model, opt, x_train, y_train, settings, gen)
        sched.step()
        if not np.isfinite(loss):
            raise FloatingPointError(f"fold {fold}: training diverged at epoch {epoch} (loss {loss})")
    with evaluation_statistics(model, x_train, settings.normalisation):
        outputs = predict(model, x[torch.from_numpy(held_out).to(x.device)]).numpy()
    return FoldPredictions(
        fold=fold,
        folds=int(assignment.max()) + 1,
        indices=held_out,
        outputs=outputs,
        stop_epoch=settings.epochs,
        seconds=time.perf_counter() - t0,
    )


def write_fold(path: str | Path, p: FoldPredictions, attrs: Mapping[str, object]) -> None:
    require_finite(p.outputs, f"{path}: outputs")
    with atomic_h5(path) as f:
        write_provenance(
            f,
            "fold",
            None,
            meaning=FOLD_MEANING,
            fold=p.fold,
            folds=p.folds,
            stop_epoch=p.stop_epoch,
            seconds=p.seconds,
            **attrs,
        )
        f.create_dataset("indices", data=p.indices)
        f.create_dataset("outputs", data=p.outputs.astype(np.float32))


def read_out_of_fold(paths: Sequence[str | Path], n: int) -> tuple[np.ndarray, float]:
    """(n, K) out-of-fold outputs assembled from the fold files, and the seconds their trainings
    took; every training sample must be held out by exactly one fold."""
    outputs: np.ndarray | None = None
    seen = np.zeros(n, dtype=np.int64)
    seconds = 0.0
    for path in paths:
        with open_checked(path, ["indices", "outputs"], artifact="fold") as f:
            idx, out = f["indices"][...], f["outputs"][...]
            seconds += float(f.attrs["seconds"])
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"{path}: held-out indices outside 0..{n - 1}")
        if outputs is None:
            outputs = np.full((n, out.shape[1]), np.nan)
        outputs[idx] = out
        seen[idx] += 1
    bad = np.flatnonzero(seen != 1)
    if outputs is None or len(bad):
        raise ValueError(
            f"fold files {[str(p) for p in paths]}: {len(bad)} of {n} training samples are not held out by "
            f"exactly one fold (first: {bad[:5].tolist()}); rerun the train_fold jobs"
        )
    return outputs, seconds


# ---------------------------------------------------------------- the workflow's entry point
def train_fold_run(
    run: str,
    subset_path: str | Path,
    labels_path: str | Path,
    init_path: str | Path,
    trajectory_path: str | Path,
    run_config: Mapping,
    training: Mapping,
    fold: int,
    folds: int,
    seed: int,
    window: int,
    device: str,
    threads: int,
    out_path: str | Path,
    normalisation: str = "recomputed",
) -> FoldPredictions:
    """The train_fold rule: one fold of a run, stopped at the run's epoch of lowest test error."""
    from ..data.corruption import read_labels
    from ..data.subset import read_split
    from .models import load_checkpoint
    from .trajectory import lowest_test_error_epoch, read_trajectory

    torch.set_num_threads(max(1, int(threads)))
    dev = select_device(device)
    data = read_split(subset_path, "train")
    labels = read_labels(labels_path, n=len(data.y))
    traj = read_trajectory(trajectory_path)
    if not np.array_equal(traj.train_y, labels):
        raise ValueError(f"{labels_path}: its labels are not the ones {trajectory_path} was trained on")
    stop = max(1, lowest_test_error_epoch(traj.test_error, window))
    settings = TrainSettings.from_config(dict(run_config, epochs=stop), training, [], normalisation)
    model, _ = load_checkpoint(init_path)
    assignment = fold_assignment(labels, folds, seed)
    logger.info(
        "run %s, fold %d of %d: training on %d samples for %d epochs (the full run's lowest test error), "
        "predicting %d held out",
        run,
        fold,
        folds,
        int((assignment != fold).sum()),
        stop,
        int((assignment == fold).sum()),
    )
    x = torch.from_numpy(data.x).to(dev)
    p = train_fold(model, settings, x, labels, assignment, fold, data.num_classes)
    mode = effective_mode(model, normalisation)
    write_fold(out_path, p, {"run": run, "seed": seed, "normalisation": mode})
    logger.info("fold %d: %.1f s", fold, p.seconds)
    return p
