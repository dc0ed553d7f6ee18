"""bench/paper_gpu.py, the paper's experiment on one GPU, run as its CPU twin (--quick): every
output file is written and well-formed, a stopped run resumes to the same numbers, a budget too
small skips every step saying why, and the interleaved training steps are the package's loop.
The images are a fixture folder made here: nothing under ../shared is needed."""

import copy
import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from jacobian_spectrum.analysis.measure import TABLE_ROWS
from jacobian_spectrum.figures.paper import PAPER_TABLE_TITLES, PAPER_TABLES, format_value, markdown_columns

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "paper_gpu.py"
# runs the script as `python bench/paper_gpu.py ARGS` would, then fails if Snakemake or Dask were
# imported on the way (the GPU image has neither)
WRAPPER = (
    "import runpy, sys\n"
    f"sys.argv = [{str(SCRIPT)!r}] + sys.argv[1:]\n"
    f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('snakemake', 'dask'))\n"
    "sys.exit(f'imported {loaded[:5]}' if loaded else 0)\n"
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPECTRA = ("J_init", "J_final sgd_clean", "J_final sgd_corrupt50", "J_final adam_clean")


def load_script():
    spec = importlib.util.spec_from_file_location("paper_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


pg = load_script()


def run_quick(folder: Path, images: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", WRAPPER, "--quick", "--data", str(images), "--work", str(folder / "work")]
    proc = subprocess.run([*cmd, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """An image folder of 4 classes (the script takes 3 by name), 12 training and 6 test JPEGs each."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("test", 6)):
        for c, name in enumerate(["airplane", "automobile", "bird", "cat"]):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                img = rng.integers(0, 120, (16, 16, 3)).astype(np.uint8)
                img[..., c % 3] += 120  # a class colour: something to learn
                Image.fromarray(img).save(folder / f"{i:04d}.jpg")
    return root


@pytest.fixture(scope="module")
def full(tmp_path_factory, images) -> tuple[Path, subprocess.CompletedProcess]:
    folder = tmp_path_factory.mktemp("full")
    return folder / "out", run_quick(folder, images, "--out", str(folder / "out"))


def read_results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def history(out: Path, run: str) -> list[dict]:
    with open(out / "fig8.csv", newline="") as fh:
        return [row for row in csv.DictReader(fh) if row["run"] == run]


def quick_eval_epochs(run: str) -> list[int]:
    epochs = pg.QUICK_EPOCHS[run][0]
    return [0] + [e for e in range(1, epochs + 1) if pg.eval_epoch(e, epochs, 2)]


def check_table(text: str, number: int, measured: tuple[bool, bool]) -> None:
    """The title, the columns, and each row's six cells: measured (or '-') beside the paper's value."""
    assert text.startswith(f"**{PAPER_TABLE_TITLES[number]}**")
    assert "| | " + " | ".join(markdown_columns()) + " |" in text
    for row, paper, row_measured in zip(TABLE_ROWS, PAPER_TABLES[number], measured):
        line = next(line for line in text.splitlines() if line.startswith(f"| {row} |"))
        cells = line.strip("|").split("|")[1:]
        assert len(cells) == 6
        for cell, value in zip(cells, paper):
            assert cell.strip().endswith(f"(paper {format_value(value)})"), cell
            assert cell.strip().startswith("-") != row_measured, cell


@pytest.mark.slow  # a whole quick run of the script (minutes on 2 cores)
def test_quick_run_writes_every_output_well_formed(full):
    out, proc = full
    assert sorted(p.name for p in out.iterdir()) == sorted(pg.OUTPUT_FILES)
    for path in out.iterdir():
        assert 0 < path.stat().st_size <= 16 << 20, path
    results = read_results(out)
    assert [s["status"] for s in results["steps"]] == ["done"] * 8, results["steps"]
    assert results["skipped"] == [] and results["quick"] and results["device"] == "cpu" and not results["tf32"]
    assert results["modules_loaded"] == {"snakemake": False, "dask": False}
    assert set(results["spectra"]) == set(SPECTRA)
    for key in SPECTRA:
        spectrum = results["spectra"][key]
        assert spectrum["rows"] == 90 and spectrum["cols"] == results["model"]["p"]
        assert max(spectrum["probe_errors"].values()) < 1e-4
        for row in spectrum["alignment"].values():
            assert len(row) == 6 and all(np.isfinite(row)) and 0 <= row[0] <= 1 and 0 <= row[1] <= 1
        assert {"jacobian", "probe", "gram", "eigh", "total"} <= set(spectrum["seconds"])
    assert set(results["gram_ratio"]) >= {"gram_stream_s", "gram_memory_s", "ratio_memory_over_stream"}
    for name, (epochs, _) in pg.QUICK_EPOCHS.items():
        assert results["runs"][name]["epoch"] == epochs and results["runs"][name]["done"]
    assert results["h200_estimates_s"]["spectrum, each J"] > 0
    for number in (1, 2, 3):
        check_table((out / f"table{number}.md").read_text(), number, measured=(True, True))
    assert "No-memorisation reference" in (out / "table3.md").read_text()
    assert (out / "fig8.png").read_bytes()[:8] == PNG_MAGIC
    with open(out / "fig8.csv", newline="") as fh:
        assert tuple(next(csv.reader(fh))) == pg.HISTORY_COLUMNS
    assert [int(r["epoch"]) for r in history(out, "sgd_corrupt50")] == quick_eval_epochs("sgd_corrupt50")
    corrupted = [float(r["train_error_corrupted"]) for r in history(out, "sgd_corrupt50")]
    assert all(0 <= e <= 1 for e in corrupted)
    ckpt = torch.load(out / "checkpoints.pt", map_location="cpu", weights_only=True)
    assert ckpt["format"] == pg.CHECKPOINT_FORMAT and ckpt["runs"]["sgd_corrupt50"]["epoch"] == 12
    assert "train sgd_clean + sgd_corrupt50: done" in (out / "log.txt").read_text()
    assert "**Table 1: clean labels, SGD**" in proc.stdout and "spectrum J_init: done" in proc.stdout


@pytest.mark.slow  # a whole quick run of the script (minutes on 2 cores)
def test_a_stopped_run_resumes_to_the_target_epoch_and_the_same_numbers(tmp_path, images, full):
    first, second = tmp_path / "first", tmp_path / "second"
    run_quick(tmp_path, images, "--out", str(first), "--max-epoch", "3")
    stopped = read_results(first)
    status = {s["step"]: s["status"] for s in stopped["steps"]}
    assert status["train sgd_clean + sgd_corrupt50"] == "partial" and status["spectrum J_init"] == "done"
    assert {s["step"] for s in stopped["skipped"]} >= {"spectrum J_final sgd_clean", "train adam_clean"}
    assert all(s["reason"] for s in stopped["skipped"])
    assert {n: r["epoch"] for n, r in stopped["runs"].items()} == {"sgd_clean": 3, "sgd_corrupt50": 3, "adam_clean": 0}
    check_table((first / "table1.md").read_text(), 1, measured=(True, False))

    run_quick(tmp_path, images, "--out", str(second), "--resume", str(first))
    resumed = read_results(second)
    assert resumed["resumed_from"]["epochs"] == {"sgd_clean": 3, "sgd_corrupt50": 3, "adam_clean": 0}
    assert {s["step"]: s["status"] for s in resumed["steps"]}["spectrum J_init"] == "kept"
    assert resumed["skipped"] == []
    for name, (epochs, _) in pg.QUICK_EPOCHS.items():
        assert resumed["runs"][name]["epoch"] == epochs
    assert [int(r["epoch"]) for r in history(second, "sgd_corrupt50")] == quick_eval_epochs("sgd_corrupt50")
    # the same numbers as the uninterrupted run (model, optimizer, schedule and RNG restored: bit-for-bit on the CPU)
    uninterrupted = read_results(full[0])
    for key in SPECTRA:
        for labels, row in uninterrupted["spectra"][key]["alignment"].items():
            np.testing.assert_allclose(resumed["spectra"][key]["alignment"][labels], row, rtol=1e-9)
    assert history(second, "sgd_corrupt50") == history(full[0], "sgd_corrupt50")


def test_a_budget_too_small_skips_every_step_saying_why(tmp_path, images):
    out = tmp_path / "out"
    run_quick(tmp_path, images, "--out", str(out), "--budget", "0")
    results = read_results(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(pg.OUTPUT_FILES)
    status = {s["step"]: s for s in results["steps"]}
    assert status["data"]["status"] == "done"
    for step in ("train sgd_clean + sgd_corrupt50", "spectrum J_init"):
        assert status[step]["status"] == "skipped" and "would pass the budget" in status[step]["reason"]
    assert len(results["skipped"]) == 7 and results["spectra"] == {}
    for number in (1, 2, 3):
        text = (out / f"table{number}.md").read_text()
        check_table(text, number, measured=(False, False))
        assert "not measured (" in text
    assert (out / "fig8.png").read_bytes()[:8] == PNG_MAGIC


def test_interleaved_steps_are_the_package_training_loop():
    """Two runs trained together (train.together.train_round: their batches taking turns, each
    run's epoch train.loop.train_steps) end bit-for-bit where train.loop.train ends each alone,
    with the same losses: the same ops in the same order."""
    from jacobian_spectrum.data.subset import SplitData
    from jacobian_spectrum.train.loop import TrainSettings, train
    from jacobian_spectrum.train.models import ModelSpec, build_model
    from jacobian_spectrum.train.together import end_epoch, make_run, train_round

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 3, 8, 8)).astype(np.float32)
    labels = [rng.integers(0, 3, 40), rng.integers(0, 3, 40)]
    spec = ModelSpec("resnet20", 3, 8, 3, width=0.25)
    init = build_model(spec, seed=0)
    settings = [
        TrainSettings("sgd", 0.01, 3, momentum=0.9, milestones=[2], batch_size=16, augment_flip=True),
        TrainSettings("adam", 0.001, 3, batch_size=16, augment_flip=True, seed=1),
    ]
    cpu = torch.device("cpu")
    runs = [make_run(f"r{i}", s, y, 3, copy.deepcopy(init), cpu) for i, (s, y) in enumerate(zip(settings, labels))]
    losses = [[], []]
    for _ in range(3):
        for run, loss, value in zip(runs, losses, train_round(runs, torch.from_numpy(x))[1]):
            end_epoch(run, value)
            loss.append(value)
    test = SplitData(x[:8], labels[0][:8], 3, (3, 8, 8))
    for run, s, y, loss in zip(runs, settings, labels, losses):
        alone = copy.deepcopy(init)
        traj, _ = train(alone, spec, s, SplitData(x, y, 3, (3, 8, 8)), y, test, cpu)
        for name, value in alone.state_dict().items():
            assert torch.equal(value, run.model.state_dict()[name]), name
        assert loss == traj.batch_loss[1:]


def test_the_runs_are_config_paper_yaml_s():
    config = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    plan = pg.Plan(quick=False)
    for name, run in pg.PAPER_RUNS.items():
        assert {k: config["runs"][name][k] for k in run} == run
        assert config["runs"][name]["corruption"] == pg.CORRUPTION[name]
        assert plan.settings(name) == pg.TrainSettings.from_config(config["runs"][name], config["training"], [])
    dataset = config["dataset"]
    assert (plan.classes, plan.train_per_class, plan.test_per_class) == (
        dataset["classes"],
        dataset["train_per_class"],
        dataset["test_per_class"],
    )
    assert (plan.width, plan.info_dim, plan.data_seed) == (config["model"]["width"], 50, dataset["seed"])


def test_the_documented_h200_estimates_are_the_rates():
    est = pg.h200_estimates(9999, 3000, 3, 268_579, pg.Plan(quick=False))
    assert round(est["train sgd_clean"]) == 196 and round(est["train sgd_corrupt50"]) == 392
    assert round(est["evaluation sgd_clean"] + est["evaluation sgd_corrupt50"]) == 29
    assert round(est["spectrum, each J"]) == 25 and round(est["steps 1 and 2"]) == 692
    scale = (ROOT / "docs" / "scale.md").read_text()
    for text in (pg.__doc__, scale):
        assert "196 s" in text and "392 s" in text and "25 s" in text and "692 s" in text
