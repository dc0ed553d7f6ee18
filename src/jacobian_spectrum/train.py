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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import SplitData
from .h5io import atomic_h5, atomic_path, open_checked, require_finite, write_provenance
from .logs import logger
from .models import ModelSpec, save_checkpoint

OPTIMIZERS = ("sgd", "adam")


def select_device(name: str = "auto") -> torch.device:
    """``auto`` = CUDA when present; TF32 off everywhere (numerical rules)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config key 'device': cuda requested but torch sees no CUDA device; use auto or cpu")
    return torch.device(name)


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

    @classmethod
    def from_config(cls, run: Mapping, training: Mapping, checkpoint_epochs: list[int]) -> "TrainSettings":
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
        )

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def one_hot(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(y, num_classes).to(torch.float32)


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


def errors(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Misclassification rate per epoch: predictions (..., n, K) against int labels (n,)."""
    return (predictions.argmax(axis=-1) != labels).mean(axis=-1)


def make_optimizer(
    model: nn.Module, s: TrainSettings
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.MultiStepLR]:
    params = [p for p in model.parameters() if p.requires_grad]
    if s.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum)
    else:
        opt = torch.optim.Adam(params, lr=s.lr)
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=s.milestones, gamma=s.gamma)


@dataclass
class Trajectory:
    """Per-epoch record; index t = after t epochs (t = 0 is the initialisation)."""

    train_predictions: list[np.ndarray] = field(default_factory=list)
    test_predictions: list[np.ndarray] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    batch_loss: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def to_state(self) -> dict:
        return {
            "train_predictions": torch.from_numpy(np.stack(self.train_predictions)),
            "test_predictions": torch.from_numpy(np.stack(self.test_predictions)),
            "lr": torch.tensor(self.lr, dtype=torch.float64),
            "batch_loss": torch.tensor(self.batch_loss, dtype=torch.float64),
            "seconds": torch.tensor(self.seconds, dtype=torch.float64),
        }

    @classmethod
    def from_state(cls, state: Mapping) -> "Trajectory":
        return cls(
            list(state["train_predictions"].numpy()),
            list(state["test_predictions"].numpy()),
            state["lr"].tolist(),
            state["batch_loss"].tolist(),
            state["seconds"].tolist(),
        )


def _save_resume(
    path: Path, epoch: int, model, opt, sched, gen, traj: Trajectory, ckpts: dict, fingerprint: str
) -> None:
    state = {
        "fingerprint": fingerprint,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "generator": gen.get_state(),
        "trajectory": traj.to_state(),
        "checkpoints": {str(e): sd for e, sd in ckpts.items()},
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


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
    return state


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
    x_train = torch.from_numpy(train_data.x).to(device)
    y_train = one_hot(torch.from_numpy(train_labels).to(device), k)
    x_test = torch.from_numpy(test_data.x).to(device)
    model.to(device).train()
    opt, sched = make_optimizer(model, s)
    gen = torch.Generator(device=device)
    gen.manual_seed(s.seed)
    traj = Trajectory()
    ckpts: dict[int, dict] = {}
    start = 1
    resume_path = Path(resume_path) if resume_path else None
    state = _load_resume(resume_path, s.fingerprint()) if resume_path else None
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        traj = Trajectory.from_state(state["trajectory"])
        ckpts = {int(e): sd for e, sd in state["checkpoints"].items()}
        start = int(state["epoch"]) + 1
        logger.info("resumed from %s after epoch %d", resume_path, start - 1)
    else:
        traj.train_predictions.append(predict(model, x_train).numpy())
        traj.test_predictions.append(predict(model, x_test).numpy())
        traj.lr.append(float("nan"))
        traj.batch_loss.append(float("nan"))
        traj.seconds.append(0.0)
        if 0 in s.checkpoint_epochs:
            ckpts[0] = {k_: v.detach().cpu().clone() for k_, v in model.state_dict().items()}
    n = len(x_train)
    for epoch in range(start, s.epochs + 1):
        t0 = time.perf_counter()
        lr = opt.param_groups[0]["lr"]
        perm = torch.randperm(n, generator=gen, device=device)
        total, seen = 0.0, 0
        for i in range(0, n, s.batch_size):
            idx = perm[i : i + s.batch_size]
            xb = augment(x_train[idx], s.augment_crop, s.augment_flip, gen)
            loss = least_squares_loss(model(xb), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        sched.step()
        traj.train_predictions.append(predict(model, x_train).numpy())
        traj.test_predictions.append(predict(model, x_test).numpy())
        traj.lr.append(lr)
        traj.batch_loss.append(total / seen)
        traj.seconds.append(time.perf_counter() - t0)
        if not math.isfinite(total):
            raise FloatingPointError(
                f"training diverged at epoch {epoch} (loss {total / seen}); lower the learning rate"
            )
        if epoch in s.checkpoint_epochs:
            ckpts[epoch] = {k_: v.detach().cpu().clone() for k_, v in model.state_dict().items()}
        train_err = errors(traj.train_predictions[-1], train_labels)
        test_err = errors(traj.test_predictions[-1], test_data.y)
        logger.info(
            "epoch %d/%d  loss %.4f  train error %.3f  test error %.3f  lr %.2g  %.2fs",
            epoch,
            s.epochs,
            total / seen,
            train_err,
            test_err,
            lr,
            traj.seconds[-1],
        )
        if resume_path and (epoch % s.resume_every == 0) and epoch < s.epochs:
            _save_resume(resume_path, epoch, model, opt, sched, gen, traj, ckpts, s.fingerprint())
        if stop_after is not None and epoch >= stop_after:
            break
    return traj, ckpts


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
    y_train = np.eye(num_classes, dtype=np.float32)[train_labels]
    y_test = np.eye(num_classes, dtype=np.float32)[test_labels]
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
    test_error: np.ndarray
    train_loss: np.ndarray
    test_loss: np.ndarray
    lr: np.ndarray


def read_trajectory(path: str | Path) -> TrajectoryData:
    names = [
        "train/predictions",
        "test/predictions",
        "train/y",
        "train/y_clean",
        "test/y",
        "train/error",
        "train/error_clean",
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
        d["test/error"],
        d["train/loss"],
        d["test/loss"],
        d["lr"],
    )


def write_checkpoints(
    folder: str | Path, model: nn.Module, spec: ModelSpec, ckpts: Mapping[int, dict], run: str
) -> None:
    """One weights-only checkpoint per epoch: ``{folder}/epoch{E}.pt``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    current = {k: v.clone() for k, v in model.state_dict().items()}
    for epoch, sd in sorted(ckpts.items()):
        model.load_state_dict(sd)
        save_checkpoint(folder / f"epoch{epoch}.pt", model, spec, epoch, run=run)
    model.load_state_dict(current)


# ---------------------------------------------------------------- the workflow's entry points
def model_spec_from(subset_path: str | Path, model_config: Mapping) -> ModelSpec:
    """The network for this subset: input channels and size from the data, K outputs."""
    with open_checked(subset_path, ["train/x"], artifact="subset") as f:
        c, h, _ = (int(v) for v in f.attrs["image_shape"])
        k = int(f.attrs["num_classes"])
    return ModelSpec(
        name=model_config["name"],
        in_channels=c,
        image_size=h,
        num_classes=k,
        width=float(model_config.get("width", 1.0)),
        hidden=int(model_config.get("hidden", 256)),
        activation=model_config.get("activation", "softplus"),
        output_scale=float(model_config.get("output_scale", 1.0)),
    )


def initialise(subset_path: str | Path, model_config: Mapping, out_path: str | Path) -> tuple[nn.Module, ModelSpec]:
    """Write the shared epoch-0 checkpoint: every run starts from (and J_init is taken at) it."""
    from .models import build_model

    spec = model_spec_from(subset_path, model_config)
    model = build_model(spec, seed=int(model_config.get("init_seed", 0)))
    save_checkpoint(out_path, model, spec, 0, run="init", init_seed=int(model_config.get("init_seed", 0)))
    return model, spec


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
) -> Trajectory:
    """Read the data, train from the shared initialisation, write trajectory and checkpoints."""
    from .data import read_labels, read_split
    from .models import load_checkpoint

    torch.set_num_threads(max(1, int(threads)))
    dev = select_device(device)
    settings = TrainSettings.from_config(run_config, training, checkpoint_epochs)
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
    write_checkpoints(checkpoint_dir, model, spec, ckpts, run)
    write_trajectory(
        trajectory_path,
        traj,
        labels,
        train_data.y,
        test_data.y,
        train_data.num_classes,
        {"run": run, "settings": asdict(settings), "device": str(dev), "checkpoint_dir": str(checkpoint_dir)},
    )
    Path(resume_path).unlink(missing_ok=True)
    if Path(resume_path).parent.is_dir() and not any(Path(resume_path).parent.iterdir()):
        Path(resume_path).parent.rmdir()
    return traj
