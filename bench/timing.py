"""What the bench scripts share (run as ``python bench/NAME.py``): timing with CUDA synchronised,
interleaved best-of rounds, and the one JSON record each prints.

Every benchmark prints exactly one JSON line on stdout: its name, its ratios against a baseline
measured in the same run, its seconds, the machine (CPU model, cores, torch, device) and the
git commit, so that a number in docs/benchmarks.md can be traced to where and what it ran on.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def timed(fn: Callable, device: torch.device) -> tuple[object, float]:
    """(fn's result, wall seconds), synchronising CUDA before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def best_of_interleaved(fns: dict[str, Callable], repeats: int, device: torch.device) -> dict[str, float]:
    """Fastest of ``repeats`` rounds per function, the functions taking turns in each round,
    so that load from other processes on a shared machine hits all of them alike."""
    best = {name: float("inf") for name in fns}
    for fn in fns.values():  # warm-up: allocator, oneDNN primitive caches, CUDA kernels
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], timed(fn, device)[1])
    return best


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device | str) -> dict[str, object]:
    device = torch.device(device)
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:  # no git on this machine (a GPU image): the record says "unknown"
        return ""


def commit() -> str:
    """The checkout's commit, with ``+dirty`` where tracked files differ from it."""
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def emit(benchmark: str, device: torch.device | str, ratios: dict[str, float], **fields: object) -> dict:
    """Print the benchmark's one JSON record on stdout (and return it)."""
    record = {"benchmark": benchmark, "ratios": ratios, **fields, "machine": machine(device), "commit": commit()}
    print(json.dumps(record), flush=True)
    return record
