"""The workflow's jobs, from the config: the steps a plan times, and what each waits for.

Each step is one rule's jobs for one thing (a run's training, one J's chunk jobs and gather, its
spectrum), with its seconds scaled from this machine's rates (:mod:`.rates`) by the step's
arithmetic, its peak memory, GPU memory and disk; a step's ``key`` names the ``benchmark:`` files
an earlier run left for it (:mod:`.measured`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..config import image_shape, jacobian_kept, measured_epochs, reference_epoch, run_epochs_needed
from .rates import Rates

if TYPE_CHECKING:
    from ..spectrum.budget import RandomizedPlan


@dataclass
class Step:
    key: str  # rule:what, as other steps' ``after`` and the benchmark files name it
    name: str
    rule: str
    jobs: int
    seconds: float  # all its jobs, one after the other
    memory_bytes: float  # peak of one job
    disk_bytes: float  # what it writes
    threads: int = 1
    gpu_bytes: float = 0.0
    temporary: bool = False  # deleted once read (jacobian.keep)
    source: str = "estimate"
    after: list[str] = field(default_factory=list)  # names of the steps it waits for


def jacobians(config: Mapping, table: Mapping[str, str] | None = None) -> dict[tuple[str, str, int], list[str]]:
    """Every Jacobian the workflow computes, (owner, split, epoch), and the runs that read it
    (the spectra that the measurements read: J_init, J_final, J_ref on train and test, and the
    training Jacobians of the tracked epochs). ``table``: the config's ``architecture_table``,
    for a network of an architecture table, which computes only the Jacobians the table reads."""
    if table is not None:
        from ..architectures.configs import table_jacobians

        return {key: [table[role] for role in roles] for key, roles in table_jacobians(config, table).items()}
    out: dict[tuple[str, str, int], list[str]] = {("init", "train", 0): []}  # J_init: the init_spectrum figure
    measured = measured_epochs(config)
    for run, r in config["runs"].items():
        ref = reference_epoch(r)
        wanted = [("train", e) for e in measured[run]] + [("train", ref), ("test", ref)]
        for split, epoch in dict.fromkeys(wanted):
            owner = "init" if epoch == 0 else f"runs/{run}"
            if run not in out.setdefault((owner, split, epoch), []):
                out[(owner, split, epoch)].append(run)
    return out


def job_steps(config: Mapping, rates: Rates, device: str, table: Mapping[str, str] | None = None) -> list[Step]:
    """The steps of the workflow's jobs for ``config``, each listed after those it waits for
    (``table``: one network of an architecture table, :func:`jacobians`)."""
    ds, k = config["dataset"], len(config["dataset"]["classes"])
    n = {"train": ds["train_per_class"] * k, "test": ds["test_per_class"] * k}
    pixels = int(np.prod(image_shape(ds)))
    p = rates.parameters
    start = rates.job_start_seconds
    data_jobs = 1 + len(config["corruption"]["levels"])
    data_disk = sum(n.values()) * pixels + data_jobs * n["train"] * 8
    steps = [Step("data", "subsample + labels", "subsample", data_jobs, data_jobs * start, rates.base_bytes, data_disk)]
    steps.append(Step("initialise", "initialise", "initialise", 1, start, rates.base_bytes, p * 4, after=["data"]))
    threads = int(config["training"].get("threads", 1))
    for run, r in config["runs"].items():
        epochs = int(r["epochs"])
        evaluated = sum(n.values()) + (n["train"] if rates.recomputes_statistics else 0)
        per_epoch = n["train"] * rates.train_image_seconds + evaluated * rates.eval_image_seconds
        kept = len(run_epochs_needed(r, int(config["training"]["checkpoint_every"]))) - 1  # epoch 0 is init's
        trajectory = (epochs + 1) * sum(n.values()) * k * 4
        on_device = sum(n.values()) * pixels * 4
        steps.append(
            Step(
                f"train:{run}",
                f"train {run} ({epochs} epochs)",
                "train",
                1,
                start + epochs * per_epoch,
                rates.train_bytes + trajectory + kept * p * 4 + (0 if device == "cuda" else on_device),
                trajectory + kept * p * 4,
                threads=threads,
                gpu_bytes=rates.train_gpu_bytes + on_device if device == "cuda" else 0.0,
                after=["initialise"],
            )
        )
        steps += _fold_steps(config, run, rates, device, n["train"], epochs, start, threads)
    steps += _jacobian_steps(config, rates, device, n, k, table)
    if table is not None:  # the network's share of the one architecture_table job
        steps.append(
            Step("report", "architecture table", "architecture_table", 1, start, rates.base_bytes, 0, after=["*"])
        )
        return steps
    runs = list(config["runs"])
    small = 4 * len(runs) + 8  # measure per run, figures, tables, comparison, theory
    steps.append(
        Step("report", "measure, figures, tables", "measure", small, small * start, rates.base_bytes, 0, after=["*"])
    )
    return steps


def _fold_steps(
    config: Mapping, run: str, rates: Rates, device: str, n_train: int, epochs: int, start: float, threads: int
) -> list[Step]:
    """cleanlab's k trainings of a corrupted run (analysis.label_noise), each on (k-1)/k of the
    split with no per-epoch evaluation. They stop at the run's epoch of lowest test error, which
    is known only once it has trained: counted here at its full length, an upper bound."""
    ln = config["analysis"]["label_noise"]  # the schema fills its defaults
    corruption = float(config["runs"][run]["corruption"])
    if not ln["cleanlab"] or not 0 < corruption < 1:
        return []
    folds = int(ln["folds"])
    per_epoch = n_train * (folds - 1) / folds * rates.train_image_seconds
    return [
        Step(
            f"folds:{run}",
            f"train_fold {run} ({folds} folds, at most {epochs} epochs each)",
            "train_fold",
            folds,
            folds * (start + epochs * per_epoch),
            rates.train_bytes,
            0,
            threads=threads,
            gpu_bytes=rates.train_gpu_bytes if device == "cuda" else 0.0,
            after=[f"train:{run}"],
        )
    ]


def _jacobian_steps(
    config: Mapping, rates: Rates, device: str, n: dict, k: int, table: Mapping[str, str] | None = None
) -> list[Step]:
    from ..spectrum.store import stored_vector_count

    jac, spec = config["jacobian"], config["spectrum"]
    itemsize = 8 if jac["dtype"] == "float64" else 4
    p, start = rates.parameters, rates.job_start_seconds
    steps = []
    for (owner, split, epoch), runs in jacobians(config, table).items():
        rows = n[split] * k
        chunks = math.ceil(n[split] / jac["chunk_size"])
        J = rows * p * itemsize
        tag = f"{owner}/{split}_epoch{epoch}"
        waits = ["initialise"] if owner == "init" else [f"train:{runs[0]}"]
        if spec["method"] == "matrix_free":
            steps.append(_matrix_free_step(spec, rates, device, tag, n[split], k, waits))
            continue
        b = min(rates.jacobian_batch, jac["chunk_size"])
        chunk_memory = (
            rates.base_bytes
            + b * k * p * itemsize
            + 2 * b * k * rates.largest_layer * itemsize
            + (k + 4) * b * rates.activations * itemsize
        )
        steps.append(
            Step(
                f"jacobian:{tag}",
                f"jacobian {tag} ({rows} x {p:,})",
                "jacobian_chunk",
                chunks + 1,  # the chunk jobs and the gather
                chunks * start
                + n[split] * rates.jacobian_sample_seconds
                + J / rates.write_bytes_per_second
                + start
                + J / rates.read_bytes_per_second,
                chunk_memory if device != "cuda" else rates.base_bytes + b * k * p * itemsize,
                J,
                gpu_bytes=chunk_memory - rates.base_bytes if device == "cuda" else 0.0,
                temporary=not jacobian_kept(config, owner, epoch),
                after=waits,
            )
        )
        G = rows * rows * 8
        gram = rows * rows * p / rates.gram_flops + J / rates.read_bytes_per_second
        verify = 2 * rows * p * min(10, spec["info_dim"]) / rates.gram_flops + J / rates.read_bytes_per_second
        steps.append(
            Step(
                f"spectrum:{tag}",
                f"spectrum {tag}",
                "spectrum",
                1,
                start + gram + rates.eigh_seconds_per_n3 * rows**3 + verify,
                rates.base_bytes
                + (0 if device == "cuda" else 3 * G)
                + min(spec["memory_budget_mb"] * 1e6, rows * p * 12),
                rows * (stored_vector_count(spec, _computed_vectors(spec, rows)) + 1) * 8,
                threads=int(spec["threads"]),
                gpu_bytes=3 * G + 2 * rows * 4 * 1e6 if device == "cuda" else 0.0,
                after=[f"jacobian:{tag}"],
            )
        )
    return steps


def _matrix_free_step(
    spec: Mapping, rates: Rates, device: str, tag: str, samples: int, k: int, waits: list[str]
) -> Step:
    """The streamed spectrum of one J (:mod:`..spectrum.matrix_free`), J never stored: the gram
    iteration (G = J J^T from streamed rows) or power_iterations + 1 passes that each form every
    row (after the first, all but the rows the memory budget holds) and make two products
    (J Z, J^T J Z) with topk + oversampling columns. Memory from
    :func:`..spectrum.budget.matrix_free_plan`, the plan the job itself follows (it logs the
    same figure when it starts)."""
    from ..spectrum.budget import GramPlan, plan_for_settings
    from ..spectrum.store import stored_vector_count

    rows, p = samples * k, rates.parameters
    mf = plan_for_settings(spec, rows, k, p)
    per_sample = rates.jacobian_rows_seconds or rates.jacobian_sample_seconds
    if isinstance(mf, GramPlan):  # rows formed mf.passes times over; G's rows^2 p / 2 multiply-adds
        seconds = mf.passes * samples * per_sample + rows * rows * p / 2 / rates.gram_flops
        what = (
            f"matrix_free gram: G = J J^T of {rows} x {p:,}, {mf.held_samples} samples' rows held at a time, "
            f"{mf.passes:.2f} passes' worth of rows"
        )
        vectors = rows
    else:
        seconds, what = _randomized_seconds(mf, spec, rates, samples, rows, p, per_sample)
        vectors = min(spec["topk"], rows)
    return Step(
        f"spectrum:{tag}",
        f"spectrum {tag} ({what})",
        "spectrum",
        1,
        rates.job_start_seconds + seconds,
        rates.base_bytes + (0 if device == "cuda" else mf.bytes),
        rows * (stored_vector_count(spec, vectors) + 1) * 8,
        threads=int(spec["threads"]),
        gpu_bytes=mf.bytes if device == "cuda" else 0.0,
        after=waits,
    )


def _randomized_seconds(
    mf: RandomizedPlan, spec: Mapping, rates: Rates, samples: int, rows: int, p: int, per_sample: float
) -> tuple[float, str]:
    """Seconds of a randomized iteration's passes over J (rows x p), and what the step's name
    says of them."""
    passes = spec["power_iterations"] + 1
    what = f"matrix_free {mf.iteration}: {passes} passes over {rows} x {p:,}, {mf.columns} columns"
    if rates.matrix_free_pass_seconds:  # measured: rows and both products of one pass
        # J Z summed in float64 on every block_krylov pass and on subspace's last; float32 otherwise
        precise = passes if mf.iteration == "block_krylov" else 1
        fast = rates.matrix_free_fast_pass_seconds or rates.matrix_free_pass_seconds
        seconds = samples * (precise * rates.matrix_free_pass_seconds + (passes - precise) * fast)
    else:
        # gram_flops counts multiply-adds (rows^2 x columns a second): a product is rows x p x l of them
        seconds = passes * (samples * per_sample + 2 * rows * p * mf.columns / rates.gram_flops)
    if mf.held_samples:  # held rows: formed by the first pass only
        measured = rates.matrix_free_pass_seconds and rates.matrix_free_held_pass_seconds
        rows_s = rates.matrix_free_pass_seconds - rates.matrix_free_held_pass_seconds if measured else per_sample
        seconds -= (passes - 1) * mf.held_samples * max(rows_s, 0.0)
        what += f", the rows of {mf.held_samples} samples held ({mf.formations:.2f} passes' worth of rows)"
    return seconds, what


def _computed_vectors(spec: Mapping, rows: int) -> int:
    """Left singular vectors the configured method computes for a J of ``rows`` rows."""
    from ..spectrum.methods import choose_method

    return rows if choose_method(spec["method"], rows, spec["memory_budget_mb"]) == "full" else min(spec["topk"], rows)
