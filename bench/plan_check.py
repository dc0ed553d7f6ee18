"""The plan's estimates against a measured run: ``python -m jacobian_spectrum plan`` without
the benchmark files, beside what the run's Snakemake ``benchmark:`` files recorded.

Run the workflow first (its heavy rules write ``{results}/benchmarks/``), then on the same
machine, with nothing else running:

  python bench/plan_check.py [--configfile tests/configs/tiny.yaml] [--cores 2]

Prints, per kind of step (training, Jacobian, spectrum), the estimated and measured seconds
summed over its jobs, the largest estimated and measured peak memory of one job, and their
ratios (estimate / measured; the goal is within 0.5 to 2) as one JSON record.

Smallest: --configfile tests/configs/tiny.yaml --results DIR, DIR holding the run's
``benchmarks/`` files (tests/test_bench.py writes a few).
"""

import argparse

from timing import emit

from jacobian_spectrum.plan import benchmark_file, load_config, make_plan, measure_rates, read_benchmark


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configfile", default=None)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--results", default=None, help="the measured run's results folder (default: the config's)")
    args = ap.parse_args()
    config = load_config(args.configfile)
    if args.results:
        config["results"] = args.results
    rates = measure_rates(config, "cpu", config["results"])
    plan = make_plan(config, rates, args.cores, use_benchmarks=False)
    out: dict = {}
    for step in plan.steps:
        measured = read_benchmark(benchmark_file(config["results"], step))
        if measured is None:
            continue
        kind = step.key.split(":")[0]
        zero = dict.fromkeys(("seconds_estimate", "seconds_measured", "rss_estimate", "rss_measured"), 0.0)
        o = out.setdefault(kind, {"steps": 0, **zero})
        o["steps"] += 1
        o["seconds_estimate"] += step.seconds
        o["seconds_measured"] += measured[0]
        o["rss_estimate"] = max(o["rss_estimate"], step.memory_bytes)
        o["rss_measured"] = max(o["rss_measured"], measured[1])
    for o in out.values():
        o["ratio_seconds"] = o["seconds_estimate"] / o["seconds_measured"]
        o["ratio_rss"] = o["rss_estimate"] / o["rss_measured"] if o["rss_measured"] else None
    ratios = {f"{kind}_{r}": o[r] for kind, o in out.items() for r in ("ratio_seconds", "ratio_rss")}
    emit("plan_check", "cpu", ratios, config=args.configfile or "config.yaml", cores=args.cores, steps=out)


if __name__ == "__main__":
    main()
