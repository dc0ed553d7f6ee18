"""Matrix-free top-k spectrum: randomized SVD of J whose products stream J's rows, J never stored.

For J too large to store (full CIFAR-10, 10 classes: 500k x 270k, 538 GB in float32, a 2 TB
Gram matrix), each product J X (p x l -> nK x l) or J^T Y (nK x l -> p x l) forms J's rows a
block of samples at a time with the Jacobian kernel (:func:`jacobian_spectrum.jacobian.compute.jacobian_blocks`:
the per-layer kernel for Conv2d/Linear networks, ``torch.func`` or one sample at a time
otherwise), multiplies the block and drops it. A pass therefore costs about one J's worth of rows, whatever the
number of probe columns l, and holds one block (not J). What the memory budget leaves beyond that holds
the rows of the first samples from the first pass on: the later passes multiply them again without
forming them (all of a J that fits: the rows are formed once). Earlier versions applied J with one
JVP/VJP per probe column: ``bench/matrix_free.py`` measured that 82x slower than forming J at
900 images, so this engine replaced it. The blocks of one pass are independent tasks: locally
they run one after the other (each uses torch's threads); with a ``dask.distributed`` client
active (a local cluster, or one on SLURM through dask-jobqueue, docs/cluster.md) they run on its
workers and their products are summed as they arrive.

Randomized SVD iterated in parameter space, so that one pass gives both products of a power
iteration: forming a block's rows R_b once gives R_b Z and R_b^T (R_b Z), so J Z and J^T J Z
cost one pass, not two. Two iterations (``spectrum.iteration``, :func:`randomized_svd`):

  block_krylov  Z_0 = orth(Omega); pass i gives (J Z_i, J^T J Z_i), and Z_{i+1} = J^T J Z_i
                orthonormalised against Z_0 .. Z_i; Rayleigh-Ritz on span(Z_0 .. Z_q) (Musco and
                Musco 2015): fewer passes for the same accuracy, 2 (q + 1) panels of p x l.
  subspace      Z_{i+1} = orth(J^T J Z_i); Rayleigh-Ritz on the last Z (Halko, Martinsson,
                Tropp 2011, Alg. 4.4, with q power iterations from q + 1 passes): 2 panels.

The panels are float32; J Z is summed in float64 where Rayleigh-Ritz reads it, from float32
products over slabs of J's columns (:func:`slab_product`, as the gram iteration's). Each pass's
Ritz values estimate the top ones, so how much the top r moved in the last pass says whether q
sufficed; the last pass's J^T J Z also gives each returned pair's residual
||J^T J v_i - s_i^2 v_i|| / s_i^2, with no extra pass. :func:`matrix_free_plan` sizes the panels
and the rows' block within ``spectrum.memory_budget_mb``.
"""

from __future__ import annotations

import functools
import pickle
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from ..common.logs import logger
from ..jacobian.compute import batch_slices, jacobian_blocks, jacobian_shape
from ..jacobian.store import ROW_ORDER
from .dense import eigh_descending
from .store import STREAMED_GRAM, Spectrum, spectrum_checks, stored_vector_count, write_spectrum

ROWS_BUDGET_BYTES = 1e9  # one block of J's rows (float32) when no batch size is given
# the randomized iterations' streamed block at most, the rest of the budget holding rows. Larger
# blocks form rows no faster (ResNet20 at 3x32x32, 2 cores): at width 1 (p = 269k) 24, 48, 72
# and 144 samples a block gave 482, 511, 435 and 254 rows/s; at width 0.25, 72 to 216 samples
# 3,100 to 3,400, 432 samples 2,830. Smaller ones make more panel traffic: a whole pass at width
# 1 took 5.62 s in blocks of 24 samples against 5.47 s in blocks of 72 (best of 5 interleaved)
STREAM_BLOCK_BYTES = 512e6
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
    the kernel formed in them. The rows of the first
    ``held`` samples (:func:`matrix_free_plan`'s ``held_samples``: what the memory budget holds
    beyond the panels) are formed by the first pass into a buffer kept for the later ones, which
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
        into = torch.from_numpy(JtJX) if _client() is None and self.x.device.type == "cpu" else None
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
        here = _client() is None
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
    float64 product's time (bench/matrix_free_products.py)."""

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
    float64 copy of J's rows (casting them cost as much as the product). Measured on ResNet20's
    J_init at nK = 900 (p = 268,579) against float64 products, as the gram iteration's G: the
    top 50 singular values within 4.9e-7 (slabs of 1,024) to 7.0e-7 (8,192) relative, 3.8e-6
    in one float32 product. On CUDA this assumes TF32 off (``select_device`` turns it off)."""
    out = torch.zeros(len(A), len(B), dtype=torch.float64, device=A.device)
    for j in range(0, A.shape[1], SUM_SLAB):
        out += A[:, j : j + SUM_SLAB] @ B[:, j : j + SUM_SLAB].T
    return out


def _times(R: torch.Tensor, X: torch.Tensor, precise: bool, slabs: Float64Slabs) -> torch.Tensor:
    """R X in float64. Not ``precise``: one product in R's dtype. Precise, for float32 R and X
    (a pass's panel): float32 products over slabs of SUM_SLAB of R's columns summed in float64
    (:func:`slab_product`, as the gram iteration multiplies): at CIFAR's p 1.65x faster than
    casting the slabs to float64, equal to 3.5e-7 of the largest entry
    (bench/matrix_free_products.py). With a float64 X (J^T U of the residual checks): float64
    products, R and X cast a slab of R's columns at a time."""
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
    into each part of the p x l output once. Casting a few rows at a time instead, each few rows
    wrote the whole p x l output: the check pass of a gram spectrum then took 4x a pass of the
    Gram step (ViT-Tiny, p = 5.4M, 10 columns)."""
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


@functools.lru_cache(maxsize=1)
def _unpickled(blob: bytes) -> torch.nn.Module:
    """The pass's model on a worker, unpickled once for all its tasks."""
    return pickle.loads(blob)


def _on_worker(fn, blob: bytes, *args):
    return fn(_unpickled(blob), *args)


def _client():
    """The active ``dask.distributed`` client, or None (the passes then run here)."""
    try:
        from dask.distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def _run(
    fn, model, x, M, k: int, batch_size: int, split_rows: bool, held: Held | None = None
) -> Iterator[tuple[slice, object]]:
    """Yield (a task's rows of J, fn(model, x of the task, M or its rows, batch_size, its part
    of ``held``)) for each task of one pass.

    Without a ``dask.distributed`` client the tasks run here one after the other (their blocks
    each on torch's threads). With one, the samples are cut into about four tasks
    per worker; the model and M go to the workers once per pass (scattered), and results are
    taken as they finish, so the driver holds one beside the sum. torch.func transforms keep
    process-global state, so two tasks never share a process at once (workers: one thread each).
    """
    client = _client()
    n = len(x)
    if client is None:  # here, in about LOCAL_TASKS parts (each whole kernel batches) for progress lines
        for t in batch_slices(n, max(batch_size, -(-n // LOCAL_TASKS))):
            rows = slice(t.start * k, t.stop * k)
            h = 0 if held is None else max(0, min(t.stop, held.samples) - t.start)
            part = Held(held.rows[t.start * k : (t.start + h) * k], h, held.formed) if h else None
            yield rows, fn(model, x[t], M[rows] if split_rows else M, batch_size, part)
        return
    from dask.distributed import as_completed

    workers = max(1, len(client.scheduler_info()["workers"]))
    tasks = batch_slices(n, max(1, -(-n // (4 * workers))))
    # the model as pickled bytes: dask's own torch serialisation loses the modules' hook dicts
    # hash=False: a fresh key per pass, so that releasing the last pass's copy cannot race with this one
    model_f = client.scatter(pickle.dumps(model), broadcast=True, hash=False)
    M_f = None if split_rows else client.scatter(M, broadcast=True, hash=False)
    futures = {}
    for t in tasks:
        rows = slice(t.start * k, t.stop * k)
        arg = M[rows] if split_rows else M_f
        futures[client.submit(_on_worker, fn, model_f, x[t], arg, batch_size, pure=False)] = rows
    for fut in as_completed(futures):
        yield futures[fut], fut.result()
        fut.release()


ITERATIONS = ("block_krylov", "subspace")  # the randomized ones; "gram" forms G = J J^T instead
SLAB_BYTES = 64 << 20  # rows of a p x l panel cast to float64 at a time (orthonormalisation, residuals)
DROP = 1e-5  # a new Krylov direction shorter than this (relative) lies in the basis to float32 rounding


@dataclass
class TopK:
    """Randomized SVD's result: the top-k singular values and left vectors; the residuals of
    their pairs, ||J^T J v_i - s_i^2 v_i|| / s_i^2, and ||J^T u_i||, from the last pass; and
    the estimates of the top singular values after each pass (to see whether the passes
    sufficed)."""

    singular_values: np.ndarray
    U: np.ndarray
    estimates: list[np.ndarray] = field(default_factory=list)
    residuals: np.ndarray | None = None
    JtU_norms: np.ndarray | None = None

    def movement(self, r: int) -> float:
        """Largest relative change of the top-r singular values in the last pass (NaN with one
        pass)."""
        if len(self.estimates) < 2:
            return float("nan")
        a, b = self.estimates[-2][:r], self.estimates[-1][:r]
        return float(np.max(np.abs(b - a) / np.maximum(b, np.finfo(float).tiny)))

    def checks(self) -> dict:
        """The stored checks (:func:`.store.spectrum_checks`' keys) from the last pass: the
        residuals of the right singular vectors v_i (u_i = J v_i / s_i), the same pairs."""
        s, s1 = self.singular_values, self.singular_values[0] if self.singular_values[0] > 0 else 1.0
        return {
            "orthogonality_error": float(np.abs(self.U.T @ self.U - np.eye(self.U.shape[1])).max()),
            "eigen_residual": float(np.max(self.residuals * s**2) / s1**2),
            "norm_residual": float(np.abs(self.JtU_norms - s).max() / s1),
            "checked_vectors": len(s),
        }


def _row_slabs(p: int, cols: int) -> range:
    return range(0, p, max(1, SLAB_BYTES // (8 * max(cols, 1))))


def _orthonormal(W: np.ndarray, basis: list[np.ndarray], in_place: bool = False) -> np.ndarray | None:
    """W's columns orthonormalised against the blocks of ``basis`` and among themselves: block
    classical Gram-Schmidt and a Gram-matrix (eigh) normalisation, twice, in float64 on slabs
    of rows, stored in W's dtype. Directions that lie in the basis to within DROP of their
    length are dropped; None when none is left (the space is invariant)."""
    Z = W if in_place else W.copy()
    # the longest column's squared length, a slab at a time (a whole float64 copy is 2 panels)
    norms = sum(np.einsum("ij,ij->j", *(2 * [Z[a : a + n].astype(np.float64)])) for a, n in _slab_spans(Z))
    scale = float(np.max(norms)) if Z.size else 0.0
    for _ in range(2):
        for Q in basis:
            C = sum(Q[a : a + n].astype(np.float64).T @ Z[a : a + n] for a, n in _slab_spans(Q))
            for a, n in _slab_spans(Q):
                Z[a : a + n] -= (Q[a : a + n].astype(np.float64) @ C).astype(Z.dtype)
        G = sum(Z[a : a + n].astype(np.float64).T @ Z[a : a + n].astype(np.float64) for a, n in _slab_spans(Z))
        lam, V = np.linalg.eigh(G)
        keep = lam > DROP**2 * max(scale, np.finfo(float).tiny)
        if not keep.any():
            return None
        T = V[:, keep] / np.sqrt(lam[keep])
        out = np.empty((len(Z), int(keep.sum())), dtype=Z.dtype) if T.shape[1] != Z.shape[1] else Z
        for a, n in _slab_spans(Z):
            out[a : a + n] = Z[a : a + n].astype(np.float64) @ T
        Z, scale = out, 1.0
    return Z


def _slab_spans(A: np.ndarray, cols: int | None = None) -> list[tuple[int, int]]:
    """(start, length) of the slabs of A's rows that SLAB_BYTES holds in float64 at ``cols``
    columns (A's own by default)."""
    step = _row_slabs(len(A), A.shape[1] if cols is None else cols).step
    return [(a, min(step, len(A) - a)) for a in range(0, len(A), step)]


def _gram(Ys: list[np.ndarray], G: np.ndarray | None) -> np.ndarray:
    """[Y_1 .. Y_m]^T [Y_1 .. Y_m] from the previous m - 1 blocks' G and the new block, without
    joining the blocks (each is rows x l in float64: a copy would double their memory)."""
    new = [Y.T @ Ys[-1] for Y in Ys]
    L = sum(Y.shape[1] for Y in Ys)
    out = np.zeros((L, L))
    m = L - Ys[-1].shape[1]
    if G is not None:
        out[:m, :m] = G
    column = np.vstack(new)
    out[:, m:], out[m:, :] = column, column.T
    return out


def _ritz(Qs: list[np.ndarray], Ws: list[np.ndarray], Ys: list[np.ndarray], G: np.ndarray, k: int):
    """Rayleigh-Ritz of J on the span of the blocks Qs (J Qs = Ys, whose Gram matrix is G;
    J^T J Qs = Ws): the top k singular values and left vectors, the residuals
    ||J^T J v - s^2 v|| / s^2 and ||J^T u||. Q^T Q is measured (the blocks are float32,
    orthonormal to 1e-7) and corrected for. From Gram matrices: s_i^2 within eps s_1^2, ample
    for the top k, and no rows x L copy."""
    L = sum(q.shape[1] for q in Qs)
    M = np.zeros((L, L))
    offs = np.cumsum([0] + [q.shape[1] for q in Qs])
    spans = _slab_spans(Qs[0], L)  # slabs of all L columns in SLAB_BYTES
    for a, n in spans:
        Qa = np.hstack([q[a : a + n].astype(np.float64) for q in Qs])
        M += Qa.T @ Qa
    R = np.linalg.cholesky(M).T  # M = R^T R: Q R^-1 is orthonormal
    Rinv = np.linalg.solve(R, np.eye(L))
    lam, Vb = eigh_descending(Rinv.T @ G @ Rinv)  # (J Q R^-1)^T (J Q R^-1)
    k = min(k, L)
    s = np.sqrt(np.maximum(lam[:k], 0))
    V = Rinv @ Vb[:, :k]  # v_i = Q V[:, i], unit vectors
    with np.errstate(divide="ignore", invalid="ignore"):
        T = np.where(s > 0, V / s, 0)
    U = sum(Y @ T[o:e] for Y, o, e in zip(Ys, offs[:-1], offs[1:]))  # u_i = J v_i / s_i
    r2, n2 = np.zeros(k), np.zeros(k)
    for a, n in spans:
        QV = sum(q[a : a + n].astype(np.float64) @ V[o:e] for q, o, e in zip(Qs, offs[:-1], offs[1:]))
        AV = sum(w[a : a + n].astype(np.float64) @ V[o:e] for w, o, e in zip(Ws, offs[:-1], offs[1:]))
        r2 += ((AV - QV * s**2) ** 2).sum(axis=0)
        n2 += (AV**2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return s, U, np.sqrt(r2) / s**2, np.sqrt(n2) / s


def randomized_svd(
    op: JacobianOperator,
    k: int,
    oversampling: int = 100,
    power_iterations: int = 6,
    seed: int = 0,
    iteration: str = "block_krylov",
) -> TopK:
    """Top-k singular values and left singular vectors of the operator's J from
    ``power_iterations`` + 1 passes, each forming every row once and giving J Z and J^T J Z
    for a block Z of l = k + oversampling columns.

    block_krylov  Z_0 random, Z_{i+1} = J^T J Z_i orthonormalised against Z_0 .. Z_i; then
                  Rayleigh-Ritz on their whole span (Musco and Musco 2015), whose J Q the passes
                  gave: the same accuracy from fewer passes than subspace iteration. Holds
                  2 (q + 1) p x l panels.
    subspace      Z_{i+1} = orth(J^T J Z_i), Rayleigh-Ritz on the last Z only (Halko, Martinsson,
                  Tropp 2011, Alg. 4.4): 2 panels, for J's too wide for the Krylov basis.

    Panels are stored in the rows' dtype (float32: p x l x 4 bytes). J Z is summed in float64
    for Rayleigh-Ritz (every pass for block_krylov, the last for subspace) from float32
    products over slabs of SUM_SLAB columns; the rest in the rows' dtype. The residuals come
    from the last pass's products."""
    if iteration not in ITERATIONS:
        raise ValueError(f"iteration {iteration!r}; allowed: {', '.join(ITERATIONS)}")
    rows, cols = op.shape
    ell = min(k + oversampling, rows, cols)
    k = min(k, ell)
    dtype = np.float64 if op.x.dtype == torch.float64 else np.float32
    # drawn in the panels' dtype: a float64 draw to cast would double the largest panel for a moment
    Z = _orthonormal(np.random.default_rng(seed).standard_normal((cols, ell), dtype=dtype), [], in_place=True)
    krylov = iteration == "block_krylov"
    Qs, Ws, Ys, estimates, G = [], [], [], [], None
    for i in range(power_iterations + 1):
        last = i == power_iterations
        Y, W = op.normal_matmat(Z, precise=krylov or last)
        Qs, Ws, Ys = ([*Qs, Z], [*Ws, W], [*Ys, Y]) if krylov else ([Z], [W], [Y])
        G = _gram(Ys, G if krylov else None)
        # Ritz values with the blocks taken as orthonormal (they are, to float32 rounding)
        estimates.append(np.sqrt(np.maximum(np.linalg.eigvalsh(G)[::-1], 0)))
        logger.info(
            "pass %d/%d (%s, %d columns): s_1 = %.6g, s_%d = %.6g",
            i + 1,
            power_iterations + 1,
            iteration,
            sum(q.shape[1] for q in Qs),
            estimates[-1][0],
            k,
            estimates[-1][min(k, len(estimates[-1])) - 1],
        )
        if last:
            break
        # subspace: W becomes the next Z in place, and the last Z is let go before the next
        # pass allocates its J^T J Z: two panels at a time, not three
        Z = _orthonormal(W, Qs if krylov else [], in_place=not krylov)
        if not krylov and Z is not None:
            Qs, Ws, Ys, Y, W = [], [], [], None, None
        room = cols - sum(q.shape[1] for q in Qs) if krylov else cols
        if Z is None or room <= 0:
            logger.info("the space is invariant (or all of R^p) after %d passes: stopping", i + 1)
            break
        Z = Z[:, :room]
    s, U, residuals, norms = _ritz(Qs, Ws, Ys, G, k)
    estimates[-1] = s
    return TopK(s, U, estimates, residuals, norms)


def vector_residuals(op: JacobianOperator, s: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, dict]:
    """||J J^T u_i - s_i^2 u_i|| / s_i^2 for every column of U, and the spectrum's stored checks,
    by two more passes (J^T U, then J (J^T U)): an independent check of the last pass's
    residuals (:class:`TopK`), for tests and benches."""
    JtU = op.rmatmat(U)
    JJtU = op.matmat(JtU)
    with np.errstate(divide="ignore", invalid="ignore"):
        residuals = np.linalg.norm(JJtU - U * s**2, axis=0) / s**2
    return residuals, spectrum_checks(s, U, JJtU, np.linalg.norm(JtU, axis=0))


@contextmanager
def dask_workers(scheduler: str | None) -> Iterator[object | None]:
    """A dask.distributed client for the passes while the block is open (``spectrum.scheduler``):
    None = no client (the blocks run here), ``local:N`` = N local worker processes of one thread
    each, anything else = the address of a running scheduler (a cluster's, e.g. dask-jobqueue's)."""
    if not scheduler:
        yield None
        return
    from dask.distributed import Client, LocalCluster

    if scheduler.startswith("local:"):
        n = int(scheduler.split(":", 1)[1])
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
            with Client(cluster) as client:
                logger.info("passes on %d local worker processes", n)
                yield client
    else:
        with Client(scheduler) as client:
            logger.info("passes on the dask.distributed cluster at %s", scheduler)
            yield client


# ---------------------------------------------------------------- the Gram iteration
def gram_formations(n: int, held: int) -> float:
    """Passes' worth of J's rows that :func:`streamed_gram` forms for n samples with ``held``
    samples held at a time: every held block once, then the rows after it (streamed)."""
    return sum(n - block.start for block in batch_slices(n, held)) / n


def streamed_gram(op: JacobianOperator, held: int) -> np.ndarray:
    """G = J J^T (nK x nK, float64), J never stored: the rows of ``held`` samples at a time are
    held, multiplied with themselves and with the rows of every later sample, formed
    ``op.batch_size`` samples at a time (as many as the held block, :func:`_gram_plan`) and
    dropped. Products in float32 over slabs of columns, summed in float64 (:func:`slab_product`).
    Costs :func:`gram_formations` passes' worth of rows."""
    n, k, p = len(op.x), op.k, op.cols
    G = torch.zeros(n * k, n * k, dtype=torch.float64)
    held_rows = torch.empty(min(held, n) * k, p, dtype=op.x.dtype, device=op.x.device)
    t0 = last = time.perf_counter()
    formed = 0
    for A in batch_slices(n, held):
        a = slice(A.start * k, A.stop * k)
        RA = held_rows[: a.stop - a.start]
        for _ in jacobian_blocks(op.model, op.x[A], out=RA):
            pass
        G[a, a] = slab_product(RA, RA).cpu()
        formed += A.stop - A.start
        later = op.x[A.stop :]
        for B, RB in jacobian_blocks(op.model, later, op.batch_size) if len(later) else ():
            b = slice((A.stop + B.start) * k, (A.stop + B.stop) * k)
            G[a, b] = slab_product(RA, RB).cpu()
            G[b, a] = G[a, b].T
            formed += B.stop - B.start
            if time.perf_counter() - last > PROGRESS_SECONDS:
                last = time.perf_counter()
                logger.info(
                    "Gram matrix: rows of samples %d-%d against %d-%d; %.2f passes' worth of rows in %.0fs",
                    A.start,
                    A.stop,
                    A.stop + B.start,
                    A.stop + B.stop,
                    formed / n,
                    last - t0,
                )
    op.passes += int(round(formed / n))
    op.seconds += time.perf_counter() - t0
    logger.info(
        "Gram matrix of J (%d x %d): %.2f passes' worth of rows in %.1fs",
        n * k,
        p,
        formed / n,
        time.perf_counter() - t0,
    )
    return G.numpy()


def gram_spectrum(op: JacobianOperator, held: int, check: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Every singular value of J and its left singular vectors from the streamed Gram matrix,
    checked by one more pass: J^T U_t (t = ``check``) gives ||J^T u_i|| against s_i, which the
    Gram matrix did not make (as ``full``'s check of the stored J)."""
    G = streamed_gram(op, held)
    w, V = eigh_descending(G)
    s = np.sqrt(np.maximum(w, 0.0))
    t = min(check, len(s))
    JtU = op.rmatmat(V[:, :t])
    checks = spectrum_checks(s, V[:, :t], G @ V[:, :t], np.linalg.norm(JtU, axis=0))
    return s, V, checks


@dataclass(frozen=True)
class MatrixFreePlan:
    """What a matrix-free spectrum of J (rows x p) holds: the iteration that fits the memory
    budget, its panels (p x l each, in the rows' dtype), one block of J's rows, and the
    float64 pieces of the products."""

    iteration: str
    columns: int  # l = topk + oversampling (at most nK and p)
    panels: int  # p x l panels held at once
    panel_bytes: float
    block_bytes: float  # one block of J's rows (float32)
    row_bytes: float  # the kept J Z blocks and U (rows x l and rows x k, float64)
    work_bytes: float  # float64 pieces: a product's cast rows and slab, the orthonormalisation's slabs (below)
    block_copies: int = 2  # the randomized iterations' block twice (the kernel joins its pieces into it)
    held_samples: int = 0  # gram: samples whose rows are held at a time; the others: held from the first pass on
    passes: float = 0.0  # gram: passes' worth of J's rows formed, the check's included; the others: passes
    held_bytes: float = 0.0  # the randomized iterations' held rows (gram's held block is block_bytes)
    samples: int = 0  # n (J has n K rows)

    @property
    def bytes(self) -> float:
        """Peak memory beyond the process and the model: panels, the rows block (twice for the
        randomized iterations: the kernel joins its per-layer pieces into it), J Z blocks or
        the Gram matrix, and the float64 pieces (a product's cast rows and slab, the
        orthonormalisation's slabs, a streamed batch of rows). A pass's J Z from float32 slab
        products casts no rows; the cast rows stay counted as a margin: the laptop variant
        peaked at 0.98x its plan with them (docs/scale.md). The randomized iterations' held
        rows come on top."""
        return (
            self.panels * self.panel_bytes
            + self.block_copies * self.block_bytes
            + self.row_bytes
            + self.work_bytes
            + self.held_bytes
        )

    @property
    def formations(self) -> float:
        """Passes' worth of J's rows formed: gram's ``passes``; for the randomized iterations the
        first pass forms every row and each later one all but the held samples'."""
        if self.iteration == "gram" or not self.samples:
            return self.passes
        return 1 + (self.passes - 1) * (self.samples - self.held_samples) / self.samples


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
    that a pass gains nothing: see its measurements), and the rest of the budget holds the
    rows of as many samples as fit (formed by the first pass, multiplied again by the later
    ones without forming them: each held sample saves q formations of its rows). ``hold``
    False (passes on ``dask.distributed`` workers, which form every row): none held."""
    gram = _gram_plan(rows, k, p, budget_mb, itemsize)
    if iteration == "gram" or (iteration == "auto" and gram is not None and gram.passes <= power_iterations + 1):
        if gram is None:
            raise ValueError(
                f"spectrum.iteration = gram: the Gram matrix of J ({rows:,} x {p:,}), its eigensolver and one "
                f"sample's rows need {_gram_least(rows, k, p, itemsize) / 1e6:,.0f} MB, over "
                f"spectrum.memory_budget_mb = {budget_mb:g}; raise the budget, or set spectrum.iteration: auto"
            )
        return gram
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
    return MatrixFreePlan(
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


GRAM_CHECKED = 10  # top vectors whose ||J^T u_i|| the gram iteration's check pass measures


def _gram_fixed(rows: int, p: int) -> tuple[float, float]:
    """(the Gram side: G, eigh's V and its workspace, in float64; the work: the check pass's
    float64 casts of rows and its J^T U_t in float64)."""
    return 3 * 8.0 * rows * rows, 3 * PRODUCT_BYTES + 8.0 * p * GRAM_CHECKED


def _gram_least(rows: int, k: int, p: int, itemsize: int) -> float:
    side, work = _gram_fixed(rows, p)
    return side + work + 3.0 * k * p * itemsize


def _gram_plan(rows: int, k: int, p: int, budget_mb: float, itemsize: int) -> MatrixFreePlan | None:
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
    return MatrixFreePlan(
        "gram",
        rows,
        0,
        0.0,
        held * sample_rows,
        side,
        work + 2 * streamed,
        block_copies=1,
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


def matrix_free_spectrum(
    checkpoint: str,
    subset_path: str,
    split: str,
    info_dim: int,
    k: int,
    oversampling: int,
    power_iterations: int,
    threads: int = 1,
    batch_size: int | None = None,
    keep: int | None = None,
    scheduler: str | None = None,
    device: str = "cpu",
    memory_budget_mb: float = 2000.0,
    iteration: str = "auto",
    stored_vectors: int | str = "all",
    normalisation: str = "recomputed",
    allow_degenerate: bool = False,
) -> Spectrum:
    """Spectrum of J(checkpoint) on ``split`` without storing J, checked from its last pass.
    The passes run on the workers of ``scheduler`` (see :func:`dask_workers`) when given, else
    here on ``device`` (``auto`` = CUDA when present: rows and products on the GPU). The
    iteration and the rows' block follow from ``memory_budget_mb`` (:func:`matrix_free_plan`).
    The network's batch-norm statistics are those of ``normalisation`` (model.normalisation);
    outputs that do not vary across the samples stop it before any pass, unless
    ``allow_degenerate`` (:mod:`..jacobian.degeneracy`): the returned checks then say so."""
    from ..common.device import select_device
    from ..data.subset import read_split
    from ..jacobian.compute import outputs
    from ..jacobian.degeneracy import degeneracy, handle_degeneracy, output_spread
    from ..train.models import load_checkpoint

    dev = torch.device("cpu") if scheduler else select_device(device)
    model, payload = load_checkpoint(checkpoint, dev, normalisation)
    model.eval()  # J's rows in the checkpoint's precision (float32); J Z in float64 where Rayleigh-Ritz reads it
    data = read_split(subset_path, split)
    torch.set_num_threads(max(1, threads))
    x = torch.from_numpy(data.x).to(dev)
    spread = output_spread(outputs(model, x).double().cpu().numpy())
    where = f"{checkpoint} ({split}, batch-norm statistics: {payload['normalisation']})"
    degenerate = handle_degeneracy(degeneracy(spread), where, allow_degenerate, logger)
    # what the spectrum file records of the network measured (spectrum_matrix_free pops the last two)
    measured = dict(
        output_spread=spread.spread,
        output_size=spread.size,
        degenerate=degenerate,
        normalisation=payload["normalisation"],
    )
    rows, p = jacobian_shape(model, x[:1])
    plan = matrix_free_plan(
        rows * len(x), rows, p, k, oversampling, power_iterations, memory_budget_mb, iteration, hold=not scheduler
    )
    if plan.iteration == "gram":
        spec = _gram_spectrum_of(model, x, plan, info_dim, stored_vectors, checkpoint, split, batch_size)
        spec.checks.update(measured)
        return spec
    if batch_size is None:
        batch_size = max(1, int(plan.block_bytes // (rows * p * x.element_size())))
    logger.info(
        "matrix-free spectrum of J (%d x %d): %s, %d passes, %d panels of %d columns (%.0f MB), rows %d samples "
        "a block, the rows of %d samples held from the first pass on (%.0f MB): %.2f passes' worth of rows, "
        "%.0f MB planned",
        rows * len(x),
        p,
        plan.iteration,
        power_iterations + 1,
        plan.panels,
        plan.columns,
        plan.panels * plan.panel_bytes / 1e6,
        batch_size,
        plan.held_samples,
        plan.held_bytes / 1e6,
        plan.formations,
        plan.bytes / 1e6,
    )
    op = JacobianOperator(model, x, batch_size, held=plan.held_samples)
    with dask_workers(scheduler):
        t0 = time.perf_counter()
        top = randomized_svd(op, k, oversampling, power_iterations, iteration=plan.iteration)
        t1 = time.perf_counter()
    checks = top.checks()
    residuals = top.residuals
    r = min(info_dim, len(top.singular_values))
    checks.update(
        passes=op.passes,
        iteration=plan.iteration,
        vector_residuals=residuals,
        max_residual_top_r=float(residuals[:r].max()),
        movement_top_r=top.movement(r),
        **measured,
    )
    keep = info_dim if keep is None else min(keep, top.U.shape[1])  # the stored vectors (spectrum.stored_vectors)
    logger.info(
        "matrix-free spectrum of %s on %s: %d x %d, %d passes, %.1fs; top-%d residuals <= %.2e, the last "
        "pass moved the top %d values by <= %.2e",
        checkpoint,
        split,
        *op.shape,
        op.passes,
        t1 - t0,
        r,
        checks["max_residual_top_r"],
        r,
        checks["movement_top_r"],
    )
    return Spectrum(
        top.singular_values,
        top.U[:, :keep].copy(),
        "matrix_free",
        checks,
        {"matrix_free": t1 - t0},
    )


def _gram_spectrum_of(
    model: torch.nn.Module,
    x: torch.Tensor,
    plan: MatrixFreePlan,
    info_dim: int,
    stored_vectors: int | str,
    checkpoint: str,
    split: str,
    batch_size: int | None,
) -> Spectrum:
    """:func:`matrix_free_spectrum` by the gram iteration: every singular value of J, and as
    many left singular vectors as ``stored_vectors`` (spectrum.stored_vectors) keeps."""
    op = JacobianOperator(model, x, batch_size or plan.held_samples)  # streamed batches as large as the held block
    logger.info(
        "matrix-free spectrum of J (%d x %d): gram, G = J J^T from the rows of %d samples held at a time "
        "(%.0f MB) against the rest, streamed; %.2f passes' worth of rows with the check: %.0f MB planned",
        *op.shape,
        plan.held_samples,
        plan.block_bytes / 1e6,
        plan.passes,
        plan.bytes / 1e6,
    )
    t0 = time.perf_counter()
    s, V, checks = gram_spectrum(op, plan.held_samples, GRAM_CHECKED)
    t1 = time.perf_counter()
    checks.update(passes=op.passes, iteration="gram")
    keep = stored_vector_count({"stored_vectors": stored_vectors, "info_dim": info_dim}, len(s))
    logger.info(
        "matrix-free spectrum of %s on %s: %d x %d, gram, %d passes, %.1fs; s_1 = %.4g; checks %s",
        checkpoint,
        split,
        *op.shape,
        op.passes,
        t1 - t0,
        s[0],
        checks,
    )
    return Spectrum(s, V[:, :keep].copy(), STREAMED_GRAM, checks, {"matrix_free": t1 - t0})


def spectrum_matrix_free(
    checkpoint: str,
    subset_path: str,
    split: str,
    out_path: str,
    settings: dict,
    threads: int = 1,
    device: str = "cpu",
    normalisation: str = "recomputed",
    allow_degenerate: bool = False,
) -> Spectrum:
    """The matrix-free spectrum rule: compute and write ``spectrum/{split}_epoch{E}.h5``. A
    degenerate network (constant outputs, or J of numerical rank at most K) stops it naming the
    checkpoint, unless ``allow_degenerate``."""
    from ..train.models import read_checkpoint
    from .store import checked_degeneracy

    spec = matrix_free_spectrum(
        checkpoint,
        subset_path,
        split,
        settings["info_dim"],
        settings["topk"],
        settings["oversampling"],
        settings["power_iterations"],
        threads,
        keep=stored_vector_count(settings, settings["topk"]),
        stored_vectors=settings.get("stored_vectors", "all"),
        scheduler=settings.get("scheduler"),
        device=device,
        memory_budget_mb=settings["memory_budget_mb"],
        iteration=settings.get("iteration", "auto"),
        normalisation=normalisation,
        allow_degenerate=allow_degenerate,
    )
    payload = read_checkpoint(checkpoint)
    degenerate = spec.checks.pop("degenerate")
    normalisation = spec.checks.pop("normalisation")
    source = {
        "split": split,
        "checkpoint": str(checkpoint),
        "checkpoint_epoch": payload["epoch"],
        "dtype": "float32",  # J's rows are formed in the checkpoint's float32; products sum in float64
        "row_order": ROW_ORDER,
        "num_classes": int(payload["model"]["num_classes"]),
        "normalisation": normalisation,
        "degenerate": degenerate,
    }
    degenerate = checked_degeneracy(spec, source, allow_degenerate, f"{checkpoint} ({split})")
    write_spectrum(
        out_path, spec, settings["info_dim"], f"matrix-free J of {checkpoint} on {split}", source, settings, degenerate
    )
    return spec
