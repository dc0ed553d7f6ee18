"""Progress lines for the rules' logs: every script calls :func:`start_log` first."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("jacobian_spectrum")


def start_log(path: str | None = None) -> logging.Logger:
    """Send stderr (warnings, tracebacks, progress lines) to ``path`` (a rule's ``log:``)."""
    if path is not None:
        sys.stderr = open(path, "w", buffering=1)
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True
    )
    return logger
