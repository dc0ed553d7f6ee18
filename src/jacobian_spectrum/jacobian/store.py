"""Jacobian stage, the files: one chunk job per block of samples (scatter), then one J (gather).

Each file holds ``J`` (rows sample-major, :data:`jacobian.ROW_ORDER`) and the parameter
table beside it (name, offset, size, shape of every trained tensor), so
``J[:, offset:offset + size]`` is one layer.

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

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from ..common.h5io import atomic_h5, open_checked, require_finite, write_provenance
from ..common.logs import logger
from .compute import ROW_ORDER, ParameterEntry, jacobian_blocks, jacobian_shape, parameter_table
from .probe import ProbeCheck


def _write_table(f: h5py.File, table: Sequence[ParameterEntry]) -> None:
    g = f.create_group("parameters")
    g.create_dataset("name", data=[e.name for e in table], dtype=h5py.string_dtype())
    g.create_dataset("offset", data=np.array([e.offset for e in table], dtype=np.int64))
    g.create_dataset("size", data=np.array([e.size for e in table], dtype=np.int64))
    g.create_dataset("shape", data=["x".join(map(str, e.shape)) for e in table], dtype=h5py.string_dtype())
    g.attrs["meaning"] = "column block of J for each trained tensor: J[:, offset:offset+size], reshaped to shape"


def read_table(f: h5py.File) -> list[ParameterEntry]:
    g = f["parameters"]
    return [
        ParameterEntry(
            n.decode() if isinstance(n, bytes) else n,
            int(o),
            int(s),
            tuple(int(v) for v in str(sh.decode() if isinstance(sh, bytes) else sh).split("x") if v),
        )
        for n, o, s, sh in zip(g["name"][...], g["offset"][...], g["size"][...], g["shape"][...])
    ]


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
) -> ChunkSeconds:
    """One job of the scatter: J for samples [chunk*chunk_size, (chunk+1)*chunk_size) of ``split``.

    Each batch's rows are fed to the probe check, checked for NaN/Inf and written to the file
    as they are computed, so the job holds one batch of J, not the chunk; the probe verdict
    comes after the last batch, before the file gets its final name. Returns where its time
    went.
    """
    from ..common.device import select_device
    from ..data.subset import read_split
    from ..train.models import load_checkpoint

    dev = select_device(device)
    model, payload = load_checkpoint(checkpoint, dev)
    model.eval()  # J of the network as trained: batch-norm with its running statistics, fixed
    data = read_split(subset_path, split)
    n = len(data.y)
    start, stop = chunk * chunk_size, min(n, (chunk + 1) * chunk_size)
    if start >= n:
        raise ValueError(f"chunk {chunk} starts at sample {start} but {split} has only {n} samples")
    torch_dtype = torch.float64 if dtype == "float64" else torch.float32
    model = model.to(torch_dtype)
    x = torch.from_numpy(data.x[start:stop]).to(dev, torch_dtype)
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
                f"{out_path}: Jacobian probe check failed: |Jv - jvp|/|jvp| = {err_jvp:.2e}, "
                f"|u^T J - vjp|/|vjp| = {err_vjp:.2e} "
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
        )
        _write_table(f, parameter_table(model))
    seconds.write += time.perf_counter() - t
    logger.info(
        "J chunk %d of %s (samples %d..%d, %d x %d) probe errors jvp %.1e vjp %.1e -> %s; seconds: J %.1f, "
        "probe check %.1f, writing %.1f",
        chunk,
        split,
        start,
        stop,
        *shape,
        err_jvp,
        err_vjp,
        out_path,
        seconds.jacobian,
        seconds.probe_check,
        seconds.write,
    )
    return seconds


GATHER_READ_BYTES = 256 << 20  # the gather checks chunk files in row blocks of this size: its memory is fixed


def _checked_chunks(chunk_paths: Sequence[str | Path]) -> list[tuple[Path, dict, tuple, list[ParameterEntry]]]:
    """(path, attrs, shape, parameter table) of every chunk file, in row order, after checking
    that all belong to one Jacobian and cover its rows without a gap."""
    metas = []
    for path in chunk_paths:
        with open_checked(path, ["J", "parameters/name"], artifact="jacobian_chunk") as f:
            metas.append((Path(path), dict(f.attrs), f["J"].shape, read_table(f)))
    first = metas[0]
    for path, a, shape, table in metas:
        for key in ("checkpoint", "checkpoint_epoch", "split", "dtype", "num_classes"):
            if a[key] != first[1][key]:
                raise ValueError(
                    f"{path}: {key} = {a[key]!r} but {first[0]} has {first[1][key]!r}; "
                    "the chunk is from another Jacobian"
                )
        if table != first[3]:
            raise ValueError(f"{path}: parameter table differs from {first[0]}; the chunk is from another model")
        if shape[0] != a["row_stop"] - a["row_start"]:
            raise ValueError(f"{path}: J has {shape[0]} rows, attrs say rows {a['row_start']}..{a['row_stop']}")
    metas.sort(key=lambda m: int(m[1]["row_start"]))
    expected = 0
    for path, a, _, _ in metas:
        if int(a["row_start"]) != expected:
            raise ValueError(
                f"{path}: starts at row {a['row_start']}, expected {expected}: a chunk is missing before it"
            )
        expected = int(a["row_stop"])
    return metas


def gather(chunk_paths: Sequence[str | Path], out_path: str | Path, attrs: dict | None = None) -> None:
    """Make the chunk files one ``J`` without copying them: an HDF5 virtual dataset over them.

    Every chunk is checked first: a missing, unreadable or foreign chunk (other checkpoint,
    split or parameter layout), a gap in the rows, or NaN/Inf stops with a message naming the
    chunk file. The chunks stay the storage of J (each Jacobian is written once, so its peak
    disk is its size); they are referred to by paths relative to ``out_path``'s folder, and
    :func:`jacobian_spectrum.common.h5io.open_checked` checks them again whenever J is opened. The
    fill value is NaN, so a source that went missing after the checks reads as NaN, which
    every reader of J refuses.
    """
    metas = _checked_chunks(chunk_paths)
    first = metas[0]
    rows, p = int(metas[-1][1]["row_stop"]), first[2][1]
    k = int(first[1]["num_classes"])
    np_dtype = np.float64 if first[1]["dtype"] == "float64" else np.float32
    with atomic_h5(out_path) as f:
        write_provenance(
            f,
            "jacobian",
            None,
            checkpoint=first[1]["checkpoint"],
            checkpoint_epoch=int(first[1]["checkpoint_epoch"]),
            split=first[1]["split"],
            row_order=ROW_ORDER,
            num_samples=rows // k,
            num_classes=k,
            num_parameters=p,
            dtype=first[1]["dtype"],
            chunks=[str(m[0].name) for m in metas],
            probe_error_jvp_max=max(float(m[1]["probe_error_jvp"]) for m in metas),
            probe_error_vjp_max=max(float(m[1]["probe_error_vjp"]) for m in metas),
            **(attrs or {}),
        )
        layout = h5py.VirtualLayout(shape=(rows, p), dtype=np_dtype)
        folder = Path(out_path).resolve().parent
        step = max(1, GATHER_READ_BYTES // (p * np.dtype(np_dtype).itemsize))  # rows per read
        for path, a, shape, _ in metas:
            with h5py.File(path, "r") as src:
                for r in range(0, shape[0], step):
                    block = src["J"][r : r + step]
                    require_finite(block, f"{path}: J rows {r}..{r + len(block)}", row_offset=r)
            source = h5py.VirtualSource(os.path.relpath(path.resolve(), folder), "J", shape=shape, dtype=np_dtype)
            layout[int(a["row_start"]) : int(a["row_stop"])] = source
        f.create_virtual_dataset("J", layout, fillvalue=np.nan)
        _write_table(f, first[3])
    logger.info("gathered %d chunks into J (%d x %d, a virtual dataset over them) -> %s", len(metas), rows, p, out_path)


def layer_norms(path: str | Path) -> list[tuple[str, float]]:
    """Frobenius norm of each parameter tensor's column block of J (read block by block)."""
    with open_checked(path, ["J", "parameters/name"]) as f:
        out = []
        for e in read_table(f):
            block = f["J"][:, e.offset : e.offset + e.size].astype(np.float64)
            out.append((e.name, float(math.sqrt((block**2).sum()))))
    return out
