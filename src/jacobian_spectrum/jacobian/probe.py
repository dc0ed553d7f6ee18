"""Jacobian stage, the check: every computed J is compared with torch.func's jvp and vjp.

One random probe each way (v over the columns, u over the rows) catches a wrong row, a
wrong column block or a wrong layer in J, at the cost of one forward-mode and one
reverse-mode pass per batch.

The references take the rows' own ReLU decisions. A ReLU input within rounding of 0 falls on
either side in two forward passes that round differently, and each such unit moves its
sample's rows of J by 1e-3 to 1e-2, as much as a wrong row. Networks with batch-norm take
the torch.func path, whose vmap pass rounds batch-norm differently from the batched and the
forward-mode passes of the check; a CIFAR ResNet-18 (557k ReLU units a sample) then has such
a unit in about one sample in eight, and the check of a chunk failed on a correct J
(docs/reliability.md). References in float64 alone fail the same way: float64 decides those
units by its own rounding. So the check records which ReLU inputs were positive in a forward
pass computed as the rows' is (:class:`RecordKinks`) and pins those decisions in its jvp and
vjp (:class:`PinKinks`); what is left is rounding, 1e-7 to 3.4e-6 from 17k to 21M parameters.
The other piecewise activations with kinks (hardtanh, relu6, hardsigmoid and hardswish, as in
MobileNets) have their pieces pinned the same way.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torch.func import functional_call, jvp, vmap
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from .compute import (
    VMAP_BATCH,
    batch_slices,
    math_attention,
    outputs_and_batch_size,
    plain_layers,
    rows_kernel,
    split_params,
)

# every spelling of ReLU that nn.ReLU, F.relu and tensor methods reach
_RELUS = (F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_)
_IN_PLACE = (torch.relu_, torch.Tensor.relu_)
# the other piecewise activations, by their kinks: (low, high) thresholds of their three pieces
_PIECEWISE = (F.hardtanh, F.relu6, F.hardsigmoid, F.hardswish)


def _in_place(func, args: tuple, kwargs: dict) -> bool:
    if func in _IN_PLACE:
        return True
    return func is F.relu and bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))


def _thresholds(func, args: tuple, kwargs: dict) -> tuple[float, float]:
    """Where the pieces of a hard activation meet: hardtanh's (min_val, max_val), relu6's (0, 6),
    hardsigmoid's and hardswish's (-3, 3)."""
    if func is F.hardtanh:
        low = kwargs.get("min_val", args[1] if len(args) > 1 else -1.0)
        return float(low), float(kwargs.get("max_val", args[2] if len(args) > 2 else 1.0))
    return (0.0, 6.0) if func is F.relu6 else (-3.0, 3.0)


def _pieces(func, z: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """Which piece each input of a hard activation falls on: 0 below, 1 between, 2 above its kinks."""
    low, high = _thresholds(func, args, kwargs)
    return (z > low).to(torch.int8) + (z >= high).to(torch.int8)


def _on_pieces(func, z: torch.Tensor, pieces: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """The hard activation of z with each input on the recorded piece."""
    low, high = _thresholds(func, args, kwargs)
    below, above = pieces == 0, pieces == 2
    if func in (F.hardtanh, F.relu6):
        return z.masked_fill(below, low).masked_fill(above, high)
    if func is F.hardsigmoid:
        return (z / 6 + 0.5).masked_fill(below, 0.0).masked_fill(above, 1.0)
    return torch.where(above, z, (z * (z + 3) / 6).masked_fill(below, 0.0))  # hardswish


class RecordKinks(TorchFunctionMode):
    """Records, for every ReLU call of a forward pass in order, which inputs were positive, and
    for every other hard activation (hardtanh, relu6, hardsigmoid, hardswish) which piece each
    input fell on (``values``: the inputs themselves, to see how close to a kink they are)."""

    def __init__(self, values: bool = False) -> None:
        super().__init__()
        self.values = values
        self.masks: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELUS:  # before the call: relu_ overwrites its input
            self.masks.append(args[0].detach().clone() if self.values else args[0] > 0)
        elif func in _PIECEWISE:
            z = args[0]
            self.masks.append(z.detach().clone() if self.values else _pieces(func, z, args, kwargs))
        return func(*args, **kwargs)


class PinKinks(TorchFunctionMode):
    """Replaces the i-th ReLU call of a forward pass by ``z`` where ``masks[i]`` (else 0), and the
    i-th other hard activation by its recorded pieces: the decisions of the recorded pass,
    whatever this pass's own rounding (and dtype) would decide."""

    def __init__(self, masks: list[torch.Tensor]) -> None:
        super().__init__()
        self.masks, self.calls = masks, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _RELUS and func not in _PIECEWISE:
            return func(*args, **kwargs)
        z = args[0]
        if self.calls >= len(self.masks) or self.masks[self.calls].shape != z.shape:
            got = tuple(self.masks[self.calls].shape) if self.calls < len(self.masks) else "none"
            raise ValueError(
                f"probe check: activation call {self.calls} has an input of shape {tuple(z.shape)}, the recorded "
                f"pass's {got}: the model's forward pass is not the same on every call"
            )
        mask = self.masks[self.calls]
        self.calls += 1
        if func in _PIECEWISE:  # a new tensor even where the call was in place: its input is saved for the backward
            return _on_pieces(func, z, mask, args, kwargs)
        # zero where the recorded pass was not positive; a NaN stays NaN, as through relu.
        # masked_fill rather than z * mask: a product under torch.func.jvp imports
        # torch._dynamo (about 2.5 s, most of a small chunk job), masked_fill does not
        off = ~(mask | z.isnan())
        return z.masked_fill_(off, 0) if _in_place(func, args, kwargs) else z.masked_fill(off, 0)


class ProbeCheck:
    """Random-probe check of J, fed batch by batch: J v against ``torch.func.jvp`` and u^T J
    against the vjp (reverse mode), one probe each (v over the columns, u over the rows), both
    with the ReLU decisions of the rows' forward pass pinned, in ``reference_dtype`` (the
    model's by default).

    :meth:`add` takes a batch's samples and its rows of J. The errors are measured where a wrong
    row stands out at any chunk size and cancellation in a product cannot inflate rounding:
    J v per sample, against |J_s|_F (what |J_s v| is for v ~ N(0, I) on average; a sample's
    |J_s v| can be 25x smaller), u^T J per batch, against |diag(u_b) J_b|_F; :meth:`errors`
    gives the worst of each. The jvp/vjp run on that batch only and the products by J go
    through one float64 block of at most 4 MiB, so the check needs no more memory than
    computing the batch's rows (besides: the ReLU decisions, 1 byte a unit, and v and three
    other float64 parameter-sized vectors).
    """

    def __init__(
        self,
        model: nn.Module,
        num_rows: int,
        num_parameters: int,
        seed: int = 0,
        reference_dtype: torch.dtype | None = None,
    ) -> None:
        model.eval()
        self.model = model
        self.params, self.buffers = split_params(model)
        # the references' dtype: the model's by default. With the ReLU decisions pinned, float32
        # references read within 3e-6 of float64 ones, and float64 ones cost 4x a ResNet20's
        # rows on a CPU instead of 0.8x (docs/reliability.md)
        self.params_dtype = next(iter(self.params.values())).dtype
        dtype = reference_dtype or self.params_dtype
        self.ref_params = {n: p.to(dtype) for n, p in self.params.items()}  # no copy in the model's dtype
        self.ref_buffers = {n: b.to(dtype) if b.is_floating_point() else b for n, b in self.buffers.items()}
        self.ref_dtype = dtype
        # the rows' forward pass: one batched pass (plain layers), the model's own pass one sample
        # at a time (large networks), or vmap over samples (torch.func)
        self.kernel = rows_kernel(model)
        gen = torch.Generator().manual_seed(seed)
        self.v = torch.randn(num_parameters, generator=gen, dtype=torch.float64)
        self.u = torch.randn(num_rows, generator=gen, dtype=torch.float64)
        self.tangents, off = {}, 0
        for n, p in self.ref_params.items():
            self.tangents[n] = self.v[off : off + p.numel()].reshape(p.shape).to(p.device, dtype)
            off += p.numel()
        self.Jv = torch.zeros(num_rows, dtype=torch.float64)
        self.rows_added = torch.zeros(num_rows, dtype=torch.bool)
        self.err_jvp = self.err_vjp = 0.0

    def kink_masks(self, x: torch.Tensor, values: bool = False) -> list[torch.Tensor]:
        """Which ReLU inputs were positive, in a forward pass computed as the rows' is: the
        batched pass with autograd on (:func:`.compute.jacobian_by_layers`), the model's own
        pass on one sample at a time (:func:`.compute.jacobian_per_sample`), or vmap over
        samples of a reverse-mode pass (``vmap(jacrev)``, :func:`.compute.jacobian_vmap`).
        Recomputing it in the same way gives the same bits, so the same decisions. ``values``:
        the ReLU inputs instead."""
        if self.kernel == "layers":
            leaves = {n: p.detach().requires_grad_() for n, p in self.params.items()}
            with torch.enable_grad(), RecordKinks(values) as rec:
                functional_call(self.model, (leaves, self.buffers), (x,))
            return rec.masks
        if self.kernel == "per_sample":  # a vmap pass rounds differently: its decisions are not the rows'
            samples = []
            for i in range(len(x)):
                with torch.enable_grad(), math_attention(), RecordKinks(values) as rec:
                    self.model(x[i : i + 1])
                samples.append(rec.masks)
            return [torch.cat(calls) for calls in zip(*samples)]

        def masks_of(p: dict, xi: torch.Tensor) -> tuple:
            def f(q: dict) -> tuple:
                with RecordKinks(values) as rec:
                    out = functional_call(self.model, (q, self.buffers), (xi[None],))[0]
                return out, tuple(rec.masks)

            return torch.func.vjp(f, p, has_aux=True)[2]

        with math_attention():
            masks = vmap(masks_of, in_dims=(None, 0))(self.params, x)
        return [m.reshape(len(x), *m.shape[2:]) for m in masks]  # (b, 1, ...) -> the batch's (b, ...)

    def add(self, x: torch.Tensor, rows: slice, J_rows: torch.Tensor) -> None:
        """The samples ``x`` and their rows ``rows`` of J (``J_rows``, len(x)*K x p)."""
        if len(J_rows) != rows.stop - rows.start:
            raise ValueError(f"ProbeCheck.add: {len(J_rows)} rows of J given for rows {rows.start}..{rows.stop}")
        x_ref = x.to(self.ref_dtype)
        # plain layers in the model's dtype: the vjp's forward pass is computed as the rows' is,
        # so it records the decisions itself (one forward pass fewer)
        records = self.kernel == "layers" and self.ref_dtype == self.params_dtype
        masks = [] if records else self.kink_masks(x)

        def f(p: dict) -> torch.Tensor:
            # the fused attention kernel has no forward-mode derivative
            with math_attention(), PinKinks(masks) as pin:
                out = functional_call(self.model, (p, self.ref_buffers), (x_ref,))
            if pin.calls != len(masks):
                raise ValueError(f"probe check: {pin.calls} ReLU calls, the recorded pass had {len(masks)}")
            return out

        # the vjp by reverse mode directly: torch.func.vjp computes the same through
        # torch.autograd.grad but first imports torch._dynamo, a fixed cost in every chunk job
        leaves = {n: p.detach().requires_grad_() for n, p in self.ref_params.items()}
        with torch.enable_grad():
            if records:
                with RecordKinks() as rec:
                    out = functional_call(self.model, (leaves, self.ref_buffers), (x_ref,))
                masks = rec.masks
            else:
                out = f(leaves)
        u = self.u[rows]
        # the gradient of the scalar u . out is u^T J exactly (its backward multiplies by u);
        # autograd.grad given an output gradient imports sympy (about 1 s) to compare shapes
        u_out = u.reshape(out.shape).to(out.device, out.dtype)
        # a parameter the forward pass does not use (an unused head) has zero columns in J
        uj = torch.autograd.grad((out * u_out).sum(), list(leaves.values()), allow_unused=True, materialize_grads=True)
        uj = torch.cat([g.reshape(-1) for g in uj]).double().cpu()
        del leaves, out
        with warnings.catch_warnings():  # torch's own jvp decompositions, scripted on first use
            warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
            _, jv = jvp(f, (self.ref_params,), (self.tangents,))
        jv = jv.reshape(-1).double().cpu()
        Jv, uJ, norms2 = _products(J_rows, self.v, u)
        self.Jv[rows] = Jv
        self.rows_added[rows] = True
        k = len(J_rows) // len(x)
        diff = (Jv - jv).reshape(len(x), k)
        per_sample = _ratio(diff.norm(dim=1), norms2.reshape(len(x), k).sum(1).sqrt())
        self.err_jvp = _worst(self.err_jvp, float(per_sample.max()))
        self.err_vjp = _worst(self.err_vjp, float(_ratio((uJ - uj).norm(), (u * u * norms2).sum().sqrt())))

    def finite(self, rows: slice) -> bool:
        """Whether the rows ``rows`` of J v are finite: v has no zero entries, so a NaN or Inf
        in a row of J makes that row's product non-finite. For float32 J the converse holds
        too (finite float32 values cannot overflow a float64 sum); a float64 J with values
        near 1e308 could overflow, and then fails the probe check instead."""
        return bool(torch.isfinite(self.Jv[rows]).all())

    def errors(self) -> tuple[float, float]:
        """The worst sample's |J_s v - jvp_s| / |J_s|_F and the worst batch's
        |u_b^T J_b - vjp_b| / |diag(u_b) J_b|_F (both NaN while rows are missing)."""
        if not bool(self.rows_added.all()):
            return math.nan, math.nan
        return self.err_jvp, self.err_vjp


PRODUCT_BLOCK_BYTES = 4 << 20


def _products(J_rows: torch.Tensor, v: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """J_rows v, J_rows^T u and the rows' squared norms, in float64, through one reused
    float64 block of at most 4 MiB (whole rows, or pieces of one row when a row is larger):
    both products read the block from cache, and no row-sized temporary is allocated (a fresh
    88 MB float64 row per row of a ResNet-18 cost more page faults than arithmetic)."""
    n, p = J_rows.shape
    Jv, norms2 = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    uJ = torch.zeros(p, dtype=torch.float64)
    per_block = PRODUCT_BLOCK_BYTES // 8
    rows_per, cols_per = (max(1, per_block // p), p) if p <= per_block else (1, per_block)
    buf = torch.empty(rows_per * cols_per, dtype=torch.float64)
    for r in range(0, n, rows_per):
        nr = min(rows_per, n - r)
        for c in range(0, p, cols_per):
            nc = min(cols_per, p - c)
            blk = buf[: nr * nc].view(nr, nc)
            blk.copy_(J_rows[r : r + nr, c : c + nc])  # to float64 (and to the host)
            Jv[r : r + nr] += blk @ v[c : c + nc]
            uJ[c : c + nc].addmv_(blk.T, u[r : r + nr])
            norms2[r : r + nr] += torch.linalg.vector_norm(blk, dim=1).square()
    return Jv, uJ, norms2


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, 0 where both are 0 (all-zero rows, matched exactly), NaN stays NaN."""
    return torch.where((num == 0) & (den == 0), torch.zeros_like(num), num / den)


def _worst(a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def probe_errors(
    model: nn.Module, x: torch.Tensor, J: torch.Tensor, seed: int = 0, batch_size: int | None = None
) -> tuple[float, float]:
    """:class:`ProbeCheck` of a J held in memory, over batches of ``batch_size`` samples
    (by default as :func:`jacobian` picks them: the rows' forward passes, so their ReLU decisions)."""
    model.eval()
    if batch_size is None:
        layers = plain_layers(model)
        batch_size = VMAP_BATCH if layers is None else outputs_and_batch_size(model, layers, x)[1]
    k = J.shape[0] // len(x)
    check = ProbeCheck(model, J.shape[0], J.shape[1], seed)
    for batch in batch_slices(len(x), batch_size):
        rows = slice(batch.start * k, batch.stop * k)
        check.add(x[batch], rows, J[rows])
    return check.errors()
