"""Batch-norm networks measured as they are trained (model.normalisation), degenerate networks
never reported as results, unused parameters, and Jacobian files that cannot mislead."""

import copy

import h5py
import numpy as np
import pytest
import torch
from conftest import ROOT
from planted import small_batch_norm
from torch.func import functional_call, jacrev
from torch.optim.swa_utils import update_bn

from jacobian_spectrum.data.subset import build_subset, read_split, write_subset
from jacobian_spectrum.jacobian.chunk import compute_chunk
from jacobian_spectrum.jacobian.degeneracy import DegenerateNetworkError, output_spread
from jacobian_spectrum.jacobian.store import gather, materialise
from jacobian_spectrum.spectrum.store import Spectrum, checked_degeneracy
from jacobian_spectrum.train.loop import TrainSettings, train, write_checkpoints
from jacobian_spectrum.train.models import ModelSpec, build_model, initialise, load_checkpoint, read_checkpoint
from jacobian_spectrum.train.normalisation import (
    current_statistics,
    evaluation_statistics,
    recompute_statistics,
)

DIGITS = {"name": "digits", "classes": [0, 1, 2], "train_per_class": 8, "test_per_class": 4, "seed": 0}
SMALL_BN = "tests.planted:small_batch_norm"


@pytest.fixture
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the planted networks are imported from the workflow's folder


@pytest.fixture
def subset(tmp_path):
    data, source = build_subset(DIGITS)
    write_subset(tmp_path / "subset.h5", data, source, DIGITS)
    return tmp_path / "subset.h5"


def bn_net(seed=0):
    torch.manual_seed(seed)
    return small_batch_norm(3, 1)


def test_recomputed_statistics_are_update_bn_over_one_batch_and_exact_over_several():
    net, x = bn_net(), torch.randn(40, 1, 8, 8)
    ours = recompute_statistics(net, x, batch_size=40)
    reference = copy.deepcopy(net)
    reference.eval()  # dropout off, as in ours; update_bn puts the batch-norm layers in train mode
    update_bn([x], reference)
    theirs = current_statistics(reference)
    for name in ours:
        scale = theirs[name.replace("running_mean", "running_var")].sqrt()
        assert torch.all((ours[name] - theirs[name]).abs() <= 1e-5 * scale + 1e-7), name
    # several batches: the first layer's inputs do not depend on the batching, so its statistics
    # are the exact mean and unbiased variance over all samples (update_bn averages the batches')
    several = recompute_statistics(net, x, batch_size=7)
    first = net[0](x).double()
    assert torch.allclose(several["1.running_mean"].double(), first.mean(dim=(0, 2, 3)), rtol=1e-6, atol=1e-6)
    assert torch.allclose(several["1.running_var"].double(), first.var(dim=(0, 2, 3)), rtol=1e-5)
    update_bn([x[i : i + 7] for i in range(0, 40, 7)], reference)
    assert not torch.allclose(current_statistics(reference)["1.running_var"].double(), first.var(dim=(0, 2, 3)))


def test_recomputing_leaves_the_model_as_it_was():
    net = bn_net().train()
    net[1].eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    modes = [m.training for m in net.modules()]
    x = torch.randn(20, 1, 8, 8)
    recompute_statistics(net, x)
    with evaluation_statistics(net, x, "recomputed") as stats:
        assert torch.equal(net[1].running_mean, stats["1.running_mean"])
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert [m.training for m in net.modules()] == modes


def test_training_is_the_same_in_both_modes_and_only_the_evaluations_differ(subset, in_root):
    spec = ModelSpec(SMALL_BN, 1, 8, 3)
    tr, te = read_split(subset, "train"), read_split(subset, "test")
    results = {}
    for mode in ("recomputed", "stored"):
        net = build_model(spec, seed=0)
        settings = TrainSettings("sgd", 0.05, 3, momentum=0.9, batch_size=8, seed=0, normalisation=mode)
        traj, _ = train(net, spec, settings, tr, tr.y, te, torch.device("cpu"))
        results[mode] = (net.state_dict(), np.stack(traj.train_predictions))
    (w_rec, p_rec), (w_sto, p_sto) = results["recomputed"], results["stored"]
    assert all(torch.equal(w_rec[k], w_sto[k]) for k in w_rec)  # the training itself, bit for bit
    assert not np.allclose(p_rec, p_sto)
    # at initialisation the stored statistics are the defaults: the spread is the network's own
    # only with the recomputed ones
    assert output_spread(p_rec[0]).relative > 5 * output_spread(p_sto[0]).relative


def test_a_network_without_batch_norm_pays_nothing_and_its_files_do_not_move(subset, tmp_path):
    """ResNet20 (no batch-norm): the same predictions, checkpoints without recomputed statistics,
    and the same J in both modes."""
    spec = ModelSpec("resnet20", 1, 8, 3, width=0.125)
    tr, te = read_split(subset, "train"), read_split(subset, "test")
    preds, chunks = {}, {}
    for mode in ("recomputed", "stored"):
        net = build_model(spec, seed=0)
        settings = TrainSettings("sgd", 0.05, 2, momentum=0.9, batch_size=8, checkpoint_epochs=[2], normalisation=mode)
        traj, ckpts = train(net, spec, settings, tr, tr.y, te, torch.device("cpu"))
        preds[mode] = np.stack(traj.train_predictions)
        folder = tmp_path / mode
        write_checkpoints(folder, net, spec, ckpts, "run", torch.from_numpy(tr.x))
        assert "normalisation_statistics" not in read_checkpoint(folder / "epoch2.pt")
        compute_chunk(folder / "epoch2.pt", subset, "train", 0, 24, folder / "chunk.h5", normalisation=mode)
        with h5py.File(folder / "chunk.h5") as f:
            chunks[mode] = f["J"][...]
            assert f.attrs["normalisation"] == "none"
    assert np.array_equal(preds["recomputed"], preds["stored"])
    assert np.array_equal(chunks["recomputed"], chunks["stored"])


def test_J_of_a_batch_norm_network_is_torch_funcs_J_with_the_recomputed_statistics(subset, tmp_path, in_root):
    net, _ = initialise(subset, {"name": SMALL_BN, "init_seed": 0, "normalisation": "recomputed"}, tmp_path / "e0.pt")
    x = torch.from_numpy(read_split(subset, "train").x)
    stats = read_checkpoint(tmp_path / "e0.pt")["normalisation_statistics"]
    assert all(torch.equal(v, recompute_statistics(net, x)[k]) for k, v in stats.items())
    compute_chunk(tmp_path / "e0.pt", subset, "train", 0, 10, tmp_path / "chunk.h5")
    measured, _ = load_checkpoint(tmp_path / "e0.pt", normalisation="recomputed")
    assert torch.equal(measured[1].running_var, stats["1.running_var"])
    measured.eval()
    params = {n: p.detach() for n, p in measured.named_parameters()}
    buffers = dict(measured.named_buffers())
    jac = jacrev(lambda p: functional_call(measured, (p, buffers), (x[:10],)))(params)
    J = torch.cat([jac[n].reshape(30, -1) for n in params], dim=1).numpy()
    with h5py.File(tmp_path / "chunk.h5") as f:
        assert f.attrs["normalisation"] == "recomputed"
        assert np.allclose(f["J"][...], J, rtol=1e-4, atol=1e-6)
        # and not the J of the stored (default) statistics
        stored, _ = load_checkpoint(tmp_path / "e0.pt")
        stored.eval()
        jac0 = jacrev(lambda p: functional_call(stored, (p, dict(stored.named_buffers())), (x[:10],)))(params)
        J0 = torch.cat([jac0[n].reshape(30, -1) for n in params], dim=1).numpy()
        assert not np.allclose(f["J"][...], J0, rtol=1e-2)


def test_a_checkpoint_without_recomputed_statistics_is_refused_naming_it(subset, tmp_path, in_root):
    initialise(subset, {"name": SMALL_BN, "init_seed": 0, "normalisation": "stored"}, tmp_path / "e0.pt")
    with pytest.raises(ValueError, match=r"e0\.pt.*no recomputed statistics"):
        load_checkpoint(tmp_path / "e0.pt", normalisation="recomputed")
    compute_chunk(tmp_path / "e0.pt", subset, "train", 0, 24, tmp_path / "c.h5", normalisation="stored")
    with h5py.File(tmp_path / "c.h5") as f:
        assert f.attrs["normalisation"] == "stored"


def test_constant_outputs_stop_the_chunk_job_naming_the_checkpoint(subset, tmp_path, in_root):
    initialise(subset, {"name": "tests.planted:constant_outputs", "init_seed": 0}, tmp_path / "e0.pt")
    with pytest.raises(DegenerateNetworkError, match=r"e0\.pt.*do not vary across the 24 samples.*allow_degenerate"):
        compute_chunk(tmp_path / "e0.pt", subset, "train", 0, 24, tmp_path / "c.h5")
    assert not (tmp_path / "c.h5").exists()
    compute_chunk(tmp_path / "e0.pt", subset, "train", 0, 24, tmp_path / "c.h5", allow_degenerate=True)
    gather([tmp_path / "c.h5"], tmp_path / "J.h5")
    with h5py.File(tmp_path / "J.h5") as f:
        assert "do not vary" in f.attrs["degenerate"]


def test_a_J_of_rank_at_most_K_stops_the_spectrum_naming_the_checkpoint():
    s = np.array([7.85, 7.85, 7.84, 1e-7, 1e-8])
    spec = Spectrum(s, np.eye(30)[:, :5], "full")
    attrs = {"num_classes": 3, "dtype": "float32"}
    with pytest.raises(DegenerateNetworkError, match="ckpt.pt.*numerical rank 3, at most K = 3, on 10 samples"):
        checked_degeneracy(spec, attrs, False, "ckpt.pt")
    assert "rank 3" in checked_degeneracy(spec, attrs, True, "ckpt.pt")
    sound = Spectrum(np.array([7.85, 7.8, 7.7, 1.0, 0.5]), np.eye(30)[:, :5], "full")
    assert checked_degeneracy(sound, attrs, False, "ckpt.pt") == ""
    top2 = Spectrum(np.array([7.85, 7.8]), np.eye(30)[:, :2], "topk")  # only 2 < K computed, both resolved
    assert checked_degeneracy(top2, attrs, False, "ckpt.pt") == ""
    assert output_spread(np.zeros((10, 3))).constant()  # outputs all exactly zero do not vary either


@pytest.mark.parametrize("factory", ["with_unused_head", "unused_plain"])
def test_unused_parameters_have_zero_columns_and_pass_the_probe_check(factory, subset, tmp_path, in_root):
    initialise(subset, {"name": f"tests.planted:{factory}", "init_seed": 0}, tmp_path / "e0.pt")
    compute_chunk(tmp_path / "e0.pt", subset, "train", 0, 12, tmp_path / "c.h5")
    net, _ = load_checkpoint(tmp_path / "e0.pt", normalisation="recomputed")
    offset = 0
    with h5py.File(tmp_path / "c.h5") as f:
        J = f["J"][...]
        assert f.attrs["probe_error_jvp"] < 1e-4 and f.attrs["probe_error_vjp"] < 1e-4
    for name, p in net.named_parameters():
        block = J[:, offset : offset + p.numel()]
        assert (np.abs(block).max() == 0) == name.startswith("unused"), name
        offset += p.numel()


def test_information_space_restores_the_model_and_refuses_a_degenerate_network():
    from planted import constant_outputs

    from jacobian_spectrum.spaces import information_space

    net, x = bn_net().train(), torch.randn(12, 1, 8, 8)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    space = information_space(net, x, rank=5)
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    stored = information_space(net, x, rank=5, normalisation="stored")
    assert not np.allclose(space.singular_values[:5], stored.singular_values[:5])
    with pytest.raises(DegenerateNetworkError, match="information_space.*do not vary"):
        information_space(constant_outputs(3, 1), x, rank=2)


def test_a_copied_jacobian_names_its_missing_chunks_and_a_materialised_copy_reads_anywhere(subset, tmp_path):
    from jacobian_spectrum.cli import main
    from jacobian_spectrum.common.h5io import open_checked

    spec = ModelSpec("resnet20", 1, 8, 3, width=0.125)
    from jacobian_spectrum.train.models import save_checkpoint

    save_checkpoint(tmp_path / "e0.pt", build_model(spec, seed=0), spec, 0)
    for c in range(2):
        compute_chunk(tmp_path / "e0.pt", subset, "train", c, 12, tmp_path / "chunks" / f"c{c}.h5")
    gather([tmp_path / "chunks" / f"c{c}.h5" for c in range(2)], tmp_path / "J.h5")
    assert main(["materialise", str(tmp_path / "J.h5"), str(tmp_path / "copy.h5")]) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "J.h5").rename(elsewhere / "J.h5")
    (tmp_path / "copy.h5").rename(elsewhere / "copy.h5")
    with pytest.raises(FileNotFoundError, match=r"2 do not exist: .*c0\.h5, .*c1\.h5"):
        open_checked(elsewhere / "J.h5", ["J"])
    assert main(["inspect", str(elsewhere / "J.h5")]) == 1
    with h5py.File(tmp_path / "chunks" / "c1.h5") as f, h5py.File(elsewhere / "copy.h5") as g:
        assert not g["J"].is_virtual and np.array_equal(g["J"][12 * 3 :], f["J"][...])
        assert g.attrs["artifact"] == "jacobian" and "materialised_from" in g.attrs
    assert main(["inspect", str(elsewhere / "copy.h5")]) == 0
    with pytest.raises(FileExistsError):
        materialise(tmp_path / "chunks" / "c1.h5", elsewhere / "copy.h5")


@pytest.mark.slow
def test_the_workflow_stops_at_the_jacobian_of_a_network_with_constant_outputs(tmp_path):
    """A planted network whose outputs are the same for every sample trains, then its first J
    job stops naming the checkpoint: no table is written from it."""
    import yaml
    from conftest import snakemake

    cfg = yaml.safe_load(open(ROOT / "tests/configs/zoo.yaml"))
    cfg["model"] = {"name": "tests.planted:constant_outputs", "init_seed": 0}
    cfg["runs"]["sgd_clean"]["epochs"] = 1
    config, out = tmp_path / "config.yaml", tmp_path / "results"
    config.write_text(yaml.safe_dump(cfg))
    proc = snakemake("--cores", "2", "--configfile", str(config), "--config", f"results={out}", check=False)
    assert proc.returncode != 0
    logs = "".join(p.read_text() for p in (out / "logs/jacobian").rglob("*.log"))
    assert "DegenerateNetworkError" in logs and "checkpoints/epoch" in logs and "do not vary across" in logs
    assert not (out / "tables/table1.md").exists()


def test_the_probe_check_pins_the_pieces_of_hard_activations():
    """MobileNetV3 (hardswish, hardsigmoid) with its batch-norm statistics recomputed: inputs near
    the kinks at -3 and 3 fall on either side in passes that round differently; with the rows'
    pieces pinned the check reads rounding (its chunk job failed at 1.4e-4 before)."""
    from jacobian_spectrum.jacobian.compute import jacobian
    from jacobian_spectrum.jacobian.probe import RecordKinks, probe_errors
    from jacobian_spectrum.train.normalisation import load_statistics
    from jacobian_spectrum.train.zoo import build_named_model

    torch.manual_seed(0)
    net = build_named_model("torchvision:mobilenet_v3_small", 3, 32, 3)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    load_statistics(net, recompute_statistics(net, x))
    net.eval()
    with torch.no_grad(), RecordKinks(values=True) as rec:
        net(x)
    near = sum(int(((v.abs() - 3).abs() < 1e-2).sum()) for v in rec.masks)
    assert near > 0  # inputs within 1e-2 of a hard activation's kink
    assert max(probe_errors(net, x, jacobian(net, x))) < 1e-5
