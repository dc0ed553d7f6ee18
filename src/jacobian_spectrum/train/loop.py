"""Training stage: least-squares loss on one-hot labels, SGD/Adam, checkpoints, trajectories.

The whole (small) data set lives on the device as one tensor; augmentation is batched
tensor work there (no per-image PIL transforms, no DataLoader workers). A resume state is
written every few epochs, so a killed job continues where it stopped and ends with the same
numbers as an uninterrupted run (bit-for-bit on CPU).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..common.device import select_device
from ..common.h5io import atomic_path
from ..common.logs import logger
from ..data.corruption import one_hot
from ..data.subset import SplitData
from .models import ModelSpec, save_checkpoint
from .normalisation import NORMALISATION_MEANING, effective_mode, evaluation_statistics, recompute_statistics
from .trajectory import Trajectory, errors, write_trajectory

OPTIMIZERS = ("sgd", "adam")
# what the training log says of each evaluation's batch-norm statistics
EVALUATION_STATISTICS = {
    "recomputed": "batch-norm statistics recomputed",
    "stored": "batch-norm statistics as trained",
    "none": "no batch-norm",
}


@dataclass
class TrainSettings:
    optimizer: str
    lr: float
    epochs: int
    momentum: float = 0.0
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.1
    batch_size: int = 128
    augment_crop: bool = True
    augment_flip: bool = False
    seed: int = 0
    resume_every: int = 10
    checkpoint_epochs: list[int] = field(default_factory=list)
    normalisation: str = "recomputed"  # the batch-norm statistics of each evaluation (model.normalisation)

    @classmethod
    def from_config(
        cls, run: Mapping, training: Mapping, checkpoint_epochs: list[int], normalisation: str = "recomputed"
    ) -> "TrainSettings":
        if run["optimizer"] not in OPTIMIZERS:
            raise ValueError(f"optimizer {run['optimizer']!r} is not one of {list(OPTIMIZERS)}")
        return cls(
            optimizer=run["optimizer"],
            lr=float(run["lr"]),
            epochs=int(run["epochs"]),
            momentum=float(run.get("momentum", 0.0)),
            milestones=[int(m) for m in run.get("milestones", [])],
            gamma=float(run.get("gamma", 0.1)),
            batch_size=int(training["batch_size"]),
            augment_crop=bool(training["augment_crop"]),
            augment_flip=bool(training["augment_flip"]),
            seed=int(training["seed"]),
            resume_every=int(training["resume_every"]),
            checkpoint_epochs=sorted(set(checkpoint_epochs)),
            normalisation=normalisation,
        )

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def main_output(out: torch.Tensor | tuple) -> torch.Tensor:
    """The network's outputs f(x) (b, K). A network with auxiliary heads returns, in train mode
    only, a tuple whose first entry is its main output (torchvision's GoogLeNet and Inception):
    training fits that one, the output J and every evaluation measure, so the auxiliary heads
    get no gradient and their columns of J are zero."""
    return out if isinstance(out, torch.Tensor) else out[0]


def least_squares_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1/2 ||f(x) - y||^2 per sample, averaged over the batch (the paper's loss / batch size)."""
    return 0.5 * ((out - target) ** 2).sum(dim=1).mean()


def augment(x: torch.Tensor, crop: bool, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Batched random crop (zero padding of size/8 px: 4 px on 32x32) and horizontal flip."""
    b, c, h, w = x.shape
    if crop:
        pad = max(1, round(h / 8))
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=x.device)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]
        x = xp.permute(0, 2, 3, 1)[torch.arange(b, device=x.device)[:, None, None], rows, cols].permute(0, 3, 1, 2)
    if flip:
        mask = torch.rand(b, generator=generator, device=x.device) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x.contiguous()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Network outputs on a whole split (no augmentation), float32 on the CPU."""
    model.eval()
    out = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train()
    return out.float().cpu()


def make_optimizer(
    model: nn.Module, s: TrainSettings
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.MultiStepLR]:
    params = [p for p in model.parameters() if p.requires_grad]
    if s.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum)
    else:
        opt = torch.optim.Adam(params, lr=s.lr)
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=s.milestones, gamma=s.gamma)


def _trajectory_state(traj: Trajectory) -> dict:
    """The record as tensors, for the resume state (``torch.load(weights_only=True)`` reads tensors only)."""
    return {
        "train_predictions": torch.from_numpy(np.stack(traj.train_predictions)),
        "test_predictions": torch.from_numpy(np.stack(traj.test_predictions)),
        "lr": torch.tensor(traj.lr, dtype=torch.float64),
        "batch_loss": torch.tensor(traj.batch_loss, dtype=torch.float64),
        "seconds": torch.tensor(traj.seconds, dtype=torch.float64),
    }


def _trajectory_from_state(state: Mapping) -> Trajectory:
    return Trajectory(
        list(state["train_predictions"].numpy()),
        list(state["test_predictions"].numpy()),
        state["lr"].tolist(),
        state["batch_loss"].tolist(),
        state["seconds"].tolist(),
    )


def _resume_checkpoint_path(resume_path: Path, epoch: int) -> Path:
    return resume_path.parent / f"checkpoint_epoch{epoch}.pt"


def _save_resume(
    path: Path, epoch: int, model, opt, sched, gen, traj: Trajectory, ckpts: dict, fingerprint: str
) -> None:
    """The resume state. Checkpoints are files of their own beside it, each written once (a
    run keeps up to a hundred), so that a state's size does not grow with the run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for e, sd in ckpts.items():
        ckpt = _resume_checkpoint_path(path, e)
        if not ckpt.is_file():
            with atomic_path(ckpt) as tmp:
                torch.save(sd, tmp)
    state = {
        "fingerprint": fingerprint,
        "epoch": epoch,
        **training_state(model, opt, sched, gen),
        "trajectory": _trajectory_state(traj),
        "checkpoint_epochs": sorted(ckpts),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _remove_resume(path: Path) -> None:
    """The resume state, its checkpoint files, and its folder when that is left empty."""
    path.unlink(missing_ok=True)
    for ckpt in path.parent.glob("checkpoint_epoch*.pt") if path.parent.is_dir() else []:
        ckpt.unlink()
    if path.parent.is_dir() and not any(path.parent.iterdir()):
        path.parent.rmdir()


def _load_resume(path: Path, fingerprint: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable: start over rather than trust it
        logger.warning("resume state %s is unreadable (%s); starting from the initialisation", path, exc)
        return None
    if state.get("fingerprint") != fingerprint:
        logger.info("resume state %s belongs to other settings; starting from the initialisation", path)
        return None
    try:
        state["checkpoints"] = {
            e: torch.load(_resume_checkpoint_path(path, e), map_location="cpu", weights_only=True)
            for e in state["checkpoint_epochs"]
        }
    except Exception as exc:  # a missing or unreadable checkpoint file: the state cannot be trusted
        logger.warning("resume state %s lacks a readable checkpoint (%s); starting from the initialisation", path, exc)
        return None
    return state


def _restore(state: Mapping, model: nn.Module, opt, sched, gen: torch.Generator) -> tuple[Trajectory, dict, int]:
    """Load a resume state into the training objects; returns the record, checkpoints and next epoch."""
    load_training_state(state, model, opt, sched, gen)
    ckpts = dict(state["checkpoints"])  # epoch -> state dict, read from its file by _load_resume
    return _trajectory_from_state(state["trajectory"]), ckpts, int(state["epoch"]) + 1


def _state_copy(model: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def train_steps(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    s: TrainSettings,
    gen: torch.Generator,
    loss_sum: torch.Tensor,
) -> Iterator[int]:
    """One pass over the training set in a random order, one batch per iteration (it yields the
    batch's start), adding each batch's loss x size into ``loss_sum`` (a float64 scalar on the
    device: no host synchronisation per batch). Several runs can share a device by taking turns
    batch by batch (bench/paper_gpu.py); :func:`train_epoch` runs one alone."""
    n = len(x_train)
    perm = torch.randperm(n, generator=gen, device=x_train.device)
    for i in range(0, n, s.batch_size):
        idx = perm[i : i + s.batch_size]
        xb = augment(x_train[idx], s.augment_crop, s.augment_flip, gen)
        loss = least_squares_loss(main_output(model(xb)), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += loss.detach().double() * len(idx)  # as float(loss) * len(idx): float64, the same rounding
        yield i


def train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    s: TrainSettings,
    gen: torch.Generator,
) -> float:
    """One pass over the training set in a random order; returns the mean batch loss."""
    loss_sum = torch.zeros((), dtype=torch.float64, device=x_train.device)
    for _ in train_steps(model, opt, x_train, y_train, s, gen, loss_sum):
        pass
    return float(loss_sum) / len(x_train)


def training_state(model: nn.Module, opt, sched, gen: torch.Generator) -> dict:
    """What continues a run bit-for-bit: weights, optimizer, schedule and generator (tensors and
    plain values only, for ``torch.load(weights_only=True)``)."""
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "generator": gen.get_state(),
    }


def load_training_state(state: Mapping, model: nn.Module, opt, sched, gen: torch.Generator | None) -> None:
    """The inverse of :func:`training_state`; ``gen`` None leaves the generator as it is (a CPU
    generator's state does not fit a CUDA generator, nor back)."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    if gen is not None:
        gen.set_state(state["generator"])


def _record_epoch(
    traj: Trajectory,
    model: nn.Module,
    x_both: torch.Tensor,
    n_train: int,
    lr: float,
    loss: float,
    started: float | None,
    normalisation: str = "stored",
) -> None:
    """Append the unaugmented predictions on both splits after an epoch (or at initialisation,
    ``started`` None); the epoch's seconds count from ``started`` to the end of the predictions.
    With ``normalisation`` "recomputed", the batch-norm statistics are those of the current
    weights on the training split during the predictions, and the trained ones again after.

    ``x_both`` is the training split followed by the test split: one pass over both costs
    less than two at small sizes (the default's 300 + 210 images: 16 against 21 ms), and in
    eval mode each sample's output does not depend on the others in its batch."""
    with evaluation_statistics(model, x_both[:n_train], normalisation):
        out = predict(model, x_both).numpy()
    traj.train_predictions.append(out[:n_train])
    traj.test_predictions.append(out[n_train:])
    traj.lr.append(lr)
    traj.batch_loss.append(loss)
    traj.seconds.append(0.0 if started is None else time.perf_counter() - started)


def train(
    model: nn.Module,
    spec: ModelSpec,
    settings: TrainSettings,
    train_data: SplitData,
    train_labels: np.ndarray,
    test_data: SplitData,
    device: torch.device,
    resume_path: str | Path | None = None,
    stop_after: int | None = None,
) -> tuple[Trajectory, dict[int, dict]]:
    """Train ``model`` in place; return the trajectory and the checkpointed state dicts.

    ``stop_after`` ends the loop early (tests simulate a kill with it).
    """
    s = settings
    k = train_data.num_classes
    # both splits in one tensor for the predictions; the training split is a view of it
    n_train = len(train_data.x)
    x_both = torch.from_numpy(np.concatenate([train_data.x, test_data.x])).to(device)
    x_train = x_both[:n_train]
    y_train = torch.from_numpy(one_hot(train_labels, k, np.float32)).to(device)
    model.to(device).train()
    statistics = EVALUATION_STATISTICS[effective_mode(model, s.normalisation)]
    opt, sched = make_optimizer(model, s)
    gen = torch.Generator(device=device)
    gen.manual_seed(s.seed)
    resume_path = Path(resume_path) if resume_path else None
    state = _load_resume(resume_path, s.fingerprint()) if resume_path else None
    if state is not None:
        traj, ckpts, start = _restore(state, model, opt, sched, gen)
        logger.info("resumed from %s after epoch %d", resume_path, start - 1)
    else:
        if resume_path:  # a state of other settings, or unreadable: its checkpoint files must not be reused
            _remove_resume(resume_path)
        traj, ckpts, start = Trajectory(), {}, 1
        _record_epoch(traj, model, x_both, n_train, float("nan"), float("nan"), None, s.normalisation)
        if 0 in s.checkpoint_epochs:
            ckpts[0] = _state_copy(model)
    for epoch in range(start, s.epochs + 1):
        t0 = time.perf_counter()
        lr = opt.param_groups[0]["lr"]
        loss = train_epoch(model, opt, x_train, y_train, s, gen)
        sched.step()
        _record_epoch(traj, model, x_both, n_train, lr, loss, t0, s.normalisation)
        if not math.isfinite(loss):
            raise FloatingPointError(f"training diverged at epoch {epoch} (loss {loss}); lower the learning rate")
        if epoch in s.checkpoint_epochs:
            ckpts[epoch] = _state_copy(model)
        train_err = errors(traj.train_predictions[-1], train_labels)
        test_err = errors(traj.test_predictions[-1], test_data.y)
        logger.info(
            "epoch %d/%d  batch loss %.4f (train mode%s)  train error %.3f  test error %.3f (eval mode, %s)  "
            "lr %.2g  %.2fs",
            epoch,
            s.epochs,
            loss,
            ", augmented" if s.augment_crop or s.augment_flip else "",
            train_err,
            test_err,
            statistics,
            lr,
            traj.seconds[-1],
        )
        if resume_path and (epoch % s.resume_every == 0) and epoch < s.epochs:
            _save_resume(resume_path, epoch, model, opt, sched, gen, traj, ckpts, s.fingerprint())
        if stop_after is not None and epoch >= stop_after:
            break
    return traj, ckpts


def write_checkpoints(
    folder: str | Path,
    model: nn.Module,
    spec: ModelSpec,
    ckpts: Mapping[int, dict],
    run: str,
    statistics_from: torch.Tensor | None = None,
) -> None:
    """One weights-only checkpoint per epoch: ``{folder}/epoch{E}.pt``. With ``statistics_from``
    (the training split) each also holds its weights' recomputed batch-norm statistics on it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    current = {k: v.clone() for k, v in model.state_dict().items()}
    for epoch, sd in sorted(ckpts.items()):
        model.load_state_dict(sd)
        stats = recompute_statistics(model, statistics_from) if statistics_from is not None else None
        save_checkpoint(folder / f"epoch{epoch}.pt", model, spec, epoch, normalisation_statistics=stats, run=run)
    model.load_state_dict(current)


# ---------------------------------------------------------------- the workflow's entry point
def train_run(
    run: str,
    subset_path: str | Path,
    labels_path: str | Path,
    init_path: str | Path,
    run_config: Mapping,
    training: Mapping,
    checkpoint_epochs: list[int],
    device: str,
    threads: int,
    resume_path: str | Path,
    trajectory_path: str | Path,
    checkpoint_dir: str | Path,
    stop_after: int | None = None,
    normalisation: str = "recomputed",
) -> Trajectory:
    """Read the data, train from the shared initialisation, write trajectory and checkpoints."""
    from ..data.corruption import read_labels
    from ..data.subset import read_split
    from .models import load_checkpoint

    torch.set_num_threads(max(1, int(threads)))
    dev = select_device(device)
    settings = TrainSettings.from_config(run_config, training, checkpoint_epochs, normalisation)
    train_data = read_split(subset_path, "train")
    test_data = read_split(subset_path, "test")
    labels = read_labels(labels_path, n=len(train_data.y))
    model, payload = load_checkpoint(init_path)
    spec = ModelSpec(**payload["model"])
    if spec.num_classes != train_data.num_classes or spec.in_channels != train_data.image_shape[0]:
        raise ValueError(
            f"{init_path}: checkpoint is for {spec}, but {subset_path} has {train_data.num_classes} classes "
            f"of shape {train_data.image_shape}; rerun the initialise rule"
        )
    logger.info("run %s on %s: %s", run, dev, settings)
    traj, ckpts = train(model, spec, settings, train_data, labels, test_data, dev, resume_path, stop_after)
    if stop_after is not None and stop_after < settings.epochs:
        return traj
    model.cpu()
    mode = effective_mode(model, settings.normalisation)
    x_stats = torch.from_numpy(train_data.x) if mode == "recomputed" else None
    write_checkpoints(checkpoint_dir, model, spec, ckpts, run, x_stats)
    write_trajectory(
        trajectory_path,
        traj,
        labels,
        train_data.y,
        test_data.y,
        train_data.num_classes,
        {
            "run": run,
            "settings": asdict(settings),
            "device": str(dev),
            "checkpoint_dir": str(checkpoint_dir),
            "normalisation": mode,
            "normalisation_meaning": NORMALISATION_MEANING[mode],
        },
    )
    _remove_resume(Path(resume_path))
    return traj
