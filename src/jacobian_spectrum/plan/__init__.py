"""A plan before the run: each step's time, memory, GPU memory and disk, from the config.

``python -m jacobian_spectrum plan [--configfile FILE] [--device cpu|cuda] [--cores N]``
measures a few seconds of this machine's speed (:mod:`.rates`) and scales it by each step's
arithmetic (:mod:`.graph`, the workflow's jobs). Where an earlier run left Snakemake
``benchmark:`` files (under ``{results}/benchmarks/``) for a step, their measured seconds and
peak memory replace the estimate (:mod:`.measured`). It warns, before anything runs, when the
disk, the memory or the GPU memory will not hold (:mod:`.report`). ``bench/plan_check.py``
compares the estimates with measured runs.

  graph     the workflow's jobs from the config: the steps and what each waits for
  rates     this machine's speed and memory for the configured model
  measured  an earlier run's benchmark files
  report    the plan's totals and warnings, and the table it prints
"""

from __future__ import annotations

import os
import shutil  # noqa: F401  (tests patch shutil.disk_usage through this package)
import sys
from pathlib import Path

from ..config import image_shape, level_tag, load_config, load_networks, network_configs, reference_epoch
from .graph import Step, jacobians, job_steps
from .measured import benchmark_file, read_benchmark
from .rates import PLAN_PANEL_BYTES, Rates, _job_start, _matrix_free_pass_seconds, _model_spec, measure_rates
from .report import Plan, _duration, busy_machine_note, format_plan, make_plan

__all__ = [
    "PLAN_PANEL_BYTES",
    "Plan",
    "Rates",
    "Step",
    "_job_start",
    "_matrix_free_pass_seconds",
    "_model_spec",
    "benchmark_file",
    "busy_machine_note",
    "format_plan",
    "image_shape",
    "jacobians",
    "job_steps",
    "load_config",
    "load_networks",
    "main_plan",
    "make_plan",
    "measure_rates",
    "network_configs",
    "read_benchmark",
    "reference_epoch",
    "run_plan",
]


def run_plan(configfile: str | Path | None, device: str, cores: int) -> dict[str, Plan]:
    """The plan of each network of the config ("" for a plain config), keyed by its name.
    ``measure_rates`` is looked up here, so that tests can stand in for the machine."""
    notes: list[str] = []
    _, networks = load_networks(configfile, notes)
    plans = {}
    for name, net in networks.items():
        print(
            f"measuring this machine for {configfile or 'config.yaml'}{f' network {name}' if name else ''} "
            f"(corruption levels {[level_tag(x) for x in net['corruption']['levels']]})...",
            file=sys.stderr,
        )
        rates = measure_rates(net, device, net["results"])
        plan = make_plan(net, rates, cores, device, table=net["architecture_table"] if name else None)
        busy = busy_machine_note(os.getloadavg()[0], os.cpu_count() or 1)
        plan.warnings += notes + ([busy] if busy else [])
        plans[name] = plan
    return plans


def main_plan(configfile: str | None, device: str, cores: int) -> int:
    """``python -m jacobian_spectrum plan``: print the plan of each network of the config."""
    plans = run_plan(configfile, device, cores or os.cpu_count() or 1)
    for name, plan in plans.items():
        if name:
            print(f"\n== network {name} ==")
        print(format_plan(plan))
    if len(plans) > 1:
        wall = sum(p.wall_seconds for p in plans.values())
        print(
            f"\nall {len(plans)} networks: about {_duration(wall)} on {next(iter(plans.values())).cores} cores, "
            "one after another"
        )
    return 0
