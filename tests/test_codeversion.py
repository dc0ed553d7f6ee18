"""Reruns follow the code a job runs: each rule's code param covers its script's import closure."""

import modulefinder
from pathlib import Path

import pytest
from conftest import ROOT, TINY, snakemake

from jacobian_spectrum.common.codeversion import (
    code_version,
    imported_modules,
    module_closure,
    module_file,
    module_name,
)

SRC = ROOT / "src" / "jacobian_spectrum"
SCRIPTS = sorted((ROOT / "workflow" / "scripts").glob("*.py"))


def test_imports_are_found_at_any_depth_and_in_every_form(tmp_path):
    pkg = tmp_path / "jacobian_spectrum"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "other").mkdir()
    files = ("__init__", "a", "b", "c", "unused", "sub/__init__", "sub/d", "sub/e", "other/__init__", "other/f")
    for name in files:
        (pkg / f"{name}.py").write_text("VERSION = 1\n" if name == "__init__" else "")
    (pkg / "a.py").write_text("from .b import x\n\ndef f():\n    from . import c\n    import numpy\n")
    (pkg / "b.py").write_text("from jacobian_spectrum.sub.d import y\nfrom . import VERSION\n")
    (pkg / "sub" / "d.py").write_text("from ..other.f import z\nfrom . import e\nfrom ... import outside\n")
    script = tmp_path / "script.py"
    script.write_text("import os\n\nif True:\n    from jacobian_spectrum import a  # noqa\n")
    top = "jacobian_spectrum"
    assert imported_modules(script, pkg) == {top, f"{top}.a"}
    assert imported_modules(pkg / "a.py", pkg) == {top, f"{top}.b", f"{top}.c"}  # the import inside a function too
    assert imported_modules(pkg / "b.py", pkg) == {top, f"{top}.sub", f"{top}.sub.d"}
    # two levels up, a sibling package (its __init__ runs first); one level, a module by name
    assert imported_modules(pkg / "sub" / "d.py", pkg) == {
        top,
        f"{top}.other",
        f"{top}.other.f",
        f"{top}.sub",
        f"{top}.sub.e",
    }
    closure = [f"{top}{m}" for m in ("", ".a", ".b", ".c", ".other", ".other.f", ".sub", ".sub.d", ".sub.e")]
    assert module_closure(script, pkg) == closure
    before = code_version(script, pkg)
    (pkg / "unused.py").write_text("# edited\n")
    assert code_version(script, pkg) == before
    (pkg / "other" / "f.py").write_text("# edited\n")  # four imports away
    assert code_version(script, pkg) != before
    after_f = code_version(script, pkg)
    (pkg / "sub" / "__init__.py").write_text("# edited\n")  # a package that a used module sits in
    assert code_version(script, pkg) != after_f


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_the_closure_matches_what_python_would_import(script):
    # modulefinder reads the bytecode (an independent way to the same answer)
    finder = modulefinder.ModuleFinder(path=[str(SRC.parent)])
    finder.run_script(str(script))
    found = {name for name in finder.modules if name.split(".")[0] == SRC.name}
    assert module_closure(script, SRC) == sorted(found)


def test_the_package_has_no_import_circles():
    # a module's imports (the packages above it aside) never lead back to it
    modules = {module_name(p, SRC) for p in SRC.rglob("*.py")}
    graph = {
        m: {d for d in imported_modules(module_file(m, SRC), SRC) if not m.startswith(d + ".") and d != m}
        for m in modules
    }
    for start in sorted(modules):
        todo, seen = list(graph[start]), set()
        while todo:
            m = todo.pop()
            assert m != start, f"{start} imports itself through {sorted(seen)}"
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])


def params_changed_rules(results: Path) -> set[str]:
    """Rules a dry run would rerun because their params (the code version) changed."""
    proc = snakemake(
        "-n", "--cores", "1", "--configfile", str(TINY), "--config", f"results={results}", "--rerun-triggers", "params"
    )
    rules, current = set(), None
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.endswith(":") and line.split()[0] in ("rule", "localrule"):
            current = line.split()[1][:-1]
        elif line.startswith("reason:") and "Params have changed" in line and current:
            rules.add(current)
    return rules


def rule_blocks() -> dict[str, tuple[str | None, str | None]]:
    """rule -> (its script's file name, the script its code param versions), read from rules/."""
    out: dict[str, list] = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        rule = None
        for line in smk.read_text().splitlines():
            words = line.split()
            if words[:1] == ["rule"]:
                rule = words[1].rstrip(":")
                out[rule] = [None, None]
            elif rule and "workflow/scripts/" in line:
                out[rule][0] = Path(line.strip().strip('"')).name
            elif rule and "code=code_version(" in line:
                out[rule][1] = line.split('code_version("', 1)[1].split('"', 1)[0]
    return {r: tuple(v) for r, v in out.items()}


def inherited_rules() -> dict[str, str]:
    """rule -> the rule it is made from (``use rule base as rule with:``), read from rules/."""
    out = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for line in smk.read_text().splitlines():
            words = line.split()
            if words[:2] == ["use", "rule"] and words[3] == "as":
                out[words[4]] = words[2]
    return out


def test_every_script_rule_versions_its_own_script():
    # the wiring half of "reruns follow the code": code_version's half is tested above, and
    # Snakemake's half (a changed param reruns the job) end to end below
    blocks = {r: b for r, b in rule_blocks().items() if b[0]}
    assert len(blocks) == len(SCRIPTS)
    assert {r: b[0] for r, b in blocks.items()} == {r: b[1] for r, b in blocks.items()}
    assert {b[0] for b in blocks.values()} == {s.name for s in SCRIPTS}


# modules whose importers differ: none of the scripts (config), three rules' worth
# (figures.analysis), the Jacobian jobs only (jacobian.probe), one theory rule (theory.mixture),
# one rule (train.loop). With the wiring test above and the closure test, every rule is covered
# without a dry run per module (a minute each on 2 cores).
EDITED = ("config", "figures.analysis", "jacobian.probe", "theory.mixture", "train.loop")


@pytest.mark.slow
def test_editing_a_module_reruns_exactly_the_rules_that_import_it(tiny_results):
    scripts_of = {r: ROOT / "workflow" / "scripts" / b[0] for r, b in rule_blocks().items() if b[0]}
    assert params_changed_rules(tiny_results) == set()
    for name in EDITED:
        module = module_file(f"{SRC.name}.{name}", SRC)
        expected = {r for r, s in scripts_of.items() if f"{SRC.name}.{name}" in module_closure(s, SRC)}
        expected |= {r for r, base in inherited_rules().items() if base in expected}  # same script, same code
        # the tiny config's rules only (no archive, no matrix-free spectrum)
        expected -= {"extract_archive", "spectrum_matrix_free"}
        original = module.read_bytes()
        try:
            module.write_bytes(original + b"\n# an edit\n")
            changed = params_changed_rules(tiny_results)
        finally:
            module.write_bytes(original)
        # Snakemake names "params have changed" only for jobs not already rerun because an
        # upstream job reruns, so the dry run shows the most upstream importers: no rule
        # outside the expected set, and at least one whenever a script imports the module
        # (test_the_closure_matches_what_python_would_import checks every closure exactly).
        assert changed <= expected, (module.name, changed - expected)
        assert bool(changed) == bool(expected), (module.name, changed, expected)


def test_one_version_string():
    import importlib.metadata

    import jacobian_spectrum

    assert importlib.metadata.version("jacobian-spectrum") == jacobian_spectrum.__version__
    assert "version" not in (ROOT / "CITATION.cff").read_text().split("preferred-citation")[0].replace(
        "cff-version", ""
    )


# the pipeline's order (docs/design.md): a stage's sub-package imports only stages before it
STAGES = ("common", "data", "train", "jacobian", "spectrum", "analysis", "theory", "figures", "architectures")
TOOLS = ("plan",)  # top-level tools over every stage (like cli.py): no stage imports them


def test_each_stage_imports_only_the_stages_before_it():
    assert sorted(STAGES + TOOLS) == sorted(p.parent.name for p in SRC.glob("*/__init__.py"))
    for stage in STAGES:
        for path in (SRC / stage).rglob("*.py"):
            used = {m.split(".")[1] for m in imported_modules(path, SRC) if m.count(".") >= 1}
            later = used & set(STAGES[STAGES.index(stage) + 1 :] + TOOLS)
            assert not later, f"{path.relative_to(SRC)} imports the later stage(s) {sorted(later)}"
