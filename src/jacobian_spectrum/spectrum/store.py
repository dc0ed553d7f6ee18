"""The spectrum file (``spectrum/{split}_epoch{epoch}.h5``): what every method returns and writes, and its checks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..common.h5io import atomic_h5, open_checked, require_finite, write_provenance
from ..common.logs import logger
from ..jacobian.degeneracy import degeneracy, handle_degeneracy, numerical_rank

GRAM_FLOOR = 1e-8  # relative to s_max: below it, Gram-based singular values are noise
# the methods that give every singular value, through the Gram matrix J J^T (stored J, streamed rows)
STREAMED_GRAM = "matrix_free_gram"  # spectrum.iteration gram: G from J's rows streamed, J never stored
GRAM_METHODS = ("full", STREAMED_GRAM)


@dataclass
class Spectrum:
    singular_values: np.ndarray  # descending; all nK for full, top-k otherwise
    U: np.ndarray  # (nK, stored) top left singular vectors: the first info_dim span I
    method: str
    checks: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


def spectrum_checks(s: np.ndarray, U: np.ndarray, JJtU: np.ndarray, JtU_norms: np.ndarray) -> dict:
    """The stored checks of a spectrum from J J^T U_t and ||J^T u_i|| of its top t vectors
    (t = the columns of ``JJtU``): see :func:`verify`."""
    t = JJtU.shape[1]
    s1 = s[0] if s[0] > 0 else 1.0
    return {
        "orthogonality_error": float(np.abs(U.T @ U - np.eye(U.shape[1])).max()),
        "eigen_residual": float(np.linalg.norm(JJtU - U[:, :t] * s[:t] ** 2, axis=0).max() / s1**2),
        "norm_residual": float(np.abs(JtU_norms - s[:t]).max() / s1),
        "checked_vectors": t,
    }


def stored_vector_count(settings: dict, available: int) -> int:
    """How many left singular vectors a spectrum file keeps: spectrum.stored_vectors ("all" =
    every one the method computes), never fewer than info_dim nor more than ``available``."""
    stored = settings.get("stored_vectors", "all")
    keep = available if stored == "all" else min(int(stored), available)
    return max(keep, min(int(settings["info_dim"]), available))


def spectrum_floors(spec: Spectrum, source_attrs: Mapping) -> tuple[float, float]:
    """(numerical floor, storage floor): singular values at or below the larger are not resolved,
    the first by the Gram route (1e-8 s_max), the second by J's stored precision (eps s_max)."""
    s = spec.singular_values
    smax = float(s[0]) if len(s) else 0.0
    numerical = GRAM_FLOOR * smax if spec.method in GRAM_METHODS else 0.0
    eps = np.finfo(np.float32 if source_attrs.get("dtype") == "float32" else np.float64).eps
    return numerical, float(eps) * smax


def checked_degeneracy(spec: Spectrum, source_attrs: Mapping, allow: bool, what: str) -> str:
    """Stop naming ``what`` (the checkpoint) when J's numerical rank is at most K, or when its J
    was already marked degenerate (constant outputs), unless ``allow``; returns the description
    for the spectrum's ``degenerate`` attr ("" for a sound network). See :mod:`..jacobian.degeneracy`."""
    k = int(source_attrs.get("num_classes", 0)) or 1
    rank = numerical_rank(spec.singular_values, max(spectrum_floors(spec, source_attrs)))
    signs = [
        str(source_attrs.get("degenerate", "")),
        degeneracy(rank=rank, num_classes=k, num_samples=len(spec.U) // k, computed=len(spec.singular_values)),
    ]
    return handle_degeneracy("; ".join(x for x in signs if x), what, allow, logger)


def write_spectrum(
    path: str | Path,
    spec: Spectrum,
    info_dim: int,
    source: str | Path,
    source_attrs: Mapping,
    settings: dict,
    degenerate: str = "",
) -> None:
    """``spectrum/{split}_epoch{epoch}.h5``: singular_values (descending), U (nK x stored), attrs."""
    s = spec.singular_values
    require_finite(s, f"{path}: singular values")
    numerical_floor, storage_floor = spectrum_floors(spec, source_attrs)
    with atomic_h5(path) as f:
        write_provenance(
            f,
            "spectrum",
            settings,
            method=spec.method,
            info_dim=int(info_dim),
            precision="float64",
            numerical_floor=numerical_floor,
            numerical_floor_meaning="singular values below this are float64 noise of the Gram route (1e-8 * s_max)",
            storage_floor=storage_floor,
            storage_floor_meaning="relative rounding of J's stored entries times s_max: values below are not resolved",
            numerical_rank=numerical_rank(s, max(numerical_floor, storage_floor)),
            numerical_rank_meaning="singular values above both floors (of those computed)",
            normalisation=str(source_attrs.get("normalisation", "")),
            degenerate=degenerate,
            all_singular_values=spec.method in GRAM_METHODS,
            jacobian=str(source),
            split=source_attrs.get("split", ""),
            checkpoint=source_attrs.get("checkpoint", ""),
            checkpoint_epoch=int(source_attrs.get("checkpoint_epoch", -1)),
            num_rows=int(spec.U.shape[0]),
            row_order=source_attrs.get("row_order", ""),
            **{f"check_{k}": v for k, v in spec.checks.items()},
            **{f"seconds_{k}": v for k, v in spec.seconds.items()},
        )
        f.create_dataset("singular_values", data=s)
        f.create_dataset("U", data=spec.U)
        f["U"].attrs["meaning"] = (
            "top left singular vectors of J (columns, descending), rows ordered as J's rows; "
            "the first info_dim span the information space"
        )


@dataclass
class SpectrumData:
    singular_values: np.ndarray
    U: np.ndarray
    attrs: dict


def read_spectrum(path: str | Path) -> SpectrumData:
    with open_checked(path, ["singular_values", "U"], artifact="spectrum") as f:
        s, U, attrs = f["singular_values"][...], f["U"][...], dict(f.attrs)
    require_finite(U, f"{path}: U")
    if U.shape[1] > len(s):
        raise ValueError(f"{path}: U has {U.shape[1]} columns but only {len(s)} singular values")
    return SpectrumData(s, U, attrs)
