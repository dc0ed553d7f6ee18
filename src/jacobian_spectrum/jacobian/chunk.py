"""The chunk job: J of one block of samples, checked and written to a chunk file (the scatter;
:func:`.store.gather` makes one J of the chunks).

Memory of one chunk job (b samples per batch, s = itemsize, 4 for float32, p_max = the
largest layer's parameter count, A = layer-output values per sample; b is chosen by
:func:`.compute.batch_size_for` to keep all but the first term under 512 MiB). The job
computes J batch by batch and writes each batch's rows to its file before the next
(:func:`compute_chunk`), so nothing scales with the chunk size:
  b K p s                 one batch's rows of J (one buffer, reused)
  + b K p_max s (x2)      one layer's per-sample weight gradients (workspace; x2 while a
                          grouped-convolution result is copied out)
  + ~ (K + 4) b A s       the batch's activations, autograd's saved tensors and the K
                          backprops to every layer (the probe check's jvp/vjp of the batch
                          need about as much)
  + 4 MiB                 the probe check's float64 row blocks
(measured peaks: docs/design.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from ..common.h5io import atomic_h5, require_finite, write_provenance
from ..common.logs import logger
from .compute import jacobian_blocks, jacobian_shape, outputs, parameter_table
from .degeneracy import degeneracy, handle_degeneracy, output_spread
from .probe import ProbeCheck
from .store import ROW_ORDER, _write_table


@dataclass
class ChunkSeconds:
    """Where a chunk job's time went: J's rows, the probe check, writing the file."""

    jacobian: float = 0.0
    probe_check: float = 0.0
    write: float = 0.0


def _stream_rows(
    model: torch.nn.Module, x: torch.Tensor, dset: h5py.Dataset, check: ProbeCheck, seconds: ChunkSeconds, out_path
) -> None:
    """Compute J batch by batch; each batch's rows go to the probe check, the NaN/Inf check and
    ``dset`` before the next batch, so the job never holds the whole J."""
    k = dset.shape[0] // len(x)
    t = time.perf_counter()
    for batch, block in jacobian_blocks(model, x):
        rows = slice(batch.start * k, batch.stop * k)
        block_np = block.cpu().numpy()
        t_j = time.perf_counter()
        check.add(x[batch], rows, torch.from_numpy(block_np))  # the host copy: no second transfer
        if not check.finite(rows):  # name the first NaN/Inf (a full scan only then)
            require_finite(block_np, f"{out_path}: J rows {rows.start}..{rows.stop}", row_offset=rows.start)
        t_p = time.perf_counter()
        dset[rows] = block_np
        seconds.jacobian += t_j - t
        seconds.probe_check += t_p - t_j
        t = time.perf_counter()
        seconds.write += t - t_p


def compute_chunk(
    checkpoint: str | Path,
    subset_path: str | Path,
    split: str,
    chunk: int,
    chunk_size: int,
    out_path: str | Path,
    dtype: str = "float32",
    device: str = "auto",
    tolerance: float = 1e-4,
    normalisation: str = "recomputed",
    allow_degenerate: bool = False,
) -> ChunkSeconds:
    """One job of the scatter: J for samples [chunk*chunk_size, (chunk+1)*chunk_size) of ``split``.

    Each batch's rows are fed to the probe check, checked for NaN/Inf and written to the file
    as they are computed, so the job holds one batch of J, not the chunk; the probe verdict
    comes after the last batch, before the file gets its final name. Returns where its time
    went.

    The network is the checkpoint's in eval mode, its batch-norm statistics those of
    ``normalisation`` (model.normalisation: recomputed for these weights, or stored). Before any
    row, the chunk's outputs are checked for variation across samples
    (:mod:`.degeneracy`): constant outputs stop the job naming the checkpoint, unless
    ``allow_degenerate``.
    """
    from ..common.device import select_device
    from ..data.subset import read_split
    from ..train.models import load_checkpoint
    from ..train.normalisation import NORMALISATION_MEANING

    dev = select_device(device)
    model, payload = load_checkpoint(checkpoint, dev, normalisation)
    model.eval()  # J of the network as measured: batch-norm with fixed statistics (those of `normalisation`)
    data = read_split(subset_path, split)
    n = len(data.y)
    start, stop = chunk * chunk_size, min(n, (chunk + 1) * chunk_size)
    if start >= n:
        raise ValueError(f"chunk {chunk} starts at sample {start} but {split} has only {n} samples")
    torch_dtype = torch.float64 if dtype == "float64" else torch.float32
    model = model.to(torch_dtype)
    x = torch.from_numpy(data.x[start:stop]).to(dev, torch_dtype)
    spread = output_spread(outputs(model, x).double().cpu().numpy())
    where = f"{checkpoint} ({split} samples {start}..{stop}, batch-norm statistics: {payload['normalisation']})"
    degenerate = handle_degeneracy(degeneracy(spread), where, allow_degenerate, logger)
    shape = jacobian_shape(model, x)
    k = shape[0] // len(x)
    check = ProbeCheck(model, *shape, seed=chunk)
    seconds = ChunkSeconds()
    with atomic_h5(out_path) as f:
        dset = f.create_dataset("J", shape=shape, dtype=np.float64 if dtype == "float64" else np.float32)
        _stream_rows(model, x, dset, check, seconds, out_path)
        t = time.perf_counter()
        err_jvp, err_vjp = check.errors()
        if not (err_jvp <= tolerance and err_vjp <= tolerance):
            raise ArithmeticError(
                f"{out_path}: Jacobian probe check failed: |J_s v - jvp_s|/|J_s|_F = {err_jvp:.2e} (worst "
                f"sample), |u_b^T J_b - vjp_b|/|diag(u_b) J_b|_F = {err_vjp:.2e} (worst batch) "
                f"(tolerance {tolerance:.0e})"
            )
        write_provenance(
            f,
            "jacobian_chunk",
            None,
            checkpoint=str(checkpoint),
            checkpoint_epoch=int(payload["epoch"]),
            split=split,
            chunk=chunk,
            sample_start=start,
            sample_stop=stop,
            row_start=start * k,
            row_stop=stop * k,
            num_classes=k,
            row_order=ROW_ORDER,
            dtype=dtype,
            device=str(dev),
            probe_error_jvp=err_jvp,
            probe_error_vjp=err_vjp,
            normalisation=payload["normalisation"],
            normalisation_meaning=NORMALISATION_MEANING[payload["normalisation"]],
            output_spread=spread.spread,
            output_size=spread.size,
            degenerate=degenerate,
        )
        _write_table(f, parameter_table(model))
    seconds.write += time.perf_counter() - t
    logger.info(
        "J chunk %d of %s (samples %d..%d, %d x %d; eval mode, batch-norm statistics: %s; output spread %.2e of "
        "size %.2e) probe errors jvp %.1e vjp %.1e -> %s; seconds: J %.1f, probe check %.1f, writing %.1f",
        chunk,
        split,
        start,
        stop,
        *shape,
        payload["normalisation"],
        spread.spread,
        spread.size,
        err_jvp,
        err_vjp,
        out_path,
        seconds.jacobian,
        seconds.probe_check,
        seconds.write,
    )
    return seconds
