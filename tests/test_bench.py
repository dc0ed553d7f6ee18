"""Every benchmark under bench/ runs at its smallest setting and prints its one JSON record with
its ratios, the machine and the commit, so that none can rot unnoticed. The seconds are not
checked (a loaded machine), only that the record is there and whole. bench/paper_gpu.py is
tests/test_paper_gpu.py's. The heavier ones (over about 10 s on 2 busy cores) are marked slow."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
SLOW = pytest.mark.slow

# benchmark -> (its smallest setting, the ratio keys its record must hold)
SMALLEST = {
    "jacobian": (
        ["--samples", "4", "--width", "0.125", "--repeats", "1"],
        {"ours_over_bound", "ours_over_naive", "in_memory_over_bound"},
    ),
    "spectrum": (
        ["--rows", "200", "--cols", "3000", "--rank", "10", "--info-dim", "5"],
        {"gram_hdf5_over_memory_throughput", "topk_over_eigh_time"},
    ),
    "spectrum_device": (["--rows", "100", "--cols", "500"], {"gram_memory_over_stream"}),
    "train": (
        ["--images", "16", "--size", "8", "--width", "0.125", "--batch-size", "8", "--epochs", "1"],
        {"data_pipeline_share_cpu"},
    ),
    "normalisation": (
        ["--model", "vgg11_bn", "--width", "0.125", "--images", "8", "--size", "32", "--batch", "8", "--repeats", "1"],
        {"recompute_over_epoch", "recompute_over_predict"},
    ),
    "matrix_free": (
        "--samples 4 --classes 3 --width 0.125 --size 8 --k 3 --oversampling 4 --iterations 1 --repeats 1".split(),
        {"method_over_rows", "normal_pass_over_rows", "method_over_materialised", "max_relative_error_top_k"},
    ),
    "jacobian_chunk": (
        ["--samples", "4", "--width", "0.125", "--size", "8", "--rounds", "1"],
        {"job_time_THP_1_over_0"},
    ),
    "gpu_smoke": (["--quick"], {"jacobian_device_over_cpu_rows_per_s"}),
}
HEAVY = {"matrix_free", "jacobian_chunk", "gpu_smoke"}


def run_benchmark(name: str, args: list[str]) -> dict:
    """The benchmark as ``python bench/NAME.py ARGS`` runs it; its stdout must be one JSON line."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), *args],
        cwd=BENCH,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"{name} printed {len(lines)} lines on stdout, not one JSON record"
    return json.loads(lines[0])


def check_record(record: dict, name: str, ratios: set[str]) -> None:
    assert record["benchmark"] == name
    assert ratios <= set(record["ratios"]), sorted(record["ratios"])
    assert all(isinstance(v, (int, float)) for v in record["ratios"].values())
    assert {"cpu", "cores", "torch", "device"} <= set(record["machine"])
    assert record["commit"]


@pytest.mark.parametrize("name", [n if n not in HEAVY else pytest.param(n, marks=SLOW) for n in SMALLEST])
def test_each_benchmark_prints_its_record_at_its_smallest_setting(name):
    args, ratios = SMALLEST[name]
    check_record(run_benchmark(name, args), name, ratios)


def test_every_benchmark_is_tested_and_imports_only_public_package_names():
    """A new bench script joins SMALLEST; none imports a private name, nor another bench script
    but the shared helper (timing)."""
    scripts = {p.stem for p in BENCH.glob("*.py")}
    assert scripts - {"timing", "paper_gpu", "plan_check"} == set(SMALLEST)
    for path in BENCH.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                modules, names = [node.module or ""], [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                modules, names = [a.name for a in node.names], []
            else:
                continue
            parts = [p for m in modules for p in m.split(".")]
            assert not [n for n in names + parts if n.startswith("_")], f"{path.name}: {ast.unparse(node)}"
            assert not set(modules) & (scripts - {"timing"}), f"{path.name}: {ast.unparse(node)}"


@SLOW
def test_plan_check_compares_the_plan_with_benchmark_files(tmp_path):
    """plan_check against one training job's Snakemake benchmark file (the run's others absent)."""
    import yaml

    config = yaml.safe_load((ROOT / "tests" / "configs" / "tiny.yaml").read_text())
    run = next(iter(config["runs"]))
    (tmp_path / "benchmarks" / "train").mkdir(parents=True)
    (tmp_path / "benchmarks" / "train" / f"{run}.tsv").write_text("s\th:m:s\tmax_rss\n12.5\t0:00:12\t400.0\n")
    args = ["--configfile", str(ROOT / "tests" / "configs" / "tiny.yaml"), "--results", str(tmp_path)]
    check_record(run_benchmark("plan_check", args), "plan_check", {"train_ratio_seconds", "train_ratio_rss"})
