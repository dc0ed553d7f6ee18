"""The paper's experiment at its own size on one GPU, in one command, within a wall-time budget (issue 34).

config/paper.yaml's setting (CIFAR-10, 3 classes, n = 9999, ResNet20 p = 268,579, r = 50), in order of value:
(1) the clean and the 50%-corrupted SGD runs trained together (train.together); (2) J_init and each run's
J_final, G = J J^T and eigh in float64 on the device (spectrum.device.spectrum_in_memory): Tables 1 and 3 beside
the paper's values and Figure 8; (3) when time remains, bench/spectrum_device.py's Gram ratio, then the Adam run
and its J_final: Table 2. Before each step (in training, each round: an epoch of every active run) it predicts
its time from plan.Rates measured in this run and skips what would pass the budget (common.budget), saying why.
It writes, as results come: results.json, table1-3.md, fig8.png, fig8.csv, checkpoints.pt, log.txt.

  python bench/paper_gpu.py [--out DIR] [--budget 540] [--resume DIR] [--data PATH] [--quick]

--resume DIR continues an earlier output folder; --quick runs tiny sizes on the CPU (tests/test_paper_gpu.py).
At the H200 rates of docs/scale.md (``h200_estimates_s``): sgd_clean 196 s, sgd_corrupt50 392 s, evaluations
29 s, each spectrum 25 s; steps 1 and 2 692 s, more than one 540-s budget: a second command (--resume) ends them.
"""

from __future__ import annotations

import time

T_START = time.perf_counter()  # the budget counts from here, before torch's import

import argparse
import copy
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src" / "jacobian_spectrum").is_dir():  # the tree's own package (the GPU image has none installed)
    sys.path.insert(0, str(ROOT / "src"))

import numpy as np
import torch
import yaml

from jacobian_spectrum.analysis.measure import spectrum_summary
from jacobian_spectrum.common.budget import Budget
from jacobian_spectrum.common.device import device_name, free_bytes, release, select_device
from jacobian_spectrum.common.h5io import atomic_path, write_json
from jacobian_spectrum.common.logs import log_to
from jacobian_spectrum.data.archive import ARCHIVE_MANIFEST, extract_archive
from jacobian_spectrum.data.corruption import corrupt_labels
from jacobian_spectrum.data.subset import subset_splits
from jacobian_spectrum.figures.paper import error_curves_figure, measured_table, write_csv
from jacobian_spectrum.plan import Rates
from jacobian_spectrum.spectrum.device import spectrum_bytes, spectrum_in_memory, spectrum_seconds
from jacobian_spectrum.train import together
from jacobian_spectrum.train.loop import TrainSettings, predict
from jacobian_spectrum.train.models import ModelSpec, build_model, count_parameters
from jacobian_spectrum.train.together import Run
from jacobian_spectrum.train.trajectory import EPOCH_ERRORS

log = logging.getLogger("jacobian_spectrum.paper_gpu")  # a child: the package's own lines land in log.txt too

# The paper's setting as the workflow runs it; --quick shrinks it (tests/test_paper_gpu.py compares the two).
PAPER = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
TABLE_RUNS = {k: PAPER["figures"][f"table{k}"] for k in (1, 3, 2)}  # in the order they are measured
PAPER_RUNS = {name: PAPER["runs"][name] for name in TABLE_RUNS.values()}
CORRUPTION = {name: float(run.get("corruption", 0.0)) for name, run in PAPER_RUNS.items()}
QUICK_EPOCHS = {"sgd_clean": (6, [4, 5]), "sgd_corrupt50": (12, [10]), "adam_clean": (6, [])}
PAIR, FIG8_RUN, PROBE_SAMPLES = [TABLE_RUNS[1], TABLE_RUNS[3]], TABLE_RUNS[3], 64
H200 = {"train_images_per_s": 20_409, "j_rows_per_s": 33_829, "eigh_30k_s": 16.8, "fp64_peak": 67e12}  # docs/scale.md
EVAL_COST = 1 / 3  # a predicted image costs about a third of a trained one (forward only): assumed
OUTPUT_FILES = tuple("results.json table1.md table2.md table3.md fig8.png fig8.csv checkpoints.pt log.txt".split())
MAX_FILE_BYTES = 16 << 20  # each output file stays below it (what a GPU session can bring back)
CHECKPOINT_FORMAT = together.RUNS_FORMAT  # checkpoints.pt: train.together.save_runs' file
HISTORY_COLUMNS = ("run", "epoch", "lr", "batch_loss", *EPOCH_ERRORS)


@dataclass
class Plan:
    """The experiment's sizes: the paper's, or --quick's tiny ones on the CPU."""

    quick: bool
    classes: list[str] = field(default_factory=lambda: list(PAPER["dataset"]["classes"]))
    train_per_class: int = PAPER["dataset"]["train_per_class"]
    test_per_class: int = PAPER["dataset"]["test_per_class"]
    width: float = PAPER["model"]["width"]
    eval_every: int = 10
    info_dim: int = PAPER["spectrum"]["info_dim"]
    data_seed: int = PAPER["dataset"]["seed"]
    gram_rows: int = 30_000
    gram_cols: int = 20_000
    memory_budget_mb: float = 4000.0  # per Gram slab (float64) on the device
    checkpoint_every: float = 60.0
    training: dict = field(default_factory=lambda: dict(PAPER["training"]))
    runs: dict = field(default_factory=lambda: copy.deepcopy(PAPER_RUNS))

    @classmethod
    def for_args(cls, args: argparse.Namespace) -> Plan:
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
    """Seconds of each step at the H200 rates measured earlier (docs/scale.md): estimates, not measurements."""
    nk, out = n * k, {"basis": f"{H200}, evaluation at {EVAL_COST:.2f} of a training image, eigh ~ n^3"}
    for name, run in plan.runs.items():
        evals = sum(eval_epoch(e, run["epochs"], plan.eval_every) for e in range(1, run["epochs"] + 1))
        out[f"train {name}"] = run["epochs"] * n / H200["train_images_per_s"]
        out[f"evaluation {name}"] = evals * (n + n_test) * EVAL_COST / H200["train_images_per_s"]
    gram = 2 * nk**2 * p / H200["fp64_peak"]
    out["spectrum, each J"] = nk / H200["j_rows_per_s"] + gram + H200["eigh_30k_s"] * (nk / 30_000) ** 3
    out["gram ratio (compute only)"] = 3 * 2 * plan.gram_rows**2 * plan.gram_cols / H200["fp64_peak"]
    training = sum(out[f"{w} {r}"] for w in ("train", "evaluation") for r in PAIR)
    out["steps 1 and 2"] = training + 3 * out["spectrum, each J"]
    return out


@dataclass
class Data:
    x_train: torch.Tensor  # normalised as the workflow's read_split gives it, on the device
    x_test: torch.Tensor
    y_clean: np.ndarray
    y_test: np.ndarray
    labels: dict[str, np.ndarray]  # run -> the labels it trains on
    num_classes: int
    info: dict


def load_data(data: Path, work: Path, plan: Plan, device: torch.device) -> Data:
    """The workflow's class-balanced subset, labels and normalisation (data/), on the device; an
    archive is unpacked (checked, atomic) once into ``work``."""
    root = data if data.is_dir() else work / f"images-{hashlib.sha256(str(data.resolve()).encode()).hexdigest()[:10]}"
    if not data.is_dir() and not (root / ARCHIVE_MANIFEST).is_file():  # else unpacked by an earlier call here
        extract_archive(data, root)
    per_class = {"train_per_class": plan.train_per_class, "test_per_class": plan.test_per_class}
    dataset = {"name": "imagefolder", "root": str(root), "classes": plan.classes, "seed": plan.data_seed, **per_class}
    subset, train, test = subset_splits(dataset, work)
    k, seed = train.num_classes, PAPER["corruption"]["seed"]
    labels = {n: corrupt_labels(train.y, k, c, seed)[0] if c else train.y for n, c in CORRUPTION.items()}
    parts = (subset.source_index["train"], subset.source_index["test"], train.y, test.y)
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(part).tobytes() for part in parts))
    info = {"source": str(data), "classes": subset.class_names, "n_train": len(train.y), "n_test": len(test.y)}
    info.update(image_shape=list(train.image_shape), subset_sha256=digest.hexdigest()[:16])
    x_train, x_test = torch.from_numpy(train.x).to(device), torch.from_numpy(test.x).to(device)
    return Data(x_train, x_test, train.y, test.y, labels, k, info)


class Session:
    """The experiment's state: data, runs, rates, what is measured, and the folder it writes."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.plan, self.out, self.work = args, Plan.for_args(args), Path(args.out), Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.device = select_device("cpu" if args.quick else args.device)  # TF32 off
        self.budget, self.runs, self.round_s, self.eval_s = Budget(args.budget, T_START), {}, [], []
        self.last_checkpoint, self.fig8_rows = time.perf_counter(), -1
        tf32 = bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)
        self.results = {"script": "bench/paper_gpu.py", "argv": sys.argv[1:], "quick": args.quick, "tf32": tf32}
        self.results.update(device=device_name(self.device), torch=torch.__version__, budget_s=args.budget)
        self.results.update(started=time.strftime("%Y-%m-%d %H:%M:%S %Z"), plan=asdict(self.plan), rates={})
        self.results.update(steps=self.budget.steps, skipped=self.budget.skipped, spectra={}, runs={})

    def record(self, step: str, status: str, **info: object) -> None:
        self.budget.record(step, status, **info)
        log.info("%s: %s%s", step, status, f" ({info['reason']})" if info.get("reason") else "")
        self.write_outputs()

    def write_outputs(self) -> None:
        """results.json, the three tables and Figure 8 (when an epoch was evaluated), each atomically."""
        t0 = time.perf_counter()
        self.results["elapsed_s"] = round(self.budget.elapsed(), 2)
        self.results["runs"] = {name: together.run_summary(run) for name, run in self.runs.items()}
        write_json(self.out / "results.json", self.results)
        for k in (1, 2, 3):
            with atomic_path(self.out / f"table{k}.md") as tmp:
                tmp.write_text(self.table_markdown(k))
        if sum(len(r.history) for r in self.runs.values()) != self.fig8_rows:
            self.write_fig8()
        self.budget.margin = 2 * (time.perf_counter() - t0)  # the outputs are written twice more at the end

    def checkpoint(self) -> None:
        together.save_runs(self.out / "checkpoints.pt", self.runs, setup=self.setup, init=self.init_model.state_dict())
        self.last_checkpoint = time.perf_counter()

    def prepare(self) -> None:
        """Data, the shared initialisation and every run (from --resume's checkpoints where given)."""
        shared = [base / "shared" / "data" / "cifar10-jpeg.tar.gz" for base in (ROOT, ROOT.parent)]  # these machines'
        t0, path = time.perf_counter(), Path(self.args.data) if self.args.data else None
        path = path or next(filter(Path.is_file, shared), None)
        if path is None or not path.exists():
            raise SystemExit(f"--data: no CIFAR-10 image archive or folder at {path}; pass --data PATH")
        d = self.data = load_data(path, self.work, self.plan, self.device)
        self.results["data"] = {**d.info, "seconds": round(time.perf_counter() - t0, 2)}
        self.spec = ModelSpec("resnet20", *d.x_train.shape[1:3], d.num_classes, width=self.plan.width)
        seeds = [self.plan.data_seed, PAPER["corruption"]["seed"], PAPER["model"]["init_seed"]]
        self.setup = {"classes": d.info["classes"], "subset_sha256": d.info["subset_sha256"], "seeds": seeds}
        self.setup["model"] = asdict(self.spec)
        prior = Path(self.args.resume) if self.args.resume else None
        ckpt = together.read_runs(prior / "checkpoints.pt") if prior else {"setup": self.setup, "runs": {}}
        if ckpt["setup"] != self.setup:
            raise ValueError(f"the checkpoints are of {ckpt['setup']}, this run is {self.setup}")
        self.init_model = build_model(self.spec, seed=seeds[2]).to(self.device)  # the workflow's initialise rule
        if "init" in ckpt:
            self.init_model.load_state_dict(ckpt["init"])
        self.init_pred = predict(self.init_model, d.x_train).numpy()
        nan = {"lr": math.nan, "batch_loss": math.nan}
        for name in self.plan.runs:
            model, settings = copy.deepcopy(self.init_model), self.plan.settings(name)
            run = self.runs[name] = together.make_run(name, settings, d.labels[name], d.num_classes, model, self.device)
            if name in ckpt["runs"]:
                together.load_run(run, ckpt["runs"][name])  # ValueError where trained with other settings
            if not run.history:  # epoch 0: the shared initialisation's
                run.history.append(together.evaluate(run, d.x_train, d.x_test, d.y_clean, d.y_test, **nan))
        p, self.rows = count_parameters(self.init_model), len(d.y_clean) * d.num_classes
        self.results["model"] = {**asdict(self.spec), "p": p}
        self.scale = f"CIFAR-10 images ({path}) classes {', '.join(d.info['classes'])}, n = {len(d.y_clean)} (nK = "
        self.scale += f"{self.rows}), resnet20 width {self.spec.width:g} (p = {p}), r = {self.plan.info_dim}; J float32"
        self.scale += f" on {self.results['device']} (TF32 off), Gram and eigh in float64"
        self.results["h200_estimates_s"] = h200_estimates(len(d.y_clean), len(d.y_test), d.num_classes, p, self.plan)
        if prior:  # the spectra (and the Gram ratio) measured before are kept
            before = json.loads((prior / "results.json").read_text()) if (prior / "results.json").is_file() else {}
            epochs, steps = {name: run.epoch for name, run in self.runs.items()}, before.get("steps", [])
            self.results["resumed_from"] = {"folder": str(prior), "epochs": epochs, "previous_steps": steps}
            self.results.update({k: before[k] for k in ("spectra", "gram_ratio") if k in before})
        self.record("data", "done", seconds=self.results["data"]["seconds"])

    def calibrate(self) -> None:
        """plan.Rates from a throwaway run's epoch of 8 batches and the spectrum of 128 samples (on a GPU
        eigh at the H200's rate: a small one there is latency-bound); later measurements replace them."""
        d, dev, t0 = self.data, self.device, time.perf_counter()
        settings = self.plan.settings(PAIR[0])
        warm = together.make_run("warm-up", settings, d.y_clean, d.num_classes, copy.deepcopy(self.init_model), dev)
        x = d.x_train[: 8 * settings.batch_size]
        together.train_round([warm], x)  # warm-up: the kernels' choice, the allocator
        image_s = together.train_round([warm], x)[0] / len(x)
        later = ["jacobian_sample_seconds", "gram_flops", "eigh_seconds_per_n3"]  # from the spectrum below
        unused = ["write_bytes_per_second", "read_bytes_per_second", "job_start_seconds", "base_bytes", "train_bytes"]
        rates = dict(train_image_seconds=image_s, eval_image_seconds=image_s * EVAL_COST)
        self.rates = Rates(device=dev.type, **rates, **dict.fromkeys(later + unused, 0.0))
        x, budget = d.x_train[:128], self.plan.memory_budget_mb
        spectrum_in_memory(self.init_model, x[:8], budget)  # warm-up
        self.spectrum_rates(len(x), spectrum_in_memory(self.init_model, x, budget)[2]["seconds"])
        if dev.type == "cuda":
            self.rates.eigh_seconds_per_n3 = H200["eigh_30k_s"] / 30_000**3
        for spectrum in self.results["spectra"].values():  # one measured before --resume: the best prediction
            self.rates.eigh_seconds_per_n3 = spectrum["seconds"]["eigh"] / spectrum["rows"] ** 3
        self.results["rates"]["calibration"] = {**asdict(self.rates), "seconds": time.perf_counter() - t0}
        self.init_model.train()

    def spectrum_rates(self, samples: int, part_s: dict) -> None:
        """The rates of a measured spectrum (spectrum_in_memory's seconds) of ``samples`` samples."""
        rows, cols = samples * self.data.num_classes, count_parameters(self.init_model)
        self.rates.jacobian_sample_seconds = self.rates.jacobian_rows_seconds = part_s["jacobian"] / samples
        self.rates.gram_flops = rows * rows * cols / part_s["gram"]
        self.rates.eigh_seconds_per_n3 = part_s["eigh"] / rows**3

    def train(self, names: list[str], reserve_spectrum: bool) -> None:
        """Rounds of one epoch of every unfinished run in ``names`` while the next round fits the
        budget (and, with ``reserve_spectrum``, the J_init spectrum's time after it)."""
        runs, step = [self.runs[n] for n in names], "train " + " + ".join(names)
        epochs = lambda: {r.name: f"{r.epoch}/{r.settings.epochs}" for r in runs}  # noqa: E731
        if all(r.done for r in runs):
            return self.record(step, "kept", reason="", epochs=epochs(), note="trained before --resume")
        t0, before, reason, images = time.perf_counter(), epochs(), "", 0
        while active := [r for r in runs if not r.done]:
            if self.args.max_epoch is not None and min(r.epoch for r in active) >= self.args.max_epoch:
                reason = f"stopped at --max-epoch {self.args.max_epoch}"
                break
            predicted, reserve = self.round_prediction(active), self.reserve(reserve_spectrum)
            if not self.budget.fits(predicted, reserve):
                what = f"the next round ({', '.join(r.name for r in active)})"
                reason = self.budget.reason(what, predicted, reserve, "the J_init spectrum")
                break
            images += self.round(active)
            if time.perf_counter() - self.last_checkpoint >= self.plan.checkpoint_every:
                self.checkpoint()
                self.write_outputs()
        self.checkpoint()
        status = "done" if all(r.done for r in runs) else "partial" if images else "skipped"
        info = {"seconds": round(time.perf_counter() - t0, 2), "epochs_before": before, "epochs": epochs()}
        self.record(step, status, reason=reason, images=images, **info)

    def round_prediction(self, active: list[Run]) -> float:
        n, n_test = len(self.data.x_train), len(self.data.x_test)
        due = sum(eval_epoch(r.epoch + 1, r.settings.epochs, self.plan.eval_every) for r in active)
        return self.rates.train_image_seconds * n * len(active) + due * self.rates.eval_image_seconds * (n + n_test)

    def spectrum_cost(self, model: torch.nn.Module) -> tuple[float, float, float]:
        """(predicted seconds, bytes needed, bytes free on the device) of a model's spectrum."""
        cols = count_parameters(model)
        need = spectrum_bytes(self.rows, cols, self.plan.memory_budget_mb)
        return spectrum_seconds(self.rates, self.rows, cols, self.data.num_classes), need, free_bytes(self.device)

    def reserve(self, reserve_spectrum: bool) -> float:
        """Seconds kept for J_init's spectrum, unless measured or to be skipped for its memory."""
        predicted, need, free = self.spectrum_cost(self.init_model)
        keep = reserve_spectrum and "J_init" not in self.results["spectra"] and need <= free
        return self.budget.safety * predicted if keep else 0.0

    def round(self, active: list[Run]) -> int:
        """One epoch of each active run (train.together.train_round), then their evaluations; the rates
        become the slowest of the last three measured."""
        d, (s, losses) = self.data, together.train_round(active, self.data.x_train)
        n, parts = len(d.x_train), []
        self.round_s.append(s / (n * len(active)))
        self.rates.train_image_seconds = max(self.round_s[-3:])
        for r, loss in zip(active, losses):
            lr, r.seconds = together.end_epoch(r, loss), r.seconds + s
            parts.append(f"{r.name} {r.epoch}/{r.settings.epochs} loss {loss:.4f}")
            if eval_epoch(r.epoch, r.settings.epochs, self.plan.eval_every):
                t0 = time.perf_counter()
                h = together.evaluate(r, d.x_train, d.x_test, d.y_clean, d.y_test, lr=lr, batch_loss=loss)
                r.history.append(h)
                self.eval_s.append((time.perf_counter() - t0) / (n + len(d.x_test)))
                self.rates.eval_image_seconds = max(self.eval_s[-3:])
                parts[-1] += f" lr {lr:.2g} train {h['train_error']:.3f} test {h['test_error']:.3f}"
        log.info("%s | %.2f s, %.0f images/s", " | ".join(parts), s, n * len(active) / s)
        return n * len(active)

    def spectrum(self, key: str, run: Run | None) -> None:
        """J (float32) of the initialisation or a finished run, G = J J^T and its eigh in float64 on the
        device (spectrum.device.spectrum_in_memory); the tables' rows for every run's labels."""
        step, d = f"spectrum {key}", self.data
        if key in self.results["spectra"]:
            return self.record(step, "kept", reason="", note="measured before --resume")
        if run is not None and not run.done:
            return self.record(step, "skipped", reason=f"{run.name} is at epoch {run.epoch} of {run.settings.epochs}")
        model = self.init_model if run is None else run.model
        predicted, need, free = self.spectrum_cost(model)
        if need > free:
            reason = f"needs about {need / 1e9:.1f} GB on {self.device.type}, {free / 1e9:.1f} GB free"
            return self.record(step, "skipped", reason=reason, predicted_s=predicted)
        if not self.budget.fits(predicted):
            return self.record(step, "skipped", reason=self.budget.reason(step, predicted), predicted_s=predicted)
        w, V, entry = spectrum_in_memory(model, d.x_train, self.plan.memory_budget_mb, PROBE_SAMPLES)
        model.train()
        self.spectrum_rates(len(d.x_train), entry["seconds"])
        entry.update(spectrum_summary(w, V, d.labels, d.y_clean, self.init_pred, self.plan.info_dim), rows=self.rows)
        entry.update(cols=count_parameters(model), predicted_s=predicted, epoch=run.epoch if run else 0)
        entry["run"] = run.name if run else None
        self.results["spectra"][key] = entry
        self.record(step, "done", seconds=entry["seconds"]["total"], predicted_s=predicted)

    def gram_ratio(self) -> None:
        """``bench/spectrum_device.py --gram-only`` at the plan's shape, as a command of its own: G
        streamed from an HDF5 J through the device against the device's in-memory float64 product."""
        step, rows, cols = "gram ratio", self.plan.gram_rows, self.plan.gram_cols
        if "gram_ratio" in self.results:
            return self.record(step, "kept", reason="", note="measured before --resume")
        # three products, J written once and read three times, and a process's start (torch's import)
        predicted = 3 * rows * rows * cols / self.rates.gram_flops + rows * cols * 4.0 * (1 / 0.5e9 + 3 / 2e9) + 10
        if not self.budget.fits(predicted):
            return self.record(step, "skipped", reason=self.budget.reason(step, predicted), predicted_s=predicted)
        release(self.device)
        cmd = [sys.executable, ROOT / "bench" / "spectrum_device.py", "--gram-only", "--device", self.device.type]
        cmd += ["--rows", rows, "--cols", cols, "--budget-mb", self.plan.memory_budget_mb, "--dir", self.work]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
        t0, proc = time.perf_counter(), subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
        if proc.returncode:
            return self.record(step, "failed", reason=proc.stderr.strip()[-500:], predicted_s=predicted)
        record = json.loads(proc.stdout)  # its one JSON record (bench/timing.py)
        ratio = {"shape": [rows, cols], "ratio_memory_over_stream": record["ratios"]["gram_memory_over_stream"]}
        self.results["gram_ratio"] = {**ratio, **{f"{k}_s": v for k, v in record["seconds"].items()}, "record": record}
        self.record(step, "done", seconds=round(time.perf_counter() - t0, 2), predicted_s=predicted)

    def table_markdown(self, number: int) -> str:
        """Table ``number`` beside the paper's values, or why a row is not measured (figures.paper)."""
        run = self.runs[TABLE_RUNS[number]]
        caption = f"run {run.name}; measured: {self.scale}; run at epoch {run.epoch} of {run.settings.epochs}"
        return measured_table(number, TABLE_RUNS[number], self.results["spectra"], caption, self.budget.steps)

    def write_fig8(self) -> None:
        rows = [[name, *(row[c] for c in HISTORY_COLUMNS[1:])] for name, r in self.runs.items() for row in r.history]
        write_csv(self.out / "fig8.csv", HISTORY_COLUMNS, rows)
        run = self.runs[FIG8_RUN]  # the runs are there before the first output is written
        title = f"Figure 8: 50% corrupted labels, SGD (epoch {run.epoch} of {run.settings.epochs})"
        error_curves_figure(run.history, title, run.settings.milestones, [self.out / "fig8.png"])
        self.fig8_rows = len(rows)


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
    log_to(out / "log.txt", append=bool(args.resume) and Path(args.resume).resolve() == out.resolve())
    s = Session(args)
    log.info("paper_gpu on %s, budget %.0f s, out %s%s", s.results["device"], args.budget, out, " (quick)" * args.quick)
    try:
        s.prepare()
    except ValueError as exc:  # unreadable data (DataError), or --resume of another setup or other settings
        raise SystemExit(f"paper_gpu: {exc}") from exc
    s.calibrate()
    s.train(PAIR, reserve_spectrum=True)  # step 1
    for key, name in (("J_init", None), *((f"J_final {n}", n) for n in PAIR)):  # step 2
        s.spectrum(key, s.runs.get(name))
    missing = [k for k in ("J_init", *(f"J_final {n}" for n in PAIR)) if k not in s.results["spectra"]]
    if missing:  # step 3 comes after steps 1 and 2
        for step in ("gram ratio", "train adam_clean", "spectrum J_final adam_clean"):
            s.record(step, "skipped", reason=f"steps 1 and 2 are not complete (spectra missing: {missing})")
    else:
        s.gram_ratio()
        s.train(["adam_clean"], reserve_spectrum=False)
        s.spectrum("J_final adam_clean", s.runs["adam_clean"])
    s.results["rates"]["final"] = asdict(s.rates)
    s.results["modules_loaded"] = {m: m in sys.modules for m in ("snakemake", "dask")}
    s.checkpoint()
    s.write_outputs()
    for p in (p for p in out.iterdir() if p.stat().st_size > MAX_FILE_BYTES):
        log.warning("%s: over %d bytes (%d)", p.name, MAX_FILE_BYTES, p.stat().st_size)
    print(f"paper_gpu: {s.results['elapsed_s']:.1f} s of {args.budget:.0f} on {s.results['device']}")
    steps = [f"  {e['step']}: {e['status']}" + (f" ({e['reason']})" if e.get("reason") else "") for e in s.budget.steps]
    print(*steps, sep="\n")
    print("", *(s.table_markdown(k) for k in (1, 3, 2)), f"outputs: {', '.join(OUTPUT_FILES)} in {out}", sep="\n")
    return s.results


if __name__ == "__main__":
    main()
