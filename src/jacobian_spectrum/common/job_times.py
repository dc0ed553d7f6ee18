"""Where a workflow run's time went: each rule's jobs and their seconds, from Snakemake's log
(``python -m jacobian_spectrum job-times [LOG] [--jobs]``).

Snakemake stamps each job's start and finish to the second; the sums are job seconds (two
1-thread jobs at once on 2 cores add up to twice the wall time). The report gives, per rule,
the jobs, their seconds and their share, then the run's wall time and how many jobs ran at
once on average; with ``jobs`` also every job (start, end, seconds, rule) in start order.
"""

from __future__ import annotations

import collections
import datetime
import re
from pathlib import Path
from typing import NamedTuple

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]")
RULE = re.compile(r"^(?:local)?rule (\w+):")
JOBID = re.compile(r"^\s+jobid: (\d+)")
FINISHED = re.compile(r"^Finished job(?:id:)? (\d+)")


class JobSpan(NamedTuple):
    rule: str
    start: datetime.datetime
    end: datetime.datetime


def job_spans(text: str) -> list[JobSpan]:
    """(rule, start, finish) of every job the log's text saw finish."""
    stamp = rule = None
    started: dict[str, tuple[str, datetime.datetime]] = {}
    spans = []
    for line in text.splitlines():
        if m := STAMP.match(line):
            stamp = datetime.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif m := RULE.match(line):
            rule = m.group(1)
        elif (m := JOBID.match(line)) and rule is not None:
            started[m.group(1)] = (rule, stamp)
            rule = None
        elif (m := FINISHED.match(line)) and m.group(1) in started:
            name, start = started.pop(m.group(1))
            spans.append(JobSpan(name, start, stamp))
    return spans


def newest_log(folder: str | Path = ".snakemake/log") -> Path:
    logs = sorted(Path(folder).glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)
    if not logs:
        raise FileNotFoundError(f"no log under {folder}: run the workflow here first, or name a log")
    return logs[-1]


def job_times_report(spans: list[JobSpan], jobs: bool = False) -> list[str]:
    """The report's lines: per rule (most seconds first), then the run's wall time and concurrency."""
    if not spans:
        raise ValueError("no finished job in the log")
    t0 = min(s.start for s in spans)
    wall = (max(s.end for s in spans) - t0).total_seconds()
    per_rule: dict[str, list[float]] = collections.defaultdict(list)
    for s in spans:
        per_rule[s.rule].append((s.end - s.start).total_seconds())
    total = sum(sum(v) for v in per_rule.values())
    share = lambda x: x / total if total else 0.0  # noqa: E731 (all jobs within one second: no shares)
    lines = [f"{len(spans)} jobs", f"{'rule':30s} {'jobs':>5s} {'seconds':>8s} {'share':>6s} {'per job':>8s}"]
    for name, secs in sorted(per_rule.items(), key=lambda kv: -sum(kv[1])):
        lines.append(f"{name:30s} {len(secs):5d} {sum(secs):8.0f} {share(sum(secs)):6.1%} {sum(secs) / len(secs):8.1f}")
    at_once = f"{total / wall:.2f}" if wall else "n/a"
    lines.append(
        f"job seconds {total:.0f} over {wall:.0f} s from the first job's start to the last one's end: "
        f"{at_once} jobs at once on average"
    )
    if jobs:
        for s in sorted(spans, key=lambda x: x.start):
            start, end = (s.start - t0).total_seconds(), (s.end - t0).total_seconds()
            lines.append(f"{start:6.0f} {end:6.0f} {end - start:5.0f}  {s.rule}")
    return lines
