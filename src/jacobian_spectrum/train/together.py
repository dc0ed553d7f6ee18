"""Several runs trained together on one device, their batches taking turns, each run on a CUDA
stream of its own: while one run's kernels run, the host queues the other's, so that small
networks that cannot fill a GPU alone share it (bench/paper_gpu.py trains the paper's two SGD
runs so). Each run's epoch is :func:`jacobian_spectrum.train.loop.train_steps`, the ops of
``train.loop.train`` in the same order: on the CPU a run ends bit-for-bit where it ends alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..common.device import new_stream, on_stream, synchronize
from ..common.h5io import atomic_path
from ..data.corruption import one_hot
from .loop import TrainSettings, load_training_state, make_optimizer, predict, train_steps, training_state
from .trajectory import epoch_errors

RUNS_FORMAT = "train.together.runs/1"


@dataclass
class Run:
    """One run's network, optimizer, schedule and generator, its epoch and its history."""

    name: str
    settings: TrainSettings
    labels: np.ndarray
    y: torch.Tensor  # the labels one-hot, on the device
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.MultiStepLR
    gen: torch.Generator
    stream: torch.cuda.Stream | None  # None on the CPU
    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    rng_note: str = ""  # how the generator was restored, where not bit-for-bit

    @property
    def done(self) -> bool:
        return self.epoch >= self.settings.epochs


def make_run(
    name: str, settings: TrainSettings, labels: np.ndarray, num_classes: int, model: torch.nn.Module, device
) -> Run:
    """A run from its initialisation ``model`` (moved to ``device``), as train.loop.train starts one."""
    device = torch.device(device)
    model = model.to(device).train()
    opt, sched = make_optimizer(model, settings)
    gen = torch.Generator(device=device)
    gen.manual_seed(settings.seed)
    y = torch.from_numpy(one_hot(labels, num_classes, np.float32)).to(device)
    run = Run(name, settings, labels, y, model, opt, sched, gen, new_stream(device))
    synchronize(device)  # the copies above ran on the default stream; the run's stream does not wait for it
    return run


def run_state(run: Run) -> dict:
    """The run's settings, epoch, history and train.loop.training_state (for torch.save)."""
    state = {"settings": asdict(run.settings), "epoch": run.epoch, "history": run.history, "seconds": run.seconds}
    return {**state, **training_state(run.model, run.opt, run.sched, run.gen), "generator_device": run.gen.device.type}


def load_run(run: Run, state: dict) -> None:
    """Continue ``run`` from :func:`run_state`'s dict. A generator state from another device type
    does not fit (CPU and CUDA generators differ): the generator is reseeded, noted in rng_note."""
    if state["settings"] != asdict(run.settings):
        raise ValueError(f"run {run.name} was trained with {state['settings']}, not {asdict(run.settings)}")
    same = state["generator_device"] == run.gen.device.type
    load_training_state(state, run.model, run.opt, run.sched, run.gen if same else None)
    run.epoch, run.history, run.seconds = int(state["epoch"]), list(state["history"]), float(state["seconds"])
    if not same:
        run.gen.manual_seed(run.settings.seed + 1_000_003 * run.epoch)
        run.rng_note = f"generator reseeded at epoch {run.epoch} (checkpoint from {state['generator_device']})"
    synchronize(run.gen.device)


def train_round(runs: list[Run], x: torch.Tensor) -> tuple[float, list[float]]:
    """One epoch of every run on the training images ``x``, their batches taking turns. Returns the
    round's seconds (the device synchronised) and each run's mean batch loss; the schedules are
    stepped by :func:`end_epoch`."""
    t0, sums, epochs = time.perf_counter(), [], []
    for r in runs:
        with on_stream(r.stream):
            sums.append(torch.zeros((), dtype=torch.float64, device=x.device))
            epochs.append(train_steps(r.model, r.opt, x, r.y, r.settings, r.gen, sums[-1]))
    pending = list(zip(runs, epochs))
    while pending:
        for r, steps in list(pending):
            with on_stream(r.stream):
                if next(steps, None) is None:  # this run's epoch is over
                    pending.remove((r, steps))
    synchronize(x.device)
    return time.perf_counter() - t0, [float(s) / len(x) for s in sums]


def evaluate(
    run: Run, x_train: torch.Tensor, x_test: torch.Tensor, clean: np.ndarray, test_labels: np.ndarray, **row: float
) -> dict:
    """A row of the run's history: ``row`` (its epoch's step size, loss...) and its errors now
    (train.trajectory.epoch_errors) from its predictions on both splits (train.loop.predict)."""
    train_pred, test_pred = predict(run.model, x_train).numpy(), predict(run.model, x_test).numpy()
    return {"epoch": run.epoch, **row, **epoch_errors(train_pred, run.labels, clean, test_pred, test_labels)}


def run_summary(run: Run) -> dict:
    """Where the run is: its settings, epoch, seconds, last history row and lowest test error."""
    best = min(run.history, key=lambda row: row["test_error"])
    summary = {"settings": asdict(run.settings), "epoch": run.epoch, "done": run.done, "last": run.history[-1]}
    summary.update(training_seconds=round(run.seconds, 2), rng=run.rng_note or None)
    return {**summary, "lowest_test_error": {"epoch": best["epoch"], "test_error": best["test_error"]}}


def end_epoch(run: Run, loss: float) -> float:
    """Step the schedule as train.loop.train does after an epoch; returns the epoch's step size."""
    lr = run.opt.param_groups[0]["lr"]
    run.sched.step()
    run.epoch += 1
    if not math.isfinite(loss):
        raise FloatingPointError(f"{run.name} diverged at epoch {run.epoch} (loss {loss})")
    return lr


def save_runs(path: str | Path, runs: Mapping[str, Run], **extra: object) -> None:
    """Every run's :func:`run_state` and ``extra`` (tensors and plain values) in one torch file,
    written atomically, the device synchronised first."""
    for run in runs.values():
        synchronize(run.gen.device)
    with atomic_path(path) as tmp:
        torch.save({"format": RUNS_FORMAT, **extra, "runs": {n: run_state(r) for n, r in runs.items()}}, tmp)


def read_runs(path: str | Path) -> dict:
    """A :func:`save_runs` file (on the CPU); ValueError for a missing file or another format."""
    if not Path(path).is_file():
        raise ValueError(f"{path}: no such file")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("format") != RUNS_FORMAT:
        raise ValueError(f"{path} is not a {RUNS_FORMAT} file")
    return saved
