"""The plan of a config: its steps with measured figures where an earlier run left them, the
wall time, the disk at its peak, warnings where the disk, the memory or the GPU memory will not
hold, and the table that ``python -m jacobian_spectrum plan`` prints."""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .graph import Step, job_steps
from .measured import benchmark_file, read_benchmark
from .rates import Rates


@dataclass
class Plan:
    """The steps of a config's jobs at this machine's rates, and their totals."""

    steps: list[Step]
    cores: int
    rates: Rates
    disk_peak_bytes: float
    wall_seconds: float
    warnings: list[str]


def make_plan(
    config: Mapping,
    rates: Rates,
    cores: int,
    device: str = "cpu",
    use_benchmarks: bool = True,
    table: Mapping[str, str] | None = None,
) -> Plan:
    """The plan of ``config`` at these rates; ``use_benchmarks``: measured seconds and memory of
    an earlier run's benchmark files replace the estimates where they exist; ``table``: the
    ``architecture_table`` section, for one network of an architecture table (:func:`.graph.jacobians`)."""
    steps = job_steps(config, rates, device, table)
    results = Path(config["results"])
    for step in steps if use_benchmarks else []:
        measured = read_benchmark(benchmark_file(results, step))
        if measured is not None:
            step.seconds, step.memory_bytes = measured[0], max(measured[1], 1.0)
            step.source = "measured"
    persistent = sum(s.disk_bytes for s in steps if not s.temporary)
    temporary = sorted((s.disk_bytes for s in steps if s.temporary), reverse=True)
    # spectra run before new chunk jobs (rule priorities), so the J's on disk at once are those
    # whose chunk jobs share the cores, plus one waiting for its spectrum
    per_j = max(1, min((s.jobs for s in steps if s.rule == "jacobian_chunk"), default=2) - 1)
    in_flight = min(len(temporary), 1 + math.ceil(cores / per_j))
    disk_peak = persistent + sum(temporary[:in_flight])
    wall = _wall_seconds(steps, cores)
    plan = Plan(steps, cores, rates, disk_peak, wall, [])
    plan.warnings = _warnings(plan, results, device)
    return plan


def _wall_seconds(steps: list[Step], cores: int) -> float:
    """The larger of the core-seconds spread over the cores and the longest chain of steps."""
    work = sum(s.seconds * min(s.threads, cores) for s in steps) / cores
    finish: dict[str, float] = {}
    for s in steps:  # steps are listed after what they wait for
        waits = finish.values() if "*" in s.after else [finish.get(a, 0.0) for a in s.after]
        finish[s.key] = max(waits, default=0.0) + s.seconds / max(1, min(s.jobs, cores // max(1, s.threads)))
    return max(work, max(finish.values()))


def _warnings(plan: Plan, results: Path, device: str) -> list[str]:
    import psutil

    out = []
    folder = results if results.exists() else next(p for p in [results, *results.parents] if p.exists())
    free = shutil.disk_usage(folder).free
    if plan.disk_peak_bytes > free:
        all_temporary = all(s.temporary for s in plan.steps if s.rule == "jacobian_chunk")
        remedy = "" if all_temporary else "set jacobian.keep: none, "
        out.append(
            f"disk: the run needs about {_size(plan.disk_peak_bytes)} at its peak, {folder} has {_size(free)} free; "
            f"{remedy}a smaller n, or results on a larger disk"
        )
    available = psutil.virtual_memory().available
    concurrent = max(s.memory_bytes * max(1, plan.cores // max(1, s.threads)) for s in plan.steps if s.jobs)
    biggest = max(plan.steps, key=lambda s: s.memory_bytes)
    if biggest.memory_bytes > available:
        out.append(
            f"memory: {biggest.name} needs about {_size(biggest.memory_bytes)}, {_size(available)} is available; "
            "lower spectrum.memory_budget_mb or use spectrum.method: topk"
        )
    elif concurrent > available:
        out.append(
            f"memory: {plan.cores} jobs at once may need {_size(concurrent)}, {_size(available)} is available; "
            "run with fewer --cores or give the rules mem_mb resources (--resources mem_mb=...)"
        )
    if device == "cuda":
        import torch

        total = torch.cuda.get_device_properties(0).total_memory
        need = max(plan.steps, key=lambda s: s.gpu_bytes)
        if need.gpu_bytes > total:
            out.append(f"GPU memory: {need.name} needs about {_size(need.gpu_bytes)}, the GPU has {_size(total)}")
    return out


def _size(b: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if b >= scale:
            return f"{b / scale:.1f} {unit}"
    return f"{b / 1e3:.0f} kB"


def _duration(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.0f} s"


def format_plan(plan: Plan) -> str:
    r = plan.rates
    head = ["step", "jobs", "time", "peak memory (a job)", "GPU memory", "disk", "from"]
    rows = [
        [
            s.name,
            str(s.jobs),
            _duration(s.seconds),
            _size(s.memory_bytes),
            _size(s.gpu_bytes) if s.gpu_bytes else "-",
            _size(s.disk_bytes) + (" (temporary)" if s.temporary else ""),
            s.source,
        ]
        for s in plan.steps
    ]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(line, widths)) for line in [head, *rows]]
    total = sum(s.seconds * s.threads for s in plan.steps)
    lines += [
        "",
        f"on {r.device} (p = {r.parameters:,}); measured here: training {1 / r.train_image_seconds:,.0f} images/s, "
        f"Jacobian {1 / r.jacobian_sample_seconds:,.0f} samples/s with its check, Gram update "
        f"{r.gram_flops / 1e9:.1f} G multiply-adds/s, "
        + (
            f"a matrix-free pass {1 / r.matrix_free_pass_seconds:,.0f} samples/s, "
            if r.matrix_free_pass_seconds
            else ""
        )
        + f"a job's start {r.job_start_seconds:.1f} s",
        f"total: {_duration(total)} of core time; about {_duration(plan.wall_seconds)} on {plan.cores} cores; "
        f"disk at its peak {_size(plan.disk_peak_bytes)}",
    ]
    lines += [f"WARNING {w}" for w in plan.warnings] or ["no warnings: disk and memory hold"]
    return "\n".join(lines)


def busy_machine_note(load: float, cpus: int) -> str | None:
    """A warning when more processes were running than there are CPUs while ``plan`` timed the
    machine (``load``: the 1-minute load average, ``plan`` itself included): its rates are then
    those of a shared machine, and can be several times too long."""
    if load <= cpus:
        return None
    return (
        f"machine: the load average was {load:.1f} on {cpus} CPUs while plan timed it, so the times above are "
        "those of a shared machine and can be several times too long; run plan where the work will run, alone"
    )
