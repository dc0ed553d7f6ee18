"""Config checks a JSON schema cannot express; run at parse time, before any job.

The schema (``workflow/schemas/config.schema.yaml``) checks keys, types and ranges and fills
defaults; :func:`check_config` then checks the config against the data set and itself.
:func:`load_config` reads a config file as the workflow sees it, for tools that run outside
it (``python -m jacobian_spectrum plan``). Light imports only: the workflow calls this while
parsing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from .common.errors import ConfigError
from .data.base import DataError
from .data.sources import dataset_info, declared_image_shape, resolve_classes

RUN_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")


# keys a release replaced: the schema would only call them unexpected
REPLACED_KEYS = {
    ("jacobian", "temporary"): "jacobian.keep (all, measured, none); temporary: true is keep: none",
}


def check_replaced_keys(config: Mapping) -> None:
    """Raise :class:`ConfigError` for a key that a release replaced, naming its replacement (run
    before the schema, whose error would not)."""
    for (section, key), replacement in REPLACED_KEYS.items():
        if isinstance(config.get(section), Mapping) and key in config[section]:
            raise ConfigError(f"config key '{section}.{key}' was replaced by {replacement}")


def level_tag(level: float) -> str:
    """How a corruption level appears in file names: 0, 0.25, 0.5, 1."""
    return f"{float(level):g}"


def reference_epoch(run: Mapping) -> int:
    ref = run.get("reference_epoch")
    return int(run["epochs"]) if ref is None else int(ref)


def run_epochs_needed(run: Mapping, checkpoint_every: int) -> list[int]:
    """Checkpointed epochs of a run: 0 (the shared initialisation), final, reference, extras,
    and the kept grid: every epoch up to ``checkpoint_every`` and its multiples after. The grid
    does not depend on the tracked epochs, so a new tracking grid never retrains."""
    final = int(run["epochs"])
    grid = set(range(0, min(final, checkpoint_every) + 1)) | set(range(0, final + 1, checkpoint_every))
    return sorted(grid | {final, reference_epoch(run), *map(int, run.get("checkpoints", []))})


def log_uniform_epochs(final: int, count: int) -> list[int]:
    """0, then ``count`` - 1 epochs spread log-uniformly from 1 to ``final`` (fewer where they round alike)."""
    if count <= 2 or final <= 1:
        return sorted({0, final})
    spread = np.geomspace(1, final, count - 1)  # from 1 to final, both included
    return sorted({0, *(int(round(e)) for e in spread)})


def jacobian_kept(config: Mapping, owner: str, epoch: int) -> bool:
    """Whether the Jacobian of ``owner`` ("init" or "runs/{run}") at ``epoch`` stays on disk once
    its spectrum is written (jacobian.keep): with ``measured``, J_init and each run's final and
    reference-epoch J stay, and those of epochs only the tracking reads are deleted."""
    keep = config["jacobian"]["keep"]
    if keep != "measured":
        return keep == "all"
    if owner == "init":
        return True
    run = config["runs"][owner.split("/", 1)[1]]
    return int(epoch) in (int(run["epochs"]), reference_epoch(run))


def tracked_runs(config: Mapping) -> list[str]:
    """Runs whose alignment is measured over training (analysis.track_runs; null = all)."""
    runs = config["analysis"].get("track_runs")
    return list(config["runs"]) if runs is None else list(runs)


def measured_epochs(config: Mapping) -> dict[str, list[int]]:
    """Run -> the epochs whose training spectrum the analysis reads: the tracked epochs of the
    runs in analysis.track_runs, 0 and the final epoch (J_init and J_final) of every other run."""
    tracked = set(tracked_runs(config))
    return {
        name: tracked_epochs(run, config) if name in tracked else [0, int(run["epochs"])]
        for name, run in config["runs"].items()
    }


def tracked_epochs(run: Mapping, config: Mapping) -> list[int]:
    """The epochs of ``run`` whose training Jacobian and spectrum the analysis measures.

    A count is spread log-uniformly and each epoch moved to the nearest kept checkpoint (ties:
    the earlier); a list is taken as it is, without its entries beyond the run's last epoch.
    0 and the final epoch are always tracked."""
    final = int(run["epochs"])
    kept = np.array(run_epochs_needed(run, int(config["training"]["checkpoint_every"])))
    grid = config["analysis"]["track_epochs"]
    if isinstance(grid, int):
        wanted = log_uniform_epochs(final, grid)
        epochs = {int(kept[np.argmin(np.abs(kept - e))]) for e in wanted}
    else:
        epochs = {int(e) for e in grid if int(e) <= final}
    return sorted(epochs | {0, final})


def check_config(config: Mapping) -> None:
    """Raise :class:`ConfigError` for the first mistake, naming the key and the allowed values."""
    k, shape = _check_dataset(config["dataset"])
    _check_model(config["model"], shape, k)
    _check_spectrum(config["spectrum"], config["dataset"], k)
    _check_matrix_free_memory(config, shape, k)
    _check_runs(config["runs"], [float(x) for x in config["corruption"]["levels"]])
    _check_figures(config["figures"], config["runs"])
    _check_analysis(config)


def _check_dataset(ds: Mapping) -> tuple[int, tuple[int, int, int] | None]:
    """The data set exists, holds the classes and enough images of each; returns K and the
    image shape (C, H, W), where known before the data is unpacked."""
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
    return len(classes), info.image_shape


def _check_model(model: Mapping, shape: tuple[int, int, int] | None, k: int) -> None:
    """A zoo network (model.name torchvision:<name>, timm:<name>) or your own factory
    (package.module:factory) builds a torch.nn.Module with K outputs on the data's images, and
    model.weights is a weights file that fits it. Where the image shape is not known yet (an
    archive still to unpack) only the name and the weights file are checked here, the rest by
    the initialise job."""
    from .common.plugins import is_reference

    weights = model.get("weights")
    if not is_reference(model["name"]) and not weights:
        return
    from .train.models import apply_weights, build_model, load_weights, model_spec
    from .train.zoo import check_model_name

    try:
        if shape is None:
            if is_reference(model["name"]):
                check_model_name(model["name"])
            if weights:
                load_weights(weights)
            return
        net = build_model(model_spec(model, shape[0], shape[1], k))
        if weights:
            apply_weights(net, weights)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _check_spectrum(spec: Mapping, ds: Mapping, k: int) -> None:
    rows = min(ds["train_per_class"], ds["test_per_class"]) * k * k  # nK of the smaller Jacobian
    if spec["info_dim"] > rows:
        raise ConfigError(
            f"config key 'spectrum.info_dim': {spec['info_dim']} exceeds nK = {rows} "
            f"(rows of the smaller Jacobian); allowed: 1..{rows}"
        )
    stored = spec.get("stored_vectors", "all")
    if stored != "all" and stored < spec["info_dim"]:
        raise ConfigError(
            f"config key 'spectrum.stored_vectors': {stored} is below spectrum.info_dim = {spec['info_dim']}; "
            f"allowed: all or {spec['info_dim']}..{rows}"
        )
    if spec["method"] in ("topk", "matrix_free") and spec["topk"] < spec["info_dim"]:
        raise ConfigError(f"config key 'spectrum.topk': {spec['topk']} is below spectrum.info_dim = {spec['info_dim']}")
    scheduler = spec.get("scheduler")
    if scheduler and scheduler.startswith("local:") and not re.fullmatch(r"local:[1-9][0-9]*", scheduler):
        raise ConfigError(
            f"config key 'spectrum.scheduler': {scheduler!r} is not a worker count; allowed: null, local:N "
            "(N local worker processes, N >= 1) or a dask.distributed scheduler address such as tcp://host:8786"
        )


def _check_matrix_free_memory(config: Mapping, shape: tuple[int, int, int] | None, k: int) -> None:
    """spectrum.method: matrix_free holds p x l panels, whatever nK: refuse, before any job, a
    J whose panels do not fit spectrum.memory_budget_mb (the network's p counted from a built-in
    network's settings, train/spec.py, or by building a factory or zoo network).

    spectrum.method auto is settled here between a stored and a streamed J: a J of the largest
    split over spectrum.stream_above_gb (nK x p float32) is never stored, and the method becomes
    matrix_free (the rules, the plan and the spectrum jobs then read that); below it, auto
    stays and picks full or topk per J from its Gram matrix. Where the image shape is not known
    before the data is unpacked, p is not either, and auto stays."""
    spec = config["spectrum"]
    if spec["method"] not in ("matrix_free", "auto") or shape is None:
        return
    from .train.spec import builtin_parameter_count, model_spec

    network = model_spec(config["model"], shape[0], shape[1], k)
    p = builtin_parameter_count(network)
    if p is None:  # a factory or zoo network: built to be counted
        from .train.models import build_model, count_parameters

        p = count_parameters(build_model(network))
    rows = max(config["dataset"]["train_per_class"], config["dataset"]["test_per_class"]) * k * k
    if spec["method"] == "auto":
        if rows * p * 4 <= spec["stream_above_gb"] * 1e9:
            return
        spec["method"] = "matrix_free"
    from .spectrum.budget import plan_for_settings

    try:
        plan_for_settings(spec, rows, k, p)
    except ValueError as exc:
        raise ConfigError(f"config key 'spectrum': {exc}") from exc


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


def _check_label_noise(config: Mapping) -> None:
    ln = config["analysis"]["label_noise"]
    if not ln["cleanlab"]:
        return
    import importlib.util

    if importlib.util.find_spec("cleanlab") is None:
        raise ConfigError(
            "config key 'analysis.label_noise.cleanlab': true needs the cleanlab package, which is not installed; "
            'install it with pip install -e ".[cleanlab]" (or pip install cleanlab), or set it to false'
        )
    n = int(config["dataset"]["train_per_class"])
    if ln["folds"] > n:
        raise ConfigError(
            f"config key 'analysis.label_noise.folds': {ln['folds']} folds of {n} images per class; allowed: 2..{n}"
        )


def _check_analysis(config: Mapping) -> None:
    _check_label_noise(config)
    analysis, runs = config["analysis"], config["runs"]
    for run in analysis.get("track_runs") or []:
        if run not in runs:
            raise ConfigError(f"config key 'analysis.track_runs': run {run!r} is not in runs; allowed: {sorted(runs)}")
    grid = analysis["track_epochs"]
    if isinstance(grid, int):
        return
    every = int(config["training"]["checkpoint_every"])
    longest = max((int(r["epochs"]) for r in runs.values()), default=0)
    for e in grid:
        if int(e) > longest:
            raise ConfigError(
                f"config key 'analysis.track_epochs': epoch {e} is beyond every run (the longest has {longest} "
                f"epochs); allowed: 0..{longest}"
            )
    for name in tracked_runs(config):
        kept = set(run_epochs_needed(runs[name], every))
        missing = [int(e) for e in grid if int(e) <= int(runs[name]["epochs"]) and int(e) not in kept]
        if missing:
            raise ConfigError(
                f"config key 'analysis.track_epochs': epochs {missing} of run {name!r} have no checkpoint; allowed: "
                f"0..{every} and multiples of training.checkpoint_every = {every} (or add them to "
                f"runs.{name}.checkpoints, which retrains the run)"
            )


# ---------------------------------------------------------------- a config file, as the workflow sees it
def image_shape(dataset: Mapping) -> tuple[int, int, int]:
    """(C, H, W) of the data set's images: read from its files where they are there, else the
    shape a built-in set declares (:func:`.data.sources.declared_image_shape`). An image folder
    or a loader declares none, and no config key sets it: without its data this stops, naming
    what it cannot know."""
    name = dataset["name"]
    declared = declared_image_shape(name)
    try:
        shape = dataset_info(dataset).image_shape
    except DataError as exc:
        if declared is None:
            raise DataError(
                f"dataset.name {name!r}: the plan cannot know its image shape (channels, height, width) "
                f"before its data is there, and no config key declares it: {exc}"
            ) from exc
        shape = None
    return shape or declared or (3, 32, 32)  # None: an archive not unpacked yet


def load_config(configfile: str | Path | None, notes: list[str] | None = None) -> dict:
    """The config as the workflow sees it: the schema fills defaults, then the parse-time checks.

    A data set that is not there yet (the plan may come before the download) is added to
    ``notes`` instead of stopping, which goes on with the image shape the data set declares
    (:func:`image_shape`); any other mistake stops it as it stops Snakemake.
    """
    return load_networks(configfile, notes)[0]


def load_networks(configfile: str | Path | None, notes: list[str] | None = None) -> tuple[dict, dict[str, dict]]:
    """:func:`load_config`, and each network's config as checked (:func:`network_configs`): the
    checks settle ``spectrum.method: auto`` between a stored and a streamed J, as they do in
    each network's module of the workflow, so the plan takes the checked configs."""
    import yaml
    from snakemake.utils import validate

    # the workflow folder: where the plan runs, or the checkout this package is installed from
    here, checkout = Path.cwd(), Path(__file__).resolve().parents[2]
    root = here if (here / "workflow" / "schemas").is_dir() else checkout
    path = Path(configfile) if configfile else root / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"--configfile: {path} does not exist")
    with open(path) as fh:
        config = yaml.safe_load(fh)
    check_replaced_keys(config)
    schema = str(root / "workflow" / "schemas" / "config.schema.yaml")
    validate(config, schema)
    # an architecture table: each network's own config, checked as its module checks it
    networks = network_configs(config)
    for net in networks.values():
        validate(net, schema)
        try:
            check_config(net)
        except ConfigError as exc:  # the data set's own problems come as a ConfigError caused by a DataError
            if notes is None or not isinstance(exc.__cause__, DataError):
                raise
            shape = "x".join(map(str, image_shape(net["dataset"])))  # an image folder or loader stops here
            note = f"data: not checked against the config, planned with {shape} images ({exc.__cause__})"
            if note not in notes:
                notes.append(note)
    return config, networks


def network_configs(config: Mapping) -> dict[str, dict]:
    """The configs a plan covers: the config itself, or each network's of an architecture table."""
    if "architectures" not in config:
        return {"": dict(config)}
    from .architectures.configs import architecture_configs

    return architecture_configs(config)
