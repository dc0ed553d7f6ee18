"""Every kind of bad config stops before any job runs, with a message naming the key."""

import copy

import pytest
import yaml
from conftest import ROOT, TINY, snakemake
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from jacobian_spectrum.config import ConfigError, check_config, check_replaced_keys

SCHEMA = str(ROOT / "workflow" / "schemas" / "config.schema.yaml")


def load(path=TINY):
    return yaml.safe_load(open(path))


def validated(cfg):
    cfg = copy.deepcopy(cfg)
    validate(cfg, SCHEMA)
    check_config(cfg)
    return cfg


def test_default_and_tiny_configs_are_valid():
    for path in (ROOT / "config.yaml", TINY):
        cfg = validated(load(path))
        assert cfg["jacobian"]["chunk_size"] >= 1  # defaults were filled


def with_(path, value):
    cfg = load()
    node = cfg
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return cfg


BAD = [
    # (change, error type, words the message must hold)
    (lambda: {**load(), "colour": "red"}, WorkflowError, "colour"),
    (lambda: with_("dataset.train_per_class", "ten"), WorkflowError, "ten"),
    (lambda: with_("corruption.levels", [0.0, 1.5]), WorkflowError, "1.5"),
    (lambda: with_("dataset.classes", [0, 11]), ConfigError, "dataset.classes: 11 is not a class"),
    (lambda: with_("dataset.classes", ["zero", 1]), ConfigError, "'zero' is not a class"),
    (lambda: with_("dataset.train_per_class", 170), ConfigError, "dataset.train_per_class"),
    (lambda: with_("spectrum.info_dim", 500), ConfigError, "spectrum.info_dim': 500 exceeds nK"),
    (lambda: with_("jacobian.chunk_size", 0), WorkflowError, "chunk_size"),
    (lambda: with_("runs.sgd_clean.checkpoints", [99]), ConfigError, "runs.sgd_clean.checkpoints': epoch 99 is beyond"),
    (lambda: with_("runs.sgd_clean.reference_epoch", 7), ConfigError, "runs.sgd_clean.reference_epoch"),
    (lambda: with_("runs.sgd_clean.milestones", [60]), ConfigError, "runs.sgd_clean.milestones"),
    (
        lambda: with_(
            "dataset",
            {
                "name": "cifar10",
                "root": "/nonexistent/cifar",
                "classes": ["bird", "cat"],
                "train_per_class": 5,
                "test_per_class": 5,
            },
        ),
        ConfigError,
        "/nonexistent/cifar",
    ),
    (lambda: with_("dataset.name", "imagenet"), WorkflowError, "imagenet"),
    (lambda: with_("runs.sgd_clean.optimizer", "rmsprop"), WorkflowError, "rmsprop"),
    (lambda: with_("model.name", "vgg16"), WorkflowError, "vgg16"),
    (lambda: with_("runs.sgd_clean.corruption", 0.3), ConfigError, "corruption': 0.3 is not one of corruption.levels"),
    (lambda: with_("figures.table2", "missing_run"), ConfigError, "figures.table2"),
    (lambda: with_("runs.bad name", {"optimizer": "sgd", "lr": 0.1, "epochs": 1}), ConfigError, "runs.bad name"),
    (lambda: with_("runs.sgd_clean.lr", -0.1), WorkflowError, "-0.1"),
    (
        lambda: {**with_("spectrum.method", "topk"), "spectrum": {"method": "topk", "topk": 5, "info_dim": 10}},
        ConfigError,
        "spectrum.topk",
    ),
    (lambda: with_("dataset.classes", [1]), WorkflowError, "classes"),
    (lambda: with_("spectrum.stored_vectors", 4), ConfigError, "spectrum.stored_vectors': 4 is below"),
    (
        lambda: {**load(), "spectrum": {"method": "matrix_free", "memory_budget_mb": 1, "info_dim": 10}},
        ConfigError,
        "spectrum.memory_budget_mb = 1: a matrix-free spectrum of J",
    ),
    (lambda: with_("spectrum.stored_vectors", "some"), WorkflowError, "some"),
    (lambda: with_("spectrum.scheduler", "local:two"), ConfigError, "spectrum.scheduler': 'local:two' is not a worker"),
    (lambda: with_("spectrum.scheduler", "local:0"), ConfigError, "allowed: null, local:N"),
    (lambda: with_("analysis.track_epochs", 1), WorkflowError, "track_epochs"),
    (lambda: with_("analysis.track_epochs", [0, 50]), ConfigError, "analysis.track_epochs': epoch 50 is beyond"),
    (lambda: with_("analysis.track_runs", ["sgd_x"]), ConfigError, "analysis.track_runs': run 'sgd_x'"),
    (lambda: with_("analysis.theorem.gamma", 0.5), WorkflowError, "0.5"),
    (
        lambda: {**with_("analysis.track_epochs", [0, 3]), "training": {"checkpoint_every": 2}},
        ConfigError,
        "epochs [3] of run 'sgd_clean' have no checkpoint",
    ),
]


@pytest.mark.parametrize("make,error,words", BAD, ids=[b[2][:40] for b in BAD])
def test_bad_config_is_refused_with_a_message(make, error, words):
    with pytest.raises(error) as exc:
        validated(make())
    assert words in str(exc.value)


@pytest.mark.slow  # Snakemake or plan in a subprocess: out of the fast tier
def test_auto_streams_a_jacobian_too_large_to_store_and_the_rules_follow(tmp_path):
    # the tiny config's J is 180 x 16,963 float32 (12 MB): stored under the default 10 GB, streamed
    # (matrix_free, no Jacobian chunk job) under a limit of 1 MB; the same limit with a budget too
    # small for the streamed method's panels is refused naming the budget
    cfg = with_("spectrum.method", "auto")
    assert validated(cfg)["spectrum"]["method"] == "auto"
    cfg["spectrum"]["stream_above_gb"] = 0.001
    assert validated(cfg)["spectrum"]["method"] == "matrix_free"
    cfg["results"] = str(tmp_path / "r")
    path = tmp_path / "streamed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = snakemake("-n", "--cores", "1", "--configfile", str(path)).stdout
    assert "spectrum_matrix_free" in out and "jacobian_chunk" not in out
    cfg["spectrum"]["memory_budget_mb"] = 1
    with pytest.raises(ConfigError, match="spectrum.memory_budget_mb = 1: a matrix-free spectrum"):
        validated(cfg)


@pytest.mark.slow  # Snakemake or plan in a subprocess: out of the fast tier
def test_a_replaced_key_is_refused_naming_its_replacement(tmp_path):
    cfg = load()
    cfg.setdefault("jacobian", {})["temporary"] = True
    with pytest.raises(ConfigError, match=r"'jacobian.temporary' was replaced by jacobian.keep .*keep: none"):
        check_replaced_keys(cfg)
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = snakemake("-n", "--cores", "1", "--configfile", str(path), "--config", f"results={tmp_path}/r", check=False)
    assert proc.returncode != 0 and "was replaced by jacobian.keep" in proc.stdout + proc.stderr


def test_cleanlab_without_the_package_is_refused_saying_how_to_install_it(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "cleanlab" else find_spec(name, *a)
    )
    with pytest.raises(ConfigError, match=r"analysis.label_noise.cleanlab.*pip install -e \"\.\[cleanlab\]\""):
        validated(with_("analysis.label_noise.cleanlab", True))
    validated(with_("analysis.label_noise.cleanlab", False))  # off, cleanlab is not needed


def test_more_folds_than_images_of_a_class_are_refused():
    pytest.importorskip("cleanlab")
    with pytest.raises(ConfigError, match="analysis.label_noise.folds.*allowed: 2..20"):
        validated(with_("analysis.label_noise.folds", 21))


@pytest.mark.slow  # Snakemake or plan in a subprocess: out of the fast tier
def test_bad_config_stops_snakemake_before_any_job(tmp_path):
    cfg = with_("spectrum.info_dim", 500)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = snakemake("-n", "--cores", "1", "--configfile", str(path), "--config", f"results={tmp_path}/r", check=False)
    assert proc.returncode != 0
    assert "spectrum.info_dim" in proc.stdout + proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # Snakemake or plan in a subprocess: out of the fast tier
def test_cifar10_configs_are_valid_and_unpack_their_archive_first(tmp_path):
    """The CIFAR-10 configs against an archive of the same layout (the real one may be absent)."""
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from test_data import write_image_archive

    archive = write_image_archive(
        tmp_path / "cifar.tar.gz", top="cifar10", per=(600, 300), classes=("airplane", "automobile", "bird"), size=2
    )
    for name in ("cifar10-small", "cifar10-medium", "label-noise-cifar10"):
        cfg = load(ROOT / "config" / f"{name}.yaml")
        assert cfg["model"]["width"] == 1.0 and cfg["dataset"]["name"] == "imagefolder"
        cfg["dataset"].update(archive=str(archive), root=str(tmp_path / "images"), archive_sha256=None)
        cfg["results"] = str(tmp_path / name)
        validated(cfg)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        proc = snakemake("-n", "--cores", "2", "--configfile", str(path))
        counts = {
            p[0]: int(p[1])
            for p in (line.split() for line in proc.stdout.splitlines())
            if len(p) == 2 and p[1].isdigit()
        }
        assert counts["extract_archive"] == 1 and counts["train"] == len(cfg["runs"])
        assert not (tmp_path / "images").exists()  # a dry run unpacks nothing


# ---------------------------------------------------------------- your own network and data (docs/own.md)
BAD_PLUGINS = """
import numpy as np
from torch import nn


def not_a_module(in_channels, image_size, num_classes):
    return "a string"


def two_outputs(in_channels, image_size, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, 2))


def fails(in_channels, image_size, num_classes, depth=1):
    raise RuntimeError("no such depth")


def good_data(per_class=12, **changes):
    rng = np.random.default_rng(0)
    out = {"class_names": ["a", "b", "c"]}
    for split in ("train", "test"):
        out[f"{split}_images"] = rng.integers(0, 256, (3 * per_class, 1, 8, 8), dtype=np.uint8)
        out[f"{split}_labels"] = np.repeat(np.arange(3), per_class)
    out.update(changes)
    return out


def float_images():
    return good_data(train_images=np.zeros((36, 1, 8, 8)))


def labels_out_of_range():
    return good_data(train_labels=np.repeat(np.arange(1, 4), 12))


def missing_key():
    out = good_data()
    del out["test_labels"]
    return out
"""


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    (tmp_path / "bad_plugins.py").write_text(BAD_PLUGINS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "bad_plugins"


OWN_DATA = {"name": "bad_plugins:good_data", "classes": ["a", "b", "c"], "train_per_class": 8, "test_per_class": 4}


@pytest.mark.parametrize(
    "section, value, words",
    [
        ("model", {"name": "no_such_module:net"}, "config key 'model.name': cannot import module 'no_such_module'"),
        ("model", {"name": "bad_plugins:missing"}, "has no attribute 'missing'"),
        ("model", {"name": "bad_plugins:not_a_module"}, "returned a str, not a torch.nn.Module"),
        ("model", {"name": "bad_plugins:two_outputs"}, "gives outputs (2, 2)"),
        ("model", {"name": "bad_plugins:fails", "kwargs": {"depth": 3}}, "failed: RuntimeError: no such depth"),
        ("dataset", {**OWN_DATA, "name": "bad_plugins:float_images"}, "train_images of dtype float64"),
        ("dataset", {**OWN_DATA, "name": "bad_plugins:labels_out_of_range"}, "train_labels from 1 to 3; allowed: 0..2"),
        ("dataset", {**OWN_DATA, "name": "bad_plugins:missing_key"}, "expected a mapping with the keys"),
        (
            "dataset",
            {**OWN_DATA, "train_per_class": 20},
            "dataset.train_per_class': 20 requested but class 'a' has only 12",
        ),
    ],
)
def test_bad_own_networks_and_loaders_are_refused_naming_the_key(plugins, section, value, words):
    cfg = load()
    if section == "model":
        cfg["model"] = value
    else:
        cfg["dataset"] = value
    with pytest.raises(ConfigError) as err:
        validated(cfg)
    assert words in str(err.value)


def test_own_network_and_data_pass_the_checks(plugins):
    cfg = load()
    cfg["dataset"] = dict(OWN_DATA)
    cfg["model"] = {"name": "examples.own_network:small_cnn", "kwargs": {"width": 4}}
    assert validated(cfg)["dataset"]["kwargs"] == {}
