"""Where a workflow run's time went: each rule's jobs and their seconds, from Snakemake's log.

    python bench/job_times.py                       # the newest log under .snakemake/log
    python bench/job_times.py path/to/run.snakemake.log [--jobs]

Snakemake stamps each job's start and finish to the second; the sums below are job seconds
(two 1-thread jobs at once on 2 cores add up to twice the wall time). It prints, per rule,
the jobs, their seconds and their share, then the run's wall time and how many jobs ran at
once on average. ``--jobs`` lists every job (start, end, seconds, rule) in start order.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import re
from pathlib import Path

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]")
RULE = re.compile(r"^(?:local)?rule (\w+):")
JOBID = re.compile(r"^\s+jobid: (\d+)")
FINISHED = re.compile(r"^Finished job(?:id:)? (\d+)")


def job_spans(log: Path) -> list[tuple[str, datetime.datetime, datetime.datetime]]:
    """(rule, start, finish) of every job the log saw finish."""
    stamp = rule = None
    started: dict[str, tuple[str, datetime.datetime]] = {}
    spans = []
    for line in log.read_text().splitlines():
        if m := STAMP.match(line):
            stamp = datetime.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
        elif m := RULE.match(line):
            rule = m.group(1)
        elif (m := JOBID.match(line)) and rule is not None:
            started[m.group(1)] = (rule, stamp)
            rule = None
        elif (m := FINISHED.match(line)) and m.group(1) in started:
            name, start = started.pop(m.group(1))
            spans.append((name, start, stamp))
    return spans


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log", nargs="?", type=Path, help="a Snakemake log (default: the newest in .snakemake/log)")
    ap.add_argument("--jobs", action="store_true", help="also list every job")
    args = ap.parse_args()
    log = args.log
    if log is None:
        logs = sorted(Path(".snakemake/log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)
        if not logs:
            raise SystemExit("no log under .snakemake/log: run the workflow here first, or name a log")
        log = logs[-1]
    spans = job_spans(log)
    if not spans:
        raise SystemExit(f"{log}: no finished job in it")
    t0 = min(s for _, s, _ in spans)
    wall = (max(e for _, _, e in spans) - t0).total_seconds()
    per_rule: dict[str, list[float]] = collections.defaultdict(list)
    for name, s, e in spans:
        per_rule[name].append((e - s).total_seconds())
    total = sum(sum(v) for v in per_rule.values())
    print(f"{log}: {len(spans)} jobs")
    print(f"{'rule':30s} {'jobs':>5s} {'seconds':>8s} {'share':>6s} {'per job':>8s}")
    for name, secs in sorted(per_rule.items(), key=lambda kv: -sum(kv[1])):
        print(f"{name:30s} {len(secs):5d} {sum(secs):8.0f} {sum(secs) / total:6.1%} {sum(secs) / len(secs):8.1f}")
    print(
        f"job seconds {total:.0f} over {wall:.0f} s from the first job's start to the last one's end: "
        f"{total / wall:.2f} jobs at once on average"
    )
    if args.jobs:
        for name, s, e in sorted(spans, key=lambda x: x[1]):
            start, end = (s - t0).total_seconds(), (e - t0).total_seconds()
            print(f"{start:6.0f} {end:6.0f} {end - start:5.0f}  {name}")


if __name__ == "__main__":
    main()
