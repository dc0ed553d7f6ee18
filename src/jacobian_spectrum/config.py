"""Config checks a JSON schema cannot express; run at parse time, before any job.

The schema (``workflow/schemas/config.schema.yaml``) checks keys, types and ranges and fills
defaults; :func:`check_config` then checks the config against the data set and itself.
Light imports only: the workflow calls this while parsing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .data import DataError, dataset_info, resolve_classes

RUN_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


class ConfigError(ValueError):
    """A config value is not allowed; the message names the key and what is allowed."""


def level_tag(level: float) -> str:
    """How a corruption level appears in file names: 0, 0.25, 0.5, 1."""
    return f"{float(level):g}"


def reference_epoch(run: Mapping) -> int:
    ref = run.get("reference_epoch")
    return int(run["epochs"]) if ref is None else int(ref)


def run_epochs_needed(run: Mapping) -> list[int]:
    """Checkpointed epochs of a run: 0 (the shared initialisation), final, reference and extras."""
    return sorted({0, int(run["epochs"]), reference_epoch(run), *map(int, run.get("checkpoints", []))})


def check_config(config: Mapping) -> None:
    """Raise :class:`ConfigError` for the first mistake, naming the key and the allowed values."""
    k = _check_dataset(config["dataset"])
    _check_spectrum(config["spectrum"], config["dataset"], k)
    _check_runs(config["runs"], [float(x) for x in config["corruption"]["levels"]])
    _check_figures(config["figures"], config["runs"])


def _check_dataset(ds: Mapping) -> int:
    """The data set exists, holds the classes and enough images of each; returns K."""
    if ds.get("archive"):
        if ds["name"] != "imagefolder":
            raise ConfigError(
                f"config key 'dataset.archive': only dataset.name imagefolder is unpacked from an archive, "
                f"not {ds['name']!r}"
            )
        if not ds.get("root"):
            raise ConfigError(
                "config key 'dataset.root': dataset.archive is unpacked into dataset.root; "
                "set it (for example data/images)"
            )
    try:
        info = dataset_info(ds)
        classes = resolve_classes(list(ds["classes"]), info.class_names)
    except DataError as exc:
        raise ConfigError(f"config: {exc}") from exc
    for split, key in (("train", "train_per_class"), ("test", "test_per_class")):
        need = ds[key] + (ds["test_per_class"] if split == "train" and not info.has_test_split else 0)
        for c in classes:
            have = int(info.per_class[split][c])
            if need > have:
                extra = (
                    "" if info.has_test_split else " (train and test are drawn from the same images: their sum counts)"
                )
                raise ConfigError(
                    f"config key 'dataset.{key}': {ds[key]} requested but class {info.class_names[c]!r} has only "
                    f"{have} {split} images{extra}; allowed: at most {have - (need - ds[key])}"
                )
    return len(classes)


def _check_spectrum(spec: Mapping, ds: Mapping, k: int) -> None:
    rows = min(ds["train_per_class"], ds["test_per_class"]) * k * k  # nK of the smaller Jacobian
    if spec["info_dim"] > rows:
        raise ConfigError(
            f"config key 'spectrum.info_dim': {spec['info_dim']} exceeds nK = {rows} "
            f"(rows of the smaller Jacobian); allowed: 1..{rows}"
        )
    if spec["method"] in ("topk", "matrix_free") and spec["topk"] < spec["info_dim"]:
        raise ConfigError(f"config key 'spectrum.topk': {spec['topk']} is below spectrum.info_dim = {spec['info_dim']}")


def _check_runs(runs: Mapping, levels: list[float]) -> None:
    for name, run in runs.items():
        if not RUN_NAME.match(name):
            raise ConfigError(f"config key 'runs.{name}': run names may hold letters, digits, '_' and '-' only")
        epochs = int(run["epochs"])
        if float(run.get("corruption", 0.0)) not in levels:
            raise ConfigError(
                f"config key 'runs.{name}.corruption': {run.get('corruption')} is not one of corruption.levels {levels}"
            )
        for key, values in (
            ("reference_epoch", [] if run.get("reference_epoch") is None else [run["reference_epoch"]]),
            ("checkpoints", run.get("checkpoints", [])),
            ("milestones", run.get("milestones", [])),
        ):
            for v in values:
                if not 0 <= int(v) <= epochs:
                    raise ConfigError(
                        f"config key 'runs.{name}.{key}': epoch {v} is beyond the run's {epochs} epochs; "
                        f"allowed: 0..{epochs}"
                    )


def _check_figures(figs: Mapping, runs: Mapping) -> None:
    for key in ("table1", "table2", "table3"):
        if figs.get(key) is not None and figs[key] not in runs:
            raise ConfigError(
                f"config key 'figures.{key}': run {figs[key]!r} is not in runs; allowed: {sorted(runs)} or null"
            )
    for run in figs.get("corruption_runs", []):
        if run not in runs:
            raise ConfigError(
                f"config key 'figures.corruption_runs': run {run!r} is not in runs; allowed: {sorted(runs)}"
            )
