"""Degenerate networks: two signs, read from what the J and spectrum jobs already compute, that
the network being measured cannot be the one anybody trains, so that nothing measured of it is
reported as a result (docs/artifacts.md#degenerate-networks).

  constant outputs  the outputs' spread across samples (the RMS over outputs of each output's
                    standard deviation over samples) below SPREAD_TOLERANCE of their size (their
                    RMS): every sample gets the same answer (MobileNetV3 in eval mode with
                    batch-norm's default statistics: 3e-11)
  rank at most K    J's numerical rank (singular values above the spectrum's resolved floor)
                    at most K, the number of outputs: J is one sample's worth of directions

No torch here: the spectrum jobs of a stored J run without it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

SPREAD_TOLERANCE = 1e-5
LIKELY_CAUSES = (
    "likely causes: batch-norm running statistics that do not belong to the weights (model.normalisation: "
    "stored at initialisation, or a small batch-norm momentum), dead units (every ReLU off for every sample), "
    "or a diverged run"
)
ALLOW_KEY = "jacobian.allow_degenerate"


class DegenerateNetworkError(ValueError):
    """A J or spectrum job met a degenerate network (see the module docstring)."""


@dataclass(frozen=True)
class OutputSpread:
    spread: float  # RMS over outputs of the standard deviation over samples
    size: float  # RMS of all outputs
    samples: int

    @property
    def relative(self) -> float:
        return self.spread / self.size if self.size > 0 else float("nan")

    def constant(self) -> bool:
        """Whether the outputs do not vary across samples: a spread below SPREAD_TOLERANCE of
        their size, or outputs that are all exactly zero (SqueezeNet's final ReLU at
        initialisation)."""
        return self.samples >= 2 and (self.size == 0 or self.relative < SPREAD_TOLERANCE)


def output_spread(outputs: np.ndarray) -> OutputSpread:
    """The spread of outputs (n, K) across the n samples, in float64."""
    out = np.asarray(outputs, dtype=np.float64)
    spread = float(np.sqrt(np.mean(out.std(axis=0) ** 2))) if len(out) else 0.0
    return OutputSpread(spread, float(np.sqrt(np.mean(out**2))) if out.size else 0.0, len(out))


def numerical_rank(singular_values: np.ndarray, floor: float) -> int:
    """How many singular values lie above ``floor`` (the resolved floor of the spectrum's route)."""
    return int(np.count_nonzero(np.asarray(singular_values) > floor))


def degeneracy(
    spread: OutputSpread | None = None,
    rank: int | None = None,
    num_classes: int = 0,
    num_samples: int = 0,
    computed: int | None = None,
) -> str:
    """The signs that hold, in words with their figures ("" when none does). The rank sign
    needs at least two samples (one sample's J has K rows, so rank at most K is no sign) and,
    of a top-k spectrum (``computed`` singular values), a computed value below the floor: where
    all k are resolved, the rank is at least k and may be more."""
    signs = []
    if spread is not None and spread.constant() and spread.size == 0:
        signs.append(f"its outputs are exactly zero for all {spread.samples} samples")
    elif spread is not None and spread.constant():
        signs.append(
            f"its outputs do not vary across the {spread.samples} samples (spread {spread.spread:.2e} "
            f"against size {spread.size:.2e}: {spread.relative:.1e} < {SPREAD_TOLERANCE:.0e})"
        )
    resolved_all = computed is not None and rank is not None and rank >= computed
    if rank is not None and num_samples >= 2 and rank <= num_classes and not resolved_all:
        signs.append(f"J has numerical rank {rank}, at most K = {num_classes}, on {num_samples} samples")
    return "; ".join(signs)


def handle_degeneracy(description: str, what: str, allow: bool, logger: logging.Logger | logging.LoggerAdapter) -> str:
    """Stop with :class:`DegenerateNetworkError` naming ``what`` (the checkpoint, the file) when
    ``description`` is not empty, unless ``allow``: then warn and return it, for the ``degenerate``
    attr that the tables and report mark rows by."""
    if not description:
        return ""
    message = f"{what}: the network is degenerate: {description}. {LIKELY_CAUSES}."
    if not allow:
        raise DegenerateNetworkError(
            f"{message} Nothing measured of it would be a result; to measure it anyway set {ALLOW_KEY}: true "
            "(its rows in the tables are then marked)"
        )
    logger.warning("%s Measured anyway (%s: true): its rows in the tables are marked.", message, ALLOW_KEY)
    return description
