"""Killed jobs, corrupted files, determinism, no network: a wrong result never passes silently."""

import os
import signal
import socket
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, TINY, snakemake
from h5compare import assert_h5_trees_equal

from jacobian_spectrum.analysis.measure import measure_run
from jacobian_spectrum.common.h5io import atomic_h5, open_checked, require_finite

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------- validation on read
def test_truncated_hdf5_is_named(tmp_path):
    with atomic_h5(tmp_path / "J.h5") as f:
        f.create_dataset("J", data=np.ones((50, 400)))
    data = (tmp_path / "J.h5").read_bytes()
    (tmp_path / "J.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"J.h5: not a readable HDF5 file \(truncated or corrupted\?\)"):
        open_checked(tmp_path / "J.h5", ["J"])


def test_temporaries_of_killed_writers_are_removed_but_not_a_live_writers(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    stale = tmp_path / f".J.h5.tmp{int(dead.stdout)}"  # a writer killed mid-write (its process is gone)
    live = tmp_path / f".J.h5.tmp{os.getppid()}"  # a writer still running
    other = tmp_path / f".K.h5.tmp{int(dead.stdout)}"  # another output's temporary
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    with atomic_h5(tmp_path / "J.h5") as f:
        f["x"] = [1.0]
    assert not stale.exists() and live.exists() and other.exists()
    assert [p.name for p in tmp_path.glob(".J.h5.tmp*")] == [live.name]


def test_missing_dataset_is_named(tiny_results, tmp_path):
    spectra = {k: tiny_results / "init/spectrum/train_epoch0.h5" for k in ("init", "final", "ref_train")}
    broken = tmp_path / "test_epoch3.h5"
    with h5py.File(tiny_results / "runs/sgd_corrupt50/spectrum/test_epoch3.h5") as src, h5py.File(broken, "w") as dst:
        for key, value in src.attrs.items():
            dst.attrs[key] = value
        dst.create_dataset("singular_values", data=src["singular_values"][...])  # no U
    with pytest.raises(ValueError, match=r"test_epoch3.h5: missing dataset\(s\) \['U'\]"):
        measure_run(
            tiny_results / "runs/sgd_corrupt50/trajectory.h5",
            {**spectra, "ref_test": broken},
            tmp_path / "m.h5",
            10,
            {},
        )


def test_spectrum_of_another_split_is_refused(tiny_results, tmp_path):
    s = {k: tiny_results / "init/spectrum/train_epoch0.h5" for k in ("init", "final", "ref_train")}
    s["ref_test"] = tiny_results / "runs/sgd_corrupt50/spectrum/train_epoch3.h5"  # train rows for test vectors
    with pytest.raises(ValueError, match="has 180 rows but the vectors have 90"):
        measure_run(tiny_results / "runs/sgd_corrupt50/trajectory.h5", s, tmp_path / "m.h5", 10, {})
    assert not (tmp_path / "m.h5").exists()


def test_nan_anywhere_is_named():
    a = np.zeros((3, 4))
    a[2, 1] = np.inf
    with pytest.raises(
        ValueError, match=r"J of run x: 1 non-finite value\(s\) \(NaN or Inf\), first at index \[2, 1\]"
    ):
        require_finite(a, "J of run x")


def test_label_file_of_another_subset_is_refused(tiny_results, tmp_path):
    from jacobian_spectrum.data.corruption import read_labels

    with pytest.raises(ValueError, match="labels but the subset has 61 training images"):
        read_labels(tiny_results / "data/labels_noise0.5.h5", n=61)


# ---------------------------------------------------------------- killed jobs
KILL_CONFIG = {
    "model": {"width": 0.5},
    "dataset": {"train_per_class": 60},
    "training": {"resume_every": 5},
    "runs": {"sgd_clean": {"epochs": 24, "milestones": [18]}},
    "jacobian": {"chunk_size": 60},  # 3 chunk jobs: the kill needs one running
}


def workflow_args(results, config_file, target) -> list[str]:
    return [target, "--cores", "1", "--configfile", str(TINY), str(config_file), "--config", f"results={results}"]


def start(results, config_file, target):
    """The workflow as a user starts it, in its own process group (so the whole of it can be killed)."""
    cmd = [sys.executable, "-m", "snakemake", *workflow_args(results, config_file, target)]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def recover(results, config_file, target) -> None:
    """The README's recovery from a killed workflow: a plain rerun is refused (the killed
    snakemake left its lock), ``--unlock`` removes the lock, ``--rerun-incomplete`` goes on."""
    args = workflow_args(results, config_file, target)
    refused = snakemake(*args, check=False)
    assert refused.returncode != 0 and "Directory cannot be locked" in refused.stdout + refused.stderr
    snakemake(*args, "--unlock")


def kill_when(proc, condition, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        if proc.poll() is not None:
            pytest.fail("the job finished before it could be killed")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("the kill condition never came true")


def test_killed_training_and_jacobian_jobs_rerun_to_the_uninterrupted_result(tmp_path):
    config = tmp_path / "kill.yaml"
    config.write_text(yaml.safe_dump(KILL_CONFIG))
    # the two jobs a kill can interrupt mid-write and what they feed: training, then J_final's
    # chunks and its gather (the spectra and measurements after it are functions of J)
    target = "{r}/runs/sgd_clean/jacobian/train_epoch24.h5"
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    snakemake(
        target.format(r=clean), "--cores", "1", "--configfile", str(TINY), str(config), "--config", f"results={clean}"
    )

    # 1. SIGKILL the whole workflow (snakemake and its jobs) after training wrote its resume state at epoch 10
    log = killed / "logs/train/sgd_clean.log"
    proc = start(killed, config, target.format(r=killed))
    kill_when(proc, lambda: log.exists() and "epoch 12/24" in log.read_text())
    assert (killed / "runs/sgd_clean/resume/state.pt").exists()
    assert not (killed / "runs/sgd_clean/trajectory.h5").exists()
    recover(killed, config, target.format(r=killed))

    # 2. rerun; SIGKILL the whole workflow while a Jacobian chunk job runs
    chunk_log = killed / "logs/jacobian/runs/sgd_clean/train_epoch24.chunk0.log"
    proc = start(killed, config, target.format(r=killed))
    kill_when(proc, lambda: chunk_log.exists())
    assert "resumed from" in log.read_text()
    for chunk in (killed / "runs/sgd_clean/jacobian/chunks").glob("*.h5"):
        with h5py.File(chunk) as f:  # a chunk file under its final name is complete
            assert f["J"].shape[0] == f.attrs["row_stop"] - f.attrs["row_start"]
    recover(killed, config, target.format(r=killed))

    # 3. rerun to the end: equal to the uninterrupted run
    snakemake(*workflow_args(killed, config, target.format(r=killed)), "--rerun-incomplete")
    assert_h5_trees_equal(clean, killed, rtol=0, atol=0, csv_files=False)
    for epoch in (0, 24):
        a = torch.load(clean / f"runs/sgd_clean/checkpoints/epoch{epoch}.pt", weights_only=True)["state_dict"]
        b = torch.load(killed / f"runs/sgd_clean/checkpoints/epoch{epoch}.pt", weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- determinism
def test_same_config_and_seed_give_identical_results(tiny_results, tmp_path):
    again = tmp_path / "again"
    target = "runs/sgd_corrupt50/measurements.h5"
    snakemake(str(again / target), "--cores", "2", "--configfile", str(TINY), "--config", f"results={again}")
    # subset indices, corrupted labels, trajectories, Jacobians' spectra, measurements: bit for bit
    for rel in (
        "data/subset.h5",
        "data/labels_noise0.5.h5",
        "runs/sgd_corrupt50/trajectory.h5",
        "init/spectrum/train_epoch0.h5",
        "runs/sgd_corrupt50/spectrum/test_epoch3.h5",
        target,
    ):
        with h5py.File(again / rel) as a, h5py.File(tiny_results / rel) as b:
            names = []
            a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            for n in names:
                if "seconds" in n:
                    continue
                x, y = a[n][...], b[n][...]
                if x.dtype.kind == "f":
                    assert np.allclose(x, y, rtol=0, atol=1e-12, equal_nan=True), (rel, n)
                else:
                    assert np.array_equal(x, y), (rel, n)
    for epoch in (3, 6):
        a = torch.load(again / f"runs/sgd_corrupt50/checkpoints/epoch{epoch}.pt", weights_only=True)["state_dict"]
        b = torch.load(tiny_results / f"runs/sgd_corrupt50/checkpoints/epoch{epoch}.pt", weights_only=True)[
            "state_dict"
        ]
        assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------- no network unless asked
def test_no_network_is_attempted_without_download(tmp_path, monkeypatch):
    from test_data import write_cifar_fixture

    from jacobian_spectrum.data.base import DataError
    from jacobian_spectrum.data.subset import build_subset

    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    build_subset({"name": "digits", "classes": [0, 1], "train_per_class": 5, "test_per_class": 5, "seed": 0})
    write_cifar_fixture(tmp_path)
    build_subset(
        {
            "name": "cifar10",
            "root": str(tmp_path),
            "classes": ["bird", "cat"],
            "train_per_class": 3,
            "test_per_class": 2,
            "seed": 0,
            "download": False,
        }
    )
    with pytest.raises(DataError, match="download"):
        build_subset(
            {
                "name": "mnist",
                "root": str(tmp_path / "none"),
                "classes": [0, 1],
                "train_per_class": 3,
                "test_per_class": 2,
                "seed": 0,
                "download": False,
            }
        )


# ---------------------------------------------------------------- damaged data
def test_a_cut_short_image_stops_the_workflow_naming_it_and_leaves_no_subset(tmp_path):
    from test_data import write_jpeg_folder

    root = write_jpeg_folder(tmp_path / "images", per=20)
    bad = root / "train" / "bee" / "0007.jpg"
    bad.write_bytes(bad.read_bytes()[:300])  # a failed copy
    override = tmp_path / "images.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "results": str(tmp_path / "r"),
                "dataset": {
                    "name": "imagefolder",
                    "root": str(root),
                    "classes": ["ant", "bee", "cow"],
                    "train_per_class": 20,
                    "test_per_class": 10,
                    "seed": 0,
                },
            }
        )
    )
    proc = snakemake("--cores", "1", "--configfile", str(TINY), str(override), check=False)
    assert proc.returncode != 0
    log = (tmp_path / "r" / "logs" / "data" / "subsample.log").read_text()
    assert f"{bad}: truncated or corrupted image" in log
    assert not (tmp_path / "r" / "data" / "subset.h5").exists() and not (tmp_path / "r" / "runs").exists()
    assert not list((tmp_path / "r").rglob(".subset.h5.tmp*"))  # nor a partial one under another name
