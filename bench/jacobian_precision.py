"""Float32 Jacobians against a float64 reference, on the CPU and (when present) on CUDA.

The reference is J of the same network and samples in float64 on the CPU. For each float32
variant (CPU; CUDA with cuDNN, its deterministic algorithms, or off) prints the relative Frobenius error
||J - J_ref|| / ||J_ref||, the largest entry error over the largest entry, and the worst
parameter tensor's relative error, and how many ReLU units sit on the other side of 0 than
in float64 (each such unit changes J by a whole gradient path, far above rounding), as JSON.
``--train-steps`` moves the weights away from their initialisation first (SGD on random labels),
as bench/gpu_smoke.py does.

  python bench/jacobian_precision.py [--size 32] [--channels 3] [--width 1] [--samples 32] [--train-steps 50]
"""

import argparse
import copy
import json

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from jacobian_spectrum.common.device import select_device
from jacobian_spectrum.jacobian.compute import jacobian, parameter_table
from jacobian_spectrum.train.loop import least_squares_loss
from jacobian_spectrum.train.models import ModelSpec, build_model


class ReluMasks(TorchFunctionMode):
    """Records which ReLU inputs are positive during a forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.masks: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (F.relu, torch.relu):
            self.masks.append((args[0] > 0).flatten().cpu())
        return func(*args, **(kwargs or {}))


def relu_masks(model, x) -> torch.Tensor:
    with torch.no_grad(), ReluMasks() as rec:
        model(x)
    return torch.cat(rec.masks)


def errors(J: torch.Tensor, ref: torch.Tensor, table, switched: int) -> dict:
    diff = J.double().cpu() - ref
    per_tensor = {
        e.name: float(diff[:, e.offset : e.offset + e.size].norm() / ref[:, e.offset : e.offset + e.size].norm())
        for e in table
    }
    worst = max(per_tensor, key=per_tensor.get)
    return {
        "relative_frobenius": float(diff.norm() / ref.norm()),
        "max_entry_error_over_max_entry": float(diff.abs().max() / ref.abs().max()),
        "worst_tensor": worst,
        "worst_tensor_relative_frobenius": per_tensor[worst],
        # ReLU units on the other side of 0 than in float64: each changes J discretely
        "relu_units_switched": switched,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--train-steps", type=int, default=50)
    args = ap.parse_args()
    device = select_device("auto")  # also turns TF32 off
    torch.manual_seed(0)
    model = build_model(ModelSpec("resnet20", args.channels, args.size, 3, width=args.width), seed=0).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(args.train_steps):
        xb = torch.randn(128, args.channels, args.size, args.size, device=device)
        yb = torch.nn.functional.one_hot(torch.randint(0, 3, (128,), device=device), 3).float()
        loss = least_squares_loss(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    x = torch.randn(args.samples, args.channels, args.size, args.size)
    cpu_model = copy.deepcopy(model).cpu()
    model64 = copy.deepcopy(cpu_model).double()
    ref, ref_masks = jacobian(model64, x.double()), relu_masks(model64, x.double())
    table = parameter_table(cpu_model)
    report = {
        "device": str(device),
        "samples": args.samples,
        "parameters": ref.shape[1],
        "train_steps": args.train_steps,
        "relu_units": ref_masks.numel(),
    }

    def variant(name: str, m: torch.nn.Module, xv: torch.Tensor) -> None:
        switched = int((relu_masks(m, xv) != ref_masks).sum())
        report[name] = errors(jacobian(m, xv), ref, table, switched)

    variant("cpu float32", cpu_model, x)
    if device.type == "cuda":
        xd = x.to(device)
        variant("cuda float32, cuDNN", model, xd)
        with torch.backends.cudnn.flags(enabled=True, deterministic=True, allow_tf32=False):
            variant("cuda float32, cuDNN deterministic", model, xd)
        with torch.backends.cudnn.flags(enabled=False):
            variant("cuda float32, cuDNN off", model, xd)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
