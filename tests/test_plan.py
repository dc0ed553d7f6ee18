"""``python -m jacobian_spectrum plan``: the jobs it lists, the sizes it computes, the files and
warnings it reads and gives. Its speed estimates against measured runs: bench/plan_check.py."""

import collections
import csv
import re
import subprocess
import sys

import pytest
from conftest import ROOT, TINY, snakemake

from jacobian_spectrum import plan as P
from jacobian_spectrum.train.models import build_model, count_parameters

RATES = P.Rates(
    device="cpu",
    train_image_seconds=1e-3,
    eval_image_seconds=3e-4,
    jacobian_sample_seconds=1e-2,
    gram_flops=1e10,
    eigh_seconds_per_n3=1e-9,
    write_bytes_per_second=1e9,
    read_bytes_per_second=2e9,
    job_start_seconds=2.0,
    base_bytes=0.5e9,
    train_bytes=0.6e9,
    parameters=0,
    activations=1000,
    jacobian_batch=64,
    largest_layer=500,
)


def tiny_config(results):
    config = P.load_config(TINY)
    config["results"] = str(results)
    rates = P.Rates(**{**RATES.__dict__, "parameters": count_parameters(build_model(P._model_spec(config)))})
    return config, rates


@pytest.mark.slow  # Snakemake or plan in a subprocess: out of the fast tier
def test_plan_lists_the_workflows_jobs_and_their_sizes(tmp_path):
    config, rates = tiny_config(tmp_path / "results")
    plan = P.make_plan(config, rates, cores=2)
    dry = snakemake("-n", "--configfile", str(TINY), "--config", f"results={tmp_path / 'results'}")
    counts = {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", dry.stdout, re.M)}
    by_rule = collections.Counter()
    for s in plan.steps:
        by_rule[s.rule] += s.jobs
    assert by_rule["train"] == counts["train"]
    assert by_rule["train_fold"] == counts["train_fold"] == 3  # cleanlab's folds of the one corrupted run
    jobs = sum(counts.get(f"jacobian_{r}{t}", 0) for r in ("chunk", "gather") for t in ("", "_temporary"))
    assert by_rule["jacobian_chunk"] == jobs
    # the J's the plan deletes are those the workflow marks temporary
    temporary = sum(s.jobs for s in plan.steps if s.rule == "jacobian_chunk" and s.temporary)
    assert temporary == counts.get("jacobian_chunk_temporary", 0) + counts.get("jacobian_gather_temporary", 0) > 0
    assert by_rule["spectrum"] == counts["spectrum"]
    # J's disk is its rows x p float32 values, written once
    j = next(s for s in plan.steps if s.key == "jacobian:init/train_epoch0")
    assert j.disk_bytes == 60 * 3 * rates.parameters * 4
    assert plan.disk_peak_bytes >= sum(s.disk_bytes for s in plan.steps if not s.temporary)
    # the wall time is at least the core time spread over the cores, and at most the core time
    core_time = sum(s.seconds * s.threads for s in plan.steps)
    assert core_time / 2 <= plan.wall_seconds <= core_time
    text = P.format_plan(plan)
    assert "jacobian init/train_epoch0" in text and "total:" in text and "no warnings" in text


def test_temporary_jacobians_lower_the_disk_peak(tmp_path):
    config, rates = tiny_config(tmp_path / "results")
    peaks = {}
    for keep in ("all", "measured", "none"):
        config["jacobian"]["keep"] = keep
        plan = P.make_plan(config, rates, cores=2)
        peaks[keep] = plan.disk_peak_bytes
        kept = {s.key for s in plan.steps if s.rule == "jacobian_chunk" and not s.temporary}
        if keep == "measured":  # J_init, each run's final J and its reference J on both splits
            wanted = set()
            for run, r in config["runs"].items():
                ref = P.reference_epoch(r)
                wanted |= {
                    f"jacobian:runs/{run}/{s}_epoch{e}"
                    for s, e in (("train", r["epochs"]), ("train", ref), ("test", ref))
                }
            assert kept == {"jacobian:init/train_epoch0"} | wanted
    # (the tiny config has few tracked J's: as many as are in flight at once)
    assert peaks["none"] < peaks["measured"] <= peaks["all"]


def test_plan_warns_before_the_run_when_disk_or_memory_will_not_hold(tmp_path, monkeypatch):
    import psutil

    config, rates = tiny_config(tmp_path / "results")
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(P.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    plan = P.make_plan(config, rates, cores=2)
    disk = [w for w in plan.warnings if w.startswith("disk: the run needs about") and str(tmp_path) in w]
    assert len(disk) == 1
    # the remedy it names is one the config has not taken yet
    assert ("jacobian.keep: none" in disk[0]) != (config["jacobian"]["keep"] == "none")
    config["jacobian"]["keep"] = "none" if config["jacobian"]["keep"] != "none" else "all"
    disk = [w for w in P.make_plan(config, rates, cores=2).warnings if w.startswith("disk:")]
    assert ("jacobian.keep: none" in disk[0]) != (config["jacobian"]["keep"] == "none")
    memory = collections.namedtuple("memory", "available")
    monkeypatch.setattr(psutil, "virtual_memory", lambda: memory(10**8))
    plan = P.make_plan(config, rates, cores=2)
    assert any(w.startswith("memory: ") for w in plan.warnings)
    assert "WARNING disk" in P.format_plan(plan)


def test_plan_takes_measured_seconds_from_an_earlier_runs_benchmark_files(tiny_results):
    config, rates = tiny_config(tiny_results)
    plan = P.make_plan(config, rates, cores=2)
    train = next(s for s in plan.steps if s.key == "train:sgd_clean")
    with open(tiny_results / "benchmarks" / "train" / "sgd_clean.tsv", newline="") as fh:
        row = next(csv.DictReader(fh, delimiter="\t"))
    assert train.source == "measured" and train.seconds == pytest.approx(float(row["s"]))
    folds = next(s for s in plan.steps if s.key == "folds:sgd_corrupt50")
    assert folds.source == "measured" and len(P.benchmark_file(tiny_results, folds)) == 3
    spectra = [s for s in plan.steps if s.rule == "spectrum"]
    assert spectra and all(s.source == "measured" for s in spectra)
    jac = next(s for s in plan.steps if s.key == "jacobian:init/train_epoch0")
    assert jac.source == "measured"  # its chunk jobs and gather summed
    assert len(P.benchmark_file(tiny_results, jac)) == 3 + 1  # 60 samples in chunks of 25, and the gather


@pytest.mark.slow  # Snakemake or plan in a subprocess: out of the fast tier
def test_plan_command_on_a_config(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "jacobian_spectrum", "plan", "--configfile", str(TINY), "--cores", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert re.search(r"total: .* of core time; about .* on 2 cores; disk at its peak", out.stdout)
    missing = subprocess.run(
        [sys.executable, "-m", "jacobian_spectrum", "plan", "--configfile", str(tmp_path / "none.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode != 0 and "none.yaml does not exist" in missing.stderr


def test_plan_of_a_config_whose_data_is_not_there_yet_notes_it(tmp_path):
    import yaml

    config = yaml.safe_load(TINY.read_text())
    config["dataset"].update({"name": "cifar10", "root": str(tmp_path / "cifar"), "classes": ["airplane", "bird"]})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    notes = []
    loaded = P.load_config(path, notes)
    assert loaded["dataset"]["name"] == "cifar10"
    assert len(notes) == 1 and notes[0].startswith("data: not checked against the config, planned with 3x32x32")
    assert f"(dataset.root: no CIFAR-10 at {tmp_path / 'cifar' / 'cifar-10-batches-py'}" in notes[0]
    with pytest.raises(ValueError, match="no CIFAR-10"):  # without notes, as Snakemake stops
        P.load_config(path)


def test_the_paper_config_is_planned_before_its_cifar10_files_are_there(tmp_path, monkeypatch):
    """config/paper.yaml on a fresh clone: the plan measures ResNet20 on CIFAR-10's declared 3 x 32
    x 32 images and notes the missing release, naming where it goes and how to get it."""
    import yaml

    config = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    config["dataset"]["root"] = str(tmp_path / "cifar")  # not there, wherever data/cifar10 is
    config["results"] = str(tmp_path / "results")
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(config))
    specs = []

    def rates(config, device, scratch):  # the model the plan measures, without the seconds of measuring
        specs.append(P._model_spec(config))
        return P.Rates(**{**RATES.__dict__, "parameters": count_parameters(build_model(specs[-1]))})

    monkeypatch.setattr(P, "measure_rates", rates)
    plan = P.run_plan(path, "cpu", cores=2)[""]
    assert (specs[0].in_channels, specs[0].image_size, specs[0].num_classes) == (3, 32, 3)
    assert plan.rates.parameters == 268_579  # the paper's ResNet20 without batch-norm
    data = next(s for s in plan.steps if s.key == "data")
    assert data.disk_bytes >= (9999 + 3000) * 3 * 32 * 32  # the subset's images at CIFAR-10's shape
    text = P.format_plan(plan)
    missing = tmp_path / "cifar" / "cifar-10-batches-py"
    (note,) = [line for line in text.splitlines() if line.startswith("WARNING data:")]
    assert f"no CIFAR-10 at {missing}" in note and "dataset.download: true" in note and "3x32x32" in note
    with pytest.raises(ValueError, match="no CIFAR-10"):  # Snakemake's parse-time check still refuses it
        P.load_config(path)


@pytest.mark.parametrize("kind", ["imagefolder", "loader"])
def test_a_plan_without_the_images_of_a_set_that_declares_no_shape_says_what_it_cannot_know(
    tmp_path, monkeypatch, capsys, kind
):
    """An image folder or a loader declares no image shape, and no config key sets one: the plan
    stops before measuring, in one line naming the shape, the key and the missing data."""
    import yaml

    from jacobian_spectrum.cli import main

    config = yaml.safe_load(TINY.read_text())
    if kind == "imagefolder":
        config["dataset"].update(name="imagefolder", root=str(tmp_path / "images"), classes=["a", "b", "c"])
        words = [f"dataset.root: no image folder at {tmp_path / 'images'}"]
    else:
        loader = "import numpy as np\n\ndef load(path):\n    return dict(np.load(path))\n"
        (tmp_path / "npz_loader.py").write_text(loader)
        monkeypatch.syspath_prepend(str(tmp_path))
        config["dataset"].update(name="npz_loader:load", kwargs={"path": str(tmp_path / "own.npz")})
        words = ["dataset.name: npz_loader:load(**dataset.kwargs) failed: FileNotFoundError", str(tmp_path / "own.npz")]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setattr(P, "measure_rates", lambda *a: pytest.fail("measured a model of an unknown shape"))
    assert main(["plan", "--configfile", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "measuring" not in err
    assert err.startswith(f"error: dataset.name {config['dataset']['name']!r}: the plan cannot know its image shape")
    assert all(w in err for w in words), err
    # Snakemake refuses it as before, naming the missing data
    with pytest.raises(ValueError, match=re.escape(words[0])):
        P.load_config(path)


def test_a_jobs_start_memory_is_the_fresh_process_not_the_planners_peak():
    # Linux carries ru_maxrss across fork and exec: a child that read it reported this process's
    # peak, so every estimate grew with whatever the planner had held (2x the measured jobs).
    import resource

    import numpy as np

    before = P._job_start()[1]
    held = np.ones(int(1.5e9 // 8))  # touch 1.5 GB more than a fresh process has
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0
    after = P._job_start()[1]
    del held
    assert peak > before + 1.4e9
    assert after < before * 1.2


@pytest.mark.slow  # Snakemake or plan in a subprocess: out of the fast tier
def test_a_streamed_spectrum_plans_no_jacobian_and_scales_with_the_rows(tmp_path):
    """runs: {} with spectrum.method matrix_free (config/cifar10-full*.yaml): the plan lists the
    dry run's jobs, no J on disk, and the spectrum's time grows with the rows (one pass forms
    every row), with power_iterations + 1 passes (the checks come from the last)."""
    import yaml

    config, rates = tiny_config(tmp_path / "results")
    config["runs"], config["analysis"]["track_runs"] = {}, []
    config["figures"].update(table1=None, table2=None, table3=None, corruption_runs=[])
    config["spectrum"].update(method="matrix_free", iteration="subspace", topk=20, oversampling=20, power_iterations=6)
    path = tmp_path / "spectrum_only.yaml"
    path.write_text(yaml.safe_dump(config))
    dry = snakemake("-n", "--configfile", str(path))
    counts = {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", dry.stdout, re.M)}
    plan = P.make_plan(config, rates, cores=2)
    by_rule = collections.Counter()
    for s in plan.steps:
        by_rule[s.rule] += s.jobs
    assert by_rule["spectrum"] == counts["spectrum_matrix_free"] == 1
    assert "jacobian_chunk" not in by_rule and "train" not in by_rule
    (step,) = [s for s in plan.steps if s.rule == "spectrum"]
    assert "7 passes" in step.name and step.disk_bytes < 60 * 3 * rates.parameters  # vectors, not J
    config["dataset"]["train_per_class"] *= 5
    (big,) = [s for s in P.make_plan(config, rates, cores=2).steps if s.rule == "spectrum"]
    start = rates.job_start_seconds
    assert big.seconds - start == pytest.approx(5 * (step.seconds - start), rel=1e-9)
    config["spectrum"]["power_iterations"] = 2
    (fewer,) = [s for s in P.make_plan(config, rates, cores=2).steps if s.rule == "spectrum"]
    assert "3 passes" in fewer.name and fewer.seconds < big.seconds


def test_a_matrix_free_plan_measures_the_pass_it_will_run(tmp_path):
    # the products of a pass, not the Gram update's rate, set its time: the plan times one pass at
    # the configured width, and the step's time is passes x samples x that, less the rows that the
    # budget holds from the first pass on (their later passes cost their products alone, timed too)
    import torch

    from jacobian_spectrum.train.models import build_model

    config, _ = tiny_config(tmp_path / "results")
    config["spectrum"].update(
        method="matrix_free", iteration="block_krylov", topk=20, oversampling=20, power_iterations=6
    )
    model = build_model(P._model_spec(config), seed=0)
    pass_s, fast_s, held_s = P._matrix_free_pass_seconds(config, model, torch.randn(8, 1, 8, 8), torch.device("cpu"))
    assert 0 < pass_s < 60 and 0 < fast_s < 60 and 0 < held_s < pass_s  # held rows are not formed again
    config["runs"], config["analysis"]["track_runs"] = {}, []
    config["figures"].update(table1=None, table2=None, table3=None, corruption_runs=[])
    rates = P.Rates(
        **{
            **RATES.__dict__,
            "parameters": count_parameters(model),
            "matrix_free_pass_seconds": pass_s,
            "matrix_free_fast_pass_seconds": fast_s,
            "matrix_free_held_pass_seconds": held_s,
        }
    )
    samples = config["dataset"]["train_per_class"] * 3
    from jacobian_spectrum.spectrum.matrix_free import matrix_free_plan

    budget = config["spectrum"]["memory_budget_mb"]
    mf = matrix_free_plan(samples * 3, 3, rates.parameters, 20, 20, 6, budget, "block_krylov")
    assert mf.iteration == "block_krylov" and mf.held_samples == samples  # this small J is held whole
    for held, mb in ((samples, budget), (0, (mf.bytes - mf.held_bytes) / 1e6)):  # a budget with no room to hold rows
        config["spectrum"]["memory_budget_mb"] = mb
        (step,) = [s for s in P.make_plan(config, rates, cores=2).steps if s.rule == "spectrum"]
        saved = 6 * held * (pass_s - held_s)
        assert step.seconds - rates.job_start_seconds == pytest.approx(7 * samples * pass_s - saved, rel=1e-9)
        # its memory is the one the job plans and logs when it starts (matrix_free_plan)
        planned = matrix_free_plan(samples * 3, 3, rates.parameters, 20, 20, 6, mb, "block_krylov")
        assert planned.held_samples == held and step.memory_bytes == rates.base_bytes + planned.bytes
        # subspace iteration: J Z in float64 on the last pass only, the other 6 at the float32 rate
        config["spectrum"]["iteration"] = "subspace"
        (sub,) = [s for s in P.make_plan(config, rates, cores=2).steps if s.rule == "spectrum"]
        assert sub.seconds - rates.job_start_seconds == pytest.approx(
            samples * (pass_s + 6 * fast_s) - 6 * sub_held(config, samples, rates) * (pass_s - held_s), rel=1e-9
        )
        config["spectrum"]["iteration"] = "block_krylov"
        # without the measurement the model of the Gram update's rate stands in
        modelled = P.Rates(**{**rates.__dict__, "matrix_free_pass_seconds": 0.0})
        (other,) = [s for s in P.make_plan(config, modelled, cores=2).steps if s.rule == "spectrum"]
        assert other.seconds != step.seconds


def sub_held(config: dict, samples: int, rates) -> int:
    """Samples whose rows the subspace iteration holds at the config's budget (2 panels: more room)."""
    from jacobian_spectrum.spectrum.matrix_free import plan_for_settings

    return plan_for_settings(config["spectrum"], samples * 3, 3, rates.parameters).held_samples


def test_plan_warns_when_it_timed_a_busy_machine():
    # more runnable processes than CPUs while plan timed the machine: its rates are a shared machine's
    assert P.busy_machine_note(1.0, 2) is None and P.busy_machine_note(2.0, 2) is None
    note = P.busy_machine_note(4.1, 2)
    assert "load average was 4.1 on 2 CPUs" in note and "shared machine" in note


def test_each_networks_plan_takes_the_method_its_checks_settle(tmp_path, monkeypatch):
    # spectrum.method auto with a limit that only the wider network's J passes: the plan streams
    # that network's J (as its module of the workflow does) and stores the other's
    import yaml

    config = yaml.safe_load(TINY.read_text())
    config.update(results=str(tmp_path / "r"), architecture_table={"clean": "sgd_clean", "corrupted": "sgd_corrupt50"})
    config["spectrum"].update(method="auto", stream_above_gb=0.05)  # 180 rows x p x 4 bytes: 59 MB for the wide
    config["architectures"] = {
        "narrow": {"model": {"name": "mlp", "hidden": 8}},
        "wide": {"model": {"name": "mlp", "hidden": 256}},
    }
    path = tmp_path / "arch.yaml"
    path.write_text(yaml.safe_dump(config))
    _, networks = P.load_networks(path)
    assert {name: net["spectrum"]["method"] for name, net in networks.items()} == {
        "narrow": "auto",
        "wide": "matrix_free",
    }
    monkeypatch.setattr(P, "measure_rates", lambda net, device, scratch: P.Rates(**{**RATES.__dict__, "parameters": 1}))
    plans = P.run_plan(path, "cpu", cores=2)
    assert any("matrix_free" in s.name for s in plans["wide"].steps)
    assert not any("matrix_free" in s.name for s in plans["narrow"].steps)
    # a network of an architecture table plans only what the table reads: J_init and each
    # run's J_final on train (its module's own Jacobian jobs for the table, no test split)
    for plan in plans.values():
        spectra = sorted(s.key for s in plan.steps if s.rule == "spectrum")
        assert spectra == [
            "spectrum:init/train_epoch0",
            "spectrum:runs/sgd_clean/train_epoch6",
            "spectrum:runs/sgd_corrupt50/train_epoch6",
        ]
        assert [s.rule for s in plan.steps if s.key == "report"] == ["architecture_table"]
