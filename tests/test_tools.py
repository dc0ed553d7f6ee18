"""The CLI's readers of finished runs: ``job-times`` (a Snakemake log) and ``factors``
(docs/cifar10.md's factor table from results folders), on small logs and folders made here."""

import csv

import h5py
import numpy as np
import pytest
import yaml

from jacobian_spectrum.cli import main
from jacobian_spectrum.common.job_times import job_spans, job_times_report
from jacobian_spectrum.figures.factors import FACTOR_COLUMNS, factor_table, levelled_off, time_log

# two jobs overlapping (train 10 s, spectrum 30 s from 5 s on) and one started but never finished
LOG = """\
[Mon Dec  7 09:00:00 2026]
rule train:
    output: results/runs/a/trajectory.h5
    jobid: 3
[Mon Dec  7 09:00:05 2026]
localrule spectrum:
    jobid: 7
[Mon Dec  7 09:00:10 2026]
Finished jobid: 3 (Rule: train)
[Mon Dec  7 09:00:20 2026]
rule jacobian_chunk:
    jobid: 9
[Mon Dec  7 09:00:35 2026]
Finished job 7.
"""


def test_job_times_counts_each_rules_finished_jobs_and_the_concurrency():
    spans = job_spans(LOG)
    assert [(s.rule, (s.end - s.start).seconds) for s in spans] == [("train", 10), ("spectrum", 30)]
    lines = job_times_report(spans, jobs=True)
    assert lines[0] == "2 jobs" and lines[2].split()[:4] == ["spectrum", "1", "30", "75.0%"]
    assert "job seconds 40 over 35 s" in lines[4] and "1.14 jobs at once" in lines[4]
    assert lines[5].split() == ["0", "10", "10", "train"] and lines[6].split() == ["5", "35", "30", "spectrum"]
    with pytest.raises(ValueError, match="no finished job"):
        job_times_report(job_spans("rule train:\n    jobid: 1\n"))


def test_job_times_command_reads_a_log_and_names_a_missing_one(tmp_path, capsys):
    (tmp_path / "run.snakemake.log").write_text(LOG)
    assert main(["job-times", str(tmp_path / "run.snakemake.log")]) == 0
    assert "run.snakemake.log: 2 jobs" in capsys.readouterr().out
    assert main(["job-times", str(tmp_path / "missing.log")]) == 1
    assert "missing.log" in capsys.readouterr().err


def test_time_log_and_levelled_off():
    text = "\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:40:04\n\tMaximum resident set size (kbytes): 4300000\n"
    assert time_log(text) == "1:40:04, 4.3 GB" and time_log("no such lines") == "n/a"
    loss = np.concatenate([np.full(20, 2.0), np.full(20, 1.0), np.full(10, 0.5)])
    assert levelled_off(loss, [40]) == pytest.approx(-0.5)  # halved between the two windows before 40
    assert levelled_off(np.ones(50), []) == 0.0  # no division: the last 40 epochs


def write_finished_run(tmp_path) -> str:
    """A results folder as a finished workflow leaves it, with only what the factor table reads."""
    results = tmp_path / "results"
    runs = {"clean": 0.0, "half": 0.5}
    for run, level in runs.items():
        folder = results / "runs" / run
        folder.mkdir(parents=True)
        with h5py.File(folder / "trajectory.h5", "w") as f:
            f["train/error_kept"] = [0.5, 0.1]
            f["train/error_corrupted"] = [0.5, np.nan if level == 0 else 0.4]
            f["batch_loss"] = np.linspace(2, 1, 61)
            f["test/y"] = np.array([0, 1, 2, 0])
            predictions = np.zeros((3, 4, 3))
            predictions[:, np.arange(4), [0, 1, 2, 1]] = 1  # 1 of 4 wrong at every epoch
            f["test/predictions"] = predictions
        with h5py.File(folder / "measurements.h5", "w") as f:
            f["label_energy_nuisance"] = [0.1, 0.2 + level]
            f["alignment/values"] = np.full((2, 6), 0.25)
            f["no_memorisation"] = [0.8]
    (results / "figures").mkdir()
    with open(results / "figures" / "memorisation.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run", "corruption", "train_error", "memorised_fraction", "label_energy_nuisance"])
        for i in range(4):
            w.writerow(["half", 0.5, 0.5 - 0.1 * i, 0.1 * i, 0.2 + 0.1 * i])
    config = {
        "results": str(results),
        "dataset": {"train_per_class": 10, "classes": ["a", "b", "c"]},
        "training": {"augment_crop": True, "augment_flip": False, "batch_size": 32},
        "runs": {"clean": {"milestones": [50]}, "half": {}},
        "figures": {"min_window": 2, "corruption_runs": list(runs), "table3": "half"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    (tmp_path / "time.log").write_text("Elapsed (wall clock) time (h:mm:ss or m:ss): 0:05:00\n")
    return str(path)


def test_factor_table_has_one_row_per_config(tmp_path, capsys):
    config = write_finished_run(tmp_path)
    table = factor_table([f"{config}={tmp_path / 'time.log'}", config])
    lines = table.splitlines()
    assert lines[0] == "| " + " | ".join(FACTOR_COLUMNS) + " |"
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert len(cells) == len(FACTOR_COLUMNS) and cells[0].startswith("config.yaml: n = 30, augmentation on")
    assert cells[1:6] == [
        "10.0 / 10.0",
        "- / 40.0",
        "25.0% (epoch 0), 25.0%",
        "0.250 (reference 0.800)",
        "0.200 / 0.700",
    ]
    assert cells[6] == "-1.00 / 1.00 (4 points)" and cells[8] == "n/a"  # the time log lacks the peak memory
    assert main(["factors", config]) == 0 and capsys.readouterr().out.count("| config.yaml") == 1
    assert main(["factors", str(tmp_path / "none.yaml")]) == 1
