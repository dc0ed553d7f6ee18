"""Matrix-free top-k spectrum: the spectrum job of a J too large to store, J never stored.

For J too large to store (full CIFAR-10, 10 classes: 500k x 270k, 538 GB in float32, a 2 TB
Gram matrix), the spectrum comes from passes over J's rows, each block of rows formed,
multiplied and dropped. The layers, one module each:

  operator       J as a linear operator whose products stream J's rows (:class:`JacobianOperator`)
  transport      a pass's tasks on ``dask.distributed`` workers
  randomized     randomized SVD by block Krylov or subspace iteration (:func:`randomized_svd`)
  streamed_gram  G = J J^T from streamed rows, and every singular value from it
  budget         which iteration fits ``spectrum.memory_budget_mb``, and what it holds

This module loads the checkpoint and the split, runs the iteration the budget plans, and writes
the spectrum file. It re-exports the layers' public names, so that callers that import them from
here keep working.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..common.logs import logger
from ..jacobian.compute import jacobian_shape
from ..jacobian.store import ROW_ORDER
from .budget import (
    STREAM_BLOCK_BYTES,
    GramPlan,
    MatrixFreePlan,
    RandomizedPlan,
    matrix_free_plan,
    plan_for_settings,
)
from .operator import (
    PRODUCT_BYTES,
    PROGRESS_SECONDS,
    ROWS_BUDGET_BYTES,
    SUM_SLAB,
    Float64Slabs,
    Held,
    JacobianOperator,
    slab_product,
)
from .randomized import ITERATIONS, SLAB_BYTES, TopK, randomized_svd, vector_residuals
from .store import STREAMED_GRAM, Spectrum, stored_vector_count, write_spectrum
from .streamed_gram import GRAM_CHECKED, gram_formations, gram_spectrum, streamed_gram
from .transport import dask_workers

__all__ = [
    "GRAM_CHECKED",
    "ITERATIONS",
    "PRODUCT_BYTES",
    "PROGRESS_SECONDS",
    "ROWS_BUDGET_BYTES",
    "SLAB_BYTES",
    "STREAM_BLOCK_BYTES",
    "SUM_SLAB",
    "Float64Slabs",
    "GramPlan",
    "Held",
    "JacobianOperator",
    "MatrixFreePlan",
    "MatrixFreeSettings",
    "RandomizedPlan",
    "TopK",
    "dask_workers",
    "gram_formations",
    "gram_spectrum",
    "matrix_free_plan",
    "matrix_free_spectrum",
    "plan_for_settings",
    "randomized_svd",
    "slab_product",
    "spectrum_matrix_free",
    "streamed_gram",
    "vector_residuals",
]


@dataclass(frozen=True)
class MatrixFreeSettings:
    """How a matrix-free spectrum is computed: the ``spectrum`` settings and the job's own
    (threads, device, the network's batch-norm statistics)."""

    info_dim: int
    topk: int
    oversampling: int
    power_iterations: int
    threads: int = 1
    batch_size: int | None = None  # samples a block; None: as the plan's block of rows holds
    keep: int | None = None  # left vectors stored by the randomized iterations; None: info_dim
    scheduler: str | None = None  # spectrum.scheduler: the passes on dask workers (:func:`dask_workers`)
    device: str = "cpu"
    memory_budget_mb: float = 2000.0
    iteration: str = "auto"
    stored_vectors: int | str = "all"  # spectrum.stored_vectors, for the gram iteration's every vector
    normalisation: str = "recomputed"  # model.normalisation
    allow_degenerate: bool = False

    @classmethod
    def from_spectrum(
        cls,
        settings: Mapping,
        threads: int = 1,
        device: str = "cpu",
        normalisation: str = "recomputed",
        allow_degenerate: bool = False,
    ) -> MatrixFreeSettings:
        """From the config's ``spectrum`` section, as the spectrum rule passes it."""
        return cls(
            settings["info_dim"],
            settings["topk"],
            settings["oversampling"],
            settings["power_iterations"],
            threads,
            keep=stored_vector_count(settings, settings["topk"]),
            stored_vectors=settings.get("stored_vectors", "all"),
            scheduler=settings.get("scheduler"),
            device=device,
            memory_budget_mb=settings["memory_budget_mb"],
            iteration=settings.get("iteration", "auto"),
            normalisation=normalisation,
            allow_degenerate=allow_degenerate,
        )


def matrix_free_spectrum(checkpoint: str, subset_path: str, split: str, settings: MatrixFreeSettings) -> Spectrum:
    """Spectrum of J(checkpoint) on ``split`` without storing J, checked from its last pass.
    The passes run on the workers of ``settings.scheduler`` (see :func:`dask_workers`) when
    given, else here on ``settings.device`` (``auto`` = CUDA when present: rows and products on
    the GPU). The iteration and the rows' block follow from ``settings.memory_budget_mb``
    (:func:`matrix_free_plan`). The network's batch-norm statistics are those of
    ``settings.normalisation`` (model.normalisation); outputs that do not vary across the
    samples stop it before any pass, unless ``settings.allow_degenerate``
    (:mod:`..jacobian.degeneracy`): the returned checks then say so."""
    from ..common.device import select_device
    from ..data.subset import read_split
    from ..jacobian.compute import outputs
    from ..jacobian.degeneracy import degeneracy, handle_degeneracy, output_spread
    from ..train.models import load_checkpoint

    s = settings
    dev = torch.device("cpu") if s.scheduler else select_device(s.device)
    model, payload = load_checkpoint(checkpoint, dev, s.normalisation)
    model.eval()  # J's rows in the checkpoint's precision (float32); J Z in float64 where Rayleigh-Ritz reads it
    data = read_split(subset_path, split)
    torch.set_num_threads(max(1, s.threads))
    x = torch.from_numpy(data.x).to(dev)
    spread = output_spread(outputs(model, x).double().cpu().numpy())
    where = f"{checkpoint} ({split}, batch-norm statistics: {payload['normalisation']})"
    degenerate = handle_degeneracy(degeneracy(spread), where, s.allow_degenerate, logger)
    # what the spectrum file records of the network measured (spectrum_matrix_free pops the last two)
    measured = dict(
        output_spread=spread.spread,
        output_size=spread.size,
        degenerate=degenerate,
        normalisation=payload["normalisation"],
    )
    rows, p = jacobian_shape(model, x[:1])
    plan = matrix_free_plan(
        rows * len(x),
        rows,
        p,
        s.topk,
        s.oversampling,
        s.power_iterations,
        s.memory_budget_mb,
        s.iteration,
        hold=not s.scheduler,
    )
    if isinstance(plan, GramPlan):
        spec = _gram_spectrum_of(model, x, plan, s, checkpoint, split)
        spec.checks.update(measured)
        return spec
    return _randomized_spectrum_of(model, x, plan, s, checkpoint, split, measured)


def _randomized_spectrum_of(
    model: torch.nn.Module,
    x: torch.Tensor,
    plan: RandomizedPlan,
    s: MatrixFreeSettings,
    checkpoint: str,
    split: str,
    measured: dict,
) -> Spectrum:
    """:func:`matrix_free_spectrum` by a randomized iteration: the top k singular values and
    as many left vectors as ``s.keep``, checked from the last pass."""
    rows, p = jacobian_shape(model, x[:1])
    batch_size = s.batch_size
    if batch_size is None:
        batch_size = max(1, int(plan.block_bytes // (rows * p * x.element_size())))
    logger.info(
        "matrix-free spectrum of J (%d x %d): %s, %d passes, %d panels of %d columns (%.0f MB), rows %d samples "
        "a block, the rows of %d samples held from the first pass on (%.0f MB): %.2f passes' worth of rows, "
        "%.0f MB planned",
        rows * len(x),
        p,
        plan.iteration,
        s.power_iterations + 1,
        plan.panels,
        plan.columns,
        plan.panels * plan.panel_bytes / 1e6,
        batch_size,
        plan.held_samples,
        plan.held_bytes / 1e6,
        plan.formations,
        plan.bytes / 1e6,
    )
    op = JacobianOperator(model, x, batch_size, held=plan.held_samples)
    with dask_workers(s.scheduler):
        t0 = time.perf_counter()
        top = randomized_svd(op, s.topk, s.oversampling, s.power_iterations, iteration=plan.iteration)
        t1 = time.perf_counter()
    checks = top.checks()
    residuals = top.residuals
    r = min(s.info_dim, len(top.singular_values))
    checks.update(
        passes=op.passes,
        iteration=plan.iteration,
        vector_residuals=residuals,
        max_residual_top_r=float(residuals[:r].max()),
        movement_top_r=top.movement(r),
        **measured,
    )
    keep = s.info_dim if s.keep is None else min(s.keep, top.U.shape[1])  # the stored vectors (spectrum.stored_vectors)
    logger.info(
        "matrix-free spectrum of %s on %s: %d x %d, %d passes, %.1fs; top-%d residuals <= %.2e, the last "
        "pass moved the top %d values by <= %.2e",
        checkpoint,
        split,
        *op.shape,
        op.passes,
        t1 - t0,
        r,
        checks["max_residual_top_r"],
        r,
        checks["movement_top_r"],
    )
    return Spectrum(
        top.singular_values,
        top.U[:, :keep].copy(),
        "matrix_free",
        checks,
        {"matrix_free": t1 - t0},
    )


def _gram_spectrum_of(
    model: torch.nn.Module,
    x: torch.Tensor,
    plan: GramPlan,
    s: MatrixFreeSettings,
    checkpoint: str,
    split: str,
) -> Spectrum:
    """:func:`matrix_free_spectrum` by the gram iteration: every singular value of J, and as
    many left singular vectors as ``s.stored_vectors`` (spectrum.stored_vectors) keeps."""
    op = JacobianOperator(model, x, s.batch_size or plan.held_samples)  # streamed batches as large as the held block
    logger.info(
        "matrix-free spectrum of J (%d x %d): gram, G = J J^T from the rows of %d samples held at a time "
        "(%.0f MB) against the rest, streamed; %.2f passes' worth of rows with the check: %.0f MB planned",
        *op.shape,
        plan.held_samples,
        plan.block_bytes / 1e6,
        plan.passes,
        plan.bytes / 1e6,
    )
    t0 = time.perf_counter()
    sv, V, checks = gram_spectrum(op, plan.held_samples, GRAM_CHECKED)
    t1 = time.perf_counter()
    checks.update(passes=op.passes, iteration="gram")
    keep = stored_vector_count({"stored_vectors": s.stored_vectors, "info_dim": s.info_dim}, len(sv))
    logger.info(
        "matrix-free spectrum of %s on %s: %d x %d, gram, %d passes, %.1fs; s_1 = %.4g; checks %s",
        checkpoint,
        split,
        *op.shape,
        op.passes,
        t1 - t0,
        sv[0],
        checks,
    )
    return Spectrum(sv, V[:, :keep].copy(), STREAMED_GRAM, checks, {"matrix_free": t1 - t0})


def spectrum_matrix_free(
    checkpoint: str,
    subset_path: str,
    split: str,
    out_path: str,
    settings: dict,
    threads: int = 1,
    device: str = "cpu",
    normalisation: str = "recomputed",
    allow_degenerate: bool = False,
) -> Spectrum:
    """The matrix-free spectrum rule: compute and write ``spectrum/{split}_epoch{E}.h5``. A
    degenerate network (constant outputs, or J of numerical rank at most K) stops it naming the
    checkpoint, unless ``allow_degenerate``."""
    from ..train.models import read_checkpoint
    from .store import checked_degeneracy

    run = MatrixFreeSettings.from_spectrum(settings, threads, device, normalisation, allow_degenerate)
    spec = matrix_free_spectrum(checkpoint, subset_path, split, run)
    payload = read_checkpoint(checkpoint)
    degenerate = spec.checks.pop("degenerate")
    normalisation = spec.checks.pop("normalisation")
    source = {
        "split": split,
        "checkpoint": str(checkpoint),
        "checkpoint_epoch": payload["epoch"],
        "dtype": "float32",  # J's rows are formed in the checkpoint's float32; products sum in float64
        "row_order": ROW_ORDER,
        "num_classes": int(payload["model"]["num_classes"]),
        "normalisation": normalisation,
        "degenerate": degenerate,
    }
    degenerate = checked_degeneracy(spec, source, allow_degenerate, f"{checkpoint} ({split})")
    write_spectrum(
        out_path, spec, settings["info_dim"], f"matrix-free J of {checkpoint} on {split}", source, settings, degenerate
    )
    return spec
