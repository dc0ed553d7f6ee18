"""Measured runs: the Snakemake ``benchmark:`` files an earlier run left under
``{results}/benchmarks/``, whose seconds and peak memory replace a step's estimate."""

from __future__ import annotations

import csv
from pathlib import Path

from .graph import Step


def benchmark_file(results: str | Path, step: Step) -> list[Path]:
    """The ``benchmark:`` files an earlier run left for this step (empty if none)."""
    results = Path(results) / "benchmarks"
    kind, _, what = step.key.partition(":")
    if kind == "train":
        return [results / "train" / f"{what}.tsv"]
    if kind == "folds":
        return sorted((results / "train").glob(f"{what}_fold*.tsv"))
    if kind == "jacobian":  # its chunk jobs and its gather
        return sorted((results / "jacobian").glob(f"{what}.*.tsv"))
    if kind == "spectrum":
        return [results / "spectrum" / f"{what}.tsv"]
    return []


def read_benchmark(paths: list[Path]) -> tuple[float, float] | None:
    """(seconds summed over the jobs, largest max_rss in bytes) from Snakemake benchmark files."""
    if not paths or not all(p.is_file() for p in paths):
        return None
    seconds, rss = 0.0, 0.0
    for path in paths:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        if not rows:
            return None
        seconds += min(float(r["s"]) for r in rows)
        rss = max(rss, max(float(r["max_rss"]) if r["max_rss"] not in ("", "NA", "-") else 0.0 for r in rows) * 1e6)
    return seconds, rss
