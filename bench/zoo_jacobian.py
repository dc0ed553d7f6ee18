"""J's rows of a zoo network by its two kernels: vmap over samples of jacrev (torch.func) at
a few batch sizes, and one sample at a time through autograd (jacobian.compute's choice from
PER_SAMPLE_PARAMETERS on). Prints samples/s of each, the ratio per-sample / best vmap, and
the largest difference between the two J's relative to the largest entry.

  python bench/zoo_jacobian.py [--model torchvision:resnet18] [--size 32] [--classes 3]
                               [--batches 1 4 8] [--threads 2]
"""

import argparse
import json
import time

import torch

from jacobian_spectrum.jacobian.compute import jacobian_per_sample, jacobian_vmap
from jacobian_spectrum.train.models import ModelSpec, build_model, count_parameters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="torchvision:resnet18")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = build_model(ModelSpec(a.model, 3, a.size, a.classes), seed=0).eval()
    x = torch.randn(max(a.batches), 3, a.size, a.size, generator=torch.Generator().manual_seed(0))
    jacobian_vmap(model, x[:1], 1)  # warm-up
    rates = {}
    for b in a.batches:
        t0 = time.perf_counter()
        J_vmap = jacobian_vmap(model, x[:b], b)
        rates[f"vmap_batch_{b}"] = b / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    J = jacobian_per_sample(model, x[: max(a.batches)])
    rates["per_sample"] = max(a.batches) / (time.perf_counter() - t0)
    best_vmap = max(v for k, v in rates.items() if k.startswith("vmap"))
    print(
        json.dumps(
            {
                "model": a.model,
                "parameters": count_parameters(model),
                "samples_per_second": rates,
                "per_sample_over_best_vmap": rates["per_sample"] / best_vmap,
                "max_difference_relative": float((J - J_vmap).abs().max() / J.abs().max()),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
