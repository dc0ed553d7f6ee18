"""Jacobian stage: J = d f(W) / d W of all K outputs on all n samples, chunked, stored in HDF5.

Layout of J (nK x p): rows sample-major (row = i*K + k: sample i of the split, output k),
columns in the order of the parameter table stored beside it (name, offset, size, shape of
every trained tensor), so ``J[:, offset:offset + size]`` is one layer.

Memory of one chunk job (c = chunk_size, b samples per batch, s = itemsize, 4 for float32,
p_max = the largest layer's parameter count, A = layer-output values per sample; b is chosen
by :func:`batch_size_for` to keep all but the first term under 512 MiB):
  c K p s                 the chunk's block of J
  + b K p_max s (x2)      one layer's per-sample weight gradients (workspace; x2 while a
                          grouped-convolution result is copied out)
  + ~ (K + 4) b A s       the batch's activations, autograd's saved tensors and the K
                          backprops to every layer
  + 64 MiB                the probe check's float64 row blocks
Everything but the first term is fixed by the batch size, not the chunk size. Measured (peak
RSS) for the width-1 ResNet20 at 3x32x32 (p = 268,579, A = 188,419, b = 87): 0.75 GiB beyond
J for chunks of 256 and of 512 samples, the probe check's jvp/vjp passes being the peak.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.func import functional_call, jacrev, jvp, vjp, vmap

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
        plain_conv = isinstance(module, nn.Conv2d) and module.groups == 1 and module.dilation == (1, 1) and module.padding_mode == "zeros" and isinstance(module.padding, tuple)
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
            g.view(1, n * rows, ho, wo), a.reshape(1, n * c_in, *a.shape[2:]), weight, None,
            conv.stride, conv.padding, conv.dilation, False, (0, 0), n, (False, True, False),
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

    Networks built of plain Conv2d / Linear layers (ResNet20) take :func:`jacobian_by_layers`;
    any other network ``vmap`` over samples of ``jacrev`` over the K outputs (torch.func).
    Both run in batches of ``batch_size`` samples to bound the memory beyond J itself; by
    default :func:`batch_size_for` picks it.
    """
    model.eval()
    layers = _layers(model)
    if layers is None:
        return jacobian_vmap(model, x, batch_size or 64)
    k, default_batch = outputs_and_batch_size(model, layers, x)
    batch_size = batch_size or default_batch
    p_total = sum(e.size for e in parameter_table(model))
    rows = torch.empty(len(x), k, p_total, dtype=x.dtype, device=x.device)
    workspace = Workspace()
    for i in range(0, len(x), batch_size):
        jacobian_by_layers(model, x[i : i + batch_size], layers, out=rows[i : i + batch_size], workspace=workspace)
    return rows.view(len(x) * k, p_total)


BATCH_MEMORY_BYTES = 512 << 20
MAX_BATCH = 512


def batch_size_for(num_outputs: int, activations: int, layers: list[tuple[str, nn.Module]], itemsize: int) -> int:
    """Samples per batch such that the memory beyond J stays under BATCH_MEMORY_BYTES.

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


def jacobian_vmap(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """J by ``vmap`` over samples of ``jacrev`` over the K outputs (torch.func)."""
    model.eval()
    params, buffers = _split_params(model)
    names = list(params)

    def f(p: dict, xi: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (p, buffers), (xi[None],))[0]

    per_sample = vmap(jacrev(f), in_dims=(None, 0))
    blocks = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        jac = per_sample(params, xb)  # name -> (b, K, *shape)
        b, k = len(xb), jac[names[0]].shape[1]
        blocks.append(torch.cat([jac[n].reshape(b, k, -1) for n in names], dim=2).reshape(b * k, -1))
    return torch.cat(blocks)


def probe_errors(
    model: nn.Module, x: torch.Tensor, J: torch.Tensor, seed: int = 0, batch_size: int | None = None
) -> tuple[float, float]:
    """Relative errors of J v against ``torch.func.jvp`` and of u^T J against ``vjp``.

    One random probe each; the products by the stored J use float64 accumulation. The
    jvp/vjp run over batches of ``batch_size`` samples and the products by J over blocks of
    rows (at most 64 MiB in float64), so the check needs no more memory than computing J
    (``batch_size`` by default as :func:`jacobian` picks it).
    """
    model.eval()
    if batch_size is None:
        layers = _layers(model)
        batch_size = 64 if layers is None else outputs_and_batch_size(model, layers, x)[1]
    params, buffers = _split_params(model)
    gen = torch.Generator().manual_seed(seed)
    p_total = J.shape[1]
    v = torch.randn(p_total, generator=gen, dtype=torch.float64)
    u = torch.randn(J.shape[0], generator=gen, dtype=torch.float64)
    tangents, off = {}, 0
    for n, p in params.items():
        tangents[n] = v[off : off + p.numel()].reshape(p.shape).to(p.dtype).to(p.device)
        off += p.numel()
    k = J.shape[0] // len(x)
    jv_parts, uj = [], torch.zeros(p_total, dtype=torch.float64)
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]

        def fx(p: dict, xb: torch.Tensor = xb) -> torch.Tensor:
            return functional_call(model, (p, buffers), (xb,))

        _, jv_b = jvp(fx, (params,), (tangents,))
        out, pullback = vjp(fx, params)
        (uj_b,) = pullback(u[i * k : (i + len(xb)) * k].reshape(out.shape).to(out.dtype).to(out.device))
        jv_parts.append(jv_b.reshape(-1).double().cpu())
        uj += torch.cat([uj_b[n].reshape(-1) for n in params]).double().cpu()
    jv = torch.cat(jv_parts)
    Jv, uJ = torch.empty_like(jv), torch.zeros(p_total, dtype=torch.float64)
    block = max(1, (64 << 20) // (8 * p_total))
    for r in range(0, J.shape[0], block):
        Jd = J[r : r + block].double().cpu()
        Jv[r : r + block] = Jd @ v
        uJ += u[r : r + block] @ Jd
    err_jvp = float(torch.linalg.norm(Jv - jv) / torch.linalg.norm(jv))
    err_vjp = float(torch.linalg.norm(uJ - uj) / torch.linalg.norm(uj))
    return err_jvp, err_vjp


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
        ParameterEntry(n.decode() if isinstance(n, bytes) else n, int(o), int(s), tuple(int(v) for v in str(sh.decode() if isinstance(sh, bytes) else sh).split("x") if v))
        for n, o, s, sh in zip(g["name"][...], g["offset"][...], g["size"][...], g["shape"][...])
    ]


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
) -> None:
    """One job of the scatter: J for samples [chunk*chunk_size, (chunk+1)*chunk_size) of ``split``."""
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
    J = jacobian(model, x)
    err_jvp, err_vjp = probe_errors(model, x, J, seed=chunk)
    if max(err_jvp, err_vjp) > tolerance:
        raise ArithmeticError(
            f"{out_path}: Jacobian probe check failed: |Jv - jvp|/|jvp| = {err_jvp:.2e}, |u^T J - vjp|/|vjp| = {err_vjp:.2e} "
            f"(tolerance {tolerance:.0e})"
        )
    J_np = J.cpu().numpy()
    require_finite(J_np, f"{out_path}: J")
    k = J_np.shape[0] // (stop - start)
    with atomic_h5(out_path) as f:
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
        f.create_dataset("J", data=J_np)
        _write_table(f, parameter_table(model))
    logger.info("J chunk %d of %s (samples %d..%d, %d x %d) probe errors jvp %.1e vjp %.1e -> %s",
                chunk, split, start, stop, *J_np.shape, err_jvp, err_vjp, out_path)


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
                raise ValueError(f"{path}: {key} = {a[key]!r} but {first[0]} has {first[1][key]!r}; the chunk is from another Jacobian")
        if table != first[3]:
            raise ValueError(f"{path}: parameter table differs from {first[0]}; the chunk is from another model")
        if shape[0] != a["row_stop"] - a["row_start"]:
            raise ValueError(f"{path}: J has {shape[0]} rows, attrs say rows {a['row_start']}..{a['row_stop']}")
    metas.sort(key=lambda m: int(m[1]["row_start"]))
    expected = 0
    for path, a, _, _ in metas:
        if int(a["row_start"]) != expected:
            raise ValueError(f"{path}: starts at row {a['row_start']}, expected {expected}: a chunk is missing before it")
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
        for path, a, _, _ in metas:
            with h5py.File(path, "r") as src:
                block = src["J"][...]
            require_finite(block, f"{path}: J")
            dset[int(a["row_start"]) : int(a["row_stop"])] = block
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
