"""End-to-end: the tiny config through Snakemake, the artifact contract, reruns, lint, report."""

import h5py
import numpy as np
import pytest
import yaml
from conftest import ROOT, TINY, snakemake

pytestmark = pytest.mark.slow


def dry_run_jobs(results, override=None, tmp_path=None):
    """Rule names a dry run would execute (empty when nothing is to be done).

    ``override`` is a config change, written as a second config file that Snakemake merges
    over the tiny config (as a user would change a config).
    """
    files = [str(TINY)]
    if override:
        path = tmp_path / "override.yaml"
        path.write_text(yaml.safe_dump(override))
        files.append(str(path))
    proc = snakemake("-n", "--cores", "2", "--configfile", *files, "--config", f"results={results}")
    jobs = []
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("rule ") and line.endswith(":"):
            jobs.append(line[5:-1])
        elif line.startswith("localrule ") and line.endswith(":"):
            jobs.append(line[10:-1])
    return jobs


def test_every_artifact_of_the_contract(tiny_results):
    r = tiny_results
    with h5py.File(r / "data/subset.h5") as f:
        assert f["train/x"].shape == (60, 1, 8, 8) and f["test/source_index"].shape == (30,)
        assert list(f.attrs["classes"]) == ["0", "1", "2"] and f.attrs["dataset"] == "digits"
    with h5py.File(r / "data/labels_noise0.5.h5") as f:
        assert f["corrupted"][...].sum() == 30 and f.attrs["fraction"] == 0.5
    with h5py.File(r / "runs/sgd_clean/trajectory.h5") as f:
        assert f["train/predictions"].shape == (7, 60, 3) and f["test/predictions"].shape == (7, 30, 3)
        assert np.array_equal(f["train/error_kept"][...], f["train/error"][...])  # clean: every label kept
        assert np.all(np.isnan(f["train/error_corrupted"][...]))
    with h5py.File(r / "runs/sgd_corrupt50/trajectory.h5") as f:
        pred, y, clean = f["train/predictions"][...], f["train/y"][...], f["train/y_clean"][...]
        wrong = pred.argmax(-1) != y
        assert np.array_equal(f["train/error_corrupted"][...], wrong[:, y != clean].mean(-1))
        assert np.array_equal(f["train/error_kept"][...], wrong[:, y == clean].mean(-1))
    # every epoch up to training.checkpoint_every (10) is kept: the epochs the tracking grid can pick
    assert sorted(p.name for p in (r / "runs/sgd_corrupt50/checkpoints").glob("*.pt")) == [
        f"epoch{e}.pt" for e in range(7)
    ]
    with h5py.File(r / "init/jacobian/train_epoch0.h5") as f:
        assert f["J"].shape[0] == 180 and f.attrs["row_order"].startswith("sample-major")
        assert f.attrs["probe_error_jvp_max"] < 1e-5 and f.attrs["probe_error_vjp_max"] < 1e-5
        p = f["J"].shape[1]
        assert f["parameters/offset"][-1] + f["parameters/size"][-1] == p
    # the shared initialisation: J_init is one file, and every run's epoch-0 checkpoint equals it
    assert not (r / "runs/sgd_clean/jacobian/train_epoch0.h5").exists()
    # jacobian.keep: measured. J_init and each run's final and reference J stay; the J of a
    # tracked-only epoch (1) and its chunks are gone once its spectrum is written
    kept = {p.relative_to(r).as_posix() for p in r.glob("**/jacobian/**/*.h5") if "chunks" not in p.parts}
    assert kept == {"init/jacobian/train_epoch0.h5"} | {
        f"runs/{run}/jacobian/{split}_epoch{e}.h5"
        for run, epochs in (("sgd_clean", (6,)), ("adam_clean", (4,)), ("sgd_corrupt50", (6, 3)))
        for e in epochs
        for split in ("train", "test")
        if split == "train" or e == epochs[-1]
    }
    assert not list(r.glob("**/jacobian/temporary/**/*.h5"))
    assert (r / "runs/sgd_clean/spectrum/train_epoch1.h5").is_file()
    for spectrum, rows in (("init/spectrum/train_epoch0.h5", 180), ("runs/sgd_corrupt50/spectrum/test_epoch3.h5", 90)):
        with h5py.File(r / spectrum) as f:
            s = f["singular_values"][...]
            assert f["U"].shape == (rows, rows) and np.all(np.diff(s) <= 0)  # stored_vectors: all
            assert f.attrs["check_orthogonality_error"] < 1e-10
    with h5py.File(r / "runs/sgd_corrupt50/measurements.h5") as f:
        assert f["alignment/values"].shape == (2, 6)
        info, nuis = f["residual/train/information"][...], f["residual/train/nuisance"][...]
        assert info.shape == (7,) and np.all(info >= 0) and np.all(nuis >= 0)
        assert f.attrs["reference_epoch"] == 3
        # half the labels moved to one of the 2 other classes: about sqrt(0.25 + 0.125) = 0.612
        info, nuis = f["no_memorisation"][...]
        assert 0.55 < info < 0.68 and nuis == pytest.approx(1 - info**2)
    with h5py.File(r / "runs/sgd_clean/measurements.h5") as f:
        assert np.allclose(f["no_memorisation"][...], [1.0, 0.0])  # clean labels: the class structure is y
    for name in ("fig2", "fig4", "fig5", "fig6", "fig7", "fig8", "fig9", "cutoff", "alignment_over_training"):
        assert (r / "figures" / f"{name}.png").stat().st_size > 10_000
    assert (r / "figures/memorisation.png").stat().st_size > 10_000
    # J_init's own figure and Table 1's J_init row: the same numbers as Table 1's, from the same spectrum
    assert (r / "figures/init_spectrum.png").stat().st_size > 10_000
    init_row = np.loadtxt(r / "tables/table1_init.csv", delimiter=",", skiprows=1, usecols=range(1, 7))
    table1 = np.loadtxt(r / "tables/table1.csv", delimiter=",", skiprows=1, usecols=range(1, 7))
    assert np.allclose(init_row, table1[0], rtol=1e-12)
    curve = np.loadtxt(r / "figures/init_spectrum.csv", delimiter=",", skiprows=1)
    assert curve.shape == (180, 8) and np.allclose(curve[9, 2:], init_row, rtol=1e-12)  # r = info_dim = 10
    assert "No-memorisation reference" in (r / "tables/table3.md").read_text()
    assert "No-memorisation reference" not in (r / "tables/table1.md").read_text()
    for i in (1, 2, 3):
        for ext in ("csv", "md", "tex"):
            assert (r / "tables" / f"table{i}.{ext}").stat().st_size > 100
    text = (r / "tables/comparison.md").read_text()
    assert "digits" in text and "(paper 0.724)" in text


def test_a_second_run_has_nothing_to_do(tiny_results):
    assert dry_run_jobs(tiny_results) == []


def test_a_plotting_option_reruns_only_figure_rules(tiny_results, tmp_path):
    jobs = dry_run_jobs(tiny_results, {"figures": {"min_window": 3}}, tmp_path)
    # the small-loss criterion's epoch is the lowest test error averaged over min_window epochs,
    # and cleanlab's fold trainings stop there
    assert set(jobs) == {"residual_figure", "figure9", "theorem_terms", "label_noise", "train_fold", "all"}


def test_a_new_corruption_level_reruns_only_what_depends_on_it(tiny_results, tmp_path):
    jobs = dry_run_jobs(tiny_results, {"corruption": {"levels": [0.0, 0.5, 0.75]}}, tmp_path)
    assert sorted(jobs) == ["all", "corrupt_labels"]


def test_a_changed_tracking_grid_reruns_only_the_new_epochs_and_what_reads_them(tiny_results, tmp_path):
    from jacobian_spectrum.config import tracked_epochs

    cfg = yaml.safe_load(TINY.read_text())
    cfg.setdefault("training", {})["checkpoint_every"] = 10
    tracked = cfg["analysis"]["track_runs"]
    assert set(tracked) < set(cfg["runs"])  # an untracked run gets no new epochs
    # a run's training J exists at its tracked epochs and at its reference epoch (Figure 8)
    before = {
        run: {*tracked_epochs(cfg["runs"][run], cfg), cfg["runs"][run].get("reference_epoch", 0)} for run in tracked
    }
    grid = [0, 1, 2, 3, 4, 5]
    after = {run: set(tracked_epochs(cfg["runs"][run], {**cfg, "analysis": {"track_epochs": grid}})) for run in tracked}
    new = sum(len(after[run] - before[run]) for run in tracked)
    assert new > 0
    jobs = dry_run_jobs(tiny_results, {"analysis": {"track_epochs": grid}}, tmp_path)
    assert "train" not in jobs and "initialise" not in jobs
    # per new epoch: one training Jacobian (60 samples in chunks of 25: 3 chunk jobs), temporary
    # (jacobian.keep: measured), and its spectrum
    assert jobs.count("spectrum") == new and jobs.count("jacobian_gather_temporary") == new
    assert jobs.count("jacobian_chunk_temporary") == 3 * new
    temporary = {"jacobian_chunk_temporary", "jacobian_gather_temporary"}
    assert sorted(set(jobs) - temporary - {"spectrum"}) == sorted(
        {"measure", "alignment_over_training", "cutoff", "theorem_terms", "memorisation", "table", "comparison"}
        | {"figure9", "residual_figure", "label_noise", "all"}
    )


def test_tracked_measurements_agree_with_the_tables_at_their_ends(tiny_results):
    with h5py.File(tiny_results / "runs/sgd_corrupt50/measurements.h5") as f:
        table = f["alignment/values"][...]
        epochs = list(f["tracking/epochs"][...])
        labels = f["tracking/labels"][...]
        assert epochs[0] == 0 and epochs[-1] == 6
        # the tracked alignment at epoch 0 and at the final epoch is Table 3's J_init and J_final row
        assert np.allclose(labels[0], table[0, :3], atol=1e-12) and np.allclose(labels[-1], table[1, :3], atol=1e-12)
        # the cut-off curves pass through the tables at r = info_dim
        assert np.allclose(f["cutoff/J_init"][9], table[0], atol=1e-12)
        assert np.allclose(f["cutoff/J_final"][9], table[1], atol=1e-12)
        assert f["cutoff/J_init"].shape == (180, 6) and f["cutoff/J_init"][-1, 1] < 1e-6  # r = nK: N is empty
        assert np.allclose(f["tracking/overlap_init"][0], 1) and np.allclose(f["tracking/overlap_final"][-1], 1)
        # a corrupted run: the clean labels and the label noise are tracked too
        assert f["tracking/clean_labels"].shape == f["tracking/label_noise"].shape == (len(epochs), 3)
        r = f["theorem/paper_r"][...]
        assert np.all((r >= 1) & (r <= 180))
        bound = f["theorem/paper_bound"][...]
        assert np.allclose(bound, f["theorem/paper_bias"][...] + f["theorem/paper_variance"][...])
    with h5py.File(tiny_results / "runs/sgd_clean/measurements.h5") as f:
        assert "clean_labels" not in f["tracking"]  # no noise in a clean run
    rows = (tiny_results / "figures/theorem_terms.csv").read_text().splitlines()
    assert rows[0].startswith("run,corruption,epoch,constants,best_r") and len(rows) == 1 + 2 * (3 + 3)


def test_the_memorisation_figure_has_a_point_per_measured_epoch(tiny_results):
    import csv

    with open(tiny_results / "figures/memorisation.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    # both Figure 9 runs are tracked at epochs 0, 1 and 6
    assert [(r["run"], int(r["epoch"])) for r in rows] == [
        (run, e) for run in ("sgd_clean", "sgd_corrupt50") for e in (0, 1, 6)
    ]
    with h5py.File(tiny_results / "runs/sgd_corrupt50/measurements.h5") as f:
        energy = f["tracking/labels"][:, 1] ** 2
    with h5py.File(tiny_results / "runs/sgd_corrupt50/trajectory.h5") as f:
        memorised = 1 - f["train/error_corrupted"][[0, 1, 6]]
    corrupt = [r for r in rows if r["run"] == "sgd_corrupt50"]
    assert np.allclose([float(r["label_energy_nuisance"]) for r in corrupt], energy)
    assert np.allclose([float(r["memorised_fraction"]) for r in corrupt], memorised)
    assert all(r["memorised_fraction"] == "nan" for r in rows if r["run"] == "sgd_clean")


def test_a_changed_run_reruns_that_run_only(tiny_results, tmp_path):
    jobs = dry_run_jobs(tiny_results, {"runs": {"adam_clean": {"lr": 0.002}}}, tmp_path)
    assert "train" in jobs and jobs.count("train") == 1
    assert "subsample" not in jobs and "initialise" not in jobs


def test_lint_reports_nothing():
    for config in (ROOT / "config.yaml", TINY):
        proc = snakemake("--lint", "--configfile", str(config), check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Lints for" not in proc.stdout + proc.stderr
        assert "Congratulations" in proc.stdout + proc.stderr


def test_paper_config_lists_the_full_job_set(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from test_data import write_cifar_fixture

    write_cifar_fixture(tmp_path / "cifar")
    override = tmp_path / "root.yaml"
    override.write_text(yaml.safe_dump({"dataset": {"root": str(tmp_path / "cifar")}, "results": str(tmp_path / "r")}))
    proc = snakemake("-n", "--cores", "8", "--configfile", str(ROOT / "config" / "paper.yaml"), str(override))
    counts = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    # 6 runs; 29,997 training rows in chunks of 1000 samples = 10 chunks, 3000 test samples = 3
    assert counts["train"] == 6 and counts["corrupt_labels"] == 5
    # J_init, 6 J_final (train), 6 J_ref (test), J at epoch 100 (train) of the 50% run: 8 train + 6 test
    # (jacobian.keep: none: every J is temporary, only spectra stay)
    assert counts["jacobian_gather_temporary"] == 14 and counts["spectrum"] == 14
    assert counts["jacobian_chunk_temporary"] == 8 * 10 + 6 * 3  # 9999 samples in chunks of 1000; 3000 test
    assert "jacobian_gather" not in counts and "jacobian_chunk" not in counts
    assert counts["table"] == 3 and counts["residual_figure"] == 3


def test_html_report(tiny_results, tmp_path):
    report = tmp_path / "report.zip"
    snakemake("--cores", "1", "--configfile", str(TINY), "--config", f"results={tiny_results}", "--report", str(report))
    import zipfile

    names = zipfile.ZipFile(report).namelist()
    assert any(n.endswith("fig8.png") for n in names) and any(n.endswith("table3.csv") for n in names)
    assert any(n.endswith("comparison.md") for n in names)


def test_a_spectrum_only_config_streams_J_init_and_gives_table_1s_row(tiny_results, tmp_path):
    """runs: {} with spectrum.method matrix_free, as config/cifar10-full*.yaml: J_init's top-k
    spectrum without storing J, and Table 1's J_init row, equal to the full pipeline's."""
    out = tmp_path / "results"
    cfg = yaml.safe_load(TINY.read_text())
    cfg.update(results=str(out), runs={}, analysis={"track_runs": []})
    cfg["figures"].update(table1=None, table2=None, table3=None, corruption_runs=[])
    # the randomized iteration (auto would take gram at this size: every singular value)
    cfg["spectrum"].update(method="matrix_free", iteration="block_krylov", topk=20, oversampling=20, power_iterations=6)
    config = tmp_path / "spectrum_only.yaml"
    config.write_text(yaml.safe_dump(cfg))
    snakemake("--cores", "2", "--configfile", str(config))
    assert not (out / "init/jacobian").exists() and not (out / "runs").exists()  # J never stored, nothing trained
    target = "init/spectrum/train_epoch0.h5"
    with h5py.File(out / target) as mf, h5py.File(tiny_results / target) as full:
        s_mf, s_full = mf["singular_values"][...], full["singular_values"][...]
        assert mf.attrs["method"] == "matrix_free" and full.attrs["method"] == "full"
        assert np.abs(s_mf[:10] - s_full[:10]).max() <= 1e-6 * s_full[0]
        overlap = np.abs(np.sum(mf["U"][:, :10] * full["U"][:, :10], axis=0))
        assert np.allclose(overlap, 1, atol=1e-4)
        # the convergence checks a user reads: every top-r vector an eigenvector of J J^T
        assert mf.attrs["check_max_residual_top_r"] < 1e-3 and mf.attrs["check_passes"] == 6 + 1
    streamed = np.loadtxt(out / "tables/table1_init.csv", delimiter=",", skiprows=1, usecols=range(1, 7))
    table1 = np.loadtxt(tiny_results / "tables/table1.csv", delimiter=",", skiprows=1, usecols=range(1, 7))
    assert np.allclose(streamed, table1[0], rtol=1e-4)
    assert np.loadtxt(out / "figures/init_spectrum.csv", delimiter=",", skiprows=1).shape == (20, 8)
    assert (out / "figures/init_spectrum.png").stat().st_size > 10_000


def test_image_archive_is_unpacked_once_and_a_damaged_one_stops_before_any_job(tmp_path):
    import shutil
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from test_data import write_image_archive

    archive = write_image_archive(tmp_path / "images.tar.gz", per=(20, 10), size=8)
    results, root = tmp_path / "r", tmp_path / "data" / "images"

    def config(archive_path):
        override = tmp_path / "archive.yaml"
        override.write_text(
            yaml.safe_dump(
                {
                    "results": str(results),
                    "dataset": {
                        "name": "imagefolder",
                        "root": str(root),
                        "archive": str(archive_path),
                        "classes": ["ant", "bee", "cow"],
                        "train_per_class": 20,
                        "test_per_class": 10,
                        "seed": 0,
                    },
                }
            )
        )
        return ["--configfile", str(TINY), str(override)]

    target = f"{results}/data/subset.h5"
    proc = snakemake(target, "--cores", "1", *config(archive))
    assert "extract_archive" in proc.stdout + proc.stderr
    assert (root / "ARCHIVE.json").is_file() and (results / "data" / "subset.h5").is_file()
    with h5py.File(results / "data" / "subset.h5") as f:
        assert f["train/x"].shape == (60, 3, 8, 8)
    assert "Nothing to be done" in snakemake(target, "-n", "--cores", "1", *config(archive)).stdout  # reused

    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[:2000])
    root_before = sorted(root.rglob("*"))
    for bad in (cut, tmp_path / "missing.tar.gz"):
        shutil.rmtree(root)  # as on a fresh clone: only the archive is there
        shutil.rmtree(results)
        proc = snakemake("--cores", "1", *config(bad), check=False)
        assert proc.returncode != 0 and str(bad) in proc.stdout + proc.stderr
        assert not root.exists() and not results.exists()
        snakemake(target, "--cores", "1", *config(archive))  # the good archive again
        assert sorted(root.rglob("*")) == root_before


def test_own_network_and_data_run_through_the_whole_workflow(tmp_path):
    """examples/config.yaml: a small CNN with batch-norm from a factory, on images from a loader."""
    import torch

    from jacobian_spectrum.data.subset import read_split
    from jacobian_spectrum.train.models import load_checkpoint, read_checkpoint

    out = tmp_path / "results"
    snakemake("--cores", "2", "--configfile", str(ROOT / "examples/config.yaml"), "--config", f"results={out}")
    payload = read_checkpoint(out / "init/checkpoints/epoch0.pt")
    assert payload["model"]["name"] == "examples.own_network:small_cnn" and payload["model"]["kwargs"] == {"width": 8}
    with h5py.File(out / "data/subset.h5") as f:
        assert f.attrs["dataset"] == "examples.own_data:stripes" and '"per_class": 40' in f.attrs["config"]
    # every later stage rebuilt the factory's network: J_final's rows are the gradients of the
    # trained network in eval mode (batch-norm's statistics those recomputed for its weights,
    # fixed), and its probe check ran
    model, _ = load_checkpoint(out / "runs/sgd_clean/checkpoints/epoch6.pt", normalisation="recomputed")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    model.eval()
    x = torch.from_numpy(read_split(out / "data/subset.h5", "train").x)
    with h5py.File(out / "runs/sgd_clean/jacobian/train_epoch6.h5") as f:
        assert f.attrs["probe_error_jvp_max"] < 1e-4 and f.attrs["probe_error_vjp_max"] < 1e-4
        for i, k in ((0, 0), (41, 2)):
            model.zero_grad()
            model(x[i : i + 1])[0, k].backward()
            grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).numpy()
            assert np.allclose(f["J"][i * 3 + k], grad, rtol=1e-4, atol=1e-6)
    for name in ("table1", "table3"):
        assert "examples.own_network:small_cnn" in (out / "tables" / f"{name}.md").read_text()
    assert (out / "figures/fig9.png").stat().st_size > 10_000
