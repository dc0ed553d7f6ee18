"""HDF5 and file helpers shared by every stage: atomic writes, provenance attrs, checked reads."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np

from .. import __version__


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    A kill at any moment leaves either the old file (or none) or the complete new one,
    never a partial file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def json_safe(value: object) -> object:
    """``value`` as strict JSON takes it: NaN and infinities as null, numpy scalars as numbers,
    tuples as lists, keys as strings."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return int(value) if isinstance(value, np.integer) else value


def write_json(path: str | Path, value: object) -> None:
    """``value`` (:func:`json_safe`) as indented JSON, written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(json_safe(value), indent=1) + "\n")


def _remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of ``path`` left by killed writers (their process is gone).

    A job killed mid-write (out of memory, time limit) cannot clean up; its retry has another
    process id, so without this every kill would leave a partial file (GBs for a Jacobian
    chunk) beside the output. Snakemake runs one job per output at a time, so a temporary
    whose process id is not alive here is a dead writer's (on a cluster, a killed job's
    retry is the only other writer of that output).
    """
    for stale in path.parent.glob(f".{path.name}.tmp*"):
        pid = stale.name.rsplit(".tmp", 1)[1]
        if pid.isdigit() and not _process_alive(int(pid)):
            stale.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        pass
    return True


@contextlib.contextmanager
def atomic_h5(path: str | Path) -> Iterator[h5py.File]:
    """Open a new HDF5 file for writing under a temporary name; rename when closed cleanly."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            yield f


def _git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _attr_value(value: object) -> object:
    """HDF5 attrs take numbers, strings and arrays; nested config goes in as JSON."""
    if value is None:
        return "none"
    if isinstance(value, (bool, int, float, str, np.integer, np.floating, np.ndarray)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, float)) for v in value) and value:
        return np.asarray(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value) and value:
        return [str(v) for v in value]
    return json.dumps(value, sort_keys=True, default=str)


def write_attrs(obj: h5py.HLObject, attrs: Mapping[str, object]) -> None:
    """Set attrs on a file, group or dataset, converting config values to HDF5 types."""
    for key, value in attrs.items():
        obj.attrs[key] = _attr_value(value)


def write_provenance(f: h5py.File, what: str, config: Mapping[str, object] | None = None, **attrs: object) -> None:
    """The attrs every artifact carries: what it is, who made it, the config it depends on."""
    write_attrs(
        f,
        {
            "artifact": what,
            "producer": f"jacobian_spectrum {__version__}",
            "git_revision": _git_revision(),
            **({"config": config} if config is not None else {}),
            **attrs,
        },
    )


def open_checked(path: str | Path, datasets: Sequence[str] = (), artifact: str | None = None) -> h5py.File:
    """Open an HDF5 file for reading and check that it holds ``datasets`` (and is ``artifact``).

    Raises ``ValueError`` naming the file and what is wrong, instead of a deep h5py error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path}: not a readable HDF5 file (truncated or corrupted?): {exc}") from exc
    missing = [d for d in datasets if d not in f]
    if missing:
        f.close()
        raise ValueError(f"{path}: missing dataset(s) {missing}; the file may come from an older or different step")
    if artifact is not None and f.attrs.get("artifact") != artifact:
        found = f.attrs.get("artifact")
        f.close()
        raise ValueError(f"{path}: expected a {artifact!r} file, found artifact={found!r}")
    try:
        for name in datasets:
            check_virtual_sources(f, name, path)
    except Exception:
        f.close()
        raise
    return f


def check_virtual_sources(f: h5py.File, name: str, path: str | Path) -> None:
    """For a virtual dataset (a Jacobian over its chunk files): every source file exists, holds
    the source dataset in the mapped shape, and comes from the same checkpoint, split and rows,
    so that a missing or replaced source is named instead of read as fill values."""
    dset = f[name]
    if not isinstance(dset, h5py.Dataset) or not dset.is_virtual:
        return
    folder = Path(path).resolve().parent
    sources = [
        (vs, Path(vs.file_name) if Path(vs.file_name).is_absolute() else folder / vs.file_name)
        for vs in dset.virtual_sources()
    ]
    missing = [str(source) for _, source in sources if not source.is_file()]
    if missing:
        listed = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise FileNotFoundError(
            f"{path}: {name} is a virtual dataset over {len(sources)} chunk file(s), of which {len(missing)} "
            f"do not exist: {listed}. Read it where its chunks are, copy it with `jacobian-spectrum materialise "
            f"{Path(path).name} COPY.h5` there to get one self-contained file, or delete it and rerun to rebuild"
        )
    for vs, source in sources:
        what = f"{path}: {name} is stored in {source}"
        try:
            g = h5py.File(source, "r")
        except OSError as exc:
            raise ValueError(f"{what}, which is not a readable HDF5 file (truncated or corrupted?): {exc}") from exc
        # the part of the virtual dataset this source fills: its shape is the source's
        lo, hi = vs.vspace.get_select_bounds()
        shape = tuple(b - a + 1 for a, b in zip(lo, hi))
        with g:
            if vs.dset_name not in g or g[vs.dset_name].shape != shape:
                found = g[vs.dset_name].shape if vs.dset_name in g else "no dataset"
                raise ValueError(f"{what}, which holds {found} where {vs.dset_name} {shape} is expected")
            row_start = lo[0]
            expected = {k: f.attrs[k] for k in ("checkpoint", "checkpoint_epoch", "split") if k in f.attrs}
            expected["row_start"] = row_start
            for key, value in expected.items():
                if key in g.attrs and g.attrs[key] != value:
                    raise ValueError(f"{what}, whose {key} is {g.attrs[key]!r}, not {value!r}: it is from another J")


def check_all_virtual_sources(f: h5py.File, path: str | Path) -> None:
    """:func:`check_virtual_sources` for every virtual dataset in the file."""
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) and obj.is_virtual else None)
    for name in names:
        check_virtual_sources(f, name, path)


def require_finite(array: np.ndarray, what: str, row_offset: int = 0) -> None:
    """Stop with a message naming ``what`` if the array holds NaN or Inf.

    ``row_offset``: where ``array`` starts in the array the message's index should count in
    (a block of rows read from a larger dataset).
    """
    bad = ~np.isfinite(array)
    if bad.any():
        idx = np.argwhere(bad)[0].tolist()
        if idx:
            idx[0] += row_offset
        raise ValueError(f"{what}: {int(bad.sum())} non-finite value(s) (NaN or Inf), first at index {idx}")
