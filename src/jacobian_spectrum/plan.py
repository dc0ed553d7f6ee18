"""A plan before the run: each step's time, memory, GPU memory and disk, from the config.

``python -m jacobian_spectrum plan [--configfile FILE] [--device cpu|cuda] [--cores N]``
measures a few seconds of this machine's speed (:func:`measure_rates`: training steps and
evaluation of the configured model, a Jacobian with its probe check, the Gram step's BLAS
update, eigh, HDF5 writes and reads, a job's start-up) and scales it by each step's
arithmetic: epochs x images for training, rows for a Jacobian, rows^2 x columns for the Gram
matrix, n^3 for eigh. Where an earlier run left Snakemake ``benchmark:`` files (under
``{results}/benchmarks/``) for a step, their measured seconds and peak memory replace the
estimate. It warns, before anything runs, when the disk, the memory or the GPU memory will
not hold. ``bench/plan_check.py`` compares the estimates with measured runs.
"""

from __future__ import annotations

import csv
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import jacobian_kept, level_tag, measured_epochs, reference_epoch, run_epochs_needed

# the image shapes the built-in sets declare: a plan before their download still knows them
IMAGE_SHAPES = {"digits": (1, 8, 8), "cifar10": (3, 32, 32), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28)}
# the widest panel the plan draws to time a matrix-free pass (p x columns float32)
PLAN_PANEL_BYTES = 256 << 20
GiB = 1 << 30


@dataclass
class Rates:
    """This machine's speed and memory for the configured model, from :func:`measure_rates`."""

    device: str
    train_image_seconds: float  # forward + backward + step, per image, at the configured batch size
    eval_image_seconds: float  # forward only, per image
    jacobian_sample_seconds: float  # K rows of J with the probe check, per sample
    gram_flops: float  # the Gram step's update (dsyrk / addmm): (rows^2 x columns) per second
    eigh_seconds_per_n3: float
    write_bytes_per_second: float
    read_bytes_per_second: float
    job_start_seconds: float  # a Python process importing torch and the package
    base_bytes: float  # resident memory of such a process
    train_bytes: float  # ... after training steps of the model (optimizer state, activations)
    train_gpu_bytes: float = 0.0
    parameters: int = 0
    activations: int = 0  # layer-output values per sample
    jacobian_batch: int = 1  # samples per batch of the chunk job
    largest_layer: int = 0
    jacobian_rows_seconds: float = 0.0  # K rows of J without the check, per sample (0: use jacobian_sample_seconds)
    # one matrix-free power-iteration pass (rows, J Z and J^T J Z at the configured width), per sample
    matrix_free_pass_seconds: float = 0.0  # 0: not measured (another method), modelled from the rates above
    matrix_free_fast_pass_seconds: float = 0.0  # a pass with float32 products (subspace's first q); 0: as above
    matrix_free_held_pass_seconds: float = 0.0  # a pass over held rows (its products alone); 0: as above
    # model.normalisation recomputed on a batch-norm network: each evaluation first recomputes the
    # statistics, a forward pass over the training split (counted at eval_image_seconds)
    recomputes_statistics: bool = False


@dataclass
class Step:
    key: str  # rule:what, as other steps' ``after`` and the benchmark files name it
    name: str
    rule: str
    jobs: int
    seconds: float  # all its jobs, one after the other
    memory_bytes: float  # peak of one job
    disk_bytes: float  # what it writes
    threads: int = 1
    gpu_bytes: float = 0.0
    temporary: bool = False  # deleted once read (jacobian.keep)
    source: str = "estimate"
    after: list[str] = field(default_factory=list)  # names of the steps it waits for


@dataclass
class Plan:
    steps: list[Step]
    cores: int
    rates: Rates
    disk_peak_bytes: float
    wall_seconds: float
    warnings: list[str]


# ---------------------------------------------------------------- the workflow's jobs, from the config
def image_shape(dataset: Mapping) -> tuple[int, int, int]:
    """(C, H, W) of the data set's images: read from its files where they are there, else the
    shape a built-in set declares. An image folder or a loader declares none, and no config key
    sets it: without its data the plan stops, naming what it cannot know."""
    from .data.base import DataError
    from .data.sources import dataset_info

    name = dataset["name"]
    try:
        shape = dataset_info(dataset).image_shape
    except DataError as exc:
        if name not in IMAGE_SHAPES:
            raise DataError(
                f"dataset.name {name!r}: the plan cannot know its image shape (channels, height, width) "
                f"before its data is there, and no config key declares it: {exc}"
            ) from exc
        shape = None
    return shape or IMAGE_SHAPES.get(name, (3, 32, 32))  # None: an archive not unpacked yet


def _model_spec(config: Mapping):
    from .train.models import ModelSpec

    c, h, _ = image_shape(config["dataset"])
    m = config["model"]
    return ModelSpec(
        name=m["name"],
        in_channels=c,
        image_size=h,
        num_classes=len(config["dataset"]["classes"]),
        width=float(m.get("width", 1.0)),
        hidden=int(m.get("hidden", 256)),
        activation=m.get("activation", "softplus"),
        output_scale=float(m.get("output_scale", 1.0)),
        kwargs=dict(m.get("kwargs") or {}),
    )


def jacobians(config: Mapping, table: Mapping[str, str] | None = None) -> dict[tuple[str, str, int], list[str]]:
    """Every Jacobian the workflow computes, (owner, split, epoch), and the runs that read it
    (the spectra that the measurements read: J_init, J_final, J_ref on train and test, and the
    training Jacobians of the tracked epochs). ``table``: the config's ``architecture_table``,
    for a network of an architecture table, which computes only the Jacobians the table reads."""
    if table is not None:
        from .architectures.configs import table_jacobians

        return {key: [table[role] for role in roles] for key, roles in table_jacobians(config, table).items()}
    out: dict[tuple[str, str, int], list[str]] = {("init", "train", 0): []}  # J_init: the init_spectrum figure
    measured = measured_epochs(config)
    for run, r in config["runs"].items():
        ref = reference_epoch(r)
        wanted = [("train", e) for e in measured[run]] + [("train", ref), ("test", ref)]
        for split, epoch in dict.fromkeys(wanted):
            owner = "init" if epoch == 0 else f"runs/{run}"
            if run not in out.setdefault((owner, split, epoch), []):
                out[(owner, split, epoch)].append(run)
    return out


def _steps(config: Mapping, rates: Rates, device: str, table: Mapping[str, str] | None = None) -> list[Step]:
    ds, k = config["dataset"], len(config["dataset"]["classes"])
    n = {"train": ds["train_per_class"] * k, "test": ds["test_per_class"] * k}
    pixels = int(np.prod(image_shape(ds)))
    p = rates.parameters
    start = rates.job_start_seconds
    data_jobs = 1 + len(config["corruption"]["levels"])
    data_disk = sum(n.values()) * pixels + data_jobs * n["train"] * 8
    steps = [Step("data", "subsample + labels", "subsample", data_jobs, data_jobs * start, rates.base_bytes, data_disk)]
    steps.append(Step("initialise", "initialise", "initialise", 1, start, rates.base_bytes, p * 4, after=["data"]))
    threads = int(config["training"].get("threads", 1))
    for run, r in config["runs"].items():
        epochs = int(r["epochs"])
        evaluated = sum(n.values()) + (n["train"] if rates.recomputes_statistics else 0)
        per_epoch = n["train"] * rates.train_image_seconds + evaluated * rates.eval_image_seconds
        kept = len(run_epochs_needed(r, int(config["training"]["checkpoint_every"]))) - 1  # epoch 0 is init's
        trajectory = (epochs + 1) * sum(n.values()) * k * 4
        on_device = sum(n.values()) * pixels * 4
        steps.append(
            Step(
                f"train:{run}",
                f"train {run} ({epochs} epochs)",
                "train",
                1,
                start + epochs * per_epoch,
                rates.train_bytes + trajectory + kept * p * 4 + (0 if device == "cuda" else on_device),
                trajectory + kept * p * 4,
                threads=threads,
                gpu_bytes=rates.train_gpu_bytes + on_device if device == "cuda" else 0.0,
                after=["initialise"],
            )
        )
        steps += _fold_steps(config, run, rates, device, n["train"], epochs, start, threads)
    steps += _jacobian_steps(config, rates, device, n, k, table)
    if table is not None:  # the network's share of the one architecture_table job
        steps.append(
            Step("report", "architecture table", "architecture_table", 1, start, rates.base_bytes, 0, after=["*"])
        )
        return steps
    runs = list(config["runs"])
    small = 4 * len(runs) + 8  # measure per run, figures, tables, comparison, theory
    steps.append(
        Step("report", "measure, figures, tables", "measure", small, small * start, rates.base_bytes, 0, after=["*"])
    )
    return steps


def _fold_steps(
    config: Mapping, run: str, rates: Rates, device: str, n_train: int, epochs: int, start: float, threads: int
) -> list[Step]:
    """cleanlab's k trainings of a corrupted run (analysis.label_noise), each on (k-1)/k of the
    split with no per-epoch evaluation. They stop at the run's epoch of lowest test error, which
    is known only once it has trained: counted here at its full length, an upper bound."""
    ln = config.get("analysis", {}).get("label_noise", {})
    corruption = float(config["runs"][run]["corruption"])
    if not ln.get("cleanlab") or not 0 < corruption < 1:
        return []
    folds = int(ln.get("folds", 5))
    per_epoch = n_train * (folds - 1) / folds * rates.train_image_seconds
    return [
        Step(
            f"folds:{run}",
            f"train_fold {run} ({folds} folds, at most {epochs} epochs each)",
            "train_fold",
            folds,
            folds * (start + epochs * per_epoch),
            rates.train_bytes,
            0,
            threads=threads,
            gpu_bytes=rates.train_gpu_bytes if device == "cuda" else 0.0,
            after=[f"train:{run}"],
        )
    ]


def _jacobian_steps(
    config: Mapping, rates: Rates, device: str, n: dict, k: int, table: Mapping[str, str] | None = None
) -> list[Step]:
    from .spectrum.store import stored_vector_count

    jac, spec = config["jacobian"], config["spectrum"]
    itemsize = 8 if jac["dtype"] == "float64" else 4
    p, start = rates.parameters, rates.job_start_seconds
    steps = []
    for (owner, split, epoch), runs in jacobians(config, table).items():
        rows = n[split] * k
        chunks = math.ceil(n[split] / jac["chunk_size"])
        J = rows * p * itemsize
        tag = f"{owner}/{split}_epoch{epoch}"
        waits = ["initialise"] if owner == "init" else [f"train:{runs[0]}"]
        if spec["method"] == "matrix_free":
            steps.append(_matrix_free_step(spec, rates, device, tag, n[split], k, waits))
            continue
        b = min(rates.jacobian_batch, jac["chunk_size"])
        chunk_memory = (
            rates.base_bytes
            + b * k * p * itemsize
            + 2 * b * k * rates.largest_layer * itemsize
            + (k + 4) * b * rates.activations * itemsize
        )
        steps.append(
            Step(
                f"jacobian:{tag}",
                f"jacobian {tag} ({rows} x {p:,})",
                "jacobian_chunk",
                chunks + 1,  # the chunk jobs and the gather
                chunks * start
                + n[split] * rates.jacobian_sample_seconds
                + J / rates.write_bytes_per_second
                + start
                + J / rates.read_bytes_per_second,
                chunk_memory if device != "cuda" else rates.base_bytes + b * k * p * itemsize,
                J,
                gpu_bytes=chunk_memory - rates.base_bytes if device == "cuda" else 0.0,
                temporary=not jacobian_kept(config, owner, epoch),
                after=waits,
            )
        )
        G = rows * rows * 8
        gram = rows * rows * p / rates.gram_flops + J / rates.read_bytes_per_second
        verify = 2 * rows * p * min(10, spec["info_dim"]) / rates.gram_flops + J / rates.read_bytes_per_second
        steps.append(
            Step(
                f"spectrum:{tag}",
                f"spectrum {tag}",
                "spectrum",
                1,
                start + gram + rates.eigh_seconds_per_n3 * rows**3 + verify,
                rates.base_bytes
                + (0 if device == "cuda" else 3 * G)
                + min(spec["memory_budget_mb"] * 1e6, rows * p * 12),
                rows * (stored_vector_count(spec, _computed_vectors(spec, rows)) + 1) * 8,
                threads=int(spec["threads"]),
                gpu_bytes=3 * G + 2 * rows * 4 * 1e6 if device == "cuda" else 0.0,
                after=[f"jacobian:{tag}"],
            )
        )
    return steps


def _matrix_free_step(
    spec: Mapping, rates: Rates, device: str, tag: str, samples: int, k: int, waits: list[str]
) -> Step:
    """The streamed spectrum of one J (:mod:`.spectrum.matrix_free`), J never stored: the gram
    iteration (G = J J^T from streamed rows) or power_iterations + 1 passes that each form every
    row (after the first, all but the rows the memory budget holds) and make two products
    (J Z, J^T J Z) with topk + oversampling columns. Memory from
    :func:`.spectrum.budget.matrix_free_plan`, the plan the job itself follows (it logs the
    same figure when it starts)."""
    from .spectrum.budget import GramPlan, plan_for_settings
    from .spectrum.store import stored_vector_count

    rows, p = samples * k, rates.parameters
    mf = plan_for_settings(spec, rows, k, p)
    per_sample = rates.jacobian_rows_seconds or rates.jacobian_sample_seconds
    if isinstance(mf, GramPlan):  # rows formed mf.passes times over; G's rows^2 p / 2 multiply-adds
        seconds = mf.passes * samples * per_sample + rows * rows * p / 2 / rates.gram_flops
        what = (
            f"matrix_free gram: G = J J^T of {rows} x {p:,}, {mf.held_samples} samples' rows held at a time, "
            f"{mf.passes:.2f} passes' worth of rows"
        )
        vectors = rows
    else:
        seconds, what = _randomized_seconds(mf, spec, rates, samples, rows, p, per_sample)
        vectors = min(spec["topk"], rows)
    return Step(
        f"spectrum:{tag}",
        f"spectrum {tag} ({what})",
        "spectrum",
        1,
        rates.job_start_seconds + seconds,
        rates.base_bytes + (0 if device == "cuda" else mf.bytes),
        rows * (stored_vector_count(spec, vectors) + 1) * 8,
        threads=int(spec["threads"]),
        gpu_bytes=mf.bytes if device == "cuda" else 0.0,
        after=waits,
    )


def _randomized_seconds(
    mf, spec: Mapping, rates: Rates, samples: int, rows: int, p: int, per_sample: float
) -> tuple[float, str]:
    """Seconds of a randomized iteration's passes over J (rows x p), and what the step's name
    says of them."""
    passes = spec["power_iterations"] + 1
    what = f"matrix_free {mf.iteration}: {passes} passes over {rows} x {p:,}, {mf.columns} columns"
    if rates.matrix_free_pass_seconds:  # measured: rows and both products of one pass
        # J Z summed in float64 on every block_krylov pass and on subspace's last; float32 otherwise
        precise = passes if mf.iteration == "block_krylov" else 1
        fast = rates.matrix_free_fast_pass_seconds or rates.matrix_free_pass_seconds
        seconds = samples * (precise * rates.matrix_free_pass_seconds + (passes - precise) * fast)
    else:
        # gram_flops counts multiply-adds (rows^2 x columns a second): a product is rows x p x l of them
        seconds = passes * (samples * per_sample + 2 * rows * p * mf.columns / rates.gram_flops)
    if mf.held_samples:  # held rows: formed by the first pass only
        measured = rates.matrix_free_pass_seconds and rates.matrix_free_held_pass_seconds
        rows_s = rates.matrix_free_pass_seconds - rates.matrix_free_held_pass_seconds if measured else per_sample
        seconds -= (passes - 1) * mf.held_samples * max(rows_s, 0.0)
        what += f", the rows of {mf.held_samples} samples held ({mf.formations:.2f} passes' worth of rows)"
    return seconds, what


def _computed_vectors(spec: Mapping, rows: int) -> int:
    """Left singular vectors the configured method computes for a J of ``rows`` rows."""
    from .spectrum.methods import choose_method

    return rows if choose_method(spec["method"], rows, spec["memory_budget_mb"]) == "full" else min(spec["topk"], rows)


# ---------------------------------------------------------------- measured runs
def benchmark_file(results: str | Path, step: Step) -> list[Path]:
    """The ``benchmark:`` files an earlier run left for this step (empty if none)."""
    results = Path(results) / "benchmarks"
    kind, _, what = step.key.partition(":")
    if kind == "train":
        return [results / "train" / f"{what}.tsv"]
    if kind == "folds":
        return sorted((results / "train").glob(f"{what}_fold*.tsv"))
    if kind == "jacobian":  # its chunk jobs and its gather
        return sorted((results / "jacobian").glob(f"{what}.*.tsv"))
    if kind == "spectrum":
        return [results / "spectrum" / f"{what}.tsv"]
    return []


def read_benchmark(paths: list[Path]) -> tuple[float, float] | None:
    """(seconds summed over the jobs, largest max_rss in bytes) from Snakemake benchmark files."""
    if not paths or not all(p.is_file() for p in paths):
        return None
    seconds, rss = 0.0, 0.0
    for path in paths:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if not rows:
            return None
        seconds += min(float(r["s"]) for r in rows)
        rss = max(rss, max(float(r["max_rss"]) if r["max_rss"] not in ("", "NA", "-") else 0.0 for r in rows) * 1e6)
    return seconds, rss


# ---------------------------------------------------------------- this machine
def measure_rates(config: Mapping, device: str = "cpu", scratch: str | Path | None = None) -> Rates:
    """A few seconds of micro-benchmarks of the configured model on ``device``."""
    import torch

    from .common.device import select_device
    from .jacobian.compute import jacobian, plain_layers
    from .jacobian.probe import probe_errors
    from .train.loop import least_squares_loss, main_output
    from .train.models import build_model, count_parameters
    from .train.normalisation import effective_mode

    dev = select_device(device)
    threads = int(config["training"].get("threads", 1))
    torch.set_num_threads(threads)
    spec = _model_spec(config)
    model = build_model(spec, seed=0).to(dev)
    batch = int(config["training"]["batch_size"])
    x = torch.randn(batch, spec.in_channels, spec.image_size, spec.image_size, device=dev)
    y = torch.nn.functional.one_hot(torch.randint(0, spec.num_classes, (batch,), device=dev), spec.num_classes).float()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step() -> None:
        loss = least_squares_loss(main_output(model(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    train_s = _best_seconds(train_step, dev) / batch
    with torch.no_grad():
        eval_s = _best_seconds(lambda: model.eval()(x), dev) / batch
    model.train()
    gpu = float(torch.cuda.max_memory_allocated(dev)) if dev.type == "cuda" else 0.0
    train_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0
    layers = plain_layers(model) or []
    from .jacobian.compute import _per_sample_sizes, batch_size_for

    k, activations = _per_sample_sizes(model.eval(), layers, x[:1]) if layers else (spec.num_classes, 0)
    jb = batch_size_for(k, activations, layers, 4) if layers else 64
    xs = x[: min(batch, 32)]
    J = jacobian(model, xs)
    jac_s = _best_seconds(lambda: probe_errors(model, xs, jacobian(model, xs)), dev, repeats=1) / len(xs)
    rows_s = _best_seconds(lambda: jacobian(model, xs), dev, repeats=2) / len(xs)  # a streamed pass: no check
    del J
    pass_s, fast_s, held_s = (
        _matrix_free_pass_seconds(config, model, xs, dev)
        if config["spectrum"]["method"] == "matrix_free"
        else (0.0, 0.0, 0.0)
    )
    # more BLAS threads than cores would measure the oversubscription, not the machine
    gram_flops, eigh_c = _linear_algebra_rates(min(int(config["spectrum"]["threads"]), os.cpu_count() or 1), dev)
    write_bps, read_bps = _disk_rates(scratch)
    start_s, base = _job_start()
    return Rates(
        device=dev.type,
        train_image_seconds=train_s,
        eval_image_seconds=eval_s,
        jacobian_sample_seconds=jac_s,
        gram_flops=gram_flops,
        eigh_seconds_per_n3=eigh_c,
        write_bytes_per_second=write_bps,
        read_bytes_per_second=read_bps,
        job_start_seconds=start_s,
        base_bytes=base,
        train_bytes=max(train_bytes, base),
        train_gpu_bytes=gpu,
        parameters=count_parameters(model),
        activations=activations,
        jacobian_batch=jb,
        largest_layer=max((m.weight.numel() for _, m in layers), default=0),
        jacobian_rows_seconds=rows_s,
        matrix_free_pass_seconds=pass_s,
        recomputes_statistics=effective_mode(model, config["model"].get("normalisation", "recomputed")) == "recomputed",
        matrix_free_fast_pass_seconds=fast_s,
        matrix_free_held_pass_seconds=held_s,
    )


def _matrix_free_pass_seconds(config: Mapping, model, xs, dev) -> tuple[float, float, float]:
    """Seconds per sample of one pass of ``spectrum.method: matrix_free`` as the spectrum job runs
    it (its rows formed, J Z and J^T J Z from float32 panels) at topk + oversampling columns, on
    the samples ``xs``: with J Z summed in float64 (block_krylov's passes, subspace's last), in
    float32 (subspace's others), and in float64 over rows held from an earlier pass (the
    products alone: the passes after the first over the samples the budget holds). Timed at 2
    columns and at as many as a panel of PLAN_PANEL_BYTES holds (all l at CIFAR's p; 16 at
    least), extrapolated where that is below l (a pass is linear in the columns), so that the
    plan never holds a whole p x l panel of a wide network; the panels are drawn before the
    clock starts."""
    import torch

    from .spectrum.operator import JacobianOperator

    spec = config["spectrum"]
    threads = min(int(spec["threads"]), os.cpu_count() or 1)
    op = JacobianOperator(model.eval(), xs, batch_size=len(xs))
    held = JacobianOperator(model, xs, batch_size=len(xs), held=len(xs))  # its warm-up forms the rows
    ell = min(int(spec["topk"]) + int(spec["oversampling"]), *op.shape)
    # the wider column count as near l as a panel of PLAN_PANEL_BYTES allows: extrapolating
    # from 16 columns to 100 magnified the timing noise (17 and 11 samples/s in two plans of
    # the laptop variant, whose passes ran at 24)
    few, more = min(2, ell), min(ell, max(16, PLAN_PANEL_BYTES // (4 * op.shape[1])))
    rng = np.random.default_rng(0)
    panels = {c: rng.standard_normal((op.shape[1], c), dtype=np.float32) for c in {few, more}}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # the spectrum job's threads
    out = []
    try:
        for o, precise in ((op, True), (op, False), (held, True)):
            t = {
                c: _best_seconds(lambda Z=Z: o.normal_matmat(Z, precise=precise), dev, repeats=2)
                for c, Z in panels.items()
            }
            slope = (t[more] - t[few]) / (more - few) if more > few else 0.0
            out.append((t[few] + max(slope, 0.0) * (ell - few)) / len(xs))
    finally:
        torch.set_num_threads(before)
    return out[0], out[1], out[2]


def _best_seconds(fn, dev, repeats: int = 3) -> float:
    import torch

    fn()  # warm-up: allocator, kernels
    best = math.inf
    for _ in range(repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        best = min(best, time.perf_counter() - t0)
    return best


def _linear_algebra_rates(threads: int, dev) -> tuple[float, float]:
    """Multiply-adds per second of the Gram update, and eigh's seconds per n^3, at ``threads``."""
    rng = np.random.default_rng(0)
    m, w, e = 1500, 20000, 1500  # blocked BLAS and LAPACK reach their speed only at sizes like these
    if dev.type == "cuda":
        import torch

        slab = torch.from_numpy(rng.standard_normal((m, w))).to(dev)
        G = torch.zeros((m, m), dtype=torch.float64, device=dev)
        t = _best_seconds(lambda: G.addmm_(slab, slab.T), dev)
        A = torch.from_numpy(rng.standard_normal((e, e))).to(dev)
        A = A @ A.T
        te = _best_seconds(lambda: torch.linalg.eigh(A), dev, repeats=1)
        return m * m * w / t, te / e**3
    from scipy.linalg.blas import dsyrk
    from threadpoolctl import threadpool_limits

    slab = np.asfortranarray(rng.standard_normal((w, m)))
    A = rng.standard_normal((e, e))
    A = A @ A.T
    with threadpool_limits(limits=threads):
        t = _best_seconds(lambda: dsyrk(1.0, slab, trans=1), dev)
        te = _best_seconds(lambda: np.linalg.eigh(A), dev, repeats=1)
    return m * m * w / t, te / e**3


def _disk_rates(scratch: str | Path | None) -> tuple[float, float]:
    """HDF5 write and read speed of 64 MiB in ``scratch`` (the results folder's file system)."""
    import h5py

    data = np.random.default_rng(0).standard_normal((4096, 2048)).astype(np.float32)
    Path(scratch or ".").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        path = Path(tmp) / "rate.h5"
        t0 = time.perf_counter()
        with h5py.File(path, "w") as f:
            f.create_dataset("J", data=data)
        t1 = time.perf_counter()
        with h5py.File(path, "r") as f:
            f["J"][...]
        t2 = time.perf_counter()
    return data.nbytes / (t1 - t0), data.nbytes / (t2 - t1)


def _job_start() -> tuple[float, float]:
    """Seconds and resident bytes of a fresh process that imports torch and the package."""
    # Linux's ru_maxrss survives fork and exec, so a child would report its parent's peak (this
    # process, after its own measurements) whenever that is larger: read the child's own high-water
    # mark, VmHWM, where /proc has it.
    code = (
        "import resource, torch, h5py, dask.array, scipy.linalg, jacobian_spectrum.jacobian.chunk\n"
        "try:\n"
        "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
        "except (OSError, IndexError):\n"
        "    hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(hwm)"
    )
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return time.perf_counter() - t0, float(out.stdout.split()[-1]) * 1024.0


# ---------------------------------------------------------------- the plan
def make_plan(
    config: Mapping,
    rates: Rates,
    cores: int,
    device: str = "cpu",
    use_benchmarks: bool = True,
    table: Mapping[str, str] | None = None,
) -> Plan:
    """The plan of ``config`` at these rates; ``use_benchmarks``: measured seconds and memory of
    an earlier run's benchmark files replace the estimates where they exist; ``table``: the
    ``architecture_table`` section, for one network of an architecture table (:func:`jacobians`)."""
    steps = _steps(config, rates, device, table)
    results = Path(config["results"])
    for step in steps if use_benchmarks else []:
        measured = read_benchmark(benchmark_file(results, step))
        if measured is not None:
            step.seconds, step.memory_bytes = measured[0], max(measured[1], 1.0)
            step.source = "measured"
    persistent = sum(s.disk_bytes for s in steps if not s.temporary)
    temporary = sorted((s.disk_bytes for s in steps if s.temporary), reverse=True)
    # spectra run before new chunk jobs (rule priorities), so the J's on disk at once are those
    # whose chunk jobs share the cores, plus one waiting for its spectrum
    per_j = max(1, min((s.jobs for s in steps if s.rule == "jacobian_chunk"), default=2) - 1)
    in_flight = min(len(temporary), 1 + math.ceil(cores / per_j))
    disk_peak = persistent + sum(temporary[:in_flight])
    wall = _wall_seconds(steps, cores)
    plan = Plan(steps, cores, rates, disk_peak, wall, [])
    plan.warnings = _warnings(plan, results, device)
    return plan


def _wall_seconds(steps: list[Step], cores: int) -> float:
    """The larger of the core-seconds spread over the cores and the longest chain of steps."""
    work = sum(s.seconds * min(s.threads, cores) for s in steps) / cores
    finish: dict[str, float] = {}
    for s in steps:  # steps are listed after what they wait for
        waits = finish.values() if "*" in s.after else [finish.get(a, 0.0) for a in s.after]
        finish[s.key] = max(waits, default=0.0) + s.seconds / max(1, min(s.jobs, cores // max(1, s.threads)))
    return max(work, max(finish.values()))


def _warnings(plan: Plan, results: Path, device: str) -> list[str]:
    import psutil

    out = []
    folder = results if results.exists() else next(p for p in [results, *results.parents] if p.exists())
    free = shutil.disk_usage(folder).free
    if plan.disk_peak_bytes > free:
        all_temporary = all(s.temporary for s in plan.steps if s.rule == "jacobian_chunk")
        remedy = "" if all_temporary else "set jacobian.keep: none, "
        out.append(
            f"disk: the run needs about {_size(plan.disk_peak_bytes)} at its peak, {folder} has {_size(free)} free; "
            f"{remedy}a smaller n, or results on a larger disk"
        )
    available = psutil.virtual_memory().available
    concurrent = max(s.memory_bytes * max(1, plan.cores // max(1, s.threads)) for s in plan.steps if s.jobs)
    biggest = max(plan.steps, key=lambda s: s.memory_bytes)
    if biggest.memory_bytes > available:
        out.append(
            f"memory: {biggest.name} needs about {_size(biggest.memory_bytes)}, {_size(available)} is available; "
            "lower spectrum.memory_budget_mb or use spectrum.method: topk"
        )
    elif concurrent > available:
        out.append(
            f"memory: {plan.cores} jobs at once may need {_size(concurrent)}, {_size(available)} is available; "
            "run with fewer --cores or give the rules mem_mb resources (--resources mem_mb=...)"
        )
    if device == "cuda":
        import torch

        total = torch.cuda.get_device_properties(0).total_memory
        need = max(plan.steps, key=lambda s: s.gpu_bytes)
        if need.gpu_bytes > total:
            out.append(f"GPU memory: {need.name} needs about {_size(need.gpu_bytes)}, the GPU has {_size(total)}")
    return out


def _size(b: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if b >= scale:
            return f"{b / scale:.1f} {unit}"
    return f"{b / 1e3:.0f} kB"


def _duration(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.0f} s"


def format_plan(plan: Plan) -> str:
    r = plan.rates
    head = ["step", "jobs", "time", "peak memory (a job)", "GPU memory", "disk", "from"]
    rows = [
        [
            s.name,
            str(s.jobs),
            _duration(s.seconds),
            _size(s.memory_bytes),
            _size(s.gpu_bytes) if s.gpu_bytes else "-",
            _size(s.disk_bytes) + (" (temporary)" if s.temporary else ""),
            s.source,
        ]
        for s in plan.steps
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(line, widths)) for line in [head, *rows]]
    total = sum(s.seconds * s.threads for s in plan.steps)
    lines += [
        "",
        f"on {r.device} (p = {r.parameters:,}); measured here: training {1 / r.train_image_seconds:,.0f} images/s, "
        f"Jacobian {1 / r.jacobian_sample_seconds:,.0f} samples/s with its check, Gram update "
        f"{r.gram_flops / 1e9:.1f} G multiply-adds/s, "
        + (
            f"a matrix-free pass {1 / r.matrix_free_pass_seconds:,.0f} samples/s, "
            if r.matrix_free_pass_seconds
            else ""
        )
        + f"a job's start {r.job_start_seconds:.1f} s",
        f"total: {_duration(total)} of core time; about {_duration(plan.wall_seconds)} on {plan.cores} cores; "
        f"disk at its peak {_size(plan.disk_peak_bytes)}",
    ]
    lines += [f"WARNING {w}" for w in plan.warnings] or ["no warnings: disk and memory hold"]
    return "\n".join(lines)


def load_config(configfile: str | Path | None, notes: list[str] | None = None) -> dict:
    """The config as the workflow sees it: the schema fills defaults, then the parse-time checks.

    A data set that is not there yet (the plan may come before the download) is added to
    ``notes`` instead of stopping the plan, which goes on with the image shape the data set
    declares (:func:`image_shape`); any other mistake stops it as it stops Snakemake.
    """
    return load_networks(configfile, notes)[0]


def load_networks(configfile: str | Path | None, notes: list[str] | None = None) -> tuple[dict, dict[str, dict]]:
    """:func:`load_config`, and each network's config as checked (:func:`network_configs`): the
    checks settle ``spectrum.method: auto`` between a stored and a streamed J, as they do in
    each network's module of the workflow, so the plan takes the checked configs."""
    import yaml
    from snakemake.utils import validate

    from .config import ConfigError, check_config, check_replaced_keys
    from .data.base import DataError

    # the workflow folder: where the plan runs, or the checkout this package is installed from
    here, checkout = Path.cwd(), Path(__file__).resolve().parents[2]
    root = here if (here / "workflow" / "schemas").is_dir() else checkout
    path = Path(configfile) if configfile else root / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"--configfile: {path} does not exist")
    with open(path) as fh:
        config = yaml.safe_load(fh)
    check_replaced_keys(config)
    schema = str(root / "workflow" / "schemas" / "config.schema.yaml")
    validate(config, schema)
    # an architecture table: each network's own config, checked as its module checks it
    networks = network_configs(config)
    for net in networks.values():
        validate(net, schema)
        try:
            check_config(net)
        except ConfigError as exc:  # the data set's own problems come as a ConfigError caused by a DataError
            if notes is None or not isinstance(exc.__cause__, DataError):
                raise
            shape = "x".join(map(str, image_shape(net["dataset"])))  # an image folder or loader stops here
            note = f"data: not checked against the config, planned with {shape} images ({exc.__cause__})"
            if note not in notes:
                notes.append(note)
    return config, networks


def network_configs(config: Mapping) -> dict[str, dict]:
    """The configs a plan covers: the config itself, or each network's of an architecture table."""
    if "architectures" not in config:
        return {"": dict(config)}
    from .architectures.configs import architecture_configs

    return architecture_configs(config)


def run_plan(configfile: str | Path | None, device: str, cores: int) -> dict[str, Plan]:
    """The plan of each network of the config ("" for a plain config), keyed by its name."""
    notes: list[str] = []
    _, networks = load_networks(configfile, notes)
    plans = {}
    for name, net in networks.items():
        print(
            f"measuring this machine for {configfile or 'config.yaml'}{f' network {name}' if name else ''} "
            f"(corruption levels {[level_tag(x) for x in net['corruption']['levels']]})...",
            file=sys.stderr,
        )
        rates = measure_rates(net, device, net["results"])
        plan = make_plan(net, rates, cores, device, table=net["architecture_table"] if name else None)
        busy = busy_machine_note(os.getloadavg()[0], os.cpu_count() or 1)
        plan.warnings += notes + ([busy] if busy else [])
        plans[name] = plan
    return plans


def busy_machine_note(load: float, cpus: int) -> str | None:
    """A warning when more processes were running than there are CPUs while ``plan`` timed the
    machine (``load``: the 1-minute load average, ``plan`` itself included): its rates are then
    those of a shared machine. Beside a 2-thread spectrum job on 2 cores, ``plan`` put the whole
    CIFAR-10 spectrum at 121 h, against 4.2 h measured on the idle machine (docs/scale.md)."""
    if load <= cpus:
        return None
    return (
        f"machine: the load average was {load:.1f} on {cpus} CPUs while plan timed it, so the times above are "
        "those of a shared machine and can be several times too long; run plan where the work will run, alone"
    )


def main_plan(configfile: str | None, device: str, cores: int) -> int:
    plans = run_plan(configfile, device, cores or os.cpu_count() or 1)
    for name, plan in plans.items():
        if name:
            print(f"\n== network {name} ==")
        print(format_plan(plan))
    if len(plans) > 1:
        wall = sum(p.wall_seconds for p in plans.values())
        print(
            f"\nall {len(plans)} networks: about {_duration(wall)} on {next(iter(plans.values())).cores} cores, "
            "one after another"
        )
    return 0
