"""What decides the probe check: ReLU decisions, rounding and cost, from 17k to 21M parameters.

For each network (SGD steps on random images and labels first, so that weights and batch-norm
statistics move; then eval mode) and a few random samples, computes J as the chunk job does
(``jacobian_blocks``) and prints, as JSON:

- ``kinks``: ReLU units per sample, and how many sit on the other side of 0 in float64 than in
  the rows' float32 pass (``rows_vs_float64``) and than in a plain batched float32 pass
  (``plain_vs_rows``): samples with any, and units in all;
- ``correct_J``: the probe errors of the correct J (a) by the former check (float32 jvp/vjp with
  their own ReLU decisions, |Jv - jvp|/|jvp| over the chunk), (b) against float64 references with
  float64's own ReLU decisions, (c) by :class:`ProbeCheck` (the rows' decisions pinned, references
  in float32) and (d) the same with float64 references;
- ``planted_in_first_batch``: the errors of :class:`ProbeCheck` on the first batch's J with one
  wrong row (scaled by 1.01; replaced by another row; one layer's block zeroed), and whether it
  fails (tolerance 1e-4, compute_chunk's);
- ``bound_tolerance``: for the row scaled by 1.01, its jvp error against a bound-derived tolerance
  sqrt(p) eps32 |J_i| |v| (a tolerance that would admit the kink errors);
- ``seconds_first_batch``: the first batch's rows, their check (all of :meth:`ProbeCheck.add`) and
  the ratio, best of ``--repeats`` interleaved rounds; and the same check with float64 references.

The ResNet20s take 10x ``--samples`` in their default batches, the ResNet-18/34 ``--batch`` at a
time (a ResNet-18 row is 11M floats). On a GPU, ``--device cuda --batch 64`` is the chunk job's batch.

  python bench/probe_precision.py [--nets resnet20_digits resnet20 resnet18 resnet34] [--samples 24]
      [--batch 3] [--steps 30] [--repeats 2] [--device cpu]
"""

import argparse
import copy
import json
import math
import time

import torch
from torch import nn
from torch.func import functional_call, jvp

from jacobian_spectrum.common.device import select_device
from jacobian_spectrum.jacobian.compute import jacobian_blocks, parameter_table, split_params
from jacobian_spectrum.jacobian.probe import ProbeCheck, RecordKinks, _products
from jacobian_spectrum.train.models import ModelSpec, build_model

TOLERANCE = 1e-4  # compute_chunk's


def cifar_resnet(depth: int, k: int) -> nn.Module:
    """torchvision's ResNet-18/34 adapted to CIFAR: 3x3 stride-1 stem, no max-pool; batch-norm."""
    import torchvision

    m = getattr(torchvision.models, f"resnet{depth}")(num_classes=k)
    m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    return m


NETS = {  # name -> (builder, input shape, SGD learning rate)
    "resnet20_digits": (lambda: build_model(ModelSpec("resnet20", 1, 8, 3, width=0.25), seed=0), (1, 8, 8), 0.05),
    "resnet20": (lambda: build_model(ModelSpec("resnet20", 3, 32, 3, width=1.0), seed=0), (3, 32, 32), 0.02),
    "resnet18": (lambda: cifar_resnet(18, 3), (3, 32, 32), 0.002),
    "resnet34": (lambda: cifar_resnet(34, 3), (3, 32, 32), 0.002),
}


def trained(name: str, steps: int) -> tuple[nn.Module, tuple]:
    build, shape, lr = NETS[name]
    torch.manual_seed(0)
    model = build()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(steps):
        x, y = torch.randn(16, *shape), torch.randint(0, 3, (16,))
        loss = ((model(x) - nn.functional.one_hot(y, 3).float()) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), shape


def float64_masks(model64: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad(), RecordKinks() as rec:
        model64(x.double())
    return rec.masks


class Float64OwnKinks(ProbeCheck):
    """Float64 references with float64's own ReLU decisions (what "references in float64" alone gives)."""

    def __init__(self, model: nn.Module, model64: nn.Module, num_rows: int, num_parameters: int) -> None:
        super().__init__(model, num_rows, num_parameters, reference_dtype=torch.float64)
        self.model64 = model64

    def kink_masks(self, x: torch.Tensor) -> list[torch.Tensor]:
        return float64_masks(self.model64, x)


class FormerCheck:
    """The check before the ReLU decisions were pinned: float32 jvp/vjp with their own
    decisions, |Jv - jvp|/|jvp| and |u^T J - vjp|/|vjp| over the chunk."""

    def __init__(self, model: nn.Module, v: torch.Tensor, u: torch.Tensor) -> None:
        self.model, (self.params, self.buffers), self.u = model, split_params(model), u
        self.tangents, off = {}, 0
        for n, p in self.params.items():
            self.tangents[n] = v[off : off + p.numel()].reshape(p.shape).float().to(p.device)
            off += p.numel()
        self.v, self.jv, self.Jv, self.uj, self.uJ = v, [], [], 0.0, 0.0

    def add(self, x: torch.Tensor, rows: slice, J: torch.Tensor) -> None:
        def f(p: dict) -> torch.Tensor:
            return functional_call(self.model, (p, self.buffers), (x,))

        self.jv.append(jvp(f, (self.params,), (self.tangents,))[1].reshape(-1).double().cpu())
        leaves = {n: p.detach().requires_grad_() for n, p in self.params.items()}
        out = f(leaves)
        g = torch.autograd.grad(out, list(leaves.values()), self.u[rows].reshape(out.shape).float().to(out.device))
        self.uj = self.uj + torch.cat([a.reshape(-1) for a in g]).double().cpu()
        Jv, uJ, _ = _products(J, self.v, self.u[rows])
        self.Jv.append(Jv)
        self.uJ = self.uJ + uJ

    def errors(self) -> tuple[float, float]:
        jv, Jv = torch.cat(self.jv), torch.cat(self.Jv)
        return float((Jv - jv).norm() / jv.norm()), float((self.uJ - self.uj).norm() / self.uj.norm())


def failed(errors: tuple[float, float]) -> bool:
    return not (errors[0] <= TOLERANCE and errors[1] <= TOLERANCE)


def measure(name: str, samples: int, batch_size: int | None, steps: int, repeats: int, dev: torch.device) -> dict:
    model, shape = trained(name, steps)
    model = model.to(dev)
    model64 = copy.deepcopy(model).double()
    torch.manual_seed(1)
    x = torch.randn(samples, *shape).to(dev)
    k = model(x[:1]).shape[1]
    p = sum(q.numel() for q in model.parameters())
    check_shape = (samples * k, p)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(p, generator=gen, dtype=torch.float64)
    u = torch.randn(samples * k, generator=gen, dtype=torch.float64)
    checks = {
        "former_float32_check": FormerCheck(model, v, u),
        "float64_own_kinks": Float64OwnKinks(model, model64, *check_shape),
        "pinned_float32": ProbeCheck(model, *check_shape),  # ProbeCheck as the chunk job runs it
        "pinned_float64": ProbeCheck(model, *check_shape, reference_dtype=torch.float64),
    }
    rows_vs_64, plain_vs_rows, units, first = [], [], 0, None
    # the chunk job's stream: each batch's rows to every check, then dropped (but the first batch's)
    for batch, block in jacobian_blocks(model, x, batch_size):
        xb, rows = x[batch], slice(batch.start * k, batch.stop * k)
        for check in checks.values():
            check.add(xb, rows, block)
        # ReLU inputs on the other side of 0: the rows' pass (as the check records it) against
        # float64, and a plain batched float32 pass against the rows'
        rows_masks, m64 = checks["pinned_float32"].kink_masks(xb), float64_masks(model64, xb)
        with torch.no_grad(), RecordKinks() as rec:
            model(xb)
        units = sum(m[0].numel() for m in rows_masks)
        rows_vs_64 += sum((a != b).flatten(1).sum(1) for a, b in zip(rows_masks, m64)).tolist()
        plain_vs_rows += sum((a != b).flatten(1).sum(1) for a, b in zip(rec.masks, rows_masks)).tolist()
        if first is None:
            first = (xb, rows, block.clone())
    correct = {label: check.errors() for label, check in checks.items()}

    # one wrong row in the first batch: row 1 (sample 0, output 1)
    xb, rows, J = first
    nb = len(xb)
    convs = [e for e in parameter_table(model) if len(e.shape) == 4]
    mid = convs[len(convs) // 2]  # a convolution half-way through the network
    planted, i, keep = {}, 1, J[1].clone()
    for label, change in (
        ("row_scaled_1.01", lambda r: r.mul_(1.01)),
        ("row_replaced_by_another", lambda r: r.copy_(J[(nb - 1) * k + i % k] if nb > 1 else J[(i + 1) % k])),
        (f"row_block_{mid.name}_zeroed", lambda r: r[mid.offset : mid.offset + mid.size].zero_()),
    ):
        change(J[i])
        check = ProbeCheck(model, nb * k, p)
        check.add(xb, slice(0, nb * k), J)
        planted[label] = {"errors": check.errors(), "fails": failed(check.errors())}
        J[i].copy_(keep)
    Ji = J[i].double().cpu()
    wrong = abs(0.01 * float(Ji @ v))
    bound = math.sqrt(p) * torch.finfo(torch.float32).eps * float(Ji.norm() * v.norm())

    # seconds: the first batch's rows against the check of them, interleaved rounds, best of each
    best = {"rows": math.inf, "check": math.inf, "check_float64_references": math.inf}
    for _ in range(repeats):
        t = time.perf_counter()
        for _b in jacobian_blocks(model, xb, batch_size):
            pass
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best["rows"] = min(best["rows"], time.perf_counter() - t)
        for label, dtype in (("check", None), ("check_float64_references", torch.float64)):
            check = ProbeCheck(model, nb * k, p, reference_dtype=dtype)
            t = time.perf_counter()
            check.add(xb, slice(0, nb * k), J)
            best[label] = min(best[label], time.perf_counter() - t)
    return {
        "network": name,
        "parameters": p,
        "samples": samples,
        "batch": nb,
        "kinks": {
            "relu_units_per_sample": units,
            # samples with any unit on the other side, and the units in all
            "rows_vs_float64": {"samples": sum(c > 0 for c in rows_vs_64), "units": sum(rows_vs_64)},
            "plain_vs_rows": {"samples": sum(c > 0 for c in plain_vs_rows), "units": sum(plain_vs_rows)},
        },
        "correct_J": {label: {"errors": e, "fails": failed(e)} for label, e in correct.items()},
        "planted_in_first_batch": planted,
        "bound_tolerance": {
            "row_scaled_1.01_jvp_error": wrong,
            "sqrt_p_eps32_Ji_v": bound,
            "passes_the_wrong_row": wrong <= bound,
        },
        "seconds_first_batch": {
            **best,
            "check_over_rows": best["check"] / best["rows"],
            "check_float64_over_rows": best["check_float64_references"] / best["rows"],
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nets", nargs="+", default=["resnet20_digits", "resnet20", "resnet18"], choices=list(NETS))
    ap.add_argument("--samples", type=int, default=24, help="for resnet18/34; the ResNet20s take 10x as many")
    ap.add_argument("--batch", type=int, default=3, help="samples per batch of resnet18/34 (ResNet20s: the default)")
    ap.add_argument("--steps", type=int, default=30, help="SGD steps of 16 random images before eval mode")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    dev = select_device(args.device)  # TF32 off, as every job
    for name in args.nets:
        small = name.startswith("resnet20")
        n, batch = (args.samples * 10, None) if small else (args.samples, args.batch)
        print(json.dumps({**measure(name, n, batch, args.steps, args.repeats, dev), "device": str(dev)}), flush=True)


if __name__ == "__main__":
    main()
