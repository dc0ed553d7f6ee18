"""The documentation stays a reference: within its size budget, without commit hashes, and with
every link and docs anchor (from the pages and from the code) resolving."""

import re
from functools import cache
from pathlib import Path

import pytest
from conftest import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
MARKDOWN = [README, *PAGES]
CODE_DIRS = ("src", "rules", "workflow")

HASH = re.compile(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
BARE_MD_ANCHOR = re.compile(r"(?<![\w./-])([\w./-]*\w\.md)#([\w-]+)")
FENCE = re.compile(r"^\s*(```|~~~)")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def github_anchor(heading: str) -> str:
    """GitHub's heading anchor: lowercase, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link keeps its text
    text = text.lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def prose_lines(text: str):
    """The lines outside fenced code blocks."""
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield line


@cache
def anchors(path: Path) -> frozenset:
    found, seen = set(), {}
    for line in prose_lines(path.read_text(encoding="utf-8")):
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = github_anchor(m.group(2))
        n = seen.get(slug, 0)
        found.add(slug if n == 0 else f"{slug}-{n}")
        seen[slug] = n + 1
    return frozenset(found)


def resolve(target: str, base: Path) -> tuple[Path, str]:
    path, _, anchor = target.partition("#")
    file = base if not path else (base.parent / path).resolve()
    return file, anchor


def check_target(target: str, source: Path) -> str | None:
    """None if the link resolves, else why not."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
        return None
    file, anchor = resolve(target, source)
    if not file.exists():
        return f"{rel(source)}: {target}: no such file"
    if anchor and file.suffix == ".md" and anchor not in anchors(file):
        return f"{rel(source)}: {target}: no heading with anchor #{anchor} in {rel(file)}"
    return None


def test_readme_within_budget():
    assert README.stat().st_size <= 6_000, f"README.md is {README.stat().st_size} bytes"


def test_docs_within_budget():
    sizes = {page.name: page.stat().st_size for page in PAGES}
    over = {name: size for name, size in sizes.items() if size > 12_000}
    assert not over, f"pages over 12,000 bytes: {over}"
    assert sum(sizes.values()) <= 70_000, f"docs/*.md hold {sum(sizes.values())} bytes: {sizes}"


@pytest.mark.parametrize("path", MARKDOWN, ids=rel)
def test_no_commit_hashes(path):
    hits = [
        f"{i}: {m.group(0)}"
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        for m in HASH.finditer(line)
    ]
    assert not hits, f"{rel(path)} names commit-like hashes (git history keeps them): {hits}"


@pytest.mark.parametrize("path", MARKDOWN, ids=rel)
def test_links_resolve(path):
    text = "\n".join(prose_lines(path.read_text(encoding="utf-8")))
    targets = {m.group(1) for m in LINK.finditer(text)}
    targets |= {f"{m.group(1)}#{m.group(2)}" for m in BARE_MD_ANCHOR.finditer(text)}
    broken = [why for target in sorted(targets) if (why := check_target(target, path))]
    assert not broken, "\n".join(broken)


def code_files():
    for folder in CODE_DIRS:
        for file in sorted((ROOT / folder).rglob("*")):
            if file.is_file() and file.suffix in {".py", ".smk", ".yaml", ".yml", ".rst", ".md", ""}:
                yield file
    yield ROOT / "Snakefile"


def test_code_references_to_docs_resolve():
    """Error messages and comments link to pages and anchors (docs/artifacts.md#degenerate-networks)."""
    broken, count = [], 0
    for file in code_files():
        if not file.exists():
            continue
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for m in BARE_MD_ANCHOR.finditer(text):
            path, anchor = m.group(1), m.group(2)
            doc = ROOT / path if path.startswith("docs/") else DOCS / Path(path).name
            if not doc.exists() and not path.startswith("docs/"):
                continue  # an output of the workflow (tables/comparison.md), not a page
            count += 1
            if not doc.exists():
                broken.append(f"{rel(file)}: {m.group(0)}: no such page")
            elif anchor not in anchors(doc):
                broken.append(f"{rel(file)}: {m.group(0)}: no such heading in {rel(doc)}")
        for m in re.finditer(r"(?<![\w/])docs/[\w./-]+\.md", text):
            count += 1
            if not (ROOT / m.group(0)).exists():
                broken.append(f"{rel(file)}: {m.group(0)}: no such page")
    assert count, "no reference to the docs found in the code: the scan is broken"
    assert not broken, "\n".join(broken)


def test_anchor_rule():
    assert github_anchor("Batch-norm statistics") == "batch-norm-statistics"
    assert github_anchor("The paper's experiment on one GPU (`bench/paper_gpu.py`)") == (
        "the-papers-experiment-on-one-gpu-benchpaper_gpupy"
    )
    assert github_anchor("What decides whether J_final takes up the noise") == (
        "what-decides-whether-j_final-takes-up-the-noise"
    )
