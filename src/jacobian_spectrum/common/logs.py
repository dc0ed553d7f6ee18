"""Progress lines for the rules' logs: every script calls :func:`start_log` first."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

logger = logging.getLogger("jacobian_spectrum")


def start_log(path: str | None = None) -> logging.Logger:
    """Send stderr (warnings, tracebacks, progress lines) to ``path`` (a rule's ``log:``)."""
    if path is not None:
        sys.stderr = open(path, "w", buffering=1)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True
    )
    return logger


def log_to(path: str | Path, append: bool = False) -> logging.Logger:
    """The package's progress lines to stderr and to ``path`` too, for a command that writes its
    own log file beside its results (bench/paper_gpu.py's log.txt); ``append`` continues it."""
    fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(path, mode="a" if append else "w")):
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger
