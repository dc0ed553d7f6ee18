"""Device selection for every torch step: CUDA when present, TF32 off (numerical rules); and the
few helpers whose work differs on a GPU (synchronising, streams, free memory)."""

from __future__ import annotations

import contextlib
import gc
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

DEVICES = ("auto", "cpu", "cuda")


def select_device(name: str = "auto") -> torch.device:
    """``auto`` = CUDA when present; TF32 off everywhere, so float32 products stay float32."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("config key 'device': cuda requested but torch sees no CUDA device; use auto or cpu")
    if name not in DEVICES:
        raise ValueError(f"config key 'device': {name!r} is not one of {list(DEVICES)}")
    return torch.device(name)


# ---------------------------------------------------------------- the few lines that differ on a GPU
def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU, whose ops run as they are called)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of ``fn()``, the device synchronised before and after."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def new_stream(device: torch.device) -> torch.cuda.Stream | None:
    """A CUDA stream of its own on a GPU (work on it overlaps other streams' work); None on the CPU."""
    return torch.cuda.Stream(device) if device.type == "cuda" else None


def on_stream(stream: torch.cuda.Stream | None) -> contextlib.AbstractContextManager:
    """Queue the block's device work on ``stream`` (from :func:`new_stream`); nothing on the CPU."""
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def free_bytes(device: torch.device) -> float:
    """Free memory where the device's tensors go: the GPU's, or the host's available memory."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    return math.inf


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def release(device: torch.device) -> None:
    """Free what the collector and, on a GPU, the caching allocator hold."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
