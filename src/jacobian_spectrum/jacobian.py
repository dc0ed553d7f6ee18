"""Jacobian stage: J = d f(W) / d W of all K outputs on all n samples, chunked, stored in HDF5.

Layout of J (nK x p): rows sample-major (row = i*K + k: sample i of the split, output k),
columns in the order of the parameter table stored beside it (name, offset, size, shape of
every trained tensor), so ``J[:, offset:offset + size]`` is one layer.

Memory of one chunk job: the chunk's block of J, chunk_size * K * p * itemsize bytes, plus
the per-sample gradients of one batch of 128 samples (128 * K * p * 4 bytes) and the network's
activations for that batch.
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


def _conv_weight_grads(g: torch.Tensor, a: torch.Tensor, conv: nn.Conv2d, out_hw: tuple[int, int]) -> torch.Tensor:
    """Per-sample weight gradients of a convolution: (n, R, L) backprops, (n, C_in, H, W) inputs.

    One batched matmul per kernel offset against a strided window of the padded input (the
    arithmetic of an im2col unfold without its slow copy), each written contiguously into
    its slot of a (kh kw, n, R, C_in) buffer. Returns the view (n, R, C_in, kh kw).
    """
    n, rows, _ = g.shape
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    ph, pw = conv.padding
    ho, wo = out_hw
    c_in = a.shape[1]
    padded = F.pad(a, (pw, pw, ph, ph))
    buf = torch.empty(kh * kw, n, rows, c_in, dtype=g.dtype, device=g.device)
    for i in range(kh):
        for j in range(kw):
            window = padded[:, :, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
            torch.bmm(g, window.reshape(n, c_in, ho * wo).transpose(1, 2), out=buf[i * kw + j])
    return buf.permute(1, 2, 3, 0)


def jacobian_by_layers(model: nn.Module, x: torch.Tensor, layers: list[tuple[str, nn.Module]]) -> torch.Tensor:
    """J by K batched backward passes to every layer's output, then per-sample weight gradients.

    Samples are independent (no batch-norm), so the gradient of sum_i f_k(x_i) with respect
    to a layer's output holds each sample's own backprop G_i; the per-sample weight gradient
    of a convolution is G_i (C_out x L) times the unfolded input (L x C_in k k), of a linear
    layer G_i a_i^T. The work is that of K batched backward passes plus one batched matmul
    per layer and kernel offset, with no per-sample graph.
    """
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in layers:
        def hook(mod, args, out, name=name):
            inputs[name] = args[0].detach()
            outputs[name] = out
        hooks.append(module.register_forward_hook(hook))
    try:
        out = model(x)
    finally:
        for h in hooks:
            h.remove()
    n, k = out.shape
    names = [name for name, _ in layers]
    # backprops of all K outputs first: each layer's per-sample gradients for every output
    # then come from one batched matmul with K*C_out rows
    backprops = [[] for _ in layers]
    for c in range(k):
        grads = torch.autograd.grad(out[:, c].sum(), [outputs[nm] for nm in names], retain_graph=c < k - 1)
        for store, g in zip(backprops, grads):
            store.append(g)
    offsets, off = {}, 0
    for pn, p in model.named_parameters():
        if p.requires_grad:
            offsets[pn] = off
            off += p.numel()
    rows = torch.empty(n, k, off, dtype=x.dtype, device=x.device)

    def put(pn: str, block: torch.Tensor) -> None:  # block (n, K, ...) in the tensor's element order
        size = math.prod(block.shape[2:])
        rows[:, :, offsets[pn] : offsets[pn] + size].view(block.shape).copy_(block)

    for (name, module), store in zip(layers, backprops):
        g = torch.stack(store, dim=1)  # (n, K, C_out, ...)
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.Conv2d):
            out_hw = g.shape[-2:]
            g = g.reshape(n, k * g.shape[2], -1)  # (n, K C_out, L)
            grads = _conv_weight_grads(g, inputs[name], module, out_hw)  # (n, K C_out, C_in, kh kw)
            put(prefix + "weight", grads.view(n, k, module.out_channels, *grads.shape[2:]))
            bias = g.sum(2).reshape(n, k, -1)
        else:
            put(prefix + "weight", (g[:, :, :, None] * inputs[name][:, None, None, :]).reshape(n, k, -1))
            bias = g
        if module.bias is not None and module.bias.requires_grad:
            put(prefix + "bias", bias)
    return rows.reshape(n * k, -1)


def jacobian(model: nn.Module, x: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """J of the model's K outputs on the samples ``x`` w.r.t. all trained parameters: (n*K, p).

    Networks built of plain Conv2d / Linear layers (ResNet20) take :func:`jacobian_by_layers`;
    any other network ``vmap`` over samples of ``jacrev`` over the K outputs (torch.func).
    Both run in batches of ``batch_size`` samples to bound the memory of the per-sample
    gradients.
    """
    model.eval()
    layers = _layers(model)
    if layers is not None:
        return torch.cat([jacobian_by_layers(model, x[i : i + batch_size], layers).detach() for i in range(0, len(x), batch_size)])
    return jacobian_vmap(model, x, batch_size)


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


def probe_errors(model: nn.Module, x: torch.Tensor, J: torch.Tensor, seed: int = 0) -> tuple[float, float]:
    """Relative errors of J v against ``torch.func.jvp`` and of u^T J against ``vjp``.

    One random probe each; the products by the stored J use float64 accumulation.
    """
    model.eval()
    params, buffers = _split_params(model)
    gen = torch.Generator().manual_seed(seed)
    p_total = J.shape[1]
    v = torch.randn(p_total, generator=gen, dtype=torch.float64)
    u = torch.randn(J.shape[0], generator=gen, dtype=torch.float64)
    tangents, off = {}, 0
    for n, p in params.items():
        tangents[n] = v[off : off + p.numel()].reshape(p.shape).to(p.dtype).to(p.device)
        off += p.numel()

    def fx(p: dict) -> torch.Tensor:
        return functional_call(model, (p, buffers), (x,))

    _, jv = jvp(fx, (params,), (tangents,))
    out, pullback = vjp(fx, params)
    (uj,) = pullback(u.reshape(out.shape).to(out.dtype).to(out.device))
    uj_flat = torch.cat([uj[n].reshape(-1) for n in params]).double().cpu()
    jv = jv.reshape(-1).double().cpu()
    Jd = J.double().cpu()
    err_jvp = float(torch.linalg.norm(Jd @ v - jv) / torch.linalg.norm(jv))
    err_vjp = float(torch.linalg.norm(u @ Jd - uj_flat) / torch.linalg.norm(uj_flat))
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
