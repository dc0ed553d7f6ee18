"""Device selection for every torch step: CUDA when present, TF32 off (numerical rules)."""

from __future__ import annotations

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
