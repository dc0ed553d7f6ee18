"""Which package sources a workflow script runs: the rerun trigger for code changes.

Snakemake reruns a job when its rule's script changes, but it cannot see the package modules
the script imports. Each rule therefore gets a ``code`` param: a hash of its script and of every
package module in the script's import closure, found by reading the sources with :mod:`ast`
(imports inside functions included), never from a hand-written list that can drift.

Modules are named as Python names them (``jacobian_spectrum.data.subset``). Importing a module
runs the ``__init__.py`` of every package above it, so those count too. Light imports only: the
workflow calls this while parsing.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def module_file(name: str, package_dir: str | Path = PACKAGE_DIR) -> Path | None:
    """The source file of a dotted module name inside the package (a package's ``__init__.py``),
    or None when the name is not one of the package's modules (an attribute, say)."""
    package_dir = Path(package_dir)
    parts = name.split(".")
    if parts[0] != package_dir.name:
        return None
    base = package_dir.joinpath(*parts[1:])
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if len(parts) > 1 and base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def module_name(path: str | Path, package_dir: str | Path = PACKAGE_DIR) -> str | None:
    """The dotted name of a file inside the package; None for a file outside it (a script)."""
    path, package_dir = Path(path).resolve(), Path(package_dir).resolve()
    try:
        parts = path.with_suffix("").relative_to(package_dir).parts
    except ValueError:
        return None
    parts = parts[:-1] if parts[-1:] == ("__init__",) else parts
    return ".".join((package_dir.name, *parts))


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@functools.lru_cache(maxsize=None)
def _import_statements(source: str, filename: str) -> tuple[tuple[int, str, tuple[str, ...]], ...]:
    """(level, module, names) of every import statement in a source, functions' bodies included
    (``import a.b`` as level -1). Parsing is most of the work and a source's statements do not
    change: each module is parsed once per process, not once per script that imports it (the
    workflow hashes 23 scripts' closures while parsing the Snakefile: 400 parses, 4 s, before)."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found.append((-1, "", tuple(a.name for a in node.names)))
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or "", tuple(a.name for a in node.names)))
    return tuple(found)


def imported_modules(path: str | Path, package_dir: str | Path = PACKAGE_DIR) -> set[str]:
    """Dotted names of the package's modules that the file imports directly, with the packages
    above each (whose ``__init__`` Python runs first).

    Absolute imports (``from jacobian_spectrum.data.subset import x``, ``from jacobian_spectrum
    import theory``) count in any file; relative ones (``from ..common.h5io import y``, ``from
    . import store``, at any level) in the package's own modules.
    """
    path, package_dir = Path(path), Path(package_dir)
    package = package_dir.name
    this = module_name(path, package_dir)
    # the package a relative import starts from: the module's own package (itself for __init__)
    here = None if this is None else (this if path.name == "__init__.py" else this.rpartition(".")[0])
    found: set[str] = set()
    for level, module, names in _import_statements(path.read_text(), str(path)):
        if level == -1:
            found.update(n for n in names if n.split(".")[0] == package)
            continue
        if level == 0:
            base = module
        elif here is not None:
            parts = here.split(".")
            if level - 1 >= len(parts):
                continue  # above the package: not ours
            base = ".".join(parts[: len(parts) - (level - 1)] + ([module] if module else []))
        else:
            continue
        if base.split(".")[0] != package:
            continue
        found.add(base)
        # "from package import name": name is a submodule, or something the package defines
        found.update(f"{base}.{n}" for n in names if module_file(f"{base}.{n}", package_dir))
    return {m for name in found for m in _with_parents(name) if module_file(m, package_dir)}


def module_closure(script: str | Path, package_dir: str | Path = PACKAGE_DIR) -> list[str]:
    """Every package module the script runs: its imports, theirs, and so on."""
    seen: set[str] = set()
    todo = list(imported_modules(script, package_dir))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(imported_modules(module_file(module, package_dir), package_dir))
    return sorted(seen)


def code_version(script: str | Path, package_dir: str | Path = PACKAGE_DIR) -> str:
    """Hash of a script and of every package module it runs: a rule's ``code`` param."""
    h = hashlib.sha256(Path(script).read_bytes())
    for module in module_closure(script, package_dir):
        h.update(module.encode())
        h.update(module_file(module, package_dir).read_bytes())
    return h.hexdigest()[:16]
