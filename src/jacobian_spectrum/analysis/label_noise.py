"""Which labels are wrong: each sample's share of the label vector on J's nuisance space N,
checked against the known corruption, beside the training-dynamics baselines.

Scores, higher = more likely a corrupted label:
  J nuisance   ||(P_N y)_i||^2, sample i's K rows of P_N y (measurements ``per_sample``), for
               J_init (no training), J_final and the tracked epochs' J, over the cut-off r
  AUM          minus the area under the margin (Pleiss et al. 2020): the margin f_y - max_{k != y} f_k
               of the assigned label y, averaged over the training epochs (unaugmented outputs)
  small loss   ||f(x_i) - y_i||^2 at the epoch of the lowest test error (before the network
               memorises the noise)
  cleanlab     1 - cleanlab's label-quality score (``cleanlab.rank.get_label_quality_scores``,
               self-confidence) of out-of-fold probabilities: k networks of the same recipe, each
               trained without one fold up to that epoch (:mod:`..train.folds`). The least-squares
               outputs estimate P(y = k | x), so the probabilities are the outputs clipped to
               [0, 1] and renormalised; the table checks two softmax readings beside it
Each is judged by its AUROC and average precision for picking out the samples whose label the
workflow corrupted (``corrupted`` of the labels file).

The ranking inverts where the corrupted labels of a class outnumber its kept ones (75% with
K = 3: a class keeps 25% and receives 37.5% from each other class): the kept labels are then
the odd ones out, and the AUROC falls below 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ..train.trajectory import lowest_test_error_epoch

TABLE_COLUMNS = ("run", "corruption", "score", "r", "epoch", "auroc", "average_precision", "seconds")


def margins(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(..., n): the assigned label's output minus the largest other output, per epoch."""
    p = np.asarray(predictions, dtype=np.float64)
    samples = np.arange(p.shape[-2])
    assigned = p[..., samples, labels]
    others = p.copy()
    others[..., samples, labels] = -np.inf
    return assigned - others.max(axis=-1)


def area_under_margin(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(n,): the margin averaged over the training epochs 1..T (``predictions`` (T+1, n, K), t = 0
    the initialisation, which no training has shaped)."""
    return margins(predictions[1:], labels).mean(axis=0)


def sample_losses(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(..., n): ||f(x_i) - y_i||^2 against one-hot labels."""
    p = np.asarray(predictions, dtype=np.float64)
    onehot = np.eye(p.shape[-1])[labels]
    return ((p - onehot) ** 2).sum(axis=-1)


def detection(scores: np.ndarray, corrupted: np.ndarray) -> tuple[float, float]:
    """(AUROC, average precision) of ``scores`` for picking out the ``corrupted`` samples; NaN
    where every sample, or none, is corrupted."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    corrupted = np.asarray(corrupted, dtype=bool)
    if corrupted.all() or not corrupted.any():
        return float("nan"), float("nan")
    return float(roc_auc_score(corrupted, scores)), float(average_precision_score(corrupted, scores))


# how least-squares outputs f(x) (trained against one-hot labels) become class probabilities
PROBABILITY_MAPPINGS = {
    "clipped": "the outputs clipped to [0, 1] and renormalised (least squares estimates P(y = k | x))",
    "softmax": "softmax of the outputs",
    "softmax, fitted T": "softmax of the outputs / T, T fitted to the assigned labels (temperature scaling)",
}
CLEANLAB_SCORE = "cleanlab"  # the table's name of the score from the first mapping


def fitted_temperature(outputs: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising the mean negative log-likelihood of ``labels`` under softmax(outputs / T)."""
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    f = np.asarray(outputs, dtype=np.float64)
    rows = np.arange(len(f))

    def nll(log_t: float) -> float:
        return float(-log_softmax(f / np.exp(log_t), axis=1)[rows, labels].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(np.log(1e-3), np.log(1e3)), method="bounded").x))


def output_probabilities(outputs: np.ndarray, mapping: str, labels: np.ndarray | None = None) -> np.ndarray:
    """(n, K) probabilities of the outputs under one of :data:`PROBABILITY_MAPPINGS`
    (``labels`` for the fitted temperature)."""
    from scipy.special import softmax

    f = np.asarray(outputs, dtype=np.float64)
    if mapping == "clipped":
        p = np.clip(f, 0.0, 1.0)
        total = p.sum(axis=1, keepdims=True)
        # a sample whose outputs are all <= 0 claims no class: uniform
        return np.where(total > 0, p / np.where(total > 0, total, 1.0), 1.0 / f.shape[1])
    if mapping == "softmax":
        return softmax(f, axis=1)
    if mapping == "softmax, fitted T":
        if labels is None:
            raise ValueError("the fitted temperature needs the labels")
        return softmax(f / fitted_temperature(f, labels), axis=1)
    raise ValueError(f"probability mapping {mapping!r}: allowed {list(PROBABILITY_MAPPINGS)}")


def cleanlab_scores(outputs: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Score name -> (n,) 1 - cleanlab's label quality of out-of-fold ``outputs``, one per
    probability mapping (the first is the table's "cleanlab")."""
    from cleanlab.rank import get_label_quality_scores

    out = {}
    for i, mapping in enumerate(PROBABILITY_MAPPINGS):
        p = output_probabilities(outputs, mapping, labels)
        name = CLEANLAB_SCORE if i == 0 else f"{CLEANLAB_SCORE}, {mapping}"
        out[name] = 1.0 - get_label_quality_scores(np.asarray(labels), p)
    return out


@dataclass
class RunDetection:
    """One corrupted run's scores against its known corruption."""

    run: str
    corruption: float
    corrupted: np.ndarray  # (n,) bool, from the labels file
    r_grid: np.ndarray
    info_dim: int
    nuisance_over_r: dict[str, np.ndarray]  # J_init, J_final -> (len(r_grid), n)
    tracking: dict[int, np.ndarray]  # tracked epoch -> (n,) at r = info_dim
    aum: np.ndarray  # (n,) minus the area under the margin
    losses: np.ndarray  # (T+1, n) per-sample loss at each epoch
    best_epoch: int  # the epoch of the lowest test error
    seconds: dict[str, float]  # J_init, training, folds -> what the score costs
    cleanlab: dict[str, np.ndarray] = field(default_factory=dict)  # from out-of-fold outputs, where trained

    def scores(self) -> dict[str, np.ndarray]:
        """Score name -> (n,) at r = info_dim: what the table's and ROC figure's rows compare."""
        i = int(np.searchsorted(self.r_grid, self.info_dim))
        return {
            "J_init nuisance": self.nuisance_over_r["J_init"][i],
            "J_final nuisance": self.nuisance_over_r["J_final"][i],
            "AUM": self.aum,
            "small loss": self.losses[self.best_epoch],
            **self.cleanlab,
        }

    def auroc_over_r(self, key: str) -> np.ndarray:
        return np.array([detection(s, self.corrupted)[0] for s in self.nuisance_over_r[key]])

    def auroc_over_epochs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tracked epochs, J nuisance AUROC there, small-loss AUROC at every epoch)."""
        epochs = np.array(sorted(self.tracking))
        j = np.array([detection(self.tracking[e], self.corrupted)[0] for e in epochs])
        loss = np.array([detection(v, self.corrupted)[0] for v in self.losses])
        return epochs, j, loss

    def rows(self) -> list[dict]:
        """The table's rows: each score at r = info_dim, and each J at its best r."""
        final_epoch = len(self.losses) - 1
        where = {
            "J_init nuisance": (self.info_dim, 0, self.seconds.get("J_init", float("nan"))),
            "J_final nuisance": (self.info_dim, final_epoch, self.seconds.get("training", float("nan"))),
            "AUM": ("", final_epoch, self.seconds.get("training", float("nan"))),
            "small loss": ("", self.best_epoch, self.seconds.get("training", float("nan"))),
            **{name: ("", self.best_epoch, self.seconds.get("folds", float("nan"))) for name in self.cleanlab},
        }
        out = []
        for name, scores in self.scores().items():
            r, epoch, seconds = where[name]
            out.append(self._row(name, r, epoch, scores, seconds))
        for key, epoch in (("J_init", 0), ("J_final", final_epoch)):
            curve = self.auroc_over_r(key)
            if np.isfinite(curve).any():
                i = int(np.nanargmax(curve))
                r = int(self.r_grid[i])
                name = f"{key} nuisance, best r"
                out.append(self._row(name, r, epoch, self.nuisance_over_r[key][i], where[f"{key} nuisance"][2]))
        return out

    def _row(self, score: str, r: int | str, epoch: int, values: np.ndarray, seconds: float) -> dict:
        auroc, ap = detection(values, self.corrupted)
        return dict(
            run=self.run,
            corruption=self.corruption,
            score=score,
            r=r,
            epoch=epoch,
            auroc=auroc,
            average_precision=ap,
            seconds=seconds,
        )


def run_detection(
    run: str,
    measurements: Mapping,
    predictions: np.ndarray,
    labels: np.ndarray,
    test_error: np.ndarray,
    corrupted: np.ndarray,
    corruption: float,
    window: int,
    seconds: Mapping[str, float],
    out_of_fold: np.ndarray | None = None,
) -> RunDetection:
    """One run's detection from its measurements (``read_measurements``), training predictions
    (T+1, n, K), trained labels, test error per epoch and the labels file's corrupted mask;
    with ``out_of_fold`` (n, K) outputs (:func:`..train.folds.read_out_of_fold`), cleanlab's too."""
    ps = {k.split("/", 1)[1]: v for k, v in measurements.items() if k.startswith("per_sample/")}
    if "label_nuisance_over_r" not in ps:
        raise ValueError(f"run {run}: its measurement file has no per-sample scores; rerun the measure rule")
    if len(corrupted) != predictions.shape[1]:
        raise ValueError(f"run {run}: {len(corrupted)} corrupted flags for {predictions.shape[1]} samples")
    tracking = dict(zip(ps.get("tracking_epochs", []), ps.get("tracking_label_nuisance", [])))
    return RunDetection(
        run=run,
        corruption=float(corruption),
        corrupted=np.asarray(corrupted, dtype=bool),
        r_grid=np.asarray(ps["r_grid"]),
        info_dim=int(measurements["attrs"]["info_dim"]),
        nuisance_over_r={"J_init": ps["label_nuisance_over_r"][0], "J_final": ps["label_nuisance_over_r"][1]},
        tracking={int(e): v for e, v in tracking.items()},
        aum=-area_under_margin(predictions, labels),
        losses=sample_losses(predictions, labels),
        best_epoch=lowest_test_error_epoch(test_error, window),
        seconds=dict(seconds),
        cleanlab={} if out_of_fold is None else cleanlab_scores(out_of_fold, labels),
    )
