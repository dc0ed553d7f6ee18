"""Jacobian throughput: this implementation against a naive loop and the compute bound.

On the same samples, in one run:
  ours    jacobian_spectrum.jacobian.compute.jacobian_blocks as a chunk job runs it (K batched
          backward passes to every layer's output, then per-sample weight gradients; each
          batch's rows into one batch-sized buffer, from which the job writes them to HDF5)
  in_memory  jacobian_spectrum.jacobian.compute.jacobian: the same into a whole J allocated afresh
  naive   one torch.autograd.grad per sample and output
  bound   K batched backward passes over the same samples (summed, not per-sample,
          gradients: the least work any method that back-propagates K outputs can do)
and, to show where ours' time goes: the forward and K backward passes to every layer's
output that ours makes before its per-sample weight gradients, and the first write to a
freshly allocated buffer the size of ours' largest batch of rows (page faults: a cost of
storing J that the bound, which stores nothing, does not have).
Prints one JSON record: rows/s of each and the ratios ours/bound and ours/naive. The three are timed
in interleaved rounds and each keeps its fastest round, so that load from other processes
on a shared machine hits all three alike.

  python bench/jacobian.py [--samples 128] [--width 0.25] [--size 8] [--channels 1] [--classes 3]
                          [--repeats 5] [--device cpu]

Smallest: --samples 4 --width 0.125 --repeats 1
"""

import argparse
import os

import torch
from timing import best_of_interleaved, emit

from jacobian_spectrum.jacobian.compute import (
    batch_slices,
    grouped_conv_is_faster,
    jacobian,
    jacobian_blocks,
    outputs_and_batch_size,
    plain_layers,
)
from jacobian_spectrum.train.models import ModelSpec, build_model


def stream(model, x):
    """All rows of J, batch by batch, as a chunk job computes them (without the disk write)."""
    for _ in jacobian_blocks(model, x):
        pass


def naive(model, x):
    rows = []
    params = [p for p in model.parameters() if p.requires_grad]
    for i in range(len(x)):
        out = model(x[i : i + 1])[0]
        for k in range(out.shape[0]):
            g = torch.autograd.grad(out[k], params, retain_graph=k < out.shape[0] - 1)
            rows.append(torch.cat([t.reshape(-1) for t in g]))
    return torch.stack(rows)


def bound(model, x):
    params = [p for p in model.parameters() if p.requires_grad]
    out = model(x)
    for k in range(out.shape[1]):
        torch.autograd.grad(out[:, k].sum(), params, retain_graph=k < out.shape[1] - 1)


def backprops(model, x, batch_size):
    """The part of ours that any back-propagating method has: a forward pass and K batched
    backward passes to every layer's output, in ours' batches (no weight gradients)."""
    layers = plain_layers(model)
    for batch in batch_slices(len(x), batch_size):
        outs = []
        hooks = [m.register_forward_hook(lambda mod, a, o: outs.append(o)) for _, m in layers]
        f = model(x[batch])
        for h in hooks:
            h.remove()
        for k in range(f.shape[1]):
            torch.autograd.grad(f[:, k].sum(), outs, retain_graph=k < f.shape[1] - 1)


def _conv_output_pixels(model, x1):
    """(conv, output pixels) of every convolution, from one forward pass."""
    found = []
    hooks = [
        m.register_forward_hook(lambda mod, a, o: found.append((mod, o.shape[-2] * o.shape[-1])))
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    with torch.no_grad():
        model(x1)
    for h in hooks:
        h.remove()
    return found


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--classes", type=int, default=3, help="K, the network's outputs")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--cudnn", choices=["on", "deterministic", "off"], default="on", help="cuDNN setting for all three")
    args = ap.parse_args()
    torch.backends.cudnn.enabled = args.cudnn != "off"
    torch.backends.cudnn.deterministic = args.cudnn == "deterministic"
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)
    model = (
        build_model(ModelSpec("resnet20", args.channels, args.size, args.classes, width=args.width), seed=0)
        .eval()
        .to(device)
    )
    x = torch.randn(args.samples, args.channels, args.size, args.size, device=device)
    rows = args.samples * args.classes
    ref = naive(model, x[:4])
    assert torch.allclose(jacobian(model, x[:4]), ref, atol=1e-5), "implementation disagrees with the naive loop"
    _, batch = outputs_and_batch_size(model, plain_layers(model), x)
    largest = max(b.stop - b.start for b in batch_slices(len(x), batch))
    t = best_of_interleaved(
        {
            "ours": lambda: stream(model, x),
            "in_memory": lambda: jacobian(model, x),
            "naive": lambda: naive(model, x),
            "bound": lambda: bound(model, x),
            "backprops": lambda: backprops(model, x, batch),
            "first_touch": lambda: torch.empty(largest * args.classes, ref.shape[1], device=device).fill_(0.0),
        },
        args.repeats,
        device,
    )
    grouped = [grouped_conv_is_faster(conv.in_channels, px, device) for conv, px in _conv_output_pixels(model, x[:1])]
    ratios = {
        "ours_over_bound": t["bound"] / t["ours"],
        "ours_over_naive": t["naive"] / t["ours"],
        "in_memory_over_bound": t["bound"] / t["in_memory"],
        # where ours' time goes: the backward passes to the layer outputs (also inside the
        # bound) and the rest (per-sample weight gradients, writing J)
        "backprops_time_over_bound_time": t["backprops"] / t["bound"],
        "backprops_share_of_ours": t["backprops"] / t["ours"],
        "first_touch_of_batch_buffer_time_over_bound_time": t["first_touch"] / t["bound"],
    }
    emit(
        "jacobian",
        device,
        ratios,
        seconds=t,
        rows_per_s={k: rows / t[k] for k in ("ours", "in_memory", "naive", "bound")},
        threads=args.threads,
        THP_MEM_ALLOC_ENABLE=os.environ.get("THP_MEM_ALLOC_ENABLE", "unset"),
        cudnn=args.cudnn,
        samples=args.samples,
        rows=rows,
        parameters=sum(p.numel() for p in model.parameters()),
        conv_layers_by_method={"grouped": sum(grouped), "unfold": len(grouped) - sum(grouped)},
        batches=[b.stop - b.start for b in batch_slices(len(x), batch)],
    )


if __name__ == "__main__":
    main()
