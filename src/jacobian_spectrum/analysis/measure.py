"""Measurement stage: how labels and residuals split between information and nuisance spaces.

For a spectrum J = U diag(s) V^T with information space I = span(U_r) and nuisance space
N = I^perp in R^{nK}, and a vector x ordered as J's rows (sample-major, x[i*K + k]):

  ||P_I x|| / ||x||,   ||P_N x|| / ||x||,   ||J_I^+ x|| / ||x|| = ||diag(1/s_1..s_r) U_r^T x|| / ||x||

All reductions in float64.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..common.h5io import atomic_h5, open_checked, write_provenance
from ..data.corruption import one_hot
from ..spectrum.store import SpectrumData, read_spectrum
from ..train.trajectory import TrajectoryData, read_trajectory
from .quantities import (
    CUTOFF_COLUMNS,
    best_cutoff,
    cutoff_grid,
    energy_share,
    no_memorisation_alignment,
    principal_cosines,
    projection_curves,
    sample_energies,
    sample_nuisance_over_r,
    subspace_overlap,
    theorem_terms,
)

TABLE_COLUMNS = (
    "||P_I y||/||y||",
    "||P_N y||/||y||",
    "||J_I^+ y||/||y||",
    "||P_I r0||/||r0||",
    "||P_N r0||/||r0||",
    "||J_I^+ r0||/||r0||",
)
TABLE_ROWS = ("J_init", "J_final")
LABEL_SYMBOLS = {"labels": "y", "clean_labels": "y_clean", "label_noise": "(y - y_clean)"}


def flatten_rows(a: np.ndarray) -> np.ndarray:
    """(..., n, K) -> (..., n*K) in J's row order (row = i*K + k)."""
    return a.reshape(*a.shape[:-2], a.shape[-2] * a.shape[-1]).astype(np.float64)


def projection_ratios(x: np.ndarray, U: np.ndarray, s: np.ndarray, floor: float = 0.0) -> tuple[float, float, float]:
    """(||P_I x||, ||P_N x||, ||J_I^+ x||), each divided by ||x||, for I = span(U); ||J_I^+ x|| is
    NaN when a singular value of I is at or below ``floor`` (the spectrum's resolved floor)."""
    return tuple(float(v) for v in projection_curves(x, U, s, floor)[-1])


def residual_energies(residuals: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """||P_I r_t||^2 and ||P_N r_t||^2 for each row r_t of ``residuals`` (T, nK)."""
    c = residuals @ U
    info = (c**2).sum(axis=1)
    total = (residuals**2).sum(axis=1)
    return info, np.maximum(total - info, 0.0)


def alignment_by_labels(
    U: np.ndarray, s: np.ndarray, labels: Mapping[str, np.ndarray], clean: np.ndarray, predictions0: np.ndarray
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """One spectrum's Tables 1-3 columns (TABLE_COLUMNS) for several label sets (name -> the trained
    labels, (n,)): y and r0 = f(W0) - y, ``predictions0`` the initial outputs (n, K); and each set's
    no-memorisation reference (``no_memorisation_alignment`` against the ``clean`` labels)."""
    k = predictions0.shape[-1]
    ys = {name: flatten_rows(one_hot(y, k)) for name, y in labels.items()}
    rows = {
        n: [*projection_ratios(y, U, s), *projection_ratios(flatten_rows(predictions0) - y, U, s)]
        for n, y in ys.items()
    }
    return rows, {name: list(no_memorisation_alignment(y, clean, k)) for name, y in ys.items()}


def spectrum_summary(
    w: np.ndarray, V: np.ndarray, labels: Mapping[str, np.ndarray], clean: np.ndarray, predictions0: np.ndarray, r: int
) -> dict:
    """What a fused run keeps of a whole spectrum (eigenvalues ``w`` of G = J J^T, descending, and
    their vectors ``V``): the top 100 singular values, s_r and the top r's share of ||J||_F^2, and
    :func:`alignment_by_labels` at the cut-off r."""
    s = np.sqrt(np.maximum(w, 0.0))
    alignment, reference = alignment_by_labels(V[:, :r], s, labels, clean, predictions0)
    summary = {"singular_values_top": s[:100].tolist(), "s_r": float(s[r - 1])}
    return {
        **summary,
        "energy_share_top_r": float(energy_share(s)[r - 1]),
        "alignment": alignment,
        "no_memorisation": reference,
    }


@dataclass
class Tracking:
    """The alignment at each tracked epoch (beyond the paper: its two moments become a curve)."""

    epochs: np.ndarray  # (T,)
    labels: dict[str, np.ndarray]  # labels, clean_labels, label_noise -> (T, 3) at r = info_dim
    cosines: dict[str, np.ndarray]  # init, final -> (T, info_dim): principal angles with J_init's, J_final's I
    theorem: dict[str, np.ndarray]  # bias, pinv, nuisance -> (T, R); {paper,unit}_{r,bound} -> (T,)


@dataclass
class RunMeasurements:
    alignment: np.ndarray  # (2, 6): rows J_init, J_final; columns TABLE_COLUMNS
    label_energy_nuisance: np.ndarray  # (2,): ||P_N y||^2 / ||y||^2 for J_init, J_final
    residual: dict[str, dict[str, np.ndarray]]  # split -> {information, nuisance}: per epoch, squared
    residual0: dict[str, float]  # split -> ||r_0||^2
    cutoff: dict[str, np.ndarray] = field(default_factory=dict)  # J_init, J_final -> (R, 6): TABLE_COLUMNS over r
    energy_share: dict[str, np.ndarray] = field(default_factory=dict)  # J_init, J_final -> share of ||J||_F^2 in top r
    tracking: Tracking | None = None
    # (||P_I y||/||y||, ||P_N y||^2/||y||^2) for I = the true-class structure alone: no noise memorised
    no_memorisation: tuple[float, float] = (float("nan"), float("nan"))
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)  # see measure_per_sample


PER_SAMPLE_MEANING = {
    "label_information": "each sample's ||(P_I y)_i||^2 (its K rows), rows J_init, J_final, r = info_dim",
    "label_nuisance": "each sample's ||(P_N y)_i||^2: summed over samples, ||P_N y||^2 of Tables 1-3 and Figure 9",
    "residual_information": "each sample's ||(P_I r0)_i||^2, r0 = f(W0) - y",
    "residual_nuisance": "each sample's ||(P_N r0)_i||^2",
    "r_grid": "the cut-offs r of label_nuisance_over_r (log-spaced, with info_dim)",
    "label_nuisance_over_r": "each sample's ||(P_N y)_i||^2 for I = the top r of J_init (row 0) and J_final (row 1), "
    "r = r_grid: (2, len(r_grid), n)",
    "tracking_epochs": "the tracked epochs of tracking_label_nuisance",
    "tracking_label_nuisance": "each sample's ||(P_N y)_i||^2 at each tracked epoch's J, r = info_dim",
}


def resolved_floor(sp: SpectrumData) -> float:
    """Singular values at or below this are not resolved (Gram route or J's stored precision)."""
    return max(float(sp.attrs.get("numerical_floor", 0.0)), float(sp.attrs.get("storage_floor", 0.0)))


def trained_labels(traj: TrajectoryData) -> np.ndarray:
    """y, the labels the run trained on (one-hot), in J's row order."""
    return flatten_rows(one_hot(traj.train_y, traj.train_predictions.shape[-1]))


def labels_and_initial_residual(traj: TrajectoryData) -> tuple[np.ndarray, np.ndarray]:
    """y (the trained labels) and r0 = f(W0) - y, in J's row order."""
    y = trained_labels(traj)
    return y, flatten_rows(traj.train_predictions[0]) - y


def label_vectors(traj: TrajectoryData) -> dict[str, np.ndarray]:
    """y (the trained labels) and, for a corrupted run, y_clean and the label noise y - y_clean."""
    k = traj.train_predictions.shape[-1]
    y = trained_labels(traj)
    out = {"labels": y}
    if np.any(traj.train_y != traj.train_y_clean):
        clean = flatten_rows(one_hot(traj.train_y_clean, k))
        out.update(clean_labels=clean, label_noise=y - clean)
    return out


def measure_cutoff(traj: TrajectoryData, spectra: Mapping[str, SpectrumData]) -> tuple[dict, dict]:
    """Every column of Tables 1-3 for every cut-off r up to the stored vectors, and the share of
    ||J||_F^2 in the top r, for J_init and J_final."""
    y, r0 = labels_and_initial_residual(traj)
    cutoff, share = {}, {}
    for key, row in zip(("init", "final"), TABLE_ROWS):
        sp = spectra[key]
        floor = resolved_floor(sp)
        curves = [projection_curves(v, sp.U, sp.singular_values, floor) for v in (y, r0)]
        cutoff[row] = np.concatenate(curves, axis=1)
        share[row] = energy_share(sp.singular_values)
    return cutoff, share


def measure_tracking(
    traj: TrajectoryData,
    tracked: Mapping[int, SpectrumData],
    spectra: Mapping[str, SpectrumData],
    info_dim: int,
    theorem: Mapping[str, float],
) -> Tracking:
    """At each tracked epoch: the label alignment (y, and y_clean and y - y_clean for corrupted
    runs), the principal angles of its I with J_init's and J_final's, and Theorem 3.2's terms over r."""
    k = traj.train_predictions.shape[-1]
    vectors = label_vectors(traj)
    epochs = np.array(sorted(tracked))
    R = min(sp.U.shape[1] for sp in tracked.values())
    labels = {name: np.zeros((len(epochs), 3)) for name in vectors}
    cosines = {key: np.zeros((len(epochs), info_dim)) for key in ("init", "final")}
    terms = []
    for i, e in enumerate(epochs):
        sp = tracked[int(e)]
        check_rows(sp, len(vectors["labels"]), f"epoch {e}")
        U, s = sp.U[:, :info_dim], sp.singular_values
        for name, v in vectors.items():
            labels[name][i] = projection_ratios(v, U, s, resolved_floor(sp))
        for key in cosines:
            cosines[key][i] = principal_cosines(U, spectra[key].U[:, :info_dim])
        terms.append(theorem_terms(vectors["labels"], sp.U[:, :R], s, k, resolved_floor(sp)))
    out = {name: np.array([getattr(t, name) for t in terms]) for name in ("bias", "pinv", "nuisance")}
    for tag, (factor, gamma) in theorem_constants(theorem).items():
        best = [best_cutoff(t.bound(factor, gamma)) for t in terms]
        out[f"{tag}_r"] = np.array([r for r, _ in best])
        out[f"{tag}_bound"] = np.array([b for _, b in best])
        out[f"{tag}_bias"] = np.array([t.bias[r - 1] for t, (r, _) in zip(terms, best)])
        out[f"{tag}_variance"] = out[f"{tag}_bound"] - out[f"{tag}_bias"]
    return Tracking(epochs, labels, cosines, out)


def measure_per_sample(
    traj: TrajectoryData,
    spectra: Mapping[str, SpectrumData],
    info_dim: int,
    tracked: Mapping[int, SpectrumData] | None = None,
) -> dict[str, np.ndarray]:
    """Each sample's share of the label vector y and of the residual r0 on I and N (J_init,
    J_final at r = info_dim), of y on N over the cut-off r, and at each tracked epoch: the
    paper's claim that label noise lives in N, one sample at a time (PER_SAMPLE_MEANING)."""
    k = traj.train_predictions.shape[-1]
    y, r0 = labels_and_initial_residual(traj)
    out: dict[str, list] = {name: [] for name in ("label_information", "label_nuisance")}
    out.update(residual_information=[], residual_nuisance=[], label_nuisance_over_r=[])
    grid = cutoff_grid(min(spectra[key].U.shape[1] for key in ("init", "final")), info_dim)
    for key in ("init", "final"):
        U = spectra[key].U
        for name, v in (("label", y), ("residual", r0)):
            info, nuisance = sample_energies(v, U[:, :info_dim], k)
            out[f"{name}_information"].append(info)
            out[f"{name}_nuisance"].append(nuisance)
        out["label_nuisance_over_r"].append(sample_nuisance_over_r(y, U, k, grid))
    result = {name: np.array(v) for name, v in out.items()}
    result["r_grid"] = grid
    if tracked:
        epochs = sorted(tracked)
        result["tracking_epochs"] = np.array(epochs)
        result["tracking_label_nuisance"] = np.array(
            [sample_energies(y, tracked[e].U[:, :info_dim], k)[1] for e in epochs]
        )
    return result


def theorem_constants(theorem: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    """(factor, Gamma) of the variance term: the paper's printed 12 B and Gamma, and both set to 1."""
    return {"paper": (12 * float(theorem["B"]), float(theorem["gamma"])), "unit": (1.0, 1.0)}


def measure(traj: TrajectoryData, spectra: Mapping[str, SpectrumData], info_dim: int) -> RunMeasurements:
    """All measurements of one run from its trajectory and its four spectra."""
    k = traj.train_predictions.shape[-1]
    y, r0 = labels_and_initial_residual(traj)
    rows, fractions = [], []
    for key in ("init", "final"):
        sp = spectra[key]
        check_rows(sp, len(y), key)
        U, s, floor = sp.U[:, :info_dim], sp.singular_values, resolved_floor(sp)
        rows.append(projection_ratios(y, U, s, floor) + projection_ratios(r0, U, s, floor))
        fractions.append(rows[-1][1] ** 2)
    residual, residual0 = {}, {}
    for split, preds, labels in (
        ("train", traj.train_predictions, traj.train_y),
        ("test", traj.test_predictions, traj.test_y),
    ):
        sp = spectra[f"ref_{split}"]
        r = flatten_rows(preds) - flatten_rows(one_hot(labels, k))[None]
        check_rows(sp, r.shape[1], f"ref_{split}")
        info, nuis = residual_energies(r, sp.U[:, :info_dim])
        residual[split] = {"information": info, "nuisance": nuis}
        residual0[split] = float((r[0] ** 2).sum())
    reference = no_memorisation_alignment(y, traj.train_y_clean, k)
    return RunMeasurements(np.array(rows), np.array(fractions), residual, residual0, no_memorisation=reference)


@dataclass
class InitAlignment:
    """J_init's spectrum and Table 1's J_init row without training (the clean labels y and
    r0 = f(W0) - y): what a spectrum-only config (``runs: {}``, config/cifar10-full*.yaml) gives."""

    singular_values: np.ndarray  # every computed value: all nK (full) or the top-k (topk, matrix_free)
    row: np.ndarray  # (6,): TABLE_COLUMNS at r = info_dim
    cutoff: np.ndarray  # (R, 6): TABLE_COLUMNS at every r up to the stored vectors
    method: str
    degenerate: str = ""  # why J_init is degenerate, where it was measured anyway (jacobian.allow_degenerate)


def init_alignment(labels: np.ndarray, predictions0: np.ndarray, sp: SpectrumData, info_dim: int) -> InitAlignment:
    """Table 1's J_init row and its columns over r, from the training labels (n,), the initial
    network's outputs f(W0) (n, K) and J_init's spectrum."""
    k = predictions0.shape[-1]
    y = flatten_rows(one_hot(labels, k))
    r0 = flatten_rows(predictions0) - y
    check_rows(sp, len(y), "init")
    if sp.U.shape[1] < info_dim:
        raise ValueError(f"spectrum init has {sp.U.shape[1]} stored vectors, fewer than info_dim = {info_dim}")
    floor = resolved_floor(sp)
    cutoff = np.concatenate([projection_curves(v, sp.U, sp.singular_values, floor) for v in (y, r0)], axis=1)
    return InitAlignment(
        sp.singular_values,
        cutoff[info_dim - 1].copy(),
        cutoff,
        str(sp.attrs.get("method", "?")),
        str(sp.attrs.get("degenerate", "")),
    )


def check_rows(sp: SpectrumData, n_rows: int, key: str) -> None:
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
        d = f.create_dataset("no_memorisation", data=np.asarray(m.no_memorisation))
        d.attrs["columns"] = ["||P_I y||/||y||", "||P_N y||^2/||y||^2"]
        d.attrs["meaning"] = (
            "the trained labels y measured against I = span{output k on the samples of true class c} "
            "(K*K vectors): the alignment of a network that holds the true-class structure and none of "
            "the label noise (Table 3's and Figure 9's no-memorisation reference; 1 and 0 for clean labels)"
        )
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
        for row, values in m.cutoff.items():
            d = f.create_dataset(f"cutoff/{row}", data=values)
            d.attrs["columns"] = list(TABLE_COLUMNS)
            d.attrs["meaning"] = f"Tables 1-3's columns for {row} at every cut-off r = 1..{len(values)} (row r - 1)"
            e = f.create_dataset(f"cutoff/energy_share_{row}", data=m.energy_share[row])
            e.attrs["meaning"] = f"share of ||{row}||_F^2 in the top r singular values, r = 1..{len(e)}"
        if m.tracking is not None:
            _write_tracking(f, m.tracking)
        for name, values in m.per_sample.items():
            d = f.create_dataset(f"per_sample/{name}", data=values)
            d.attrs["meaning"] = PER_SAMPLE_MEANING[name]


def _write_tracking(f, t: Tracking) -> None:
    g = f.create_group("tracking")
    g.create_dataset("epochs", data=t.epochs)
    g.attrs["meaning"] = "the alignment at each tracked epoch's training Jacobian, I = its top info_dim"
    for name, values in t.labels.items():
        d = g.create_dataset(name, data=values)
        d.attrs["columns"] = [c.replace("x", LABEL_SYMBOLS[name]) for c in CUTOFF_COLUMNS]
    for key, values in t.cosines.items():
        d = g.create_dataset(f"cosines_{key}", data=values)
        d.attrs["meaning"] = f"cosines of the principal angles between this epoch's I and J_{key}'s I, descending"
        overlap = np.array([subspace_overlap(c) for c in values])
        g.create_dataset(f"overlap_{key}", data=overlap).attrs["meaning"] = (
            f"mean squared cosine with J_{key}'s I (1 = the same subspace)"
        )
    h = f.create_group("theorem")
    h.attrs["meaning"] = (
        "Theorem 3.2 per tracked epoch (rows, as tracking/epochs) and cut-off r (columns, r = 1..R): "
        "bias = 2 ||P_N y|| / sqrt(n); variance = factor (pinv + Gamma nuisance) with pinv = sqrt(K/n) ||J_I^+ y||, "
        "nuisance = sqrt(K/n) ||P_N y|| / s_r; NaN where s_r is below the spectrum's floor"
    )
    for name, values in t.theorem.items():
        h.create_dataset(name, data=values)


def read_measurements(path: str | Path) -> dict:
    names = [
        "alignment/values",
        "label_energy_nuisance",
        "no_memorisation",
        "residual/train/information",
        "residual/train/nuisance",
        "residual/test/information",
        "residual/test/nuisance",
    ]
    names += ["cutoff/J_init", "cutoff/J_final", "cutoff/energy_share_J_init", "cutoff/energy_share_J_final"]
    with open_checked(path, names, artifact="measurements") as f:
        out = {n: f[n][...] for n in names}
        for group in ("tracking", "theorem", "per_sample"):  # tracked runs; files of the per-sample scores
            if group in f:
                out.update({f"{group}/{k}": v[...] for k, v in f[group].items()})
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
    tracked: Mapping[int, str | Path] | None = None,
    theorem: Mapping[str, float] | None = None,
) -> RunMeasurements:
    """The measure rule: Tables 1-3, the residuals, the cut-off curves, and with ``tracked``
    (epoch -> training spectrum) the alignment over training and Theorem 3.2's terms."""
    traj = read_trajectory(trajectory)
    paths = {**spectra, **{f"epoch{e}": p for e, p in (tracked or {}).items()}}
    # J_init and J_final are tracked epochs too: read each file once
    by_path = {p: read_spectrum(p) for p in dict.fromkeys(map(str, paths.values()))}
    loaded = {key: by_path[str(p)] for key, p in paths.items()}
    for key, sp in loaded.items():
        if sp.U.shape[1] < info_dim:
            raise ValueError(
                f"{paths[key]}: stores {sp.U.shape[1]} singular vectors, info_dim is {info_dim}; "
                "rerun the spectrum rule"
            )
    m = measure(traj, loaded, info_dim)
    m.cutoff, m.energy_share = measure_cutoff(traj, loaded)
    m.per_sample = measure_per_sample(traj, loaded, info_dim, {e: loaded[f"epoch{e}"] for e in tracked or {}})
    extra = {}
    if tracked:
        if theorem is None:
            raise ValueError("tracked epochs need Theorem 3.2's constants (analysis.theorem: B, gamma)")
        m.tracking = measure_tracking(traj, {e: loaded[f"epoch{e}"] for e in tracked}, loaded, info_dim, theorem)
        extra = {"theorem_B": theorem["B"], "theorem_gamma": theorem["gamma"]}
    # what the tables mark: a Jacobian measured although degenerate (jacobian.allow_degenerate)
    extra.update(
        {
            f"degenerate_{row}": str(loaded[key].attrs.get("degenerate", ""))
            for key, row in zip(("init", "final"), TABLE_ROWS)
        }
    )
    extra["normalisation"] = str(loaded["init"].attrs.get("normalisation", ""))
    write_measurements(
        out_path, m, {**attrs, "info_dim": info_dim, **extra, **{f"spectrum_{k}": str(v) for k, v in paths.items()}}
    )
    return m
