"""Per-sample convolution weight gradients: oneDNN's grouped-convolution backward against unfold + bmm.

For 3x3 convolutions with C input and C output channels on H x H feature maps, K = 3 outputs,
prints a grid of time(unfold) / time(grouped) (above 1: the grouped call is faster) with the
method :func:`jacobian_spectrum.jacobian.compute.grouped_conv_is_faster` picks for each cell, and the
largest difference between the two methods' results. The two are timed in interleaved
rounds on the same tensors; each keeps its fastest round.

  python bench/conv_weight_grads.py [--threads 2] [--samples 64] [--repeats 5] [--device cpu]
"""

import argparse
import json

import torch
from timing import best_of_interleaved

from jacobian_spectrum.jacobian.compute import Workspace, conv_grads, grouped_conv_is_faster

CHANNELS = (3, 4, 8, 16, 32, 64)
SIZES = (2, 4, 8, 16, 32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--outputs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    device = torch.device(args.device)
    n, k = args.samples, args.outputs
    grid, max_diff, agree, cells = {}, 0.0, 0, 0
    for c in CHANNELS:
        for h in SIZES:
            if n * k * c * c * 9 * 4 > 1 << 30:  # skip cells whose gradients exceed 1 GiB
                continue
            conv = torch.nn.Conv2d(c, c, 3, padding=1).to(device)
            a = torch.randn(n, c, h, h, device=device)
            backprops = [torch.randn(n, c, h, h, device=device) for _ in range(k)]
            workspace = Workspace()
            grouped = conv_grads(backprops, a, conv, "grouped")[0]
            unfold = conv_grads(backprops, a, conv, "unfold")[0]
            max_diff = max(max_diff, float((grouped - unfold).abs().max() / unfold.abs().max()))
            t = best_of_interleaved(
                {
                    "grouped": lambda: conv_grads(backprops, a, conv, "grouped", workspace=workspace),
                    "unfold": lambda: conv_grads(backprops, a, conv, "unfold", workspace=workspace),
                },
                args.repeats,
                device,
            )
            rule = "grouped" if grouped_conv_is_faster(c, h * h, device) else "unfold"
            ratio = t["unfold"] / t["grouped"]
            grid.setdefault(f"C={c}", {})[f"H={h}"] = f"{ratio:.2f} {rule}"
            agree += (ratio >= 1) == (rule == "grouped")
            cells += 1
    print(
        json.dumps(
            {
                "device": str(device),
                "threads": args.threads,
                "samples": n,
                "outputs": k,
                "unfold_time_over_grouped_time (rule's pick)": grid,
                "rule_picks_the_faster": f"{agree} of {cells}",
                "max_relative_difference": max_diff,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
