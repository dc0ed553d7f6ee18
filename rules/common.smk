# Helpers shared by every rules file: config validation, artifact paths, code-version params.
import math
from pathlib import Path

from snakemake.utils import validate

from jacobian_spectrum.config import (
    check_config,
    check_replaced_keys,
    jacobian_kept,
    level_tag,
    measured_epochs,
    run_epochs_needed,
    tracked_runs,
)
from jacobian_spectrum.config import reference_epoch as run_reference_epoch
from jacobian_spectrum.spectrum.methods import method_settings


include: "codeversion.smk"


# Schema first (fills defaults), then the checks a schema cannot express (classes that
# exist, counts that are available, runs that reference known levels...). Both stop the
# workflow before any job runs.
check_replaced_keys(config)
validate(config, workflow.source_path("../workflow/schemas/config.schema.yaml"))
check_config(config)

R = config["results"]
K = len(config["dataset"]["classes"])
N_SPLIT = {
    "train": config["dataset"]["train_per_class"] * K,
    "test": config["dataset"]["test_per_class"] * K,
}
RUNS = config["runs"]
ARCHIVE = config["dataset"]["archive"]  # unpacked into dataset.root by rule extract_archive
LEVELS = [level_tag(x) for x in config["corruption"]["levels"]]
# run -> the epochs whose training spectrum the analysis reads: the tracking grid for the runs
# in analysis.track_runs (they get the alignment-over-training figure), J_init and J_final else
TRACKED = measured_epochs(config)
TRACK_RUNS = tracked_runs(config)


def spectrum_settings(wildcards):
    """The spectrum settings of a split's J: only the keys its method reads, so that tuning the
    randomized SVD does not rerun the full spectra (and the reverse)."""
    return method_settings(config["spectrum"], N_SPLIT[wildcards.split] * K)


def final_epoch(run):
    return RUNS[run]["epochs"]


def reference_epoch(run):
    return run_reference_epoch(RUNS[run])


def owner(run, epoch):
    """Epoch 0 of every run is the shared initialisation, stored once under init/."""
    return "init" if int(epoch) == 0 else f"runs/{run}"


def spectrum_path(run, split, epoch):
    return f"{R}/{owner(run, epoch)}/spectrum/{split}_epoch{epoch}.h5"


def checkpoint_path(owner_, epoch):
    if owner_ == "init":
        return f"{R}/init/checkpoints/epoch0.pt"
    return f"{R}/{owner_}/checkpoints/epoch{epoch}.pt"


def n_chunks(split):
    return math.ceil(N_SPLIT[split] / config["jacobian"]["chunk_size"])


def labels_path(run):
    return f"{R}/data/labels_noise{level_tag(RUNS[run]['corruption'])}.h5"


def spectra_of_run(run):
    """The spectra the measurements of a run read: J_init, J_final (train), J_ref (train, test)."""
    return {
        "init": spectrum_path(run, "train", 0),
        "final": spectrum_path(run, "train", final_epoch(run)),
        "ref_train": spectrum_path(run, "train", reference_epoch(run)),
        "ref_test": spectrum_path(run, "test", reference_epoch(run)),
    }


def tracked_spectra(run):
    """The training spectra of the epochs whose alignment and Theorem 3.2 terms a run measures."""
    return [spectrum_path(run, "train", e) for e in TRACKED[run]]


def checkpoint_epochs(run):
    return run_epochs_needed(RUNS[run], config["training"]["checkpoint_every"])


def figure_files(name):
    """PNG always (the report shows it), plus every other configured format."""
    return [f"{R}/figures/{name}.png"] + extra_formats(name)


def extra_formats(name):
    return [f"{R}/figures/{name}.{fmt}" for fmt in config["figures"]["formats"] if fmt != "png"]


def figure_output(name, caption):
    """Named outputs of a figure rule: the PNG marked for the report, the other formats."""
    return {
        "png": report(
            f"{R}/figures/{name}.png",
            caption=f"../workflow/report/{caption}.rst",
            category="Figures",
            labels={"figure": name},
        ),
        "other": extra_formats(name),
    }


def paper_tables():
    """Tables 1-3 whose run is configured (a config may leave one out with null)."""
    return {i: config["figures"][f"table{i}"] for i in (1, 2, 3) if config["figures"][f"table{i}"]}


def all_targets():
    targets = [f"{R}/data/subset.h5"]
    targets += [f"{R}/data/labels_noise{lv}.h5" for lv in LEVELS]
    for run in RUNS:
        targets.append(f"{R}/runs/{run}/trajectory.h5")
        targets.append(f"{R}/runs/{run}/measurements.h5")
    targets += figure_files("fig2") + figure_files("fig4")
    tables = paper_tables()
    for i in tables:
        targets += [f"{R}/tables/table{i}.{ext}" for ext in ("csv", "md", "tex")]
    if tables:
        targets.append(f"{R}/tables/comparison.md")
    if 1 in tables:
        targets += figure_files("fig5") + figure_files("fig6")
    if 2 in tables:
        targets += figure_files("fig7")
    if 3 in tables:
        targets += figure_files("fig8")
    if config["figures"]["corruption_runs"]:
        targets += figure_files("fig9")
    if RUNS:
        targets += figure_files("cutoff") + [f"{R}/figures/cutoff.csv"]
    # J_init's spectrum and Table 1's J_init row: all that a spectrum-only config (runs: {}) makes
    targets += figure_files("init_spectrum") + [f"{R}/figures/init_spectrum.csv", f"{R}/tables/table1_init.md"]
    if TRACK_RUNS:
        targets += figure_files("alignment_over_training") + [f"{R}/figures/alignment_over_training.csv"]
    if THEOREM_RUNS:
        targets += figure_files("theorem_terms") + [f"{R}/figures/theorem_terms.csv"]
    if any(RUNS[run]["corruption"] > 0 for run in MEMORISATION_RUNS):
        targets += figure_files("memorisation") + [f"{R}/figures/memorisation.csv"]
    if LABEL_NOISE_RUNS:
        targets += figure_files("label_noise") + [f"{R}/tables/label_noise.md"]
    return targets


def checkpoint_input(w):
    """The file (init) or the training output folder (runs) that holds the checkpoint."""
    if w.owner == "init":
        return checkpoint_path("init", 0)
    return f"{R}/{w.owner}/checkpoints"


def jacobian_folder(owner_, epoch):
    """Where a J and its chunks live: jacobian/, or jacobian/temporary/ for a J that is deleted
    once its spectrum is written (jacobian.keep)."""
    if jacobian_kept(config, owner_, int(epoch)):
        return f"{R}/{owner_}/jacobian"
    return f"{R}/{owner_}/jacobian/temporary"


def jacobian_of_spectrum(w):
    """The stored J a spectrum job reads, and the chunk files that hold its values (they must
    outlive the spectrum: J is a virtual dataset over them)."""
    folder = jacobian_folder(w.owner, w.epoch)
    return {"J": f"{folder}/{w.split}_epoch{w.epoch}.h5", "chunks": chunk_files(folder, w.split, w.epoch)}


def chunk_files(folder, split, epoch):
    return [f"{folder}/chunks/{split}_epoch{epoch}.chunk{c}.h5" for c in range(n_chunks(split))]


def jacobian_chunks(w):
    """The chunk files that store J of {owner}/{split}_epoch{epoch} (kept)."""
    return chunk_files(f"{R}/{w.owner}/jacobian", w.split, w.epoch)


def temporary_jacobian_chunks(w):
    """The chunk files that store J of {owner}/{split}_epoch{epoch} (deleted after its spectrum)."""
    return chunk_files(f"{R}/{w.owner}/jacobian/temporary", w.split, w.epoch)


def run_files(run):
    return {"measurements": f"{R}/runs/{run}/measurements.h5", "trajectory": f"{R}/runs/{run}/trajectory.h5"}


TABLE_RUNS = paper_tables()
THEOREM_RUNS = config["figures"]["corruption_runs"]
# the memorisation figure: every run of Figure 9, at each epoch whose J is measured
MEMORISATION_RUNS = config["figures"]["corruption_runs"]
# which labels are wrong: every run with corrupted and kept labels both (docs/label_noise.md)
LABEL_NOISE_RUNS = [run for run in RUNS if 0 < RUNS[run]["corruption"] < 1]
LABEL_NOISE = config["analysis"]["label_noise"]


def fold_files(run):
    """The out-of-fold outputs of a run's k trainings (analysis.label_noise.cleanlab), else none."""
    if not LABEL_NOISE["cleanlab"]:
        return []
    return [f"{R}/runs/{run}/folds/fold{k}.h5" for k in range(LABEL_NOISE["folds"])]


# names the config on every figure of the analysis (results folder, data set, n, r)
CAPTION = (
    f"{R}: {config['dataset']['name']}, n = {N_SPLIT['train']}, K = {K}, "
    f"{config['model']['name']} width {config['model']['width']}, r = {config['spectrum']['info_dim']}"
)
PLOT = {"window": config["figures"]["min_window"]}
