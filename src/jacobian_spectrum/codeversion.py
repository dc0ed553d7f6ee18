"""Which package sources a workflow script runs: the rerun trigger for code changes.

Snakemake reruns a job when its rule's script changes, but it cannot see the package modules
the script imports. Each rule therefore gets a ``code`` param: a hash of its script and of every
package module in the script's import closure, found by reading the sources with :mod:`ast`
(imports inside functions included), never from a hand-written list that can drift.
Light imports only: the workflow calls this while parsing.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = __name__.split(".")[0]
PACKAGE_DIR = Path(__file__).resolve().parent


def imported_modules(path: str | Path, package_dir: str | Path = PACKAGE_DIR) -> set[str]:
    """Names of the package's modules (``data``, ``h5io``, ...) that the file imports directly.

    Absolute imports (``from jacobian_spectrum.data import x``, ``from jacobian_spectrum
    import theory``) count in any file; relative ones (``from .h5io import y``, ``from .
    import __version__``) in the package's own modules.
    """
    path, package_dir = Path(path), Path(package_dir)
    inside = path.resolve().parent == package_dir.resolve()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE:
                    found.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and node.module.split(".")[0] == PACKAGE:
                rest = node.module.split(".")[1:]
            elif node.level == 1 and inside:
                rest = node.module.split(".") if node.module else []
            else:
                continue
            # "from package import name": name is a module, or something __init__ defines
            names = rest[:1] or [a.name if (package_dir / f"{a.name}.py").is_file() else "__init__" for a in node.names]
            found.update(names)
    return {m for m in found if (package_dir / f"{m}.py").is_file()}


def module_closure(script: str | Path, package_dir: str | Path = PACKAGE_DIR) -> list[str]:
    """Every package module the script runs: its imports, theirs, and so on (and ``__init__``,
    which Python runs before any of them)."""
    package_dir = Path(package_dir)
    seen: set[str] = set()
    todo = list(imported_modules(script, package_dir))
    if todo:
        todo.append("__init__")
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(imported_modules(package_dir / f"{module}.py", package_dir))
    return sorted(seen)


def code_version(script: str | Path, package_dir: str | Path = PACKAGE_DIR) -> str:
    """Hash of a script and of every package module it runs: a rule's ``code`` param."""
    package_dir = Path(package_dir)
    h = hashlib.sha256(Path(script).read_bytes())
    for module in module_closure(script, package_dir):
        h.update(module.encode())
        h.update((package_dir / f"{module}.py").read_bytes())
    return h.hexdigest()[:16]
