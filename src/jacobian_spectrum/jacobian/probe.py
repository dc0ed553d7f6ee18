"""Jacobian stage, the check: every computed J is compared with torch.func's jvp and vjp.

One random probe each way (v over the columns, u over the rows) catches a wrong row, a
wrong column block or a wrong layer in J, at the cost of one forward-mode and one
reverse-mode pass per batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.func import functional_call, jvp

from .compute import VMAP_BATCH, batch_slices, math_attention, outputs_and_batch_size, plain_layers, split_params


class ProbeCheck:
    """Random-probe check of J, fed batch by batch: J v against ``torch.func.jvp`` and
    u^T J against the vjp (reverse mode), one probe each (v over the columns, u over the rows).

    :meth:`add` takes a batch's samples and its rows of J; the jvp/vjp run on that batch
    only and the products by J use float64 row blocks of at most 4 MiB, so the check
    needs no more memory than computing the batch's rows.
    """

    def __init__(self, model: nn.Module, num_rows: int, num_parameters: int, seed: int = 0) -> None:
        model.eval()
        self.model = model
        self.params, self.buffers = split_params(model)
        gen = torch.Generator().manual_seed(seed)
        self.v = torch.randn(num_parameters, generator=gen, dtype=torch.float64)
        self.u = torch.randn(num_rows, generator=gen, dtype=torch.float64)
        self.tangents, off = {}, 0
        for n, p in self.params.items():
            self.tangents[n] = self.v[off : off + p.numel()].reshape(p.shape).to(p.dtype).to(p.device)
            off += p.numel()
        self.jv, self.Jv = torch.zeros(num_rows, dtype=torch.float64), torch.zeros(num_rows, dtype=torch.float64)
        self.uj, self.uJ = (
            torch.zeros(num_parameters, dtype=torch.float64),
            torch.zeros(num_parameters, dtype=torch.float64),
        )
        self.rows_added = torch.zeros(num_rows, dtype=torch.bool)

    def add(self, x: torch.Tensor, rows: slice, J_rows: torch.Tensor) -> None:
        """The samples ``x`` and their rows ``rows`` of J (``J_rows``, len(x)*K x p)."""
        if len(J_rows) != rows.stop - rows.start:
            raise ValueError(f"ProbeCheck.add: {len(J_rows)} rows of J given for rows {rows.start}..{rows.stop}")

        def f(p: dict) -> torch.Tensor:
            with math_attention():  # the fused attention kernel has no forward-mode derivative
                return functional_call(self.model, (p, self.buffers), (x,))

        _, jv = jvp(f, (self.params,), (self.tangents,))
        # the vjp by reverse mode directly: torch.func.vjp computes the same through
        # torch.autograd.grad but first imports torch._dynamo, a fixed cost in every chunk job
        leaves = {n: p.detach().requires_grad_() for n, p in self.params.items()}
        out = f(leaves)
        uj = torch.autograd.grad(
            out, list(leaves.values()), self.u[rows].reshape(out.shape).to(out.dtype).to(out.device)
        )
        self.rows_added[rows] = True
        self.jv[rows] = jv.reshape(-1).double().cpu()
        self.uj += torch.cat([g.reshape(-1) for g in uj]).double().cpu()
        # float64 copies of a few rows at a time, so that both products read them from cache
        block = max(1, (4 << 20) // (8 * J_rows.shape[1]))
        for r in range(0, J_rows.shape[0], block):
            Jd = J_rows[r : r + block].double().cpu()
            self.Jv[rows.start + r : rows.start + r + len(Jd)] = Jd @ self.v
            self.uJ.addmv_(Jd.T, self.u[rows.start + r : rows.start + r + len(Jd)])

    def finite(self, rows: slice) -> bool:
        """Whether the rows ``rows`` of J v are finite: v has no zero entries, so a NaN or Inf
        in a row of J makes that row's product non-finite. For float32 J the converse holds
        too (finite float32 values cannot overflow a float64 sum); a float64 J with values
        near 1e308 could overflow, and then fails the probe check instead."""
        return bool(torch.isfinite(self.Jv[rows]).all())

    def errors(self) -> tuple[float, float]:
        """|Jv - jvp| / |jvp| and |u^T J - vjp| / |vjp| (both NaN while rows are missing)."""
        if not bool(self.rows_added.all()):
            return math.nan, math.nan
        err_jvp = float(torch.linalg.norm(self.Jv - self.jv) / torch.linalg.norm(self.jv))
        err_vjp = float(torch.linalg.norm(self.uJ - self.uj) / torch.linalg.norm(self.uj))
        return err_jvp, err_vjp


def probe_errors(
    model: nn.Module, x: torch.Tensor, J: torch.Tensor, seed: int = 0, batch_size: int | None = None
) -> tuple[float, float]:
    """:class:`ProbeCheck` of a J held in memory, over batches of ``batch_size`` samples
    (by default as :func:`jacobian` picks them)."""
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
