"""The architecture table: each network's config merged from the shared sections, the CIFAR-size
networks of the table (VGG-11 with batch-norm, a ReLU MLP), the table's quantities, and the
workflow run once per network as a module."""

import csv

import h5py
import numpy as np
import pytest
import torch
import yaml
from conftest import TINY, snakemake
from torch.func import functional_call, jacrev

from jacobian_spectrum.architectures.configs import architecture_configs, merged
from jacobian_spectrum.architectures.table import effective_rank
from jacobian_spectrum.config import ConfigError
from jacobian_spectrum.jacobian.compute import jacobian
from jacobian_spectrum.spectrum.store import read_spectrum
from jacobian_spectrum.train.models import ModelSpec, build_model, count_parameters


def test_each_network_gets_the_shared_sections_with_its_own_merged_in():
    shared = yaml.safe_load(open(TINY))
    config = {**shared, "results": "out", "architectures": {"a": None, "b": {"model": {"name": "mlp", "hidden": 8}}}}
    nets = architecture_configs(config)
    assert list(nets) == ["a", "b"] and nets["a"]["results"] == "out/a" and nets["b"]["results"] == "out/b"
    assert nets["a"]["model"] == shared["model"] and "architectures" not in nets["a"]
    assert nets["b"]["model"] == {**shared["model"], "name": "mlp", "hidden": 8}  # merged key by key
    assert nets["b"]["runs"] == shared["runs"] and nets["b"]["dataset"] == shared["dataset"]
    assert merged({"x": [1, 2], "y": {"z": 1}}, {"x": [3], "y": {"w": 2}}) == {"x": [3], "y": {"z": 1, "w": 2}}


@pytest.mark.parametrize(
    "networks, words",
    [
        ({"bad-name": None}, r"architectures.bad-name': a name starts with a letter"),
        ({"a": {"dataset": {"train_per_class": 5}}}, r"architectures.a.dataset': a network may set only model"),
        ({"a": [1]}, r"architectures.a': expected a mapping"),
        ({}, r"'architectures': expected a mapping"),
    ],
)
def test_bad_architecture_entries_are_refused_naming_the_key(networks, words):
    with pytest.raises(ConfigError, match=words):
        architecture_configs({"results": "out", "architectures": networks})


@pytest.mark.parametrize(
    "name, kwargs", [("vgg11_bn", {"width": 0.125}), ("mlp", {"hidden": 16, "depth": 3})], ids=["vgg", "mlp"]
)
def test_the_table_networks_give_rows_equal_to_torch_func(name, kwargs):
    model = build_model(ModelSpec(name, 3, 8, 3, **kwargs), seed=0).eval()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    params = {n: p.detach() for n, p in model.named_parameters()}
    ref = jacrev(lambda p, xi: functional_call(model, p, (xi[None],))[0])
    rows = []
    for xi in x:
        g = ref(params, xi)
        rows.append(torch.cat([g[n].reshape(3, -1) for n in params], dim=1))
    J = jacobian(model, x)
    assert J.shape == (12, count_parameters(model))
    assert torch.allclose(J, torch.cat(rows), rtol=1e-4, atol=1e-6)
    if name == "mlp":  # depth hidden layers of hidden units, then K outputs
        assert count_parameters(model) == (192 * 16 + 16) + 2 * (16 * 16 + 16) + (16 * 3 + 3)


def test_effective_rank_counts_the_directions_a_spectrum_spreads_over():
    assert effective_rank(np.array([5.0, 0, 0])) == pytest.approx(1.0)
    assert effective_rank(np.ones(7)) == pytest.approx(7.0)
    assert 1 < effective_rank(np.array([10.0, 1, 1])) < 2


@pytest.mark.slow
def test_the_architecture_table_runs_every_network_as_a_module(tmp_path):
    """Two networks through the whole workflow, one with J stored (full), one with the gram
    iteration (J never stored): the table's rows are the networks' own measurements."""
    config = yaml.safe_load(open(TINY))
    config.update(
        results=str(tmp_path / "results"),
        runs={
            "clean": {"optimizer": "adam", "lr": 0.001, "epochs": 3, "corruption": 0.0},
            "corrupt50": {"optimizer": "adam", "lr": 0.001, "epochs": 3, "corruption": 0.5},
        },
        analysis={"track_runs": []},
        figures={**config["figures"], "table1": "clean", "table2": None, "table3": "corrupt50"},
        architecture_table={"clean": "clean", "corrupted": "corrupt50"},
    )
    config["figures"]["corruption_runs"] = ["clean", "corrupt50"]
    config["architectures"] = {
        "resnet20": None,
        "mlp": {"model": {"name": "mlp", "hidden": 16}, "spectrum": {"method": "matrix_free", "iteration": "gram"}},
    }
    path = tmp_path / "architectures.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))  # the networks in their order
    snakemake("--cores", "2", "--configfile", str(path))
    out = tmp_path / "results"
    with open(out / "tables/architectures.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["network"], r["jacobian"]) for r in rows] == [
        (net, j) for net in ("resnet20", "mlp") for j in ("J_init", "J_final", "J_init", "J_final")
    ]
    for net in ("resnet20", "mlp"):
        (row,) = [r for r in rows if r["network"] == net and r["jacobian"] == "J_final" and "corrupt50" in r["labels"]]
        with h5py.File(out / net / "runs/corrupt50/trajectory.h5") as f:
            fitted = 1 - f["train/error_corrupted"][-1]
            y = np.eye(3)[f["train/y"][...]].ravel()  # the trained labels, one-hot, in J's row order
            clean = f["train/y_clean"][...]
        assert float(row["corrupted_labels_fitted"]) == pytest.approx(fitted)
        # ||P_I y|| / ||y|| by hand from J_final's stored vectors, I = the top info_dim (10 here)
        U = read_spectrum(out / net / "runs/corrupt50/spectrum/train_epoch3.h5").U[:, :10]
        assert float(row["P_I y / y"]) == pytest.approx(np.linalg.norm(U.T @ y) / np.linalg.norm(y), rel=1e-9)
        assert float(row["P_N y / y"]) == pytest.approx(np.linalg.norm(y - U @ (U.T @ y)) / np.linalg.norm(y), rel=1e-6)
        # no memorisation: each sample's label row replaced by its true class's mean row
        rows3 = y.reshape(-1, 3)
        fitted_rows = np.stack([rows3[clean == c].mean(0) for c in clean])
        assert (rows3.argmax(1) != clean).any()
        reference = np.linalg.norm(fitted_rows) / np.linalg.norm(rows3)
        assert float(row["P_I y / y (no memorisation)"]) == pytest.approx(reference, rel=1e-9)
        # the table asks only for what it reads: no test-split spectra, no measurements
        assert not (out / net / "runs/clean/measurements.h5").exists()
        assert not list((out / net).glob("runs/*/spectrum/test_epoch*.h5"))
        s = read_spectrum(out / net / "init/spectrum/train_epoch0.h5").singular_values
        assert len(s) == 180  # every singular value of the 60 x 3 rows, stored J or not
    gram = read_spectrum(out / "mlp/init/spectrum/train_epoch0.h5")
    assert gram.attrs["method"] == "matrix_free_gram" and gram.attrs["check_norm_residual"] < 1e-5
    assert (out / "figures/architectures.png").stat().st_size > 0
    assert "mlp" in (out / "tables/architectures.md").read_text()
