"""Jacobian throughput: this implementation against a naive loop and the compute bound.

On the same samples, in one run:
  ours    jacobian_spectrum.jacobian.jacobian (vmap over samples of jacrev over outputs)
  naive   one torch.autograd.grad per sample and output
  bound   K batched backward passes over the same samples (summed, not per-sample,
          gradients: the least work any method that back-propagates K outputs can do)
Prints rows/s of each and the ratios ours/bound and ours/naive as JSON.

  python bench/jacobian.py [--samples 128] [--width 0.25] [--size 8] [--channels 1] [--repeats 3]
"""

import argparse
import json
import time

import torch

from jacobian_spectrum.jacobian import jacobian
from jacobian_spectrum.models import ModelSpec, build_model


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(ModelSpec("resnet20", args.channels, args.size, 3, width=args.width), seed=0).eval()
    x = torch.randn(args.samples, args.channels, args.size, args.size)
    rows = args.samples * 3
    ref = naive(model, x[:4])
    assert torch.allclose(jacobian(model, x[:4]), ref, atol=1e-5), "implementation disagrees with the naive loop"
    t = {
        "ours": best_of(lambda: jacobian(model, x), args.repeats),
        "naive": best_of(lambda: naive(model, x), args.repeats),
        "bound": best_of(lambda: bound(model, x), args.repeats),
    }
    result = {
        "device": "cpu", "threads": args.threads, "samples": args.samples, "rows": rows,
        "parameters": sum(p.numel() for p in model.parameters()),
        "rows_per_s": {k: rows / v for k, v in t.items()},
        "ours_over_bound": t["bound"] / t["ours"],
        "ours_over_naive": t["naive"] / t["ours"],
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
