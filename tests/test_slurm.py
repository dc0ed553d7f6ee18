"""The workflow run through a real (single-node) SLURM cluster gives the same artifacts
as a local run.

The cluster is the one `.ci/slurm.sh up` starts on this machine (`.ci/run` does that
before pytest). Without it (no `sinfo` on PATH, or no node idle/mixed/allocated) the
SLURM tests skip and say why. The comparator's own tests below always run.

    .ci/slurm.sh up && pytest -m slow tests/test_slurm.py -s
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from h5compare import assert_h5_trees_equal

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
CONFIGFILE = REPO / "tests" / "configs" / "tiny.yaml"
SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm-local"
# Targets of both runs. None: the default target (rule `all`). Otherwise a list of rule
# names or output paths; "{results}" in a path is replaced by that run's results folder
# (e.g. "{results}/runs/base/measurements.h5").
# One spectrum's chain: every rule with SLURM resources of its own (train, three jacobian_chunk
# jobs, spectrum) and ones with the default resources (subsample, corrupt_labels, initialise,
# jacobian_gather), in 9 jobs. Each job is a fresh snakemake and torch on the test node, and the
# plugin polls job states at a growing interval: the run's 29-job chain to measurements.h5 took
# 221 s, all 72 jobs of the tiny workflow 8 minutes, for no path through the executor that these
# do not take.
TARGETS: list[str] | None = ["{results}/runs/sgd_corrupt50/spectrum/train_epoch6.h5"]
RTOL = 1e-6
ATOL = 1e-7
LOCAL_CORES = 2
# Wall-clock limit of each snakemake run (seconds).
RUN_TIMEOUT = int(os.environ.get("SLURM_TEST_TIMEOUT", "3600"))

UP_STATES = {"idle", "mixed", "allocated", "completing"}


def slurm_unavailable_reason(wait_s: float = 10.0) -> str | None:
    """None when a SLURM node is usable, else why not (for pytest.skip)."""
    if shutil.which("sinfo") is None:
        return "sinfo not on PATH: SLURM is not installed (`.ci/slurm.sh up` installs and starts it)"
    deadline = time.monotonic() + wait_s
    last = ""
    while True:
        try:
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=5)
            # A suffix flags trouble ("idle*": slurmd not responding): plain states only.
            if set(out.stdout.split()) & UP_STATES:
                return None
            last = (out.stdout.strip() or out.stderr.strip()).replace("\n", " ")
        except subprocess.TimeoutExpired:
            last = "sinfo timed out"
        if time.monotonic() >= deadline:
            return f"SLURM cluster is not up (sinfo -h -o %T: {last!r}); start it with `.ci/slurm.sh up`"
        time.sleep(1)


def node_cpus() -> int:
    """CPUs of the largest node (caps rule threads: more would be rejected by sbatch)."""
    out = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, timeout=10)
    cpus = [int(x.rstrip("+")) for x in out.stdout.split() if x.rstrip("+").isdigit()]
    return max(cpus) if cpus else 1


def _tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"(no {path})"


def run_snakemake(args: list[str], log: Path, workdir: Path, slurm_logdir: Path | None = None) -> float:
    """Run snakemake with ``args``; output to ``log``. Fails the test with the log tails."""
    cmd = [sys.executable, "-m", "snakemake", *args]
    start = time.monotonic()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        try:
            proc = subprocess.run(cmd, cwd=workdir, stdout=f, stderr=subprocess.STDOUT, timeout=RUN_TIMEOUT)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = f"timeout after {RUN_TIMEOUT} s"
    elapsed = time.monotonic() - start
    if rc != 0:
        msg = [f"snakemake failed ({rc}): {' '.join(cmd)}", f"--- tail of {log}", _tail(log)]
        if slurm_logdir is not None and slurm_logdir.is_dir():
            for p in sorted(slurm_logdir.rglob("*.log"))[-3:]:  # failed jobs' logs are kept
                msg += [f"--- tail of SLURM log {p}", _tail(p, 30)]
        pytest.fail("\n".join(msg), pytrace=False)
    return elapsed


def _targets(results: Path, targets: list[str] | None) -> list[str]:
    return [t.replace("{results}", str(results)) for t in (targets or [])]


def run_slurm_and_local(
    tmp: Path,
    snakefile: Path,
    configfile: Path | None,
    workdir: Path,
    targets: list[str] | None = None,
    local_results: Path | None = None,
) -> dict:
    """Run the workflow through SLURM into tmp/slurm, locally into tmp/local; compare.

    ``local_results``: an existing local run of the same config, of these targets or more (skips
    the local run; the SLURM run's files are compared with the same files there).
    """
    slurm_res, local_res = tmp / "slurm", (local_results or tmp / "local")
    slurm_logs = tmp / "slurm_logs"
    common = ["--snakefile", str(snakefile), "--directory", str(workdir)]
    if configfile is not None:
        common += ["--configfile", str(configfile)]

    t_slurm = run_snakemake(
        [
            "--profile",
            str(SLURM_PROFILE),
            *common,
            "--config",
            f"results={slurm_res}",
            "--max-threads",
            str(node_cpus()),
            "--slurm-logdir",
            str(slurm_logs),
            *_targets(slurm_res, targets),
        ],
        tmp / "snakemake_slurm.log",
        workdir,
        slurm_logs,
    )
    t_local = (
        0.0
        if local_results
        else run_snakemake(
            [
                "--cores",
                str(LOCAL_CORES),
                *common,
                "--config",
                f"results={local_res}",
                "--printshellcmds",
                *_targets(local_res, targets),
            ],
            tmp / "snakemake_local.log",
            workdir,
        )
    )
    print(f"\nslurm run {t_slurm:.0f} s, local run {t_local:.0f} s")
    summary = assert_h5_trees_equal(slurm_res, local_res, rtol=RTOL, atol=ATOL, a_within_b=local_results is not None)
    skipped = Counter(s.rsplit(":/", 1)[-1] for s in summary["skipped"])
    print(
        f"compared {summary['h5_files']} .h5 files ({summary['datasets']} datasets), "
        f"{summary['csv_files']} .csv files; skipped as provenance (name: files): {dict(skipped)}"
    )
    assert summary["h5_files"] > 0, f"no .h5 file under {slurm_res}: nothing was compared"
    return summary


@pytest.fixture
def slurm_cluster():
    reason = slurm_unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.mark.slow
def test_sbatch_runs_a_job(slurm_cluster, tmp_path):
    """The cluster itself: one job through sbatch --wait."""
    out = tmp_path / "job.out"
    proc = subprocess.run(
        [
            "sbatch",
            "--wait",
            "--parsable",
            "-t",
            "2",
            "--mem",
            "50",
            "-c",
            "1",
            "-o",
            str(out),
            "-D",
            str(tmp_path),
            "--wrap",
            "echo ok $SLURM_JOB_ID",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().startswith("ok "), out.read_text()


@pytest.mark.slow
def test_workflow_slurm_equals_local(slurm_cluster, tmp_path, tiny_results):
    assert CONFIGFILE.is_file(), f"{CONFIGFILE} is missing: the tiny config this test runs"
    # the local side is the session's tiny run (conftest.tiny_results): same config, all targets
    run_slurm_and_local(tmp_path, SNAKEFILE, CONFIGFILE, REPO, TARGETS, local_results=tiny_results)


# --- the comparator (fast) ---


def _write_tree(
    root: Path, *, scale: float = 1.0, ints=(1, 2, 3), host="a", extra: bool = False, csv_value: str = "0.5"
) -> None:
    (root / "runs" / "x").mkdir(parents=True)
    with h5py.File(root / "runs" / "x" / "m.h5", "w") as f:
        f["ints"] = np.array(ints)
        f["g/floats"] = np.linspace(0, 1, 5) * scale
        f["g/names"] = np.array([b"a", b"b"])
        f["wall_seconds"] = np.array([time.time()])
        f["g/floats"].attrs["unit"] = "m"
        f.attrs["hostname"] = host
        f.attrs["git_revision"] = host * 3
        f.attrs["config"] = f'{{"results": "{root}", "k": 3}}'
        if extra:
            f["extra"] = np.zeros(2)
    (root / "tables").mkdir()
    (root / "tables" / "t.csv").write_text(f"name,value\nfoo,{csv_value}\n")


def test_h5compare_equal_trees_ignore_provenance(tmp_path):
    _write_tree(tmp_path / "a", host="a")
    _write_tree(tmp_path / "b", host="bb", scale=1 + 1e-9, csv_value="0.5000000001")
    summary = assert_h5_trees_equal(tmp_path / "a", tmp_path / "b", rtol=1e-6, atol=1e-7)
    assert summary["h5_files"] == 1 and summary["csv_files"] == 1 and summary["datasets"] == 3
    assert any("hostname" in s for s in summary["skipped"])
    assert any("wall_seconds" in s for s in summary["skipped"])


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"scale": 1.001}, "runs/x/m.h5:/g/floats: values differ"),
        ({"ints": (1, 2, 4)}, "runs/x/m.h5:/ints: integer values differ"),
        ({"extra": True}, "only in B ['extra']"),
        ({"csv_value": "0.6"}, "tables/t.csv: row 1 column 'value'"),
    ],
)
def test_h5compare_reports_first_difference(tmp_path, kwargs, expected):
    _write_tree(tmp_path / "a")
    _write_tree(tmp_path / "b", **kwargs)
    with pytest.raises(AssertionError) as err:
        assert_h5_trees_equal(tmp_path / "a", tmp_path / "b", rtol=1e-6, atol=1e-7)
    assert expected in str(err.value)


def test_h5compare_missing_file(tmp_path):
    _write_tree(tmp_path / "a")
    _write_tree(tmp_path / "b")
    (tmp_path / "b" / "runs" / "x" / "m.h5").rename(tmp_path / "b" / "runs" / "x" / "n.h5")
    with pytest.raises(AssertionError, match=r"only in .*\['runs/x/m.h5'\]"):
        assert_h5_trees_equal(tmp_path / "a", tmp_path / "b")


def test_h5compare_a_run_of_fewer_targets_within_a_larger_one(tmp_path):
    _write_tree(tmp_path / "a")
    _write_tree(tmp_path / "b")
    with h5py.File(tmp_path / "b" / "runs" / "x" / "more.h5", "w") as f:
        f["x"] = np.zeros(2)
    # the larger run may hold more files; the smaller one's must all be there and equal
    assert assert_h5_trees_equal(tmp_path / "a", tmp_path / "b", a_within_b=True)["h5_files"] == 1
    with pytest.raises(AssertionError, match=r"only in .*\['runs/x/more.h5'\]"):
        assert_h5_trees_equal(tmp_path / "b", tmp_path / "a", a_within_b=True)
    _write_tree(tmp_path / "c", scale=1.001)
    with pytest.raises(AssertionError, match="values differ"):
        assert_h5_trees_equal(tmp_path / "c", tmp_path / "b", a_within_b=True)
