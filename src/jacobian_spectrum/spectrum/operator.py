"""J as a linear operator whose products stream J's rows: J is never stored.

Each product J X (p x l -> nK x l) or J^T Y (nK x l -> p x l) forms J's rows a block of samples
at a time with the Jacobian kernel (:func:`jacobian_spectrum.jacobian.compute.jacobian_blocks`:
the per-layer kernel for Conv2d/Linear networks, ``torch.func`` or one sample at a time
otherwise), multiplies the block and drops it. A pass therefore costs about one J's worth of
rows, whatever the number of columns l, and holds one block, not J. Rows the memory budget
leaves room for are held from the first pass on, so that later passes multiply them again
without forming them. One pass also gives both products of a power iteration: a block's rows R
give R Z and R^T (R Z), so (J Z, J^T J Z) cost one pass, not two.

The blocks of one pass are independent tasks: here they run one after the other (each on
torch's threads); with a ``dask.distributed`` client active they run on its workers
(:mod:`.transport`). Products are float32 over slabs of J's columns summed in float64
(:func:`slab_product`) where the result feeds Rayleigh-Ritz or the Gram matrix.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from ..common.logs import logger
from ..jacobian.compute import batch_slices, jacobian_blocks, jacobian_shape
from .transport import active_client, worker_tasks

ROWS_BUDGET_BYTES = 1e9  # one block of J's rows (float32) when no batch size is given
SUM_SLAB = 4096  # columns of J in one float32 product, the products summed in float64 (slab_product)
PRODUCT_BYTES = 256 << 20  # rows cast to float64 at a time for a product: the float64 copy stays small
LOCAL_TASKS = 20  # parts of a pass run here (no dask client), for its progress lines
PROGRESS_SECONDS = 60  # at most one progress line a minute within a pass


@dataclass
class JacobianOperator:
    """J of a model on samples x (rows sample-major, row = i*K + k), applied without storing it:
    each product forms the rows of ``batch_size`` samples at a time (by default as many as fit
    ROWS_BUDGET_BYTES) with the Jacobian kernel and sums their products in float64 (:func:`_times`).
    ``passes`` counts the passes over the data, ``seconds`` their time, ``rows_formed`` the rows
    the kernel formed in them. The rows of the first ``held`` samples
    (:func:`.budget.matrix_free_plan`'s ``held_samples``: what the memory budget holds beyond
    the panels) are formed by the first pass into a buffer kept for the later ones, which
    form only the rest: a pass over held rows costs its products alone. Rows are held where the
    passes run here (no ``dask.distributed`` client)."""

    model: torch.nn.Module
    x: torch.Tensor
    batch_size: int | None = None
    held: int = 0  # samples (the first ones) whose rows the first pass keeps for the later ones
    passes: int = 0
    seconds: float = 0.0
    rows_formed: int = 0

    def __post_init__(self) -> None:
        self.model.eval()
        rows, self.cols = jacobian_shape(self.model, self.x)
        self.k = rows // len(self.x)
        if self.batch_size is None:
            self.batch_size = max(1, int(ROWS_BUDGET_BYTES // (self.k * self.cols * self.x.element_size())))
        self.held = max(0, min(self.held, len(self.x)))
        self._held_rows: torch.Tensor | None = None  # allocated by the first pass, filled by its end
        self._held_filled = False

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.x) * self.k, self.cols

    def matmat(self, X: np.ndarray) -> np.ndarray:
        """J X for X (p x l): one pass over the data, products in float64 (X is cast to float64)."""
        out = np.empty((self.shape[0], X.shape[1]))
        for rows, part in self._pass("J X", _jx, np.asarray(X, dtype=np.float64)):
            out[rows] = part
        return out

    def rmatmat(self, Y: np.ndarray) -> np.ndarray:
        """J^T Y for Y (nK x l): one pass, the blocks' contributions summed in float64."""
        out = np.zeros((self.shape[1], Y.shape[1]))
        for _, part in self._pass("J^T Y", _jty, np.asarray(Y, dtype=np.float64), split_rows=True):
            out += part
        return out

    def normal_matmat(self, X: np.ndarray, precise: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(J X, J^T J X) for X (p x l) from one pass: each block's rows are formed once. J X
        is float64 (where ``precise``, float32 slab products summed in float64, :func:`_times`;
        else one product in the rows' dtype); J^T J X has X's dtype, so that a float32 panel
        costs p x l x 4 bytes, not 8."""
        JX = np.empty((self.shape[0], X.shape[1]))
        JtJX = np.zeros((self.shape[1], X.shape[1]), dtype=X.dtype)
        what = "J X, J^T J X" + ("" if precise else f" in {str(self.x.dtype).removeprefix('torch.')}")
        # here on the CPU the blocks add into JtJX itself: no second p x l panel per task
        into = torch.from_numpy(JtJX) if active_client() is None and self.x.device.type == "cpu" else None
        for rows, (y, w) in self._pass(what, functools.partial(_jtjx, precise=precise, out=into), X):
            JX[rows] = y
            if w is not None:
                JtJX += w
        return JX, JtJX

    def _pass(self, what: str, fn, M: np.ndarray, split_rows: bool = False):
        """One pass: yields (J's rows of a task, fn's result) for every task of sample ranges."""
        t0 = last = time.perf_counter()
        M = np.ascontiguousarray(M)
        done, total = 0, self.shape[0]
        here = active_client() is None
        if self.held and here and self._held_rows is None:
            self._held_rows = torch.empty(self.held * self.k, self.cols, dtype=self.x.dtype, device=self.x.device)
        held = Held(self._held_rows, self.held, self._held_filled) if self.held and here else None
        for rows, part in _run(fn, self.model, self.x, M, self.k, self.batch_size, split_rows, held):
            yield rows, part
            done += rows.stop - rows.start
            if time.perf_counter() - last > PROGRESS_SECONDS and done < total:
                last = time.perf_counter()
                logger.info(
                    "pass %d (%s): %d of %d rows (%.0f%%) in %.0fs",
                    self.passes + 1,
                    what,
                    done,
                    total,
                    100 * done / total,
                    last - t0,
                )
        reused = held.samples * self.k if held is not None and held.formed else 0
        self.passes += 1
        self.rows_formed += self.shape[0] - reused
        self._held_filled = held is not None
        dt = time.perf_counter() - t0
        self.seconds += dt
        logger.info(
            "pass %d (%s, %d columns): %d rows%s in %.1fs, %.0f rows/s",
            self.passes,
            what,
            M.shape[1],
            self.shape[0],
            f" ({reused} of them held from the first pass)" if reused else "",
            dt,
            self.shape[0] / dt,
        )


class Held(NamedTuple):
    """Held rows as a pass (or one of its tasks) sees them."""

    rows: torch.Tensor  # the rows of the first ``samples`` samples
    samples: int
    formed: bool  # by an earlier pass (else this one forms them into ``rows``)


def _products(
    model: torch.nn.Module, x: torch.Tensor, batch_size: int, dtype: torch.dtype, held: Held | None = None
) -> Iterator[tuple[int, torch.Tensor]]:
    """J's rows of the samples x, one kernel batch at a time (one reused buffer), with their
    offset; cast to ``dtype`` PRODUCT_BYTES at a time where it is not the rows' own. With
    ``held``: the rows of x's first ``held.samples`` samples are ``held.rows``, formed into it
    now unless ``held.formed`` (then one block, no kernel); the rest are formed here."""
    h = 0
    if held is not None:
        rows, h = held.rows, held.samples
        k = len(rows) // h
        blocks = [(slice(0, h), rows)] if held.formed else jacobian_blocks(model, x[:h], batch_size, out=rows)
        for batch, R in blocks:
            yield from _in_dtype(batch.start * k, R, dtype)
    rest = x[h:]
    for batch, R in jacobian_blocks(model, rest, batch_size) if len(rest) else ():
        yield from _in_dtype((h + batch.start) * (len(R) // (batch.stop - batch.start)), R, dtype)


def _in_dtype(offset: int, rows: torch.Tensor, dtype: torch.dtype) -> Iterator[tuple[int, torch.Tensor]]:
    """(offset, rows) in ``dtype``, cast PRODUCT_BYTES at a time where it is not the rows' own."""
    if rows.dtype == dtype:
        yield offset, rows
        return
    step = max(1, PRODUCT_BYTES // (8 * rows.shape[1]))
    for i in range(0, len(rows), step):
        yield offset + i, rows[i : i + step].to(dtype)


def _slabs(rows: int, cols: int) -> range:
    """Column offsets of slabs of a (rows x cols) block that PRODUCT_BYTES holds in float64."""
    return range(0, cols, max(1, PRODUCT_BYTES // (8 * max(rows, 1))))


class Float64Slabs:
    """Slabs cast to float64 into buffers kept from one slab to the next: a fresh allocation of
    a few hundred MB for every slab pays its page faults each time, which were most of a
    float64 product's time."""

    def __init__(self) -> None:
        self._buffers: dict[int, torch.Tensor] = {}

    def cast(self, t: torch.Tensor, slot: int = 0) -> torch.Tensor:
        """``t`` in float64, in buffer ``slot`` (valid until that slot's next cast)."""
        buf = self._buffers.get(slot)
        if buf is None or buf.numel() < t.numel() or buf.device != t.device:
            buf = self._buffers[slot] = torch.empty(t.numel(), dtype=torch.float64, device=t.device)
        return buf[: t.numel()].view(t.shape).copy_(t)


def slab_product(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A B^T summed in float64 over products of SUM_SLAB columns in the operands' float32: no
    float64 copy of J's rows (casting them costs as much as the product), and far closer to
    float64 products than one float32 product of all columns. On CUDA this assumes TF32 off
    (``select_device`` turns it off)."""
    out = torch.zeros(len(A), len(B), dtype=torch.float64, device=A.device)
    for j in range(0, A.shape[1], SUM_SLAB):
        out += A[:, j : j + SUM_SLAB] @ B[:, j : j + SUM_SLAB].T
    return out


def _times(R: torch.Tensor, X: torch.Tensor, precise: bool, slabs: Float64Slabs) -> torch.Tensor:
    """R X in float64. Not ``precise``: one product in R's dtype. Precise, for float32 R and X
    (a pass's panel): float32 products over slabs of SUM_SLAB of R's columns summed in float64
    (:func:`slab_product`, as the gram iteration multiplies): faster than casting the slabs to
    float64, and as close to the float64 product as the Rayleigh-Ritz data needs. With a
    float64 X (J^T U of the residual checks): float64 products, R and X cast a slab of R's
    columns at a time."""
    if not precise or R.dtype == X.dtype == torch.float64:
        return (R @ X.to(R.dtype)).double()
    if R.dtype == X.dtype:
        return slab_product(R, X.T)
    out = torch.zeros(len(R), X.shape[1], dtype=torch.float64, device=R.device)
    step = _slabs(len(R), R.shape[1]).step
    for j in range(0, R.shape[1], step):
        out.addmm_(slabs.cast(R[:, j : j + step], 0), slabs.cast(X[j : j + step], 1))
    return out


def _add_transposed_times(W: torch.Tensor, R: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """W += R^T Y in W's dtype (the panels' precision), R^T Y computed in R's dtype."""
    return W.addmm_(R.T.to(W.dtype), Y.to(W.dtype)) if R.dtype != W.dtype else W.addmm_(R.T, Y.to(R.dtype))


def _jx(
    model: torch.nn.Module,
    x: torch.Tensor,
    X: np.ndarray,
    batch_size: int,
    held: Held | None = None,
    precise: bool = True,
) -> np.ndarray:
    """J_x X: the rows of the samples x times X (p x l), in float64."""
    Xt = torch.as_tensor(X, device=x.device)
    slabs = Float64Slabs()
    parts = [_times(R, Xt, precise, slabs) for _, R in _products(model, x, batch_size, x.dtype, held)]
    return torch.cat(parts).cpu().numpy()


def _jty(
    model: torch.nn.Module, x: torch.Tensor, Y: np.ndarray, batch_size: int, held: Held | None = None
) -> np.ndarray:
    """J_x^T Y_x: the rows of the samples x transposed, times their rows of Y, from float64
    products a slab of J's columns (the output's rows) at a time, so that each block of rows adds
    into each part of the p x l output once: casting a few rows at a time instead, each few rows
    would write the whole p x l output, which dominates the pass at large p."""
    Yt, outT, slabs = torch.as_tensor(Y, device=x.device, dtype=torch.float64), None, Float64Slabs()
    for off, R in _products(model, x, batch_size, x.dtype, held):
        if outT is None:  # (J^T Y)^T, l x p: Y^T R reads R as it lies
            outT = torch.zeros(Yt.shape[1], R.shape[1], dtype=torch.float64, device=x.device)
        yT = Yt[off : off + len(R)].T
        step = _slabs(len(R), R.shape[1]).step
        for j in range(0, R.shape[1], step):
            outT[:, j : j + step].addmm_(yT, slabs.cast(R[:, j : j + step]))
    return outT.T.cpu().numpy()


def _jtjx(
    model: torch.nn.Module,
    x: torch.Tensor,
    X: np.ndarray,
    batch_size: int,
    held: Held | None = None,
    precise: bool = True,
    out: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(J_x X in float64, J_x^T J_x X in X's dtype) with each of the samples' rows formed once.
    ``precise``: J_x X summed in float64 (the Rayleigh-Ritz data, :func:`_times`), else in the
    rows' dtype; J^T (J X) is summed in X's dtype, the panels' precision, either way: into
    ``out`` when given (then None is returned in its place)."""
    Xt = torch.as_tensor(X, device=x.device)
    parts, W = [], out if out is not None else torch.zeros(Xt.shape, dtype=Xt.dtype, device=x.device)
    slabs = Float64Slabs()
    for _, R in _products(model, x, batch_size, x.dtype, held):
        y = _times(R, Xt, precise, slabs)
        parts.append(y)
        _add_transposed_times(W, R, y)
    return torch.cat(parts).cpu().numpy(), None if out is not None else W.cpu().numpy()


def _run(
    fn, model, x, M, k: int, batch_size: int, split_rows: bool, held: Held | None = None
) -> Iterator[tuple[slice, object]]:
    """Yield (a task's rows of J, fn(model, x of the task, M or its rows, batch_size, its part
    of ``held``)) for each task of one pass: on the workers of an active ``dask.distributed``
    client (:func:`.transport.worker_tasks`, which hold no rows), else here one after the other
    (their blocks each on torch's threads)."""
    client = active_client()
    if client is not None:
        yield from worker_tasks(client, fn, model, x, M, k, batch_size, split_rows)
        return
    n = len(x)
    # here, in about LOCAL_TASKS parts (each whole kernel batches) for progress lines
    for t in batch_slices(n, max(batch_size, -(-n // LOCAL_TASKS))):
        rows = slice(t.start * k, t.stop * k)
        h = 0 if held is None else max(0, min(t.stop, held.samples) - t.start)
        part = Held(held.rows[t.start * k : (t.start + h) * k], h, held.formed) if h else None
        yield rows, fn(model, x[t], M[rows] if split_rows else M, batch_size, part)
