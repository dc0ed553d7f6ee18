"""The Jacobian file: J (rows sample-major, :data:`ROW_ORDER`) and, beside it, the parameter
table (name, offset, size, shape of every trained tensor), so ``J[:, offset:offset + size]``
is one layer. The gather job makes one J as an HDF5 virtual dataset over the chunk files
(:mod:`.chunk` writes them). Light imports only (no torch): a gather job starts in a fraction
of a second, and ``jacobian-spectrum inspect`` reads a file without torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..common.h5io import atomic_h5, open_checked, require_finite, write_provenance
from ..common.logs import logger

ROW_ORDER = "sample-major: row = i*K + k (sample i of the split, output k)"


@dataclass(frozen=True)
class ParameterEntry:
    name: str
    offset: int
    size: int
    shape: tuple[int, ...]


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
        for key in ("checkpoint", "checkpoint_epoch", "split", "dtype", "num_classes", "normalisation"):
            if a.get(key) != first[1].get(key):
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
            normalisation=first[1].get("normalisation", ""),
            normalisation_meaning=first[1].get("normalisation_meaning", ""),
            degenerate="; ".join(
                f"{m[0].name}: {m[1]['degenerate']}" for m in metas if str(m[1].get("degenerate", ""))
            ),
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


def materialise(path: str | Path, copy_path: str | Path) -> None:
    """Write a self-contained copy of a Jacobian file: J's values (read through its chunk files,
    in row blocks of GATHER_READ_BYTES), its parameter table and its attrs, plus
    ``materialised_from``. Refuses to overwrite; a J whose chunk files are missing is refused
    naming them (:func:`open_checked`)."""
    copy_path = Path(copy_path)
    if copy_path.exists():
        raise FileExistsError(f"{copy_path} exists; name a new file")
    with open_checked(path, ["J", "parameters/name"], artifact="jacobian") as f:
        J = f["J"]
        shape = J.shape
        step = max(1, GATHER_READ_BYTES // (shape[1] * J.dtype.itemsize))
        with atomic_h5(copy_path) as out:
            for key, value in f.attrs.items():
                out.attrs[key] = value
            out.attrs["materialised_from"] = str(Path(path).resolve())
            dset = out.create_dataset("J", shape=J.shape, dtype=J.dtype)
            for r in range(0, J.shape[0], step):
                block = J[r : r + step]
                require_finite(block, f"{path}: J rows {r}..{r + len(block)}", row_offset=r)
                dset[r : r + len(block)] = block
            _write_table(out, read_table(f))
    logger.info("materialised %s (%d x %d) -> %s", path, *shape, copy_path)


def layer_norms(path: str | Path) -> list[tuple[str, float]]:
    """Frobenius norm of each parameter tensor's column block of J (read block by block)."""
    with open_checked(path, ["J", "parameters/name"]) as f:
        out = []
        for e in read_table(f):
            block = f["J"][:, e.offset : e.offset + e.size].astype(np.float64)
            out.append((e.name, float(math.sqrt((block**2).sum()))))
    return out
