"""Jacobian stage, the computation: J = d f(W) / d W of all K outputs on n samples.

Rows sample-major (row = i*K + k: sample i, output k), columns in the order of
:func:`parameter_table` (every trained tensor in ``named_parameters`` order), so
``J[:, offset:offset + size]`` is one layer. Plain Conv2d/Linear networks take the per-layer
path (:func:`jacobian_by_layers`: one backward per output, per-sample weight gradients from
the saved activations); any other network the ``torch.func`` path (:func:`jacobian_vmap`), or
from PER_SAMPLE_PARAMETERS on one sample at a time through autograd (:func:`jacobian_per_sample`).
:mod:`.probe` checks the result, :mod:`.store` writes it to chunk files and
gathers them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap
from torch.nn import functional as F

from .store import ParameterEntry


def parameter_table(model: nn.Module) -> list[ParameterEntry]:
    """Column layout of J: every trained tensor in ``named_parameters`` order."""
    table, offset = [], 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            table.append(ParameterEntry(name, offset, p.numel(), tuple(p.shape)))
            offset += p.numel()
    return table


def split_params(model: nn.Module) -> tuple[dict, dict]:
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    return params, buffers


def plain_layers(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
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

    The rule and the measurement behind it: docs/benchmarks.md#settled-choices.
    A fixed rule rather than a timing picks the method, so that J is bit-for-bit
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
    # a layer the forward pass does not call (an unused head) has no output: its columns are zero
    unused = [(name, module) for name, module in layers if name not in outputs]
    layers = [(name, module) for name, module in layers if name in outputs]
    names = [name for name, _ in layers]
    backprops = _backprops(f, [outputs[nm] for nm in names])
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
    for name, module in unused:
        _zero_columns(rows, module, name, offsets)
    return rows.view(n * k, p_total)


def _zero_columns(rows: torch.Tensor, module: nn.Module, name: str, offsets: dict[str, int]) -> None:
    """The columns of a layer the forward pass did not call: J is zero there."""
    for pn, par in module.named_parameters(prefix=name, recurse=False):
        if par.requires_grad:
            rows[:, :, offsets[pn] : offsets[pn] + par.numel()].zero_()


def _backprops(f: torch.Tensor, layer_outputs: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Per layer, the K gradients of f[:, c].sum() w.r.t. its output: all K outputs first, so that
    each layer's per-sample gradients for every output come from one call with K*C_out rows per
    sample. A layer called but not on the path to f gets zeros."""
    k = f.shape[1]
    backprops: list[list[torch.Tensor]] = [[] for _ in layer_outputs]
    for c in range(k):
        grads = torch.autograd.grad(f[:, c].sum(), layer_outputs, retain_graph=c < k - 1, allow_unused=True)
        for store, g, t in zip(backprops, grads, layer_outputs):
            store.append(g if g is not None else torch.zeros_like(t))
    return backprops


def jacobian(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """J of the model's K outputs on the samples ``x`` w.r.t. all trained parameters: (n*K, p).

    The whole J in memory, computed by :func:`jacobian_blocks` straight into place.
    """
    model.eval()
    rows = torch.empty(jacobian_shape(model, x), dtype=x.dtype, device=x.device)
    for _ in jacobian_blocks(model, x, batch_size, out=rows):
        pass
    return rows


@torch.no_grad()
def outputs(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """The network's outputs f(x) (n, K) in eval mode, the samples in batches (no augmentation)."""
    model.eval()
    with math_attention():
        return torch.cat([model(x[b]) for b in batch_slices(len(x), batch_size)])


def jacobian_shape(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(n*K, p) of J on the samples ``x`` (K from one forward pass of x[:1], in eval mode: in train
    mode that pass would move batch-norm's running statistics, and so J)."""
    model.eval()
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
    kernel = rows_kernel(model)
    if kernel == "per_sample":
        yield from _blocks_per_sample(model, x, batch_size, out)
        return
    if kernel == "vmap":
        for batch in batch_slices(len(x), batch_size or VMAP_BATCH):
            block = jacobian_vmap(model, x[batch], batch.stop - batch.start)
            k = len(block) // (batch.stop - batch.start)
            if out is not None and out.shape != (len(x) * k, block.shape[1]):
                raise ValueError(f"out has shape {tuple(out.shape)}, expected {(len(x) * k, block.shape[1])}")
            yield batch, block if out is None else out[batch.start * k : batch.stop * k].copy_(block)
        return
    layers = plain_layers(model)
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
# From this many parameters on, a network other than plain Conv2d/Linear takes one sample at a
# time through autograd (:func:`jacobian_per_sample`): vmap's batched per-sample gradients then
# cost more in fresh memory than they save (torchvision ResNet-18, p = 11.2M, 3 outputs:
# 11.5 samples/s against vmap's 4.4 to 6.8 on 2 cores, docs/own.md).
PER_SAMPLE_PARAMETERS = 1_000_000


RowsKernel = Literal["layers", "per_sample", "vmap"]


def rows_kernel(model: nn.Module) -> RowsKernel:
    """How :func:`jacobian_blocks` forms this network's rows: "layers" (plain Conv2d / Linear
    layers, :func:`jacobian_by_layers`), "per_sample" (PER_SAMPLE_PARAMETERS or more otherwise:
    the model's own pass one sample at a time, :func:`jacobian_per_sample`) or "vmap" (the rest,
    :func:`jacobian_vmap`). The probe check records its ReLU decisions in the same kernel's pass."""
    if plain_layers(model) is not None:
        return "layers"
    return "per_sample" if sum(e.size for e in parameter_table(model)) >= PER_SAMPLE_PARAMETERS else "vmap"


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


def math_attention() -> contextlib.AbstractContextManager:
    """Attention (``scaled_dot_product_attention``, as in timm's ViTs) by its plain-maths kernel:
    the fused CPU kernel has no vmap batching rule (a slow fallback) and no forward-mode
    derivative (the probe's jvp fails), the maths one has both."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def jacobian_per_sample(model: nn.Module, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """J of the samples x (b*K, p) by one forward and K backward passes per sample (autograd),
    each gradient joined straight into its row of ``out`` (allocated when not given). Exact
    for any network in eval mode: no sample sees another (batch-norm uses its running stats)."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    p_total = sum(t.numel() for t in params)
    rows = None
    for i in range(len(x)):
        with torch.enable_grad(), math_attention():
            y = model(x[i : i + 1])[0]
            if rows is None:
                k = y.numel()
                rows = out if out is not None else torch.empty(len(x) * k, p_total, dtype=x.dtype, device=x.device)
                if rows.shape != (len(x) * k, p_total):
                    raise ValueError(f"out has shape {tuple(rows.shape)}, expected {(len(x) * k, p_total)}")
            for j in range(k):
                grads = torch.autograd.grad(y.reshape(-1)[j], params, retain_graph=j < k - 1, allow_unused=True)
                torch.cat(
                    [(g if g is not None else torch.zeros_like(t)).reshape(-1) for g, t in zip(grads, params)],
                    out=rows[i * k + j],
                )
    return rows if rows is not None else torch.empty(0, p_total, dtype=x.dtype, device=x.device)


def _blocks_per_sample(
    model: nn.Module, x: torch.Tensor, batch_size: int | None, out: torch.Tensor | None
) -> Iterator[tuple[slice, torch.Tensor]]:
    """:func:`jacobian_blocks` for large networks other than plain Conv2d/Linear: batches of
    ``batch_size`` samples (default: BATCH_MEMORY_BYTES of rows) into one reused buffer."""
    k, p_total = jacobian_shape(model, x[:1])
    if out is not None and out.shape != (len(x) * k, p_total):
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {(len(x) * k, p_total)}")
    default = max(1, BATCH_MEMORY_BYTES // max(1, k * p_total * x.element_size()))
    batches = batch_slices(len(x), batch_size or default)
    buffer = (
        None
        if out is not None
        else torch.empty(max(b.stop - b.start for b in batches) * k, p_total, dtype=x.dtype, device=x.device)
    )
    for batch in batches:
        b = batch.stop - batch.start
        target = out[batch.start * k : batch.stop * k] if out is not None else buffer[: b * k]
        yield batch, jacobian_per_sample(model, x[batch], out=target)


def jacobian_vmap(model: nn.Module, x: torch.Tensor, batch_size: int = VMAP_BATCH) -> torch.Tensor:
    """J by ``vmap`` over samples of ``jacrev`` over the K outputs (torch.func)."""
    model.eval()
    params, buffers = split_params(model)
    names = list(params)

    def f(p: dict, xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (p, buffers), (xi[None],))[0]

    per_sample = vmap(jacrev(f), in_dims=(None, 0))
    blocks = []
    for batch in batch_slices(len(x), batch_size):
        xb = x[batch]
        with math_attention():
            jac = per_sample(params, xb)  # name -> (b, K, *shape)
        b, k = len(xb), jac[names[0]].shape[1]
        blocks.append(torch.cat([jac[n].reshape(b, k, -1) for n in names], dim=2).reshape(b * k, -1))
    return torch.cat(blocks)
