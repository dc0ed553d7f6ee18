"""Measurement stage: how labels and residuals split between information and nuisance spaces.

For a spectrum J = U diag(s) V^T with information space I = span(U_r) and nuisance space
N = I^perp in R^{nK}, and a vector x ordered as J's rows (sample-major, x[i*K + k]):

  ||P_I x|| / ||x||,   ||P_N x|| / ||x||,   ||J_I^+ x|| / ||x|| = ||diag(1/s_1..s_r) U_r^T x|| / ||x||

All reductions in float64.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import one_hot
from .h5io import atomic_h5, open_checked, write_provenance
from .spectrum import SpectrumData, read_spectrum
from .trajectory import TrajectoryData, read_trajectory

TABLE_COLUMNS = (
    "||P_I y||/||y||",
    "||P_N y||/||y||",
    "||J_I^+ y||/||y||",
    "||P_I r0||/||r0||",
    "||P_N r0||/||r0||",
    "||J_I^+ r0||/||r0||",
)
TABLE_ROWS = ("J_init", "J_final")


def flatten_rows(a: np.ndarray) -> np.ndarray:
    """(..., n, K) -> (..., n*K) in J's row order (row = i*K + k)."""
    return a.reshape(*a.shape[:-2], a.shape[-2] * a.shape[-1]).astype(np.float64)


def projection_ratios(x: np.ndarray, U: np.ndarray, s: np.ndarray) -> tuple[float, float, float]:
    """(||P_I x||, ||P_N x||, ||J_I^+ x||), each divided by ||x||, for I = span(U)."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x)
    if norm == 0:
        raise ValueError("cannot measure a zero vector (||x|| = 0)")
    c = U.T @ x
    p_info = np.linalg.norm(c)
    p_nuis = np.linalg.norm(x - U @ c)
    pinv = np.linalg.norm(c / s[: U.shape[1]])
    return p_info / norm, p_nuis / norm, pinv / norm


def residual_energies(residuals: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """||P_I r_t||^2 and ||P_N r_t||^2 for each row r_t of ``residuals`` (T, nK)."""
    c = residuals @ U
    info = (c**2).sum(axis=1)
    total = (residuals**2).sum(axis=1)
    return info, np.maximum(total - info, 0.0)


@dataclass
class RunMeasurements:
    alignment: np.ndarray  # (2, 6): rows J_init, J_final; columns TABLE_COLUMNS
    label_energy_nuisance: np.ndarray  # (2,): ||P_N y||^2 / ||y||^2 for J_init, J_final
    residual: dict[str, dict[str, np.ndarray]]  # split -> {information, nuisance}: per epoch, squared
    residual0: dict[str, float]  # split -> ||r_0||^2


def measure(traj: TrajectoryData, spectra: Mapping[str, SpectrumData], info_dim: int) -> RunMeasurements:
    """All measurements of one run from its trajectory and its four spectra."""
    k = traj.train_predictions.shape[-1]
    y = flatten_rows(one_hot(traj.train_y, k))
    r0 = flatten_rows(traj.train_predictions[0]) - y
    rows, fractions = [], []
    for key in ("init", "final"):
        sp = spectra[key]
        _check_rows(sp, len(y), key)
        U, s = sp.U[:, :info_dim], sp.singular_values
        rows.append(projection_ratios(y, U, s) + projection_ratios(r0, U, s))
        fractions.append(rows[-1][1] ** 2)
    residual, residual0 = {}, {}
    for split, preds, labels in (
        ("train", traj.train_predictions, traj.train_y),
        ("test", traj.test_predictions, traj.test_y),
    ):
        sp = spectra[f"ref_{split}"]
        r = flatten_rows(preds) - flatten_rows(one_hot(labels, k))[None]
        _check_rows(sp, r.shape[1], f"ref_{split}")
        info, nuis = residual_energies(r, sp.U[:, :info_dim])
        residual[split] = {"information": info, "nuisance": nuis}
        residual0[split] = float((r[0] ** 2).sum())
    return RunMeasurements(np.array(rows), np.array(fractions), residual, residual0)


def _check_rows(sp: SpectrumData, n_rows: int, key: str) -> None:
    if sp.U.shape[0] != n_rows:
        raise ValueError(
            f"spectrum {key} ({sp.attrs.get('jacobian', '?')}) has {sp.U.shape[0]} rows but the vectors have {n_rows}: "
            "the spectrum belongs to another subset or split"
        )


def write_measurements(path: str | Path, m: RunMeasurements, attrs: Mapping[str, object]) -> None:
    """``runs/{run}/measurements.h5``: what Tables 1-3 and Figures 6-9 read."""
    with atomic_h5(path) as f:
        write_provenance(f, "measurements", None, **attrs)
        g = f.create_group("alignment")
        g.create_dataset("values", data=m.alignment)
        g.attrs["rows"] = list(TABLE_ROWS)
        g.attrs["columns"] = list(TABLE_COLUMNS)
        g.attrs["meaning"] = (
            "the paper's Tables 1-3: alignment of y and r0 = f(W0) - y with I and N of J_init and J_final (train)"
        )
        d = f.create_dataset("label_energy_nuisance", data=m.label_energy_nuisance)
        d.attrs["rows"] = list(TABLE_ROWS)
        d.attrs["meaning"] = "||P_N y||^2 / ||y||^2 (Figure 9)"
        for split, parts in m.residual.items():
            g = f.create_group(f"residual/{split}")
            g.attrs["r0_energy"] = m.residual0[split]
            g.attrs["meaning"] = (
                f"||P_I r_t||^2 and ||P_N r_t||^2 per epoch t, r_t = f(W_t) - y on {split}, "
                f"I/N of the reference J on {split}"
            )
            for name, values in parts.items():
                g.create_dataset(name, data=values)
                g.create_dataset(f"{name}_normalised", data=values / m.residual0[split])


def read_measurements(path: str | Path) -> dict:
    names = [
        "alignment/values",
        "label_energy_nuisance",
        "residual/train/information",
        "residual/train/nuisance",
        "residual/test/information",
        "residual/test/nuisance",
    ]
    with open_checked(path, names, artifact="measurements") as f:
        out = {n: f[n][...] for n in names}
        for split in ("train", "test"):
            out[f"residual/{split}/r0_energy"] = float(f[f"residual/{split}"].attrs["r0_energy"])
        out["attrs"] = dict(f.attrs)
    return out


def measure_run(
    trajectory: str | Path,
    spectra: Mapping[str, str | Path],
    out_path: str | Path,
    info_dim: int,
    attrs: Mapping[str, object],
) -> RunMeasurements:
    traj = read_trajectory(trajectory)
    loaded = {key: read_spectrum(p) for key, p in spectra.items()}
    for key, sp in loaded.items():
        if sp.U.shape[1] < info_dim:
            raise ValueError(
                f"{spectra[key]}: stores {sp.U.shape[1]} singular vectors, info_dim is {info_dim}; "
                "rerun the spectrum rule"
            )
    m = measure(traj, loaded, info_dim)
    write_measurements(
        out_path, m, {**attrs, "info_dim": info_dim, **{f"spectrum_{k}": str(v) for k, v in spectra.items()}}
    )
    return m
