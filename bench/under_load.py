"""A default training job alone, beside a busy Python loop, and beside a 1-thread PyTorch
training loop (issue 35): its seconds per epoch in each, and the two ratios to alone.

The job is the workflow's own: workflow/scripts/train.py run with the rule's inputs, params
and threads (the default config's sgd_clean run, cut to --epochs epochs), in a fresh process
as Snakemake starts it, so whatever the script sets before torch starts its threads counts.
Its inputs are the default workflow's (results/data/subset.h5, labels, J_init's checkpoint);
missing ones are made first with ``snakemake --cores 2 <them>``. The three settings take
turns, --repeats rounds; each ratio is of the fastest round (load from other work on a shared
machine hits all of them alike). The load processes run at the job's priority, one of each.

  python bench/under_load.py [--epochs 30] [--repeats 2] [--threads N] [--env OMP_WAIT_POLICY=PASSIVE]

--threads: the job's threads (default: training.threads of config.yaml, as the workflow gives
it); --env: extra variables for the job's environment (the measurements in docs/benchmarks.md).
A job that runs past --timeout seconds is stopped; its epochs so far (from its log) count.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = "sgd_clean"
LOADS = {
    "alone": None,
    "busy_python": [sys.executable, "-c", "while True: pass"],
    "torch_1thread": [sys.executable, str(Path(__file__).resolve()), "--torch-load"],
}


# ---------------------------------------------------------------- the load: a 1-thread PyTorch training loop
def torch_load() -> None:
    """Train the default model on random data of the default shape forever, on 1 thread."""
    import torch

    from jacobian_spectrum.plan import load_config
    from jacobian_spectrum.train.loop import least_squares_loss
    from jacobian_spectrum.train.models import ModelSpec, build_model

    torch.set_num_threads(1)
    config = load_config(None)
    k = len(config["dataset"]["classes"])
    model = build_model(ModelSpec(config["model"]["name"], 1, 8, k, width=config["model"]["width"]), seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(config["training"]["batch_size"], 1, 8, 8)
    y = torch.nn.functional.one_hot(torch.randint(0, k, (len(x),)), k).float()
    while True:
        loss = least_squares_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


# ---------------------------------------------------------------- the job: workflow/scripts/train.py
def job_params(config: dict, epochs: int, threads: int | None) -> dict:
    from jacobian_spectrum.config import level_tag

    results = ROOT / config["results"]
    run = dict(config["runs"][RUN], epochs=epochs)
    run["milestones"] = [m for m in run.get("milestones", []) if m < epochs]
    run.pop("reference_epoch", None)
    return {
        "subset": str(results / "data" / "subset.h5"),
        "labels": str(results / "data" / f"labels_noise{level_tag(run['corruption'])}.h5"),
        "init": str(results / "init" / "checkpoints" / "epoch0.pt"),
        "settings": run,
        "training": config["training"],
        "device": config["device"],
        "threads": int(config["training"]["threads"] if threads is None else threads),
    }


def run_job(params: dict, out: str) -> None:
    """Run workflow/scripts/train.py as Snakemake's script directive does (a ``snakemake``
    object in its globals) in this fresh process."""
    import runpy
    from types import SimpleNamespace as NS

    p = params
    out = Path(out)
    smk = NS(
        log=[str(out / "train.log")],
        wildcards=NS(run=RUN),
        input=NS(subset=p["subset"], labels=p["labels"], init=p["init"]),
        params=NS(
            settings=p["settings"],
            training=p["training"],
            checkpoint_epochs=[0, int(p["settings"]["epochs"])],
            device=p["device"],
            resume=str(out / "resume" / "state.pt"),
        ),
        threads=p["threads"],
        output=NS(trajectory=str(out / "trajectory.h5"), checkpoints=str(out / "checkpoints")),
    )
    runpy.run_path(
        str(ROOT / "workflow" / "scripts" / "train.py"), init_globals={"snakemake": smk}, run_name="__main__"
    )


EPOCH_LINE = re.compile(r"epoch (\d+)/\d+ .* ([0-9.]+)s$")


def epoch_seconds(out: Path) -> list[float]:
    """The job's seconds per epoch: from its trajectory, or from its log when it was stopped."""
    traj = out / "trajectory.h5"
    if traj.is_file():
        import h5py

        with h5py.File(traj, "r") as f:
            return [float(s) for s in f["epoch_seconds"][1:]]
    lines = (out / "train.log").read_text().splitlines() if (out / "train.log").is_file() else []
    return [float(m.group(2)) for m in map(EPOCH_LINE.search, lines) if m]


def one_job(params: dict, env: dict, timeout: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="under_load_") as tmp:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--job", json.dumps(params), tmp]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = "timeout"
        wall = time.perf_counter() - t0
        seconds = epoch_seconds(Path(tmp))
        if rc not in (0, "timeout") or not seconds:
            log = Path(tmp, "train.log")
            raise RuntimeError(f"training job failed ({rc}): {log.read_text()[-2000:] if log.is_file() else ''}")
    # epoch 1 warms up (allocator, oneDNN primitives); a stopped job's epochs stand for all of them
    steady = seconds[1:] or seconds
    return {
        "epochs_done": len(seconds),
        "stopped": rc == "timeout",
        "median_epoch_s": statistics.median(steady),
        "mean_epoch_s": statistics.fmean(steady),
        "job_wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="the job's threads (default: the config's)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra job environment")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds after which a job is stopped")
    ap.add_argument("--torch-load", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--job", nargs=2, metavar=("PARAMS", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.torch_load:
        return torch_load()
    if args.job:
        return run_job(json.loads(args.job[0]), args.job[1])

    os.chdir(ROOT)  # load_config reads this checkout's schema and config.yaml
    from jacobian_spectrum.plan import load_config

    config = load_config(None)
    params = job_params(config, args.epochs, args.threads)
    missing = [params[k] for k in ("subset", "labels", "init") if not Path(params[k]).is_file()]
    if missing:
        rel = [str(Path(m).relative_to(ROOT)) for m in missing]
        print("making the default workflow's inputs:", *rel, file=sys.stderr)
        # the targets first: --quiet takes several values
        subprocess.run(["snakemake", *rel, "--cores", "2", "--quiet", "all"], check=True, cwd=ROOT)
    env = dict(os.environ, **dict(e.split("=", 1) for e in args.env))
    best: dict[str, dict] = {}
    rounds: dict[str, list[dict]] = {name: [] for name in LOADS}
    for _ in range(args.repeats):
        for name, load_cmd in LOADS.items():  # the settings take turns in each round
            load = subprocess.Popen(load_cmd, stdout=subprocess.DEVNULL) if load_cmd else None
            try:
                if load:
                    time.sleep(3.0 if name == "torch_1thread" else 0.5)  # the load is running (torch imported)
                r = one_job(params, env, args.timeout)
            finally:
                if load:
                    load.kill()
                    load.wait()
            rounds[name].append(r)
            if name not in best or r["mean_epoch_s"] < best[name]["mean_epoch_s"]:
                best[name] = r
    alone = best["alone"]["mean_epoch_s"]
    print(
        json.dumps(
            {
                "threads": params["threads"],
                "env": dict(e.split("=", 1) for e in args.env),
                "epochs": args.epochs,
                "cores": os.cpu_count(),
                "best": best,
                "rounds_mean_epoch_s": {n: [round(r["mean_epoch_s"], 4) for r in rs] for n, rs in rounds.items()},
                "busy_python_over_alone": best["busy_python"]["mean_epoch_s"] / alone,
                "torch_1thread_over_alone": best["torch_1thread"]["mean_epoch_s"] / alone,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
