"""This machine's rates for the configured model: a few seconds of micro-benchmarks.

:func:`measure_rates` times training steps and evaluation of the configured model, a Jacobian
with its probe check, a matrix-free pass where the config streams J, the Gram step's BLAS update,
eigh, HDF5 writes and reads, and a job's start-up. The plan (:mod:`.graph`) scales them by each
step's arithmetic: epochs x images for training, rows for a Jacobian, rows^2 x columns for the
Gram matrix, n^3 for eigh.
"""

from __future__ import annotations

import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import image_shape

# the widest panel the plan draws to time a matrix-free pass (p x columns float32)
PLAN_PANEL_BYTES = 256 << 20


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


def _model_spec(config: Mapping):
    """The configured network's ModelSpec, at the data set's image shape."""
    from ..train.models import ModelSpec

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


def measure_rates(config: Mapping, device: str = "cpu", scratch: str | Path | None = None) -> Rates:
    """A few seconds of micro-benchmarks of the configured model on ``device``."""
    import torch

    from ..common.device import select_device
    from ..jacobian.compute import jacobian, plain_layers
    from ..jacobian.probe import probe_errors
    from ..train.loop import least_squares_loss, main_output
    from ..train.models import build_model, count_parameters
    from ..train.normalisation import effective_mode

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
    from ..jacobian.compute import _per_sample_sizes, batch_size_for

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

    from ..spectrum.operator import JacobianOperator

    spec = config["spectrum"]
    threads = min(int(spec["threads"]), os.cpu_count() or 1)
    op = JacobianOperator(model.eval(), xs, batch_size=len(xs))
    held = JacobianOperator(model, xs, batch_size=len(xs), held=len(xs))  # its warm-up forms the rows
    ell = min(int(spec["topk"]) + int(spec["oversampling"]), *op.shape)
    # the wider column count as near l as a panel of PLAN_PANEL_BYTES allows: extrapolating from
    # few columns to many magnifies the timing noise
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
