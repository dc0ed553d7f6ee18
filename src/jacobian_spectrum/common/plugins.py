"""A researcher's own network factory or data loader, named ``package.module:attribute`` in the
config (``model.name``, ``dataset.name``). Light: the workflow resolves them at parse time."""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable

REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_reference(name: str) -> bool:
    """Whether a config name points at an importable object rather than a built-in one."""
    return ":" in name


def import_object(reference: str, key: str) -> Callable:
    """The callable named ``package.module:attribute``; ValueError naming ``key`` and the value
    when it is malformed, cannot be imported or is not callable. The module is imported as
    Python would from the working directory (the workflow's folder) and sys.path."""
    if not REFERENCE.match(reference):
        raise ValueError(
            f"config key '{key}': {reference!r} is not of the form package.module:attribute "
            "(for example examples.own_network:small_cnn)"
        )
    module_name, _, attribute = reference.partition(":")
    # Snakemake runs each job's script from a copy elsewhere: the workflow's folder (the working
    # directory) is not on sys.path there as it is in an interactive session. Last, so that it
    # never shadows an installed package.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a missing module, or one whose import fails
        raise ValueError(
            f"config key '{key}': cannot import module {module_name!r} of {reference!r} "
            f"({type(exc).__name__}: {exc}); it must be importable from the workflow's folder or sys.path"
        ) from exc
    obj = getattr(module, attribute, None)
    if obj is None:
        raise ValueError(f"config key '{key}': module {module_name!r} has no attribute {attribute!r}")
    if not callable(obj):
        raise ValueError(f"config key '{key}': {reference!r} is a {type(obj).__name__}, not a callable")
    return obj
