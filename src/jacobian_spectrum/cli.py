"""Command line (``python -m jacobian_spectrum`` or ``jacobian-spectrum``).

``inspect FILE...`` prints any of the workflow's HDF5 files as a tree with shapes, dtypes and
attrs; for a Jacobian also the Frobenius norm of each parameter tensor's column block.
``materialise JACOBIAN COPY`` writes a self-contained copy of one Jacobian file (J is a
virtual dataset over its chunk files; the copy holds the values and reads anywhere).
``plan [--configfile FILE] [--device cpu|cuda] [--cores N]`` prints each step's expected
time, memory, GPU memory and disk before a run (:mod:`jacobian_spectrum.plan`).
``job-times [LOG] [--jobs]`` tells where a workflow run's time went, per rule, from its
Snakemake log (:mod:`jacobian_spectrum.common.job_times`). ``factors CONFIG[=TIME_LOG]...``
prints docs/cifar10.md's factor table from finished runs (:mod:`jacobian_spectrum.figures.factors`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import numpy as np


def _fmt_attr(value: object, width: int = 100) -> str:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.ndarray):
        text = np.array2string(value, threshold=8, precision=4)
    else:
        text = str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 3] + "..."


def describe(path: str | Path, out=sys.stdout) -> None:
    """Write the tree of an HDF5 file to ``out``."""
    from .common.h5io import check_all_virtual_sources, open_checked

    with open_checked(path) as f:
        check_all_virtual_sources(f, path)  # a copied J without its chunk files is named, not printed as NaN
        print(f"{path}", file=out)
        for key, value in sorted(f.attrs.items()):
            print(f"  @{key} = {_fmt_attr(value)}", file=out)

        def visit(name: str, obj: h5py.HLObject) -> None:
            depth = name.count("/") + 1
            pad = "  " * depth
            if isinstance(obj, h5py.Dataset):
                print(f"{pad}{name.split('/')[-1]}  {obj.shape} {obj.dtype}", file=out)
            else:
                print(f"{pad}{name.split('/')[-1]}/", file=out)
            for key, value in sorted(obj.attrs.items()):
                print(f"{pad}  @{key} = {_fmt_attr(value)}", file=out)

        f.visititems(visit)
        is_jacobian = f.attrs.get("artifact") in ("jacobian", "jacobian_chunk")
    if is_jacobian:
        from .jacobian.store import layer_norms

        norms = layer_norms(path)
        total = float(np.sqrt(sum(v**2 for _, v in norms)))
        print(f"  per-layer Frobenius norms of J (total {total:.6g}):", file=out)
        for name, value in norms:
            print(f"    {name:<40s} {value:.6g}", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jacobian-spectrum", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_inspect = sub.add_parser(
        "inspect", help="print an HDF5 artifact as a tree (shapes, dtypes, attrs; J: per-layer norms)"
    )
    p_inspect.add_argument("files", nargs="+")
    p_copy = sub.add_parser(
        "materialise", help="write a self-contained copy of a Jacobian file (its J's values, not links to chunk files)"
    )
    p_copy.add_argument("jacobian", help="a jacobian/{split}_epoch{E}.h5 of the workflow")
    p_copy.add_argument("copy", help="the new file (must not exist)")
    p_plan = sub.add_parser(
        "plan", help="expected time, memory, GPU memory and disk of each step of a config, before running it"
    )
    p_plan.add_argument("--configfile", default=None, help="the config to plan (default: config.yaml)")
    p_plan.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the heavy steps will run")
    p_plan.add_argument("--cores", type=int, default=0, help="cores Snakemake will use (default: this machine's)")
    p_times = sub.add_parser("job-times", help="each rule's jobs and seconds from a Snakemake log")
    p_times.add_argument("log", nargs="?", help="a Snakemake log (default: the newest in .snakemake/log)")
    p_times.add_argument("--jobs", action="store_true", help="also list every job")
    p_factors = sub.add_parser("factors", help="docs/cifar10.md's factor table from finished workflow runs")
    p_factors.add_argument("runs", nargs="+", help="CONFIG[=TIME_LOG]: a config whose workflow has finished")
    args = parser.parse_args(argv)
    if args.command in ("job-times", "factors"):
        return tools(args)
    if args.command == "plan":
        from snakemake.exceptions import WorkflowError

        from .plan import main_plan

        try:
            return main_plan(args.configfile, args.device, args.cores)
        except (OSError, ValueError, RuntimeError, WorkflowError) as exc:  # a missing or invalid config, no CUDA
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.command == "materialise":
        from .jacobian.store import materialise

        try:
            materialise(args.jacobian, args.copy)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{args.copy}: a self-contained copy of {args.jacobian}")
        return 0
    status = 0
    for path in args.files:
        try:
            describe(path)
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
    return status


def tools(args: argparse.Namespace) -> int:
    """The two readers of finished runs: job-times (a Snakemake log) and factors (results folders)."""
    try:
        if args.command == "job-times":
            from .common.job_times import job_spans, job_times_report, newest_log

            log = Path(args.log) if args.log else newest_log()
            lines = job_times_report(job_spans(log.read_text()), args.jobs)
            print(f"{log}: " + "\n".join(lines))
        else:
            from .figures.factors import factor_table

            print(factor_table(args.runs), end="")
    except (OSError, ValueError, KeyError) as exc:  # no log, a log without jobs, an unfinished run
        print(f"error: {exc!r}" if isinstance(exc, KeyError) else f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
