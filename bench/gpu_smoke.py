"""Paper-scale steps on a GPU, each timed, printed as JSON (a few minutes on one GPU).

  1. one training epoch of ResNet20 (full width, p = 268,579) on 9999 3x32x32 images
  2. one Jacobian chunk of 1000 samples (3000 x 268,579 rows, float32), checked by probes
     and, on 32 samples, against the same rows computed on the CPU
  3. a float64 eigendecomposition (torch.linalg.eigh) of Gram matrices of size 10k, 20k, 30k

TF32 is off (numerical rules). The ratio is the device's Jacobian rows/s against the CPU's on
the same 32 samples (measured in the same run). --budget-s stops before a step whose predicted
time would pass the budget. Progress goes to stderr, the one JSON record to stdout.

  python bench/gpu_smoke.py [--quick] [--eigh-sizes 10000 20000 30000] [--budget-s 420]

Smallest: --quick (tiny sizes, width 0.25; on the CPU where no GPU is present: a check of the script itself)
"""

import argparse
import copy
import json
import sys
import time

import torch
from timing import emit, timed

from jacobian_spectrum.common.device import select_device
from jacobian_spectrum.jacobian.compute import jacobian
from jacobian_spectrum.jacobian.probe import probe_errors
from jacobian_spectrum.train.loop import TrainSettings, make_optimizer, train_epoch
from jacobian_spectrum.train.models import ModelSpec, build_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--images", type=int, default=9999)
    ap.add_argument("--chunk", type=int, default=1000)
    ap.add_argument("--eigh-sizes", type=int, nargs="+", default=[10000, 20000, 30000])
    ap.add_argument("--budget-s", type=float, default=420)
    ap.add_argument("--width", type=float, default=1.0, help="ResNet20's width (1: the paper's)")
    args = ap.parse_args()
    if args.quick:
        args.images, args.chunk, args.eigh_sizes, args.width = 64, 8, [100, 200], 0.25
    device = select_device("auto")
    start = time.perf_counter()
    report = {"tf32": torch.backends.cuda.matmul.allow_tf32}
    spec = ModelSpec("resnet20", 3, 32, 3, width=args.width)
    model = build_model(spec, seed=0).to(device)
    x = torch.randn(args.images, 3, 32, 32, device=device)
    y = torch.nn.functional.one_hot(torch.randint(0, 3, (args.images,), device=device), 3).float()
    settings = TrainSettings("sgd", 0.01, 1, momentum=0.9, batch_size=128, augment_flip=True)
    opt, _ = make_optimizer(model, settings)
    gen = torch.Generator(device=device).manual_seed(0)

    def epoch():  # the package's training epoch (train.loop.train_epoch)
        train_epoch(model, opt, x, y, settings, gen)

    timed(epoch, device)  # warm-up (cuDNN autotuning, allocator)
    _, report["train_epoch_s"] = timed(epoch, device)
    report["train_images_per_s"] = args.images / report["train_epoch_s"]
    print(json.dumps(report), file=sys.stderr, flush=True)

    xs = x[: args.chunk]
    J, report["jacobian_chunk_s"] = timed(lambda: jacobian(model, xs, batch_size=64), device)
    report["jacobian_rows_per_s"] = J.shape[0] / report["jacobian_chunk_s"]
    report["jacobian_shape"] = list(J.shape)
    report["jacobian_probe_errors"] = probe_errors(model, xs[:64], J[: 64 * 3])
    # the same rows computed on the CPU (unfold and grouped-convolution paths there)
    cpu_model, x_cpu = copy.deepcopy(model).cpu(), xs[:32].cpu()
    J_cpu, t_cpu = timed(lambda: jacobian(cpu_model, x_cpu), torch.device("cpu"))
    _, t_device = timed(lambda: jacobian(model, xs[:32]), device)
    diff = J[: 32 * 3].cpu().double() - J_cpu.double()
    report["jacobian_cpu_vs_device"] = {
        "relative_frobenius": float(diff.norm() / J_cpu.double().norm()),
        "max_entry_difference_over_max_entry": float(diff.abs().max() / J_cpu.abs().max()),
        # entries off by more than 1e-3 of the largest: ReLU units whose input is within
        # rounding of 0 switch between the devices and change whole gradient columns
        "entries_off_by_1e-3_of_max": int((diff.abs() > 1e-3 * J_cpu.abs().max()).sum()),
        "entries": diff.numel(),
    }
    del J, J_cpu
    print(json.dumps(report), file=sys.stderr, flush=True)

    report["eigh_s"] = {}
    last = None
    for n in args.eigh_sizes:
        if last is not None:  # eigh costs ~ n^3: skip a size that would pass the budget
            predicted = last[1] * (n / last[0]) ** 3
            if time.perf_counter() - start + predicted > args.budget_s:
                report["eigh_s"][str(n)] = f"skipped: predicted {predicted:.0f}s passes the budget"
                continue
        A = torch.randn(n, n // 4, device=device, dtype=torch.float64)
        G = A @ A.T
        del A
        _, t = timed(lambda G=G: torch.linalg.eigh(G), device)
        report["eigh_s"][str(n)] = t
        last = (n, t)
        del G
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(json.dumps(report), file=sys.stderr, flush=True)
    report["total_s"] = time.perf_counter() - start
    emit("gpu_smoke", device, {"jacobian_device_over_cpu_rows_per_s": t_cpu / t_device}, **report)


if __name__ == "__main__":
    main()
