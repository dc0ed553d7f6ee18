"""Reruns follow the code a job runs: each rule's code param covers its script's import closure."""

import modulefinder
from pathlib import Path

import pytest
from conftest import ROOT, TINY, snakemake

from jacobian_spectrum.codeversion import code_version, imported_modules, module_closure

SRC = ROOT / "src" / "jacobian_spectrum"
SCRIPTS = sorted((ROOT / "workflow" / "scripts").glob("*.py"))


def test_imports_are_found_at_any_depth_and_in_every_form(tmp_path):
    pkg = tmp_path / "jacobian_spectrum"
    pkg.mkdir()
    for name in ("__init__", "a", "b", "c", "d", "unused"):
        (pkg / f"{name}.py").write_text("VERSION = 1\n" if name == "__init__" else "")
    (pkg / "a.py").write_text("from .b import x\n\ndef f():\n    from . import c\n    import numpy\n")
    (pkg / "b.py").write_text("from jacobian_spectrum.d import y\nfrom . import VERSION\n")
    script = tmp_path / "script.py"
    script.write_text("import os\n\nif True:\n    from jacobian_spectrum import a  # noqa\n")
    assert imported_modules(script, pkg) == {"a"}
    assert imported_modules(pkg / "a.py", pkg) == {"b", "c"}  # the import inside a function too
    assert imported_modules(pkg / "b.py", pkg) == {"d", "__init__"}
    assert module_closure(script, pkg) == ["__init__", "a", "b", "c", "d"]
    before = code_version(script, pkg)
    (pkg / "unused.py").write_text("# edited\n")
    assert code_version(script, pkg) == before
    (pkg / "d.py").write_text("# edited\n")  # two imports away
    assert code_version(script, pkg) != before


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_the_closure_matches_what_python_would_import(script):
    # modulefinder reads the bytecode (an independent way to the same answer)
    finder = modulefinder.ModuleFinder(path=[str(SRC.parent)])
    finder.run_script(str(script))
    found = {
        name.split(".", 1)[1] if "." in name else "__init__"
        for name in finder.modules
        if name.split(".")[0] == SRC.name
    }
    assert module_closure(script, SRC) == sorted(found)


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


def test_every_script_rule_versions_its_own_script():
    # the wiring half of "reruns follow the code": code_version's half is tested above, and
    # Snakemake's half (a changed param reruns the job) end to end below
    blocks = {r: b for r, b in rule_blocks().items() if b[0]}
    assert len(blocks) == len(SCRIPTS)
    assert {r: b[0] for r, b in blocks.items()} == {r: b[1] for r, b in blocks.items()}
    assert {b[0] for b in blocks.values()} == {s.name for s in SCRIPTS}


# modules whose importers differ: none of the scripts (config), three rules' worth
# (analysis_figures), the Jacobian jobs only (jacobian_probe), the theory rules only (theory),
# one rule (train). With the wiring test above and the closure test, every rule is covered
# without a dry run per module (a minute each on 2 cores).
EDITED = ("config", "analysis_figures", "jacobian_probe", "theory", "train")


@pytest.mark.slow
def test_editing_a_module_reruns_exactly_the_rules_that_import_it(tiny_results):
    scripts_of = {r: ROOT / "workflow" / "scripts" / b[0] for r, b in rule_blocks().items() if b[0]}
    assert params_changed_rules(tiny_results) == set()
    for name in EDITED:
        module = SRC / f"{name}.py"
        expected = {r for r, s in scripts_of.items() if module.stem in module_closure(s, SRC)}
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
