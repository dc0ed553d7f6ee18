"""Jacobian stage: J = d f(W) / d W of all K outputs on all n samples, chunked, stored in HDF5.

Layout of J (nK x p): rows sample-major (row = i*K + k: sample i of the split, output k),
columns in the order of the parameter table stored beside it (name, offset, size, shape of
every trained tensor), so ``J[:, offset:offset + size]`` is one layer.

Memory of one chunk job (b samples per batch, s = itemsize, 4 for float32, p_max = the
largest layer's parameter count, A = layer-output values per sample; b is chosen by
:func:`batch_size_for` to keep all but the first term under 512 MiB). The job computes J
batch by batch and writes each batch's rows to its file before the next (:func:`compute_chunk`),
so nothing scales with the chunk size:
  b K p s                 one batch's rows of J (one buffer, reused)
  + b K p_max s (x2)      one layer's per-sample weight gradients (workspace; x2 while a
                          grouped-convolution result is copied out)
  + ~ (K + 4) b A s       the batch's activations, autograd's saved tensors and the K
                          backprops to every layer (the probe check's jvp/vjp of the batch
                          need about as much)
  + 4 MiB                 the probe check's float64 row blocks
Measured (peak RSS, ``python bench/jacobian_chunk.py``): 1.5 GiB for the width-1 ResNet20
at 3x32x32 (p = 268,579, A = 188,419, b = 85-86) with chunks of 256, 512 and 600 samples,
of which 0.5 GiB is the Python process with torch imported.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vmap
from torch.nn import functional as F

from .h5io import atomic_h5, open_checked, require_finite, write_provenance
from .logs import logger

ROW_ORDER = "sample-major: row = i*K + k (sample i of the split, output k)"


@dataclass(frozen=True)
class ParameterEntry:
    name: str
    offset: int
    size: int
    shape: tuple[int, ...]


def parameter_table(model: nn.Module) -> list[ParameterEntry]:
    """Column layout of J: every trained tensor in ``named_parameters`` order."""
    table, offset = [], 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            table.append(ParameterEntry(name, offset, p.numel(), tuple(p.shape)))
            offset += p.numel()
    return table


def _split_params(model: nn.Module) -> tuple[dict, dict]:
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    return params, buffers


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """Modules holding the trained parameters, if all are plain Linear / Conv2d layers."""
    layers = []
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        plain_conv = (
            isinstance(module, nn.Conv2d)
            and module.groups == 1
            and module.dilation == (1, 1)
            and module.padding_mode == "zeros"
            and isinstance(module.padding, tuple)
        )
        if not (plain_conv or isinstance(module, nn.Linear)):
            return None
        layers.append((name, module))
    return layers


def grouped_conv_is_faster(in_channels: int, output_pixels: int, device: torch.device) -> bool:
    """Whether oneDNN's grouped-convolution backward beats unfold + bmm for this layer on CPU.

    Measured by ``python bench/conv_weight_grads.py`` (1 and 2 threads, 2-core x86-64): with
    8 or more input channels the grouped call wins by 1.2-2.1x for feature maps of 8x8 and
    more; it loses on 2x2 maps (0.1-0.9x) and is a toss-up with 3-4 input channels. For 8x8
    maps with 64 channels the grid varies between runs (0.1-1.5x), and in a whole width-1
    ResNet20 Jacobian either choice there gives the same time within 5%, so the rule keeps
    the matmul. A fixed rule rather than a timing picks the method, so that J is bit-for-bit
    reproducible. On CUDA the batched matmul is used throughout.
    """
    if device.type != "cpu" or in_channels < 8:
        return False
    return output_pixels >= 256 or (output_pixels >= 64 and in_channels <= 32)


class Workspace:
    """One growing buffer carved into a layer's temporaries.

    Fresh multi-megabyte tensors for every layer cost page faults on every first touch (a
    third of the weight-gradient time at 8x8 images); views into one reused buffer do not.
    """

    def __init__(self) -> None:
        self._buffer: torch.Tensor | None = None

    def take(self, like: torch.Tensor, *shapes: tuple[int, ...]) -> list[torch.Tensor]:
        """Disjoint uninitialised tensors of the given shapes (valid until the next call)."""
        sizes = [math.prod(shape) for shape in shapes]
        buf = self._buffer
        if buf is None or buf.numel() < sum(sizes) or buf.dtype != like.dtype or buf.device != like.device:
            buf = self._buffer = torch.empty(sum(sizes), dtype=like.dtype, device=like.device)
        views, start = [], 0
        for shape, size in zip(shapes, sizes):
            views.append(buf[start : start + size].view(shape))
            start += size
        return views


def conv_grads(
    backprops: Sequence[torch.Tensor],
    a: torch.Tensor,
    conv: nn.Conv2d,
    method: str = "auto",
    workspace: Workspace | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample weight and bias gradients of a convolution for K backprops at once.

    ``backprops``: K tensors (n, C_out, H_out, W_out), the gradients of K scalar outputs
    w.r.t. the layer's output; ``a`` (n, C_in, H, W): the layer's input. Returns the weight
    gradients (n, K, C_out * C_in * kh * kw), in the weight's element order, and the bias
    gradients (n, K, C_out). ``method``: ``grouped`` (the convolution backward with the
    samples as groups: one oneDNN call, no unfold), ``unfold`` (the input unfolded by one
    strided copy, then one batched matmul), ``auto`` (:func:`grouped_conv_is_faster`). The
    weight gradients are a view into ``workspace`` when one is given.
    """
    k = len(backprops)
    n, c_out, ho, wo = backprops[0].shape
    c_in, (kh, kw), rows, cols = a.shape[1], conv.kernel_size, k * c_out, a.shape[1] * math.prod(conv.kernel_size)
    ws = workspace or Workspace()
    if method == "auto":
        method = "grouped" if grouped_conv_is_faster(c_in, ho * wo, a.device) else "unfold"
    if method == "grouped":
        (g,) = ws.take(a, (n, k, c_out, ho, wo))
        torch.stack(backprops, dim=1, out=g)
        weight = torch.empty(1, dtype=a.dtype, device=a.device).expand(n * rows, c_in, kh, kw)  # shape only
        _, grad_w, _ = torch.ops.aten.convolution_backward(
            g.view(1, n * rows, ho, wo),
            a.reshape(1, n * c_in, *a.shape[2:]),
            weight,
            None,
            conv.stride,
            conv.padding,
            conv.dilation,
            False,
            (0, 0),
            n,
            (False, True, False),
        )
        return grad_w.view(n, k, -1), g.sum((3, 4))
    if method != "unfold":
        raise ValueError(f"conv_grads: method {method!r}; allowed: auto, grouped, unfold")
    (sh, sw), (ph, pw) = conv.stride, conv.padding
    padded = F.pad(a, (pw, pw, ph, ph)) if ph or pw else a.contiguous()
    s_n, s_c, s_h, s_w = padded.stride()
    wp = padded.shape[3]
    if (sh, sw) == (1, 1):
        # output pixel (y, x) reads padded pixel (y + i, x + j): in the flattened padded image
        # the window of offset (i, j) is one contiguous run starting at i*wp + j, so the
        # unfold copies runs of ~ho*wp values instead of rows of wo; the wp - wo columns
        # past each row's end meet zeros in g
        span = (ho - 1) * wp + wo
        out, unfolded, g = ws.take(a, (n, rows, cols), (n, c_in, kh, kw, span), (n, k, c_out, ho, wp))
        unfolded.copy_(padded.as_strided((n, c_in, kh, kw, span), (s_n, s_c, wp, 1, 1)))
        g[..., wo:].zero_()
        for j, b in enumerate(backprops):
            g[:, j, :, :, :wo].copy_(b)
        g_rows = g.view(n, rows, ho * wp)[:, :, :span]
        torch.bmm(g_rows, unfolded.view(n, cols, span).transpose(1, 2), out=out)
    else:
        # every (kernel offset, output pixel) window as a view, copied once (im2col)
        out, unfolded, g = ws.take(a, (n, rows, cols), (n, c_in, kh, kw, ho, wo), (n, k, c_out, ho, wo))
        unfolded.copy_(padded.as_strided((n, c_in, kh, kw, ho, wo), (s_n, s_c, s_h, s_w, s_h * sh, s_w * sw)))
        torch.stack(backprops, dim=1, out=g)
        torch.bmm(g.view(n, rows, ho * wo), unfolded.view(n, cols, ho * wo).transpose(1, 2), out=out)
    return out.view(n, k, -1), g.sum((3, 4))


def jacobian_by_layers(
    model: nn.Module,
    x: torch.Tensor,
    layers: list[tuple[str, nn.Module]],
    out: torch.Tensor | None = None,
    workspace: Workspace | None = None,
) -> torch.Tensor:
    """J by K batched backward passes to every layer's output, then per-sample weight gradients.

    Samples are independent (no batch-norm), so the gradient of sum_i f_k(x_i) with respect
    to a layer's output holds each sample's own backprop G_i; the per-sample weight gradient
    of a convolution is G_i correlated with the input (:func:`conv_grads`), of a linear
    layer G_i a_i^T. The work is that of K batched backward passes to the layer outputs plus
    one weight-gradient call per layer for all K outputs, with no per-sample graph. Written
    into ``out`` (n, K, p) when given; returns the (n*K, p) view.
    """
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in layers:

        def hook(mod, args, output, name=name):
            inputs[name] = args[0].detach()
            outputs[name] = output

        hooks.append(module.register_forward_hook(hook))
    try:
        f = model(x)
    finally:
        for h in hooks:
            h.remove()
    n, k = f.shape
    names = [name for name, _ in layers]
    # backprops of all K outputs first: each layer's per-sample gradients for every output
    # then come from one call with K*C_out rows per sample
    backprops: list[list[torch.Tensor]] = [[] for _ in layers]
    for c in range(k):
        grads = torch.autograd.grad(f[:, c].sum(), [outputs[nm] for nm in names], retain_graph=c < k - 1)
        for store, g in zip(backprops, grads):
            store.append(g)
    table = parameter_table(model)
    offsets = {e.name: e.offset for e in table}
    p_total = table[-1].offset + table[-1].size
    rows = torch.empty(n, k, p_total, dtype=x.dtype, device=x.device) if out is None else out
    if rows.shape != (n, k, p_total):
        raise ValueError(f"out has shape {tuple(rows.shape)}, expected {(n, k, p_total)}")
    workspace = workspace or Workspace()

    def put(pn: str, block: torch.Tensor) -> None:  # block (n, K, ...) in the tensor's element order
        size = math.prod(block.shape[2:])
        rows[:, :, offsets[pn] : offsets[pn] + size].copy_(block.reshape(n, k, size))

    for (name, module), store in zip(layers, backprops):
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Conv2d):
            weight, bias = conv_grads(store, inputs[name], module, workspace=workspace)
        else:
            g = torch.stack(store, dim=1)  # (n, K, out_features)
            weight, bias = g[:, :, :, None] * inputs[name][:, None, None, :], g
        put(prefix + "weight", weight)
        if module.bias is not None and module.bias.requires_grad:
            put(prefix + "bias", bias)
    return rows.view(n * k, p_total)


def jacobian(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """J of the model's K outputs on the samples ``x`` w.r.t. all trained parameters: (n*K, p).

    The whole J in memory, computed by :func:`jacobian_blocks` straight into place.
    """
    model.eval()
    rows = torch.empty(jacobian_shape(model, x), dtype=x.dtype, device=x.device)
    for _ in jacobian_blocks(model, x, batch_size, out=rows):
        pass
    return rows


def jacobian_shape(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(n*K, p) of J on the samples ``x`` (K from one forward pass of x[:1])."""
    with torch.no_grad():
        k = model(x[:1]).shape[1]
    return len(x) * k, sum(e.size for e in parameter_table(model))


def jacobian_blocks(
    model: nn.Module, x: torch.Tensor, batch_size: int | None = None, out: torch.Tensor | None = None
) -> Iterator[tuple[slice, torch.Tensor]]:
    """J batch by batch: yields (the batch's samples, their rows of J (b*K, p)).

    Networks built of plain Conv2d / Linear layers (ResNet20) take :func:`jacobian_by_layers`;
    any other network ``vmap`` over samples of ``jacrev`` over the K outputs (torch.func).
    Batches of at most ``batch_size`` samples (by default :func:`batch_size_for`) bound the
    memory. The rows go into their place in ``out`` (n*K, p) when given; otherwise into one
    batch-sized buffer that the next batch overwrites, so that a caller writing each block
    to disk never holds, nor page-faults in, the whole J.
    """
    model.eval()
    layers = _layers(model)
    if layers is None:
        for batch in batch_slices(len(x), batch_size or VMAP_BATCH):
            block = jacobian_vmap(model, x[batch], batch.stop - batch.start)
            k = len(block) // (batch.stop - batch.start)
            if out is not None and out.shape != (len(x) * k, block.shape[1]):
                raise ValueError(f"out has shape {tuple(out.shape)}, expected {(len(x) * k, block.shape[1])}")
            yield batch, block if out is None else out[batch.start * k : batch.stop * k].copy_(block)
        return
    k, default_batch = outputs_and_batch_size(model, layers, x)
    p_total = sum(e.size for e in parameter_table(model))
    batches = batch_slices(len(x), batch_size or default_batch)
    if out is not None and out.shape != (len(x) * k, p_total):
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {(len(x) * k, p_total)}")
    # all of J (out), or one buffer of the largest batch's rows that every batch reuses
    rows = (
        out.view(len(x), k, p_total)
        if out is not None
        else torch.empty(max(b.stop - b.start for b in batches), k, p_total, dtype=x.dtype, device=x.device)
    )
    workspace = Workspace()
    for batch in batches:
        target = rows[batch] if out is not None else rows[: batch.stop - batch.start]
        yield batch, jacobian_by_layers(model, x[batch], layers, out=target, workspace=workspace)


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """The fewest batches of at most ``batch_size`` samples, of equal size within one.

    128 samples in batches of at most 87 run as 64 + 64, not 87 + 41: the small remainder
    batch made the batched passes less efficient (0.34 s against 0.38 s for the CIFAR-size
    Jacobian of 128 samples on 2 cores).
    """
    if n <= 0:
        return []
    count = -(-n // max(1, batch_size))
    bounds = [n * i // count for i in range(count + 1)]
    return [slice(a, b) for a, b in zip(bounds, bounds[1:])]


BATCH_MEMORY_BYTES = 512 << 20
MAX_BATCH = 512
VMAP_BATCH = 64  # samples per batch of the torch.func path (networks other than plain Conv2d/Linear)


def batch_size_for(num_outputs: int, activations: int, layers: list[tuple[str, nn.Module]], itemsize: int) -> int:
    """Samples per batch such that the memory beyond the batch's rows of J stays under BATCH_MEMORY_BYTES.

    Per sample: ~ (K + 4) activation values per layer output (activations, autograd's saved
    tensors, the K backprops) and twice one layer's per-sample weight gradients (see the
    module docstring). Larger batches make the batched backward passes more efficient (the
    width-0.25 8x8 ResNet20 goes from 0.59 to 0.69 of the compute bound between 128 and 512
    samples per batch, ``python bench/jacobian.py --samples 512``); beyond MAX_BATCH nothing
    is gained.
    """
    p_max = max((m.weight.numel() for _, m in layers), default=0)
    per_sample = ((num_outputs + 4) * activations + 2 * num_outputs * p_max) * itemsize
    return int(max(1, min(MAX_BATCH, BATCH_MEMORY_BYTES // max(1, per_sample))))


def outputs_and_batch_size(model: nn.Module, layers: list[tuple[str, nn.Module]], x: torch.Tensor) -> tuple[int, int]:
    """K and the default samples per batch for inputs like ``x`` (one forward pass of x[:1])."""
    k, activations = _per_sample_sizes(model, layers, x[:1])
    return k, batch_size_for(k, activations, layers, x.element_size())


def _per_sample_sizes(model: nn.Module, layers: list[tuple[str, nn.Module]], x1: torch.Tensor) -> tuple[int, int]:
    """K and the number of layer-output values for one sample."""
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda mod, args, out: sizes.append(out[0].numel())) for _, m in layers]
    try:
        with torch.no_grad():
            k = model(x1).shape[1]
    finally:
        for h in hooks:
            h.remove()
    return k, sum(sizes)


def jacobian_vmap(model: nn.Module, x: torch.Tensor, batch_size: int = VMAP_BATCH) -> torch.Tensor:
    """J by ``vmap`` over samples of ``jacrev`` over the K outputs (torch.func)."""
    model.eval()
    params, buffers = _split_params(model)
    names = list(params)

    def f(p: dict, xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (p, buffers), (xi[None],))[0]

    per_sample = vmap(jacrev(f), in_dims=(None, 0))
    blocks = []
    for batch in batch_slices(len(x), batch_size):
        xb = x[batch]
        jac = per_sample(params, xb)  # name -> (b, K, *shape)
        b, k = len(xb), jac[names[0]].shape[1]
        blocks.append(torch.cat([jac[n].reshape(b, k, -1) for n in names], dim=2).reshape(b * k, -1))
    return torch.cat(blocks)


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
        self.params, self.buffers = _split_params(model)
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
            return functional_call(self.model, (p, self.buffers), (x,))

        _, jv = jvp(f, (self.params,), (self.tangents,))
        # the vjp by reverse mode directly: torch.func.vjp computes the same through
        # torch.autograd.grad but first imports torch._dynamo, 1.1 s of every chunk job
        leaves = {n: p.detach().requires_grad_() for n, p in self.params.items()}
        out = f(leaves)
        uj = torch.autograd.grad(
            out, list(leaves.values()), self.u[rows].reshape(out.shape).to(out.dtype).to(out.device)
        )
        self.rows_added[rows] = True
        self.jv[rows] = jv.reshape(-1).double().cpu()
        self.uj += torch.cat([g.reshape(-1) for g in uj]).double().cpu()
        # float64 copies of a few rows at a time, so that both products read them from cache
        # (4x faster than 64 MiB blocks at CIFAR size)
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
        layers = _layers(model)
        batch_size = VMAP_BATCH if layers is None else outputs_and_batch_size(model, layers, x)[1]
    k = J.shape[0] // len(x)
    check = ProbeCheck(model, J.shape[0], J.shape[1], seed)
    for batch in batch_slices(len(x), batch_size):
        rows = slice(batch.start * k, batch.stop * k)
        check.add(x[batch], rows, J[rows])
    return check.errors()


def _write_table(f: h5py.File, table: Sequence[ParameterEntry]) -> None:
    g = f.create_group("parameters")
    g.create_dataset("name", data=[e.name for e in table], dtype=h5py.string_dtype())
    g.create_dataset("offset", data=np.array([e.offset for e in table], dtype=np.int64))
    g.create_dataset("size", data=np.array([e.size for e in table], dtype=np.int64))
    g.create_dataset("shape", data=["x".join(map(str, e.shape)) for e in table], dtype=h5py.string_dtype())
    g.attrs["meaning"] = "column block of J for each trained tensor: J[:, offset:offset+size], reshaped to shape"


def read_table(f: h5py.File) -> list[ParameterEntry]:
    g = f["parameters"]
    return [
        ParameterEntry(
            n.decode() if isinstance(n, bytes) else n,
            int(o),
            int(s),
            tuple(int(v) for v in str(sh.decode() if isinstance(sh, bytes) else sh).split("x") if v),
        )
        for n, o, s, sh in zip(g["name"][...], g["offset"][...], g["size"][...], g["shape"][...])
    ]


@dataclass
class ChunkSeconds:
    """Where a chunk job's time went: J's rows, the probe check, writing the file."""

    jacobian: float = 0.0
    probe_check: float = 0.0
    write: float = 0.0


def compute_chunk(
    checkpoint: str | Path,
    subset_path: str | Path,
    split: str,
    chunk: int,
    chunk_size: int,
    out_path: str | Path,
    dtype: str = "float32",
    device: str = "auto",
    tolerance: float = 1e-4,
) -> ChunkSeconds:
    """One job of the scatter: J for samples [chunk*chunk_size, (chunk+1)*chunk_size) of ``split``.

    Each batch's rows are fed to the probe check, checked for NaN/Inf and written to the file
    as they are computed, so the job holds one batch of J, not the chunk; the probe verdict
    comes after the last batch, before the file gets its final name. Returns where its time
    went.
    """
    from .data import read_split
    from .models import load_checkpoint
    from .train import select_device

    dev = select_device(device)
    model, payload = load_checkpoint(checkpoint, dev)
    data = read_split(subset_path, split)
    n = len(data.y)
    start, stop = chunk * chunk_size, min(n, (chunk + 1) * chunk_size)
    if start >= n:
        raise ValueError(f"chunk {chunk} starts at sample {start} but {split} has only {n} samples")
    torch_dtype = torch.float64 if dtype == "float64" else torch.float32
    model = model.to(torch_dtype)
    x = torch.from_numpy(data.x[start:stop]).to(dev, torch_dtype)
    shape = jacobian_shape(model, x)
    k = shape[0] // len(x)
    check = ProbeCheck(model, *shape, seed=chunk)
    seconds = ChunkSeconds()
    # each batch's rows go to the file as they are computed: the job never holds the whole J
    with atomic_h5(out_path) as f:
        dset = f.create_dataset("J", shape=shape, dtype=np.float64 if dtype == "float64" else np.float32)
        t = time.perf_counter()
        for batch, block in jacobian_blocks(model, x):
            rows = slice(batch.start * k, batch.stop * k)
            block_np = block.cpu().numpy()
            t_j = time.perf_counter()
            check.add(x[batch], rows, torch.from_numpy(block_np))  # the host copy: no second transfer
            if not check.finite(rows):  # name the first NaN/Inf (a full scan only then)
                require_finite(block_np, f"{out_path}: J rows {rows.start}..{rows.stop}", row_offset=rows.start)
            t_p = time.perf_counter()
            dset[rows] = block_np
            seconds.jacobian += t_j - t
            seconds.probe_check += t_p - t_j
            t = time.perf_counter()
            seconds.write += t - t_p
        err_jvp, err_vjp = check.errors()
        if not (err_jvp <= tolerance and err_vjp <= tolerance):
            raise ArithmeticError(
                f"{out_path}: Jacobian probe check failed: |Jv - jvp|/|jvp| = {err_jvp:.2e}, "
                f"|u^T J - vjp|/|vjp| = {err_vjp:.2e} "
                f"(tolerance {tolerance:.0e})"
            )
        write_provenance(
            f,
            "jacobian_chunk",
            None,
            checkpoint=str(checkpoint),
            checkpoint_epoch=int(payload["epoch"]),
            split=split,
            chunk=chunk,
            sample_start=start,
            sample_stop=stop,
            row_start=start * k,
            row_stop=stop * k,
            num_classes=k,
            row_order=ROW_ORDER,
            dtype=dtype,
            device=str(dev),
            probe_error_jvp=err_jvp,
            probe_error_vjp=err_vjp,
        )
        _write_table(f, parameter_table(model))
    seconds.write += time.perf_counter() - t
    logger.info(
        "J chunk %d of %s (samples %d..%d, %d x %d) probe errors jvp %.1e vjp %.1e -> %s; seconds: J %.1f, "
        "probe check %.1f, writing %.1f",
        chunk,
        split,
        start,
        stop,
        *shape,
        err_jvp,
        err_vjp,
        out_path,
        seconds.jacobian,
        seconds.probe_check,
        seconds.write,
    )
    return seconds


GATHER_READ_BYTES = 256 << 20  # the gather reads chunk files in row blocks of this size: its memory is fixed


def gather(chunk_paths: Sequence[str | Path], out_path: str | Path, attrs: dict | None = None) -> None:
    """Consolidate the chunk files into one ``J``; every chunk is checked, none is filled in.

    A missing, unreadable or foreign chunk (other checkpoint, split or parameter layout),
    a gap in the rows, or NaN/Inf stops with a message naming the chunk file.
    """
    metas = []
    for path in chunk_paths:
        with open_checked(path, ["J", "parameters/name"], artifact="jacobian_chunk") as f:
            metas.append((Path(path), dict(f.attrs), f["J"].shape, read_table(f)))
    first = metas[0]
    for path, a, shape, table in metas:
        for key in ("checkpoint", "checkpoint_epoch", "split", "dtype", "num_classes"):
            if a[key] != first[1][key]:
                raise ValueError(
                    f"{path}: {key} = {a[key]!r} but {first[0]} has {first[1][key]!r}; "
                    "the chunk is from another Jacobian"
                )
        if table != first[3]:
            raise ValueError(f"{path}: parameter table differs from {first[0]}; the chunk is from another model")
        if shape[0] != a["row_stop"] - a["row_start"]:
            raise ValueError(f"{path}: J has {shape[0]} rows, attrs say rows {a['row_start']}..{a['row_stop']}")
    metas.sort(key=lambda m: int(m[1]["row_start"]))
    expected = 0
    for path, a, _, _ in metas:
        if int(a["row_start"]) != expected:
            raise ValueError(
                f"{path}: starts at row {a['row_start']}, expected {expected}: a chunk is missing before it"
            )
        expected = int(a["row_stop"])
    rows, p = expected, first[2][1]
    k = int(first[1]["num_classes"])
    np_dtype = np.float64 if first[1]["dtype"] == "float64" else np.float32
    with atomic_h5(out_path) as f:
        write_provenance(
            f,
            "jacobian",
            None,
            checkpoint=first[1]["checkpoint"],
            checkpoint_epoch=int(first[1]["checkpoint_epoch"]),
            split=first[1]["split"],
            row_order=ROW_ORDER,
            num_samples=rows // k,
            num_classes=k,
            num_parameters=p,
            dtype=first[1]["dtype"],
            chunks=[str(m[0].name) for m in metas],
            probe_error_jvp_max=max(float(m[1]["probe_error_jvp"]) for m in metas),
            probe_error_vjp_max=max(float(m[1]["probe_error_vjp"]) for m in metas),
            **(attrs or {}),
        )
        col_chunk = min(p, max(1, (1 << 20) // max(1, min(rows, 1024))))
        dset = f.create_dataset("J", shape=(rows, p), dtype=np_dtype, chunks=(min(rows, 1024), col_chunk))
        step = max(1, GATHER_READ_BYTES // (p * np.dtype(np_dtype).itemsize))  # rows per read
        for path, a, _, _ in metas:
            offset = int(a["row_start"])
            with h5py.File(path, "r") as src:
                for r in range(0, int(a["row_stop"]) - offset, step):
                    block = src["J"][r : r + step]
                    require_finite(block, f"{path}: J rows {r}..{r + len(block)}", row_offset=r)
                    dset[offset + r : offset + r + len(block)] = block
        _write_table(f, first[3])
    logger.info("gathered %d chunks into J (%d x %d) -> %s", len(metas), rows, p, out_path)


def layer_norms(path: str | Path) -> list[tuple[str, float]]:
    """Frobenius norm of each parameter tensor's column block of J (read block by block)."""
    with open_checked(path, ["J", "parameters/name"]) as f:
        out = []
        for e in read_table(f):
            block = f["J"][:, e.offset : e.offset + e.size].astype(np.float64)
            out.append((e.name, float(math.sqrt((block**2).sum()))))
    return out
