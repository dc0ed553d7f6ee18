"""The paper's experiment at its own size on one GPU, in one command, within a wall-time budget (issue 34).

CIFAR-10 airplane / automobile / bird, 3333 training and 1000 test images per class (n = 9999,
nK = 29,997), the workflow's full-width ResNet20 (p = 268,579), r = 50. In order of value:

  1. the clean SGD run (400 epochs, step 0.01, momentum 0.9, /10 at 260 and 360) and the
     50%-corrupted SGD run (800 epochs, /10 at 700), batch 128, random crop and flip, trained
     concurrently: their steps alternate batch by batch, each run on its own CUDA stream, the data
     and its augmentation on the device, and no host synchronisation inside an epoch;
  2. J_init and each run's J_final (float32, TF32 off), G = J J^T and its eigh in float64 on the
     device: Table 1 (clean) and Table 3 (50%) beside the paper's values, and Figure 8's error
     curves of the 50% run;
  3. when steps 1 and 2 are complete and time remains: the streamed Gram step against the device's
     in-memory float64 product at nK = 30,000 (bench/spectrum_device.py's measurement), then the
     Adam run (step 0.001, 400 epochs) and its J_final: Table 2.

Every piece is the package's, so the numbers are the workflow's: the subset, corruption and
normalisation (data/), the network and its initialisation, optimizer, schedule, loss,
augmentation and predictions (train/), the Jacobian kernel and its probe check (jacobian/), the
slab width and the eigensolver with its residual check and CPU fallback (spectrum/), the
projections (analysis/) and the paper's printed tables (figures/). It imports neither Snakemake
nor Dask, and runs from the repository's tree where the package is not installed.

Before each step (in training, each round: one epoch of every active run) it predicts the step's
time from rates measured in this run (warm-up steps, a Jacobian of a few samples, a Gram slab,
then the measured rounds and spectra; eigh on a GPU from the H200's measured 16.8 s until one is
measured here) and stops cleanly where the prediction would pass the budget. While the runs
train, the J_init spectrum's predicted time is kept free. Each result is written as soon as it is
there, and the checkpoints every --checkpoint-every seconds, into these 8 files (each < 16 MiB):

  results.json   every step's status, seconds, prediction and (when not done) reason; rates;
                 spectra; the tables' rows; ``skipped``: what was not done and why
  table1.md, table2.md, table3.md   measured beside the paper's values
  fig8.png, fig8.csv   the 50% run's error curves (the CSV: every run's evaluated epochs)
  checkpoints.pt the initialisation, and each run's model, optimizer, schedule, RNG and history
                 (about 10 MB: ResNet20 is 1.1 MB)
  log.txt        the progress lines

  python bench/paper_gpu.py [--out DIR] [--budget 540] [--resume DIR] [--data PATH] [--quick]

--resume DIR continues from another folder of these files (e.g. a first GPU run's output,
brought back): training goes on from the saved epoch, model, optimizer, schedule and RNG state
(a CUDA generator's state on a GPU, reseeded where the device type differs, which
results.json notes), and the spectra already measured are kept. --quick runs the same code at
tiny sizes on the CPU in seconds (tests/test_paper_gpu.py checks every output and a resume).

GPU-seconds per step at the paper's size, at the H200 rates measured earlier (docs/benchmarks.md,
docs/scale.md: training 20,409 images/s, J 33,829 rows/s at p = 268,579, eigh of a 30k Gram matrix
16.8 s). Estimates from those rates, not measurements of this script (results.json holds the
measured seconds and ``h200_estimates_s``):

  data: unpack the archive, decode 12,999 JPEGs, subset file   host CPU: 14 s measured on 2 busy cores here
  train sgd_clean: 400 x 9999 = 4.00M images                  196 s
  train sgd_corrupt50: 800 x 9999 = 8.00M images              392 s   (the pair one after the other: 588 s)
  evaluation of 12,999 images after epochs 1-10 and every 10th
    (138 times; forward only, assumed 1/3 of a training image)  29 s   (0.21 s each)
  each spectrum (29,997 x 268,579): J 0.9 s, Gram 7.2 s (FP64 at the datasheet's 67 TFLOP/s peak: no
    Gram rate was measured on a GPU), eigh 16.8 s              25 s   (J_init and two J_final: 75 s)
  steps 1 and 2 in all                                        692 s: more than one 540-s budget unless
    sharing the GPU gains 1.3x or more; a second command (--resume) finishes them
  step 3: Gram ratio at 30,000 x 20,000 (three products, 1.6 s at peak; writing the 2.4 GB file is
    disk time); Adam 196 s + 10 s evaluation + 25 s spectrum   231 s

Only a few lines run on a GPU alone (sync, new_stream, on_stream, free_bytes, device_name: the
CUDA branch of each); every other line runs in the CPU test first.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # the budget counts from here, before torch's import

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import gc  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if (ROOT / "src" / "jacobian_spectrum").is_dir():  # the tree's own package (the GPU image has none installed)
    sys.path.insert(0, str(ROOT / "src"))

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from jacobian_spectrum.analysis.measure import TABLE_ROWS, flatten_rows, projection_ratios  # noqa: E402
from jacobian_spectrum.analysis.quantities import energy_share, no_memorisation_alignment  # noqa: E402
from jacobian_spectrum.common.device import select_device  # noqa: E402
from jacobian_spectrum.common.h5io import atomic_path, write_provenance  # noqa: E402
from jacobian_spectrum.data.archive import ARCHIVE_MANIFEST, extract_archive  # noqa: E402
from jacobian_spectrum.data.corruption import corrupt_labels, one_hot  # noqa: E402
from jacobian_spectrum.data.subset import build_subset, read_split, write_subset  # noqa: E402
from jacobian_spectrum.figures.paper import (  # noqa: E402
    PAPER_TABLE_TITLES,
    PAPER_TABLES,
    format_value,
    markdown_columns,
    save_figure,
    write_csv,
)
from jacobian_spectrum.jacobian.compute import jacobian  # noqa: E402
from jacobian_spectrum.jacobian.probe import probe_errors  # noqa: E402
from jacobian_spectrum.spectrum.dense import slab_width  # noqa: E402
from jacobian_spectrum.spectrum.device import eigh_checked, gram_in_memory, gram_on_device  # noqa: E402
from jacobian_spectrum.train.loop import TrainSettings, augment, least_squares_loss, make_optimizer, predict  # noqa: E402
from jacobian_spectrum.train.models import ModelSpec, build_model, count_parameters  # noqa: E402
from jacobian_spectrum.train.trajectory import errors, split_errors  # noqa: E402

log = logging.getLogger("jacobian_spectrum.paper_gpu")  # a child: the package's own lines land in log.txt too

# The paper's runs, as config/paper.yaml has them (tests/test_paper_gpu.py compares the two).
PAPER_RUNS = {
    "sgd_clean": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "epochs": 400, "milestones": [260, 360]},
    "sgd_corrupt50": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "epochs": 800, "milestones": [700]},
    "adam_clean": {"optimizer": "adam", "lr": 0.001, "epochs": 400},
}
CORRUPTION = {"sgd_clean": 0.0, "sgd_corrupt50": 0.5, "adam_clean": 0.0}
QUICK_EPOCHS = {"sgd_clean": (6, [4, 5]), "sgd_corrupt50": (12, [10]), "adam_clean": (6, [])}
PAPER_TRAINING = {"batch_size": 128, "augment_crop": True, "augment_flip": True, "seed": 0, "resume_every": 10}
TABLE_RUNS = {1: "sgd_clean", 3: "sgd_corrupt50", 2: "adam_clean"}  # in the order they are measured
FIG8_RUN = "sgd_corrupt50"
PAIR = ["sgd_clean", "sgd_corrupt50"]

# rates measured earlier on one H200 (docs/benchmarks.md, docs/scale.md); FP64_PEAK is the datasheet's
H200_TRAIN_IMAGES_PER_S = 20_409
H200_J_ROWS_PER_S = 33_829
H200_EIGH_30K_S = 16.8
H200_FP64_PEAK_FLOPS = 67e12
EVAL_COST = 1 / 3  # a predicted image costs about a third of a trained one (forward only): assumed

OUTPUT_FILES = (
    "results.json",
    "table1.md",
    "table2.md",
    "table3.md",
    "fig8.png",
    "fig8.csv",
    "checkpoints.pt",
    "log.txt",
)
MAX_FILE_BYTES = 16 << 20
CHECKPOINT_FORMAT = "paper_gpu.checkpoints/1"
HISTORY_COLUMNS = (
    "run",
    "epoch",
    "lr",
    "batch_loss",
    "train_error",
    "train_error_clean",
    "train_error_kept",
    "train_error_corrupted",
    "test_error",
)
SAFETY = 1.2  # predictions are stretched by this: a step that only just fits is not started


# ---------------------------------------------------------------- the few lines that differ on a GPU
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn, device: torch.device) -> float:
    """Wall seconds of fn(), the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def new_stream(device: torch.device):
    return torch.cuda.Stream(device) if device.type == "cuda" else None


def on_stream(stream):
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def free_bytes(device: torch.device) -> float:
    """Free memory where the spectrum's tensors go: the GPU's, or the host's available memory."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    return math.inf


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- sizes
@dataclass
class Plan:
    """The experiment's sizes: the paper's, or --quick's tiny ones on the CPU."""

    quick: bool
    classes: list[str] = field(default_factory=lambda: ["airplane", "automobile", "bird"])
    train_per_class: int = 3333
    test_per_class: int = 1000
    width: float = 1.0
    eval_every: int = 10
    info_dim: int = 50
    data_seed: int = 0
    corruption_seed: int = 0
    init_seed: int = 0
    gram_rows: int = 30_000
    gram_cols: int = 20_000
    memory_budget_mb: float = 4000.0  # per Gram slab (float64) on the device
    checkpoint_every: float = 60.0
    training: dict = field(default_factory=lambda: dict(PAPER_TRAINING))
    runs: dict = field(default_factory=lambda: copy.deepcopy(PAPER_RUNS))

    @classmethod
    def for_args(cls, args: argparse.Namespace) -> "Plan":
        plan = cls(quick=args.quick)
        if args.quick:
            plan.train_per_class, plan.test_per_class, plan.width, plan.eval_every = 10, 5, 0.25, 2
            plan.gram_rows, plan.gram_cols, plan.memory_budget_mb, plan.checkpoint_every = 300, 2000, 50.0, 1.0
            plan.training["batch_size"] = 16
            for name, (epochs, milestones) in QUICK_EPOCHS.items():
                plan.runs[name].update(epochs=epochs, milestones=milestones)
        plan.eval_every = args.eval_every or plan.eval_every
        plan.checkpoint_every = args.checkpoint_every if args.checkpoint_every is not None else plan.checkpoint_every
        return plan

    def settings(self, name: str) -> TrainSettings:
        return TrainSettings.from_config(self.runs[name], self.training, [])


def eval_epoch(epoch: int, epochs: int, every: int) -> bool:
    """Whether the predictions are taken after this epoch: each of the first 10, every ``every``-th, the last."""
    return epoch <= 10 or epoch % every == 0 or epoch == epochs


def h200_estimates(n: int, n_test: int, k: int, p: int, plan: Plan) -> dict:
    """Seconds of each step at the H200 rates measured earlier (docs/benchmarks.md): estimates, not measurements."""
    nk = n * k
    out: dict[str, float | str] = {}
    each_eval = (n + n_test) * EVAL_COST / H200_TRAIN_IMAGES_PER_S
    for name, run in plan.runs.items():
        evals = sum(eval_epoch(e, run["epochs"], plan.eval_every) for e in range(1, run["epochs"] + 1))
        out[f"train {name}"] = run["epochs"] * n / H200_TRAIN_IMAGES_PER_S
        out[f"evaluation {name}"] = evals * each_eval
    spectrum = nk / H200_J_ROWS_PER_S + 2 * nk**2 * p / H200_FP64_PEAK_FLOPS + H200_EIGH_30K_S * (nk / 30_000) ** 3
    out["spectrum, each J"] = spectrum
    out["gram ratio (compute only)"] = 3 * 2 * plan.gram_rows**2 * plan.gram_cols / H200_FP64_PEAK_FLOPS
    out["steps 1 and 2"] = sum(out[f"{w} {r}"] for w in ("train", "evaluation") for r in PAIR) + 3 * spectrum
    out["basis"] = (
        f"training {H200_TRAIN_IMAGES_PER_S} images/s, evaluation at {EVAL_COST:.2f} of a training image, J "
        f"{H200_J_ROWS_PER_S} rows/s, eigh {H200_EIGH_30K_S} s at n = 30,000 (scaled by n^3), Gram at the "
        f"datasheet's FP64 peak {H200_FP64_PEAK_FLOPS / 1e12:.0f} TFLOP/s"
    )
    return out


# ---------------------------------------------------------------- data
@dataclass
class Data:
    x_train: torch.Tensor  # normalised as the workflow's read_split gives it, on the device
    x_test: torch.Tensor
    y_clean: np.ndarray
    y_test: np.ndarray
    labels: dict[str, np.ndarray]  # run -> the labels it trains on
    num_classes: int
    image_shape: tuple[int, int, int]
    info: dict


def default_data() -> Path | None:
    """The CIFAR-10 image archive where these machines keep it: shared/ in the tree, or beside it."""
    for path in (
        ROOT / "shared" / "data" / "cifar10-jpeg.tar.gz",
        ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz",
    ):
        if path.is_file():
            return path
    return None


def image_root(data: Path, work: Path) -> Path:
    """An image folder as it is, or an archive unpacked (checked, atomic) once into ``work``."""
    if data.is_dir():
        return data
    root = work / f"images-{hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:10]}"
    if not (root / ARCHIVE_MANIFEST).is_file():  # unpacked by an earlier call on this machine otherwise
        extract_archive(data, root)
    return root


def load_data(data: Path, work: Path, plan: Plan, device: torch.device) -> Data:
    """The workflow's class-balanced subset, labels and normalisation (data/), on the device."""
    root = image_root(data, work)
    dataset = {
        "name": "imagefolder",
        "root": str(root),
        "classes": plan.classes,
        "train_per_class": plan.train_per_class,
        "test_per_class": plan.test_per_class,
        "seed": plan.data_seed,
    }
    subset, source = build_subset(dataset)
    subset_path = work / f"subset-{os.getpid()}.h5"
    write_subset(subset_path, subset, source, dataset)
    train, test = read_split(subset_path, "train"), read_split(subset_path, "test")
    subset_path.unlink()
    k = train.num_classes
    labels = {}
    for name, level in CORRUPTION.items():
        labels[name] = train.y if level == 0 else corrupt_labels(train.y, k, level, plan.corruption_seed)[0]
    digest = hashlib.sha256()
    for part in (subset.source_index["train"], subset.source_index["test"], train.y, test.y):
        digest.update(np.ascontiguousarray(part).tobytes())
    info = {
        "source": str(data),
        "classes": subset.class_names,
        "n_train": len(train.y),
        "n_test": len(test.y),
        "image_shape": list(train.image_shape),
        "subset_sha256": digest.hexdigest()[:16],
        "corrupted_labels_sgd_corrupt50": int((labels["sgd_corrupt50"] != train.y).sum()),
    }
    return Data(
        torch.from_numpy(train.x).to(device),
        torch.from_numpy(test.x).to(device),
        train.y,
        test.y,
        labels,
        k,
        train.image_shape,
        info,
    )


# ---------------------------------------------------------------- training
class TrainingRun:
    """One run's network, optimizer, schedule and generator, stepped a batch at a time so that
    several runs can share the device. The ops and their order are those of
    ``train.loop.train_epoch`` (bit-for-bit on the CPU, tests/test_paper_gpu.py); only the
    per-step ``float(loss)`` is gone: the loss sums on the device and is read once an epoch."""

    def __init__(self, name: str, settings: TrainSettings, labels: np.ndarray, num_classes: int, model, device) -> None:
        self.name, self.settings, self.labels, self.device = name, settings, labels, device
        self.model = model.to(device).train()
        self.opt, self.sched = make_optimizer(self.model, settings)
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(settings.seed)
        self.y = torch.from_numpy(one_hot(labels, num_classes, np.float32)).to(device)
        self.stream = new_stream(device)
        self.epoch = 0
        self.history: list[dict] = []
        self.seconds = 0.0
        self.rng_note = ""
        sync(device)  # the copies above ran on the default stream; this run's stream does not wait for it

    @property
    def done(self) -> bool:
        return self.epoch >= self.settings.epochs

    def begin_epoch(self, n: int) -> None:
        with on_stream(self.stream):
            self.perm = torch.randperm(n, generator=self.gen, device=self.device)
            self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)

    def step(self, x: torch.Tensor, start: int) -> None:
        s = self.settings
        with on_stream(self.stream):
            idx = self.perm[start : start + s.batch_size]
            xb = augment(x[idx], s.augment_crop, s.augment_flip, self.gen)
            loss = least_squares_loss(self.model(xb), self.y[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.loss_sum += loss.detach().double() * len(idx)

    def end_epoch(self, n: int) -> tuple[float, float]:
        """(the epoch's step size, its mean batch loss); steps the schedule as train.loop does."""
        with on_stream(self.stream):
            loss = float(self.loss_sum) / n
        lr = self.opt.param_groups[0]["lr"]
        self.sched.step()
        self.epoch += 1
        if not math.isfinite(loss):
            raise FloatingPointError(f"{self.name} diverged at epoch {self.epoch} (loss {loss})")
        return lr, loss

    def state(self) -> dict:
        return {
            "settings": asdict(self.settings),
            "epoch": self.epoch,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "generator": self.gen.get_state(),
            "generator_device": self.device.type,
            "history": self.history,
            "seconds": self.seconds,
        }

    def load(self, state: dict) -> None:
        if state["settings"] != asdict(self.settings):
            raise SystemExit(f"--resume: run {self.name} was trained with {state['settings']}, not {self.settings}")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.epoch, self.history, self.seconds = int(state["epoch"]), list(state["history"]), float(state["seconds"])
        if state["generator_device"] == self.device.type:
            self.gen.set_state(state["generator"])
        else:  # a CPU generator's state does not fit a CUDA generator (nor back): a new stream of draws
            self.gen.manual_seed(self.settings.seed + 1_000_003 * self.epoch)
            self.rng_note = f"generator reseeded at epoch {self.epoch} (checkpoint from {state['generator_device']})"
        sync(self.device)


def train_round(runs: list[TrainingRun], x: torch.Tensor, device: torch.device) -> float:
    """One epoch of every run, their batches interleaved: while one run's kernels run on its
    stream the host queues the other's. Returns the round's seconds (the device synchronised)."""
    sizes = {r.settings.batch_size for r in runs}
    if len(sizes) != 1:
        raise ValueError(f"runs trained together share one batch size, not {sorted(sizes)}")
    n, t0 = len(x), time.perf_counter()
    for r in runs:
        r.begin_epoch(n)
    for start in range(0, n, sizes.pop()):
        for r in runs:
            r.step(x, start)
    sync(device)
    return time.perf_counter() - t0


def history_row(epoch: int, lr: float, loss: float, train_pred, test_pred, labels, data: Data) -> dict:
    """The errors after an epoch, as trajectory.h5 has them: against the trained and the clean labels,
    on the kept and the corrupted samples (1 - memorised), and on the test set."""
    kept, corrupted = split_errors(train_pred, labels, data.y_clean)
    return {
        "epoch": epoch,
        "lr": lr,
        "batch_loss": loss,
        "train_error": float(errors(train_pred, labels)),
        "train_error_clean": float(errors(train_pred, data.y_clean)),
        "train_error_kept": float(kept),
        "train_error_corrupted": float(corrupted),
        "test_error": float(errors(test_pred, data.y_test)),
    }


def evaluate(run: TrainingRun, data: Data, lr: float, loss: float) -> dict:
    with on_stream(run.stream):
        train_pred = predict(run.model, data.x_train).numpy()
        test_pred = predict(run.model, data.x_test).numpy()
    return history_row(run.epoch, lr, loss, train_pred, test_pred, run.labels, data)


# ---------------------------------------------------------------- spectra
def alignment_rows(U: np.ndarray, s: np.ndarray, data: Data, init_pred: np.ndarray) -> dict:
    """Tables 1-3's six columns for every run's labels y and r0 = f(W0) - y (analysis.measure's)."""
    out = {}
    for name, labels in data.labels.items():
        y = flatten_rows(one_hot(labels, data.num_classes))
        r0 = flatten_rows(init_pred) - y
        out[name] = list(projection_ratios(y, U, s) + projection_ratios(r0, U, s))
    return out


def spectrum_memory(rows: int, cols: int, memory_budget_mb: float) -> float:
    """Bytes the spectrum holds at its peak: J, G and a slab; then G, V and the residual check's two."""
    j, g = rows * cols * 4.0, rows * rows * 8.0
    slab = rows * slab_width(rows, cols, memory_budget_mb, 1) * 8.0
    return max(j + g + slab, 4 * g) + (512 << 20)


# ---------------------------------------------------------------- the session
@dataclass
class Rates:
    """What this run measured, for the next step's prediction."""

    step_s: float = math.nan  # one training step of one run (warm-up)
    rounds: dict = field(default_factory=dict)  # active runs -> seconds of each round
    eval_s: list = field(default_factory=list)
    jacobian_rows_per_s: float = math.nan
    gram_flops_per_s: float = math.nan
    eigh: tuple = ()  # (n, seconds): calibrated, then measured at the spectra's size
    eigh_measured: bool = False
    write_s: float = 1.0

    def round_s(self, active: int, steps: int) -> float:
        if active in self.rounds:
            return max(self.rounds[active][-3:])
        if self.rounds:  # the other count of runs, scaled
            other = min(self.rounds, key=lambda a: abs(a - active))
            return max(self.rounds[other][-3:]) * active / other
        return self.step_s * steps * active

    def evaluation_s(self, steps: int, n_train: int, n_test: int) -> float:
        if self.eval_s:
            return max(self.eval_s[-3:])
        return self.step_s * steps * (n_train + n_test) / n_train * EVAL_COST

    def eigh_s(self, n: int, device: torch.device) -> float:
        n0, t0 = self.eigh
        scaled = t0 * (n / n0) ** 3
        if self.eigh_measured:
            return scaled
        # a small eigh on a GPU is latency-bound, so scaling it up overestimates: the H200's measured one instead
        return H200_EIGH_30K_S * (n / 30_000) ** 3 if device.type == "cuda" else scaled

    def spectrum_s(self, rows: int, cols: int, device: torch.device, probe_rows: int) -> float:
        j = (rows + 3 * probe_rows) / self.jacobian_rows_per_s
        host = 3 * rows * rows * 8 / 5e9  # eigenvectors to the host and reversed there
        return j + 2.0 * rows * rows * cols / self.gram_flops_per_s + self.eigh_s(rows, device) + host


class Session:
    """The experiment's state: data, runs, what is measured, and the output folder it writes."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.plan = args, Plan.for_args(args)
        self.out, self.work = Path(args.out), Path(args.work)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.device = select_device("cpu" if args.quick else args.device)  # TF32 off
        self.rates = Rates()
        self.last_checkpoint = time.perf_counter()
        self.fig8_rows = -1
        self.results: dict = {
            "script": "bench/paper_gpu.py",
            "argv": sys.argv[1:],
            "quick": args.quick,
            "device": device_name(self.device),
            "torch": torch.__version__,
            "tf32": bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32),
            "budget_s": args.budget,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "plan": asdict(self.plan),
            "steps": [],
            "skipped": [],
            "spectra": {},
            "runs": {},
            "rates": {},
        }
        self.prior = self.read_prior(Path(args.resume)) if args.resume else None

    # -------------------------------------------------------- budget, steps, outputs
    def elapsed(self) -> float:
        return time.perf_counter() - T_START

    def fits(self, predicted: float, reserve: float = 0.0) -> bool:
        return self.elapsed() + SAFETY * predicted + reserve + 2 * self.rates.write_s <= self.args.budget

    def budget_reason(self, what: str, predicted: float, reserve: float = 0.0) -> str:
        kept = f", {reserve:.1f} s kept for the J_init spectrum" if reserve else ""
        return (
            f"{what}: predicted {predicted:.1f} s (x{SAFETY} margin) would pass the budget "
            f"({self.elapsed():.1f} of {self.args.budget:.0f} s used{kept})"
        )

    def record(self, step: str, status: str, **info: object) -> None:
        entry = {"step": step, "status": status, "at_s": round(self.elapsed(), 2), **info}
        self.results["steps"].append(entry)
        if status not in ("done", "kept"):
            self.results["skipped"].append({"step": step, "status": status, "reason": info.get("reason", "")})
        line = f"{step}: {status}" + (f" ({info['reason']})" if info.get("reason") else "")
        log.info("%s", line)
        self.write_outputs()

    def write_outputs(self) -> None:
        """results.json, the three tables and Figure 8, each atomically: what is there so far."""
        t0 = time.perf_counter()
        self.results["elapsed_s"] = round(self.elapsed(), 2)
        self.results["runs"] = {name: self.run_summary(run) for name, run in getattr(self, "runs", {}).items()}
        with atomic_path(self.out / "results.json") as tmp:
            tmp.write_text(json.dumps(clean_json(self.results), indent=1) + "\n")
        for number in (1, 2, 3):
            with atomic_path(self.out / f"table{number}.md") as tmp:
                tmp.write_text(self.table_markdown(number))
        rows = sum(len(r.history) for r in getattr(self, "runs", {}).values())
        if rows != self.fig8_rows:  # the figure only when a new epoch was evaluated
            self.write_fig8()
            self.fig8_rows = rows
        self.rates.write_s = time.perf_counter() - t0

    def checkpoint(self) -> None:
        sync(self.device)
        state = {
            "format": CHECKPOINT_FORMAT,
            "setup": self.setup,
            "init": self.init_state,
            "init_train_predictions": torch.from_numpy(self.init_pred),
            "init_test_predictions": torch.from_numpy(self.init_test_pred),
            "runs": {name: run.state() for name, run in self.runs.items()},
        }
        with atomic_path(self.out / "checkpoints.pt") as tmp:
            torch.save(state, tmp)
        self.last_checkpoint = time.perf_counter()

    def read_prior(self, folder: Path) -> dict:
        """An earlier output folder: its checkpoints (required) and results.json (its spectra are kept)."""
        path = folder / "checkpoints.pt"
        if not path.is_file():
            raise SystemExit(f"--resume {folder}: no checkpoints.pt there")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise SystemExit(f"--resume {folder}: checkpoints.pt is not a {CHECKPOINT_FORMAT} file")
        results = json.loads((folder / "results.json").read_text()) if (folder / "results.json").is_file() else {}
        return {"folder": str(folder), "checkpoints": ckpt, "results": results}

    # -------------------------------------------------------- steps
    def prepare(self) -> None:
        """Data, the shared initialisation and every run (from --resume's checkpoints where given)."""
        t0 = time.perf_counter()
        data_path = Path(self.args.data) if self.args.data else default_data()
        if data_path is None or not data_path.exists():
            raise SystemExit(f"--data: no CIFAR-10 image archive or folder at {data_path}; pass --data PATH")
        self.data = load_data(data_path, self.work, self.plan, self.device)
        self.results["data"] = {**self.data.info, "seconds": round(time.perf_counter() - t0, 2)}
        c, h, _ = self.data.image_shape
        self.spec = ModelSpec("resnet20", c, h, self.data.num_classes, width=self.plan.width)
        self.setup = {
            "classes": self.data.info["classes"],
            "subset_sha256": self.data.info["subset_sha256"],
            "model": asdict(self.spec),
            "seeds": [self.plan.data_seed, self.plan.corruption_seed, self.plan.init_seed],
        }
        ckpt = self.prior["checkpoints"] if self.prior else None
        if ckpt is not None and ckpt["setup"] != self.setup:
            raise SystemExit(f"--resume: the checkpoints are of {ckpt['setup']}, this run is {self.setup}")
        init = build_model(self.spec, seed=self.plan.init_seed)  # the workflow's initialise rule
        if ckpt is not None:
            init.load_state_dict(ckpt["init"])
        self.init_model = init.to(self.device)
        self.init_state = {k: v.detach().cpu().clone() for k, v in init.state_dict().items()}
        self.init_pred = predict(self.init_model, self.data.x_train).numpy()
        self.init_test_pred = predict(self.init_model, self.data.x_test).numpy()
        self.runs = {name: self.new_run(name, ckpt) for name in self.plan.runs}
        self.results["model"] = {**asdict(self.spec), "p": count_parameters(self.init_model)}
        self.results["h200_estimates_s"] = h200_estimates(
            self.data.info["n_train"],
            self.data.info["n_test"],
            self.data.num_classes,
            count_parameters(init),
            self.plan,
        )
        if self.prior:
            self.keep_prior_results()
        self.record("data", "done", seconds=self.results["data"]["seconds"])

    def new_run(self, name: str, ckpt: dict | None) -> TrainingRun:
        model = copy.deepcopy(self.init_model)
        run = TrainingRun(
            name, self.plan.settings(name), self.data.labels[name], self.data.num_classes, model, self.device
        )
        if ckpt is not None and name in ckpt["runs"]:
            run.load(ckpt["runs"][name])
        if not run.history:  # epoch 0: the shared initialisation's predictions
            run.history.append(
                history_row(0, math.nan, math.nan, self.init_pred, self.init_test_pred, run.labels, self.data)
            )
        return run

    def keep_prior_results(self) -> None:
        prior = self.prior["results"]
        self.results["resumed_from"] = {
            "folder": self.prior["folder"],
            "epochs": {name: run.epoch for name, run in self.runs.items()},
            "previous_steps": prior.get("steps", []),
        }
        self.results["spectra"] = dict(prior.get("spectra", {}))
        if "gram_ratio" in prior:
            self.results["gram_ratio"] = prior["gram_ratio"]
        for spectrum in self.results["spectra"].values():  # a measured eigh is the best prediction
            self.rates.eigh, self.rates.eigh_measured = (spectrum["rows"], spectrum["seconds"]["eigh"]), True

    def calibrate(self) -> None:
        """A few training steps (on a throwaway copy), a Jacobian of a few samples, a Gram slab and
        a small eigh: the rates the first predictions use (the measured steps replace them)."""
        t0, d = time.perf_counter(), self.data
        run = TrainingRun(
            "warm-up",
            self.plan.settings("sgd_clean"),
            d.y_clean,
            d.num_classes,
            copy.deepcopy(self.init_model),
            self.device,
        )
        run.begin_epoch(len(d.x_train))
        batch = run.settings.batch_size
        starts = [(i * batch) % len(d.x_train) for i in range(6)]
        for start in starts[:3]:  # warm-up: cuDNN's choice of kernels, the allocator
            run.step(d.x_train, start)
        sync(self.device)
        t1 = time.perf_counter()
        for start in starts[3:]:
            run.step(d.x_train, start)
        sync(self.device)
        self.rates.step_s = (time.perf_counter() - t1) / 3
        x = d.x_train[: min(len(d.x_train), 128)]
        jacobian(self.init_model, x)  # warm-up
        sync(self.device)
        t1 = time.perf_counter()
        rows = len(jacobian(self.init_model, x))
        sync(self.device)
        self.rates.jacobian_rows_per_s = rows / (time.perf_counter() - t1)
        self.calibrate_linear_algebra(len(d.x_train) * d.num_classes)
        self.results["rates"]["calibration"] = {
            "training_step_s": self.rates.step_s,
            "jacobian_rows_per_s": self.rates.jacobian_rows_per_s,
            "gram_flops_per_s": self.rates.gram_flops_per_s,
            "eigh": list(self.rates.eigh),
            "seconds": time.perf_counter() - t0,
        }
        self.init_model.train()

    def calibrate_linear_algebra(self, rows: int) -> None:
        m = min(rows, 4096)
        slab = torch.randn(m, m, dtype=torch.float64, device=self.device)
        G = torch.zeros(m, m, dtype=torch.float64, device=self.device)
        G.addmm_(slab, slab.T)  # warm-up
        sync(self.device)
        t1 = time.perf_counter()
        G.addmm_(slab, slab.T)
        sync(self.device)
        self.rates.gram_flops_per_s = 2.0 * m**3 / (time.perf_counter() - t1)
        n0 = min(rows, 1000)
        A = G[:n0, :n0] + G[:n0, :n0].T
        torch.linalg.eigh(A)  # warm-up
        sync(self.device)
        t1 = time.perf_counter()
        torch.linalg.eigh(A)
        sync(self.device)
        self.rates.eigh = (n0, time.perf_counter() - t1)
        del slab, G, A
        release(self.device)

    def train(self, names: list[str], reserve_spectrum: bool) -> None:
        """Rounds of one epoch of every unfinished run in ``names`` while the next round fits the
        budget (and, with ``reserve_spectrum``, the J_init spectrum's time after it)."""
        runs, step = [self.runs[n] for n in names], "train " + " + ".join(names)
        if all(r.done for r in runs):
            self.record(step, "kept", reason="", epochs=self.epochs(runs), note="trained before --resume")
            return
        t0, start_epochs, reason = time.perf_counter(), self.epochs(runs), ""
        self.trained = [0, 0.0]  # images and seconds of this step's rounds
        steps = -(-len(self.data.x_train) // runs[0].settings.batch_size)
        while active := [r for r in runs if not r.done]:
            if self.args.max_epoch is not None and min(r.epoch for r in active) >= self.args.max_epoch:
                reason = f"stopped at --max-epoch {self.args.max_epoch}"
                break
            predicted = self.rates.round_s(len(active), steps) + self.eval_prediction(active, steps)
            reserve = self.reserve(reserve_spectrum)
            if not self.fits(predicted, reserve):
                reason = self.budget_reason(f"the next round ({', '.join(r.name for r in active)})", predicted, reserve)
                break
            self.round(active)
            if time.perf_counter() - self.last_checkpoint >= self.plan.checkpoint_every:
                self.checkpoint()
                self.write_outputs()
        self.checkpoint()
        status = "done" if all(r.done for r in runs) else "partial" if self.trained[0] else "skipped"
        info = {
            "seconds": round(time.perf_counter() - t0, 2),
            "epochs_before": start_epochs,
            "epochs": self.epochs(runs),
            "images_per_s": self.trained[0] / self.trained[1] if self.trained[1] else None,
        }
        self.record(step, status, reason=reason, **info)

    def epochs(self, runs: list[TrainingRun]) -> dict:
        return {r.name: f"{r.epoch}/{r.settings.epochs}" for r in runs}

    def eval_prediction(self, active: list[TrainingRun], steps: int) -> float:
        due = sum(eval_epoch(r.epoch + 1, r.settings.epochs, self.plan.eval_every) for r in active)
        n_train, n_test = len(self.data.x_train), len(self.data.x_test)
        return due * self.rates.evaluation_s(steps, n_train, n_test)

    def reserve(self, reserve_spectrum: bool) -> float:
        if not reserve_spectrum or "J_init" in self.results["spectra"]:
            return 0.0
        rows, cols = len(self.data.x_train) * self.data.num_classes, count_parameters(self.init_model)
        if spectrum_memory(rows, cols, self.plan.memory_budget_mb) > free_bytes(self.device):
            return 0.0  # it will be skipped for its memory: no time to keep for it
        return SAFETY * self.rates.spectrum_s(rows, cols, self.device, self.probe_samples() * self.data.num_classes)

    def round(self, active: list[TrainingRun]) -> None:
        seconds = train_round(active, self.data.x_train, self.device)
        self.rates.rounds.setdefault(len(active), []).append(seconds)
        n, parts = len(self.data.x_train), []
        self.trained[0] += n * len(active)
        self.trained[1] += seconds
        for r in active:
            lr, loss = r.end_epoch(n)
            r.seconds += seconds
            if eval_epoch(r.epoch, r.settings.epochs, self.plan.eval_every):
                t0 = time.perf_counter()
                r.history.append(evaluate(r, self.data, lr, loss))
                self.rates.eval_s.append(time.perf_counter() - t0)
                h = r.history[-1]
                parts.append(
                    f"{r.name} {r.epoch}/{r.settings.epochs} loss {loss:.4f} lr {lr:.2g} "
                    f"train {h['train_error']:.3f} test {h['test_error']:.3f}"
                )
            else:
                parts.append(f"{r.name} {r.epoch}/{r.settings.epochs} loss {loss:.4f}")
        log.info("%s | %.2f s, %.0f images/s", " | ".join(parts), seconds, n * len(active) / seconds)

    def probe_samples(self) -> int:
        return min(len(self.data.x_train), 64)

    def spectrum(self, key: str, run: TrainingRun | None) -> None:
        """J (float32) of the initialisation or a finished run, its Gram matrix and eigh in float64 on
        the device, checked by probes and the eigh residual; the tables' rows for every run's labels."""
        step = f"spectrum {key}"
        if key in self.results["spectra"]:
            return self.record(step, "kept", reason="", note="measured before --resume")
        if run is not None and not run.done:
            return self.record(step, "skipped", reason=f"{run.name} is at epoch {run.epoch} of {run.settings.epochs}")
        model = self.init_model if run is None else run.model
        rows, cols = len(self.data.x_train) * self.data.num_classes, count_parameters(model)
        predicted = self.rates.spectrum_s(rows, cols, self.device, self.probe_samples() * self.data.num_classes)
        need, free = spectrum_memory(rows, cols, self.plan.memory_budget_mb), free_bytes(self.device)
        if need > free:
            reason = f"needs about {need / 1e9:.1f} GB on {self.device.type}, {free / 1e9:.1f} GB free"
            return self.record(step, "skipped", reason=reason, predicted_s=predicted)
        if not self.fits(predicted):
            return self.record(step, "skipped", reason=self.budget_reason(step, predicted), predicted_s=predicted)
        entry = self.measure_spectrum(model, rows, cols)
        entry.update(
            predicted_s=predicted, epoch=0 if run is None else run.epoch, run=None if run is None else run.name
        )
        self.results["spectra"][key] = entry
        self.rates.eigh, self.rates.eigh_measured = (rows, entry["seconds"]["eigh"]), True
        self.record(step, "done", seconds=entry["seconds"]["total"], predicted_s=predicted)

    def measure_spectrum(self, model, rows: int, cols: int) -> dict:
        d, seconds, t0 = self.data, {}, time.perf_counter()
        J = jacobian(model, d.x_train)
        sync(self.device)
        seconds["jacobian"] = time.perf_counter() - t0
        self.rates.jacobian_rows_per_s = rows / seconds["jacobian"]
        t1, m = time.perf_counter(), self.probe_samples()
        probes = probe_errors(model, d.x_train[:m], J[: m * d.num_classes])
        seconds["probe"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        G = gram_in_memory(J, self.plan.memory_budget_mb)
        del J
        sync(self.device)
        seconds["gram"] = time.perf_counter() - t1
        self.rates.gram_flops_per_s = 2.0 * rows * rows * cols / seconds["gram"]
        release(self.device)
        t1 = time.perf_counter()
        w, V = eigh_checked(G)  # the workflow's: residual-checked, LAPACK on the CPU where the device's fails
        seconds["eigh"] = time.perf_counter() - t1
        del G
        release(self.device)
        s, r = np.sqrt(np.maximum(w, 0.0)), self.plan.info_dim
        U = V[:, :r].copy()
        del V
        model.train()
        seconds["total"] = time.perf_counter() - t0
        return {
            "rows": rows,
            "cols": cols,
            "seconds": seconds,
            "probe_errors": {"jvp": probes[0], "vjp": probes[1]},
            "singular_values_top": s[:100].tolist(),
            "s_r": float(s[r - 1]),
            "energy_share_top_r": float(energy_share(s)[r - 1]),
            "alignment": alignment_rows(U, s, d, self.init_pred),
            "no_memorisation": {
                name: list(no_memorisation_alignment(flatten_rows(one_hot(y, d.num_classes)), d.y_clean, d.num_classes))
                for name, y in d.labels.items()
            },
        }

    def gram_ratio(self) -> None:
        """bench/spectrum_device.py's measurement: G streamed from an HDF5 J through the device
        (spectrum.device.gram_on_device) against the device's in-memory float64 product."""
        step = "gram ratio"
        if "gram_ratio" in self.results:
            return self.record(step, "kept", reason="", note="measured before --resume")
        rows, cols = self.plan.gram_rows, self.plan.gram_cols
        bytes_ = rows * cols * 4.0
        predicted = 3 * 2.0 * rows * rows * cols / self.rates.gram_flops_per_s + bytes_ / 0.5e9 + 3 * bytes_ / 2e9
        if not self.fits(predicted):
            return self.record(step, "skipped", reason=self.budget_reason(step, predicted), predicted_s=predicted)
        t0, path = time.perf_counter(), self.work / f"gram_ratio_J-{os.getpid()}.h5"
        try:
            gen = torch.Generator(device=self.device).manual_seed(0)
            with h5py.File(path, "w") as f:
                write_provenance(f, "jacobian", None, dtype="float32")
                dset = f.create_dataset("J", shape=(rows, cols), dtype=np.float32)
                for a in range(0, rows, 1000):
                    block = torch.randn(min(1000, rows - a), cols, generator=gen, device=self.device)
                    dset[a : a + len(block)] = block.cpu().numpy()
            write_s = time.perf_counter() - t0
            budget = self.plan.memory_budget_mb
            gram_on_device(path, self.device, budget)  # warm-up: page cache, kernels
            stream_s = seconds(lambda: gram_on_device(path, self.device, budget), self.device)
            with h5py.File(path) as f:  # the baseline: J on the device in float64, G in one product
                J = torch.from_numpy(f["J"][...]).to(self.device).double()
            memory_s = seconds(lambda: gram_in_memory(J, 2 * J.numel() * 12 / 1e6), self.device)
        finally:
            path.unlink(missing_ok=True)
            release(self.device)
        self.results["gram_ratio"] = {
            "shape": [rows, cols],
            "gram_stream_s": stream_s,
            "gram_memory_s": memory_s,
            "ratio_memory_over_stream": memory_s / stream_s,
            "write_s": write_s,
        }
        self.record(step, "done", seconds=round(time.perf_counter() - t0, 2), predicted_s=predicted)

    def step3_ready(self) -> str:
        """'' when steps 1 and 2 are complete (step 3 comes after them), else why not."""
        missing = [k for k in ("J_init", *(f"J_final {n}" for n in PAIR)) if k not in self.results["spectra"]]
        unfinished = [r.name for r in (self.runs[n] for n in PAIR) if not r.done]
        if unfinished or missing:
            return f"steps 1 and 2 are not complete (training: {unfinished or 'done'}; spectra missing: {missing})"
        return ""

    # -------------------------------------------------------- what it writes
    def run_summary(self, run: TrainingRun) -> dict:
        h = run.history
        best = min(h, key=lambda row: row["test_error"])
        summary = {
            "settings": asdict(run.settings),
            "epoch": run.epoch,
            "done": run.done,
            "training_seconds": round(run.seconds, 2),
            "last": h[-1],
            "lowest_test_error": {"epoch": best["epoch"], "test_error": best["test_error"]},
        }
        if run.rng_note:
            summary["rng"] = run.rng_note
        return summary

    def scale(self, run: TrainingRun | None) -> str:
        d, n, p = self.data, self.data.info["n_train"], count_parameters(self.init_model)
        text = (
            f"CIFAR-10 images ({self.data.info['source']}) classes {', '.join(d.info['classes'])}, n = {n} "
            f"(nK = {n * d.num_classes}), resnet20 width {self.spec.width:g} (p = {p}), "
            f"r = {self.plan.info_dim}; J float32 on {device_name(self.device)} (TF32 off), Gram and eigh in float64"
        )
        return text + (f"; run at epoch {run.epoch} of {run.settings.epochs}" if run is not None else "")

    def table_markdown(self, number: int) -> str:
        name = TABLE_RUNS[number]
        run = getattr(self, "runs", {}).get(name)
        spectra = self.results["spectra"]
        measured = {
            "J_init": spectra.get("J_init", {}).get("alignment", {}).get(name),
            "J_final": spectra.get(f"J_final {name}", {}).get("alignment", {}).get(name),
        }
        scale = self.scale(run) if hasattr(self, "data") else "no data read yet"
        lines = [
            f"**{PAPER_TABLE_TITLES[number]}** (run {name}; measured: {scale})",
            "",
            "| | " + " | ".join(markdown_columns()) + " |",
            "|---" * (len(markdown_columns()) + 1) + "|",
        ]
        notes = []
        for row, paper in zip(TABLE_ROWS, PAPER_TABLES[number]):
            values = measured[row]
            cells = [
                (format_value(v) if values else "-") + f" (paper {format_value(q)})"
                for v, q in zip(values or paper, paper)
            ]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
            if values:
                diff = max(abs(values[i] - paper[i]) for i in (0, 1, 3, 4))
                notes.append(f"{row}: largest |measured - paper| over the four projection columns {diff:.3f}")
            else:
                notes.append(f"{row}: not measured ({self.why_missing('J_init' if row == 'J_init' else name)})")
        lines += ["", *notes]
        reference = spectra.get(f"J_final {name}", spectra.get("J_init", {})).get("no_memorisation", {}).get(name)
        if reference and reference[0] < 1:
            lines.append(
                f"No-memorisation reference (I = the true-class structure, none of the label noise): "
                f"\u2016P_I y\u2016/\u2016y\u2016 = {format_value(reference[0])}"
            )
        return "\n".join(lines) + "\n"

    def why_missing(self, key: str) -> str:
        """The last recorded reason a spectrum (or the run behind it) is not there."""
        wanted = "spectrum J_init" if key == "J_init" else f"spectrum J_final {key}"
        for entry in reversed(self.results["steps"]):
            if entry["step"] == wanted or (
                key != "J_init" and key in entry["step"] and entry["step"].startswith("train")
            ):
                if entry.get("reason"):
                    return entry["reason"]
        return "not reached yet"

    def write_fig8(self) -> None:
        import matplotlib.pyplot as plt  # Agg: figures.paper chose it

        runs = getattr(self, "runs", {})
        rows = [[name, *(row[c] for c in HISTORY_COLUMNS[1:])] for name, run in runs.items() for row in run.history]
        write_csv(self.out / "fig8.csv", HISTORY_COLUMNS, rows)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        run = runs.get(FIG8_RUN)
        if run is not None:
            epochs = [row["epoch"] for row in run.history]
            for key, label, style in (
                ("train_error", "training error (training labels)", "-"),
                ("train_error_clean", "training error (clean labels)", "--"),
                ("train_error_kept", "kept samples", "-."),
                ("train_error_corrupted", "corrupted samples (100% - memorised)", ":"),
                ("test_error", "test error", "k-"),
            ):
                ax.plot(epochs, [100 * row[key] for row in run.history], style, label=label)
            best = min(run.history, key=lambda row: row["test_error"])
            ax.plot(
                [best["epoch"]], [100 * best["test_error"]], "kv", label=f"lowest test error (epoch {best['epoch']})"
            )
            for m in run.settings.milestones:
                ax.axvline(m, color="0.6", linewidth=0.8)
            ax.set_title(
                f"Figure 8: 50% corrupted labels, SGD (epoch {run.epoch} of {run.settings.epochs})", fontsize=9
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel("misclassification error (%)")
        ax.legend(fontsize=7)
        save_figure(fig, [self.out / "fig8.png"])


def clean_json(value):
    """JSON without NaN or numpy types (NaN and infinities as null)."""
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def start_logging(out: Path, append: bool) -> None:
    parent = logging.getLogger("jacobian_spectrum")
    parent.setLevel(logging.INFO)
    parent.propagate = False
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for handler in (
        logging.StreamHandler(sys.stderr),
        logging.FileHandler(out / "log.txt", mode="a" if append else "w"),
    ):
        handler.setFormatter(fmt)
        parent.addHandler(handler)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="results/paper_gpu", help="output folder (at most 8 files)")
    ap.add_argument("--budget", type=float, default=540.0, help="wall seconds, counted from the script's start")
    ap.add_argument("--resume", help="an earlier output folder: continue from its checkpoints.pt and results.json")
    ap.add_argument("--data", help="CIFAR-10 image archive (.tar.gz) or folder train/<class>/, test/<class>/")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "paper_gpu_work"), help="unpacked images")
    ap.add_argument("--quick", action="store_true", help="tiny sizes on the CPU: a check of the script")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--eval-every", type=int, help="predictions after every N-th epoch (and each of the first 10)")
    ap.add_argument("--checkpoint-every", type=float, help="seconds between checkpoints (60; --quick 1)")
    ap.add_argument("--max-epoch", type=int, help="stop training at this epoch, as if the budget had ended (tests)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start_logging(out, append=bool(args.resume) and Path(args.resume).resolve() == out.resolve())
    session = Session(args)
    log.info(
        "paper_gpu on %s, budget %.0f s, out %s%s",
        session.results["device"],
        args.budget,
        out,
        " (quick)" if args.quick else "",
    )
    session.prepare()
    session.calibrate()
    session.train(PAIR, reserve_spectrum=True)  # step 1
    session.spectrum("J_init", None)  # step 2
    for name in PAIR:
        session.spectrum(f"J_final {name}", session.runs[name])
    not_ready = session.step3_ready()  # step 3
    if not_ready:
        for step in ("gram ratio", "train adam_clean", "spectrum J_final adam_clean"):
            session.record(step, "skipped", reason=not_ready)
    else:
        session.gram_ratio()
        session.train(["adam_clean"], reserve_spectrum=False)
        session.spectrum("J_final adam_clean", session.runs["adam_clean"])
    session.results["rates"]["rounds_s"] = {str(k): v for k, v in session.rates.rounds.items()}
    session.results["rates"]["evaluation_s_mean"] = (
        float(np.mean(session.rates.eval_s)) if session.rates.eval_s else None
    )
    session.results["modules_loaded"] = {m: m in sys.modules for m in ("snakemake", "dask")}
    session.checkpoint()
    session.write_outputs()
    large = [f"{p.name} ({p.stat().st_size} bytes)" for p in out.iterdir() if p.stat().st_size > MAX_FILE_BYTES]
    if large:
        log.warning("over %d bytes: %s", MAX_FILE_BYTES, ", ".join(large))
    summary(session)
    return session.results


def summary(session: Session) -> None:
    """The steps and the tables on stdout."""
    print(
        f"paper_gpu: {session.results['elapsed_s']:.1f} s of {session.args.budget:.0f} on {session.results['device']}"
    )
    for entry in session.results["steps"]:
        extra = f" {entry['seconds']:.1f} s" if isinstance(entry.get("seconds"), (int, float)) else ""
        print(f"  {entry['step']}: {entry['status']}{extra}" + (f" ({entry['reason']})" if entry.get("reason") else ""))
    for number in (1, 3, 2):
        print()
        print(session.table_markdown(number), end="")
    print(f"\noutputs: {', '.join(sorted(p.name for p in session.out.iterdir()))} in {session.out}")


if __name__ == "__main__":
    main()
