"""Compare two results folders: every .h5 file (datasets, values, attrs) and every .csv.

Used to check that the same workflow run by two executors (SLURM vs local) produces the
same artifacts. The first difference raises ``AssertionError`` naming the file and the
dataset (or row/column) and how they differ.

Provenance that legitimately differs between two runs is skipped: attrs such as
timestamps, host names, git revision, SLURM job ids (see ``PROVENANCE_ATTR``), and
timing datasets (``TIMING_DATASET``). In string attrs (e.g. the JSON ``config`` attr,
which holds ``results``), the two folders' own paths are replaced by ``<RESULTS>``.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable
from pathlib import Path

import h5py
import numpy as np

# Attr names whose tokens (split on _ - . space and camelCase) include one of these.
PROVENANCE_ATTR_TOKENS = frozenset(
    """time times timestamp date datetime created modified started finished
    host hostname node nodename machine platform git revision rev commit sha user pid
    elapsed duration wall seconds runtime slurm job jobid uuid cwd""".split()
)
# Dataset names whose tokens include one of these: wall-clock measurements.
TIMING_DATASET_TOKENS = frozenset("wall elapsed seconds duration timestamp runtime".split())


def _tokens(name: str) -> set[str]:
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)
    return {t for t in re.split(r"[^A-Za-z0-9]+", name.lower()) if t}


def is_provenance_attr(name: str) -> bool:
    return bool(_tokens(name) & PROVENANCE_ATTR_TOKENS)


def is_timing_dataset(name: str) -> bool:
    return bool(_tokens(name.rsplit("/", 1)[-1]) & TIMING_DATASET_TOKENS)


def _files(root: Path, suffix: str) -> list[str]:
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob(f"*{suffix}")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def _same_file_sets(dir_a: Path, dir_b: Path, suffix: str, a_within_b: bool = False) -> list[str]:
    fa, fb = _files(dir_a, suffix), _files(dir_b, suffix)
    if (not set(fa) <= set(fb)) if a_within_b else fa != fb:
        only_a = sorted(set(fa) - set(fb))
        only_b = sorted(set(fb) - set(fa))
        raise AssertionError(
            f"different {suffix} files: only in {dir_a}: {only_a[:10]}; only in {dir_b}: {only_b[:10]}"
        )
    return fa


class _Normalizer:
    """Replaces each side's results-folder path in strings by a placeholder."""

    def __init__(self, root: Path):
        paths = {str(root), str(root.resolve()), str(root.absolute())}
        self.paths = sorted(paths, key=len, reverse=True)

    def __call__(self, value):
        if isinstance(value, bytes):
            try:
                return self(value.decode()).encode()
            except UnicodeDecodeError:
                return value
        if isinstance(value, str):
            for p in self.paths:
                value = value.replace(p, "<RESULTS>")
        return value


def _describe_diff(a: np.ndarray, b: np.ndarray, close: np.ndarray) -> str:
    bad = np.argwhere(~close)
    idx = tuple(bad[0]) if a.ndim else ()
    n_bad = int((~close).sum())
    msg = f"{n_bad} of {close.size} element(s) differ; first at index {list(idx)}: {a[idx]!r} vs {b[idx]!r}"
    if a.dtype.kind in "fc":
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(a.astype(np.complex128 if a.dtype.kind == "c" else np.float64) - b)
        finite = diff[np.isfinite(diff)]
        if finite.size:
            msg += f"; max abs diff {finite.max():.3g}"
    return msg


def _compare_values(a, b, rtol: float, atol: float, where: str) -> None:
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise AssertionError(f"{where}: shape {a.shape} vs {b.shape}")
    if a.dtype.names or b.dtype.names:  # compound: field by field
        if a.dtype.names != b.dtype.names:
            raise AssertionError(f"{where}: compound fields {a.dtype.names} vs {b.dtype.names}")
        for field in a.dtype.names:
            _compare_values(a[field], b[field], rtol, atol, f"{where}[{field!r}]")
        return
    ka, kb = a.dtype.kind, b.dtype.kind
    if ka in "fc" or kb in "fc":
        if not (ka in "biufc" and kb in "biufc"):
            raise AssertionError(f"{where}: dtype {a.dtype} vs {b.dtype}")
        close = np.isclose(a, b, rtol=rtol, atol=atol, equal_nan=True)
        if not close.all():
            raise AssertionError(f"{where}: values differ (rtol={rtol}, atol={atol}): {_describe_diff(a, b, close)}")
        return
    if ka in "biu" and kb in "biu":
        if not np.array_equal(a, b):
            raise AssertionError(f"{where}: integer values differ: {_describe_diff(a, b, a == b)}")
        return
    # strings, bytes, objects (variable-length strings)
    fa = [x.decode() if isinstance(x, bytes) else x for x in a.ravel().tolist()]
    fb = [x.decode() if isinstance(x, bytes) else x for x in b.ravel().tolist()]
    if fa != fb:
        i = next(i for i, (x, y) in enumerate(zip(fa, fb)) if x != y)
        raise AssertionError(f"{where}: values differ; first at flat index {i}: {fa[i]!r} vs {fb[i]!r}")


def _compare_attrs(oa, ob, rtol, atol, where, norm_a, norm_b, skipped: set[str]) -> None:
    keys_a = {k for k in oa.attrs if not is_provenance_attr(k)}
    keys_b = {k for k in ob.attrs if not is_provenance_attr(k)}
    skipped.update(f"{where}@{k}" for k in set(oa.attrs) ^ keys_a)
    if keys_a != keys_b:
        raise AssertionError(
            f"{where}: attrs differ: only in A {sorted(keys_a - keys_b)}, only in B {sorted(keys_b - keys_a)}"
        )
    for k in sorted(keys_a):
        va, vb = oa.attrs[k], ob.attrs[k]
        if isinstance(va, (str, bytes)) or isinstance(vb, (str, bytes)):
            va, vb = norm_a(va), norm_b(vb)
            if isinstance(va, bytes):
                va = va.decode(errors="replace")
            if isinstance(vb, bytes):
                vb = vb.decode(errors="replace")
            if va != vb:
                raise AssertionError(f"{where}: attr {k!r} differs: {va!r} vs {vb!r}")
            continue
        va, vb = np.asarray(va), np.asarray(vb)
        if va.dtype.kind in "OSU":
            va = np.vectorize(norm_a, otypes=[object])(va) if va.size else va
            vb = np.vectorize(norm_b, otypes=[object])(vb) if vb.size else vb
        _compare_values(va, vb, rtol, atol, f"{where}: attr {k!r}")


def compare_h5_files(
    path_a,
    path_b,
    rtol: float = 1e-6,
    atol: float = 1e-7,
    *,
    root_a=None,
    root_b=None,
    compare_attrs: bool = True,
    skipped: set[str] | None = None,
    label: str | None = None,
) -> int:
    """Compare two HDF5 files: same groups/datasets, equal values (and non-provenance attrs).

    Returns the number of datasets compared. ``skipped`` collects what was left out.
    """
    path_a, path_b = Path(path_a), Path(path_b)
    label = label or path_a.name
    skipped = set() if skipped is None else skipped
    norm_a = _Normalizer(Path(root_a) if root_a else path_a.parent)
    norm_b = _Normalizer(Path(root_b) if root_b else path_b.parent)
    n = 0
    with h5py.File(path_a, "r") as fa, h5py.File(path_b, "r") as fb:
        objs_a, objs_b = _members(fa), _members(fb)
        if sorted(objs_a) != sorted(objs_b):
            only_a = sorted(set(objs_a) - set(objs_b))
            only_b = sorted(set(objs_b) - set(objs_a))
            raise AssertionError(f"{label}: different members: only in A {only_a[:10]}, only in B {only_b[:10]}")
        if compare_attrs:
            _compare_attrs(fa, fb, rtol, atol, f"{label}:/", norm_a, norm_b, skipped)
        for name in sorted(objs_a):
            oa, ob = objs_a[name], objs_b[name]
            where = f"{label}:/{name}"
            if isinstance(oa, h5py.Dataset) != isinstance(ob, h5py.Dataset):
                raise AssertionError(f"{where}: a dataset in one file and a group in the other")
            if compare_attrs:
                _compare_attrs(oa, ob, rtol, atol, where, norm_a, norm_b, skipped)
            if not isinstance(oa, h5py.Dataset):
                continue
            if is_timing_dataset(name):
                skipped.add(where)
                continue
            if oa.shape != ob.shape:
                raise AssertionError(f"{where}: shape {oa.shape} vs {ob.shape}")
            if oa.dtype != ob.dtype:
                raise AssertionError(f"{where}: dtype {oa.dtype} vs {ob.dtype}")
            _compare_values(oa[()], ob[()], rtol, atol, where)
            n += 1
    return n


def _members(f: h5py.File) -> dict[str, h5py.HLObject]:
    """Every group and dataset below the root, by path (hard links visited once)."""
    out: dict[str, h5py.HLObject] = {}

    def visit(name: str, obj: h5py.HLObject) -> None:
        out[name] = obj

    f.visititems(visit)
    return out


def _parse_float(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


def compare_csv_files(path_a, path_b, rtol: float = 1e-6, atol: float = 1e-7, label: str | None = None) -> int:
    """Compare two CSV files cell by cell: numbers with isclose, everything else exactly."""
    label = label or Path(path_a).name
    with open(path_a, newline="") as f:
        rows_a = list(csv.reader(f))
    with open(path_b, newline="") as f:
        rows_b = list(csv.reader(f))
    if len(rows_a) != len(rows_b):
        raise AssertionError(f"{label}: {len(rows_a)} vs {len(rows_b)} rows")
    header = rows_a[0] if rows_a else []
    for r, (ra, rb) in enumerate(zip(rows_a, rows_b)):
        if len(ra) != len(rb):
            raise AssertionError(f"{label}: row {r}: {len(ra)} vs {len(rb)} columns")
        for c, (x, y) in enumerate(zip(ra, rb)):
            if x == y:
                continue
            fx, fy = _parse_float(x), _parse_float(y)
            if (
                fx is not None
                and fy is not None
                and (math.isclose(fx, fy, rel_tol=rtol, abs_tol=atol) or (math.isnan(fx) and math.isnan(fy)))
            ):
                continue
            col = header[c] if r > 0 and c < len(header) else c
            raise AssertionError(f"{label}: row {r} column {col!r}: {x!r} vs {y!r}")
    return len(rows_a)


def assert_h5_trees_equal(
    dir_a,
    dir_b,
    rtol: float = 1e-6,
    atol: float = 1e-7,
    *,
    csv_files: bool = True,
    compare_attrs: bool = True,
    exclude: Iterable[str] = (),
    a_within_b: bool = False,
) -> dict:
    """Every .h5 (and .csv) file under ``dir_a`` and ``dir_b``: same set, same contents.

    Floats compare with ``allclose(rtol, atol)``, integers/bools/strings exactly. Raises
    ``AssertionError`` at the first difference, naming the file and dataset. ``exclude``:
    glob patterns of relative file paths to leave out. ``a_within_b``: ``dir_b`` may hold more
    files (a run of more targets); every file of ``dir_a`` must be there and equal. Returns a summary dict (files and
    datasets compared, provenance attrs/timing datasets skipped).
    """
    dir_a, dir_b = Path(dir_a), Path(dir_b)
    for d in (dir_a, dir_b):
        if not d.is_dir():
            raise AssertionError(f"{d}: not a folder")
    exclude = list(exclude)

    def keep(rel: str) -> bool:
        return not any(Path(rel).match(pat) for pat in exclude)

    h5_files = [f for f in _same_file_sets(dir_a, dir_b, ".h5", a_within_b) if keep(f)]
    skipped: set[str] = set()
    n_datasets = 0
    for rel in h5_files:
        n_datasets += compare_h5_files(
            dir_a / rel,
            dir_b / rel,
            rtol,
            atol,
            root_a=dir_a,
            root_b=dir_b,
            compare_attrs=compare_attrs,
            skipped=skipped,
            label=rel,
        )
    csvs = [f for f in _same_file_sets(dir_a, dir_b, ".csv", a_within_b) if keep(f)] if csv_files else []
    for rel in csvs:
        compare_csv_files(dir_a / rel, dir_b / rel, rtol, atol, label=rel)
    return {"h5_files": len(h5_files), "datasets": n_datasets, "csv_files": len(csvs), "skipped": sorted(skipped)}
