"""Memory budgeting of a matrix-free spectrum: which iteration fits ``spectrum.memory_budget_mb``,
and what it holds.

A plan per iteration: :class:`GramPlan` (G = J J^T, :mod:`.streamed_gram`) and
:class:`RandomizedPlan` (block_krylov or subspace, :mod:`.randomized`). The spectrum job follows
the plan and logs its figure when it starts; ``python -m jacobian_spectrum plan`` and the config
check read the same plan (:func:`plan_for_settings`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from .operator import PRODUCT_BYTES
from .randomized import ITERATIONS, SLAB_BYTES
from .streamed_gram import GRAM_CHECKED, gram_formations

# the randomized iterations' streamed block at most, the rest of the budget holding rows: larger
# blocks form rows no faster, and smaller ones make more panel traffic
STREAM_BLOCK_BYTES = 512e6


@dataclass(frozen=True)
class GramPlan:
    """The gram iteration of J (rows x p) within the budget: G, eigh's V and its workspace in
    float64, the rows of ``held_samples`` samples held at a time against a streamed batch of as
    many, and the check pass's float64 pieces."""

    iteration: ClassVar[str] = "gram"
    block_bytes: float  # the held block of J's rows (float32)
    gram_bytes: float  # G, eigh's V and its workspace (rows x rows, float64)
    work_bytes: float  # the check pass's float64 pieces and the streamed batch (counted twice)
    held_samples: int  # samples whose rows are held at a time
    passes: float  # passes' worth of J's rows formed, the check's included

    @property
    def bytes(self) -> float:
        """Peak memory beyond the process and the model."""
        return self.block_bytes + self.gram_bytes + self.work_bytes

    @property
    def formations(self) -> float:
        """Passes' worth of J's rows formed (``passes``)."""
        return self.passes


@dataclass(frozen=True)
class RandomizedPlan:
    """A randomized iteration (block_krylov or subspace) of J (rows x p) within the budget: its
    panels (p x l each, in the rows' dtype), one streamed block of J's rows, the float64 pieces
    of the products, and the rows of the first ``held_samples`` samples held from the first
    pass on."""

    iteration: str
    columns: int  # l = topk + oversampling (at most nK and p)
    panels: int  # p x l panels held at once
    panel_bytes: float
    block_bytes: float  # one streamed block of J's rows (float32)
    row_bytes: float  # the kept J Z blocks and U (rows x l and rows x k, float64)
    work_bytes: float  # float64 pieces: a product's cast rows and slab, the orthonormalisation's slabs
    held_samples: int  # samples whose rows the first pass forms and the later ones reuse
    passes: int
    held_bytes: float  # the held rows
    samples: int  # n (J has n K rows)

    @property
    def bytes(self) -> float:
        """Peak memory beyond the process and the model: panels, the rows block twice (the
        kernel joins its per-layer pieces into it), the J Z blocks, the float64 pieces (a
        product's cast rows and slab, the orthonormalisation's slabs) and the held rows. A
        pass's J Z from float32 slab products casts no rows; the cast rows stay counted as a
        margin."""
        return (
            self.panels * self.panel_bytes + 2 * self.block_bytes + self.row_bytes + self.work_bytes + self.held_bytes
        )

    @property
    def formations(self) -> float:
        """Passes' worth of J's rows formed: the first pass forms every row, each later one all
        but the held samples'."""
        if not self.samples:
            return self.passes
        return 1 + (self.passes - 1) * (self.samples - self.held_samples) / self.samples


MatrixFreePlan = GramPlan | RandomizedPlan  # what :func:`matrix_free_plan` returns


def matrix_free_plan(
    rows: int,
    k: int,
    p: int,
    topk: int,
    oversampling: int,
    power_iterations: int,
    budget_mb: float,
    iteration: str = "auto",
    itemsize: int = 4,
    hold: bool = True,
) -> MatrixFreePlan:
    """The iteration and memory of a matrix-free spectrum of J (rows = n K, K outputs, p
    columns) within ``budget_mb`` (spectrum.memory_budget_mb). ``auto``: gram where it fits
    and forms no more rows than the q + 1 passes of the randomized iterations (every singular
    value, exactly), else block_krylov where its 2 (q + 1) panels and one sample's rows fit,
    else subspace (2 panels). ValueError, naming the settings to change, where even that does
    not fit or a named iteration does not.

    The randomized iterations' rows: a streamed block of at most STREAM_BLOCK_BYTES (beyond
    that a pass gains nothing), and the rest of the budget holds the rows of as many samples as
    fit (formed by the first pass, multiplied again by the later ones without forming them:
    each held sample saves q formations of its rows). ``hold`` False (passes on
    ``dask.distributed`` workers, which form every row): none held."""
    gram = gram_plan(rows, k, p, budget_mb, itemsize)
    if iteration == "gram" or (iteration == "auto" and gram is not None and gram.passes <= power_iterations + 1):
        if gram is None:
            raise ValueError(
                f"spectrum.iteration = gram: the Gram matrix of J ({rows:,} x {p:,}), its eigensolver and one "
                f"sample's rows need {_gram_least(rows, k, p, itemsize) / 1e6:,.0f} MB, over "
                f"spectrum.memory_budget_mb = {budget_mb:g}; raise the budget, or set spectrum.iteration: auto"
            )
        return gram
    return randomized_plan(rows, k, p, topk, oversampling, power_iterations, budget_mb, iteration, itemsize, hold)


def randomized_plan(
    rows: int,
    k: int,
    p: int,
    topk: int,
    oversampling: int,
    power_iterations: int,
    budget_mb: float,
    iteration: str = "auto",
    itemsize: int = 4,
    hold: bool = True,
) -> RandomizedPlan:
    """:func:`matrix_free_plan` among the randomized iterations (``auto``: block_krylov where
    it fits, else subspace)."""
    ell = min(topk + oversampling, rows, p)
    panel = float(p) * ell * itemsize
    sample_rows = float(k) * p * itemsize
    need = {"block_krylov": 2 * (power_iterations + 1), "subspace": 2}
    # J Z blocks kept (all for Rayleigh-Ritz on their span; the last two for subspace) and U
    kept = {"block_krylov": power_iterations + 1, "subspace": 2}
    row_side = {it: 8.0 * rows * (kept[it] * ell + min(topk, ell)) for it in ITERATIONS}
    budget = budget_mb * 1e6
    work = 3 * min(PRODUCT_BYTES, 8.0 * rows * p) + 2 * min(SLAB_BYTES, 8.0 * p * ell)
    fixed = {it: work + row_side[it] for it in ITERATIONS}
    least = {it: need[it] * panel + 2 * sample_rows + fixed[it] for it in ITERATIONS}
    fits = [it for it in ITERATIONS if least[it] <= budget]
    if iteration == "auto":
        if not fits:
            raise ValueError(
                f"spectrum.memory_budget_mb = {budget_mb:g}: a matrix-free spectrum of J ({rows:,} x {p:,}) needs at "
                f"least {least['subspace'] / 1e6:,.0f} MB (two panels of {p:,} x {ell} in float32 "
                f"and one sample's rows); raise spectrum.memory_budget_mb, or lower spectrum.topk + "
                f"spectrum.oversampling (now {topk} + {oversampling})"
            )
        iteration = fits[0]
    elif iteration not in fits:
        raise ValueError(
            f"spectrum.iteration = {iteration}: its {need[iteration]} panels of {p:,} x {ell} need "
            f"{least[iteration] / 1e6:,.0f} MB, over spectrum.memory_budget_mb = "
            f"{budget_mb:g}; raise the budget, or set spectrum.iteration: auto"
        )
    free = budget - need[iteration] * panel - fixed[iteration]
    block = max(sample_rows, min(float(rows) * p * itemsize, free / 2, STREAM_BLOCK_BYTES))
    n = max(1, rows // max(k, 1))
    held = 0 if power_iterations == 0 or not hold else max(0, min(n, int((free - 2 * block) // sample_rows)))
    return RandomizedPlan(
        iteration,
        ell,
        need[iteration],
        panel,
        block,
        row_side[iteration],
        work,
        held_samples=held,
        passes=power_iterations + 1,
        held_bytes=held * sample_rows,
        samples=n,
    )


def _gram_fixed(rows: int, p: int) -> tuple[float, float]:
    """(the Gram side: G, eigh's V and its workspace, in float64; the work: the check pass's
    float64 casts of rows and its J^T U_t in float64)."""
    return 3 * 8.0 * rows * rows, 3 * PRODUCT_BYTES + 8.0 * p * GRAM_CHECKED


def _gram_least(rows: int, k: int, p: int, itemsize: int) -> float:
    side, work = _gram_fixed(rows, p)
    return side + work + 3.0 * k * p * itemsize


def gram_plan(rows: int, k: int, p: int, budget_mb: float, itemsize: int = 4) -> GramPlan | None:
    """The gram iteration within the budget, or None where not even one sample's rows fit:
    the held block and the streamed batch of equal size (the batch counted twice: the per-layer
    kernel joins its pieces into it), all of J held when it fits."""
    side, work = _gram_fixed(rows, p)
    sample_rows = float(k) * p * itemsize
    n = max(1, rows // max(k, 1))
    held = int((budget_mb * 1e6 - side - work) // (3 * sample_rows))
    if held >= n:  # J whole: nothing to stream
        held = min(n, int((budget_mb * 1e6 - side - work) // sample_rows))
    if held < 1:
        return None
    streamed = held * sample_rows if held < n else 0.0
    return GramPlan(
        held * sample_rows,
        side,
        work + 2 * streamed,
        held_samples=held,
        passes=gram_formations(n, held) + 1,
    )


def plan_for_settings(settings: Mapping, rows: int, k: int, p: int) -> MatrixFreePlan:
    """:func:`matrix_free_plan` from the ``spectrum`` settings (the config check, ``plan``)."""
    return matrix_free_plan(
        rows,
        k,
        p,
        settings["topk"],
        settings["oversampling"],
        settings["power_iterations"],
        settings["memory_budget_mb"],
        settings.get("iteration", "auto"),
        hold=not settings.get("scheduler"),
    )
