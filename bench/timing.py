"""Timing helpers shared by the bench scripts (run as ``python bench/NAME.py``)."""

import time

import torch


def timed(fn, device: torch.device):
    """(fn's result, wall seconds), synchronising CUDA before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def best_of_interleaved(fns: dict, repeats: int, device: torch.device) -> dict:
    """Fastest of ``repeats`` rounds per function, the functions taking turns in each round,
    so that load from other processes on a shared machine hits all of them alike."""
    best = {name: float("inf") for name in fns}
    for fn in fns.values():  # warm-up: allocator, oneDNN primitive caches, CUDA kernels
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], timed(fn, device)[1])
    return best
