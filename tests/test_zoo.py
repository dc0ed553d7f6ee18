"""Model zoos by name (torchvision:<name>, timm:<name>), factories called with the arguments they
accept, and local weights (model.weights): built, refused with named errors, measured right."""

import copy
import sys

import h5py
import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, snakemake
from snakemake.utils import validate
from torch.func import functional_call, jacrev

from jacobian_spectrum.config import ConfigError, check_config
from jacobian_spectrum.jacobian.compute import jacobian
from jacobian_spectrum.train.models import ModelSpec, apply_weights, build_model, count_parameters, load_weights
from jacobian_spectrum.train.zoo import build_named_model

ZOO = ROOT / "tests" / "configs" / "zoo.yaml"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SMALL_VIT = {"patch_size": 4, "depth": 2, "embed_dim": 48, "num_heads": 3}


def validated(cfg):
    cfg = copy.deepcopy(cfg)
    validate(cfg, str(SCHEMA))
    check_config(cfg)
    return cfg


def zoo_config(**model):
    cfg = yaml.safe_load(open(ZOO))
    cfg["model"] = {**cfg["model"], **model}
    return cfg


@pytest.fixture
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the example loader is imported from the workflow's folder


def test_zoo_networks_get_the_data_shape_under_their_own_names():
    shuffle = build_named_model("torchvision:shufflenet_v2_x0_5", 3, 8, 3)
    assert shuffle.fc.out_features == 3
    vit = build_named_model("timm:vit_tiny_patch16_224", 1, 8, 4, SMALL_VIT)  # in_chans, img_size
    assert vit.patch_embed.proj.in_channels == 1 and vit.head.out_features == 4
    assert tuple(vit.patch_embed.img_size) == (8, 8)
    assert vit.eval()(torch.zeros(2, 1, 8, 8)).shape == (2, 4)


def test_a_factory_is_called_with_only_the_arguments_it_accepts(tmp_path, monkeypatch):
    (tmp_path / "narrow_factory.py").write_text(
        "import torch\n"
        "def net(num_classes):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_named_model("narrow_factory:net", 1, 8, 3)  # no in_channels, no image_size
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)


@pytest.mark.parametrize(
    "name, channels, size, kwargs, words",
    [
        ("torchvision:resnet81", 3, 8, {}, "torchvision has no model 'resnet81'; did you mean torchvision:resnet18"),
        ("torchvision:resnet18", 1, 8, {}, "reads 3-channel images"),
        ("torchvision:inception_v3", 3, 8, {}, "Images smaller than the network was made for"),
        ("timm:vit_tiny_patch16_224", 3, 8, {}, "timm: img_size, patch_size"),
        ("torchvision:resnet18", 3, 8, {"weights": "DEFAULT"}, "nothing is downloaded; set model.weights"),
        ("timm:resnet18", 3, 8, {"pretrained": True}, "nothing is downloaded; set model.weights"),
    ],
)
def test_unfit_zoo_networks_are_refused_naming_the_key(name, channels, size, kwargs, words):
    with pytest.raises(ValueError) as err:
        build_model(ModelSpec(name, channels, size, 3, kwargs=kwargs))
    assert words in str(err.value) and "config key 'model." in str(err.value)


def test_timm_names_without_timm_say_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(ValueError, match=r"timm is an optional extra: pip install -e '\.\[zoo\]'"):
        build_named_model("timm:vit_tiny_patch16_224", 3, 8, 3, SMALL_VIT)


@pytest.mark.parametrize("kernel", ["vmap", "per_sample"])
@pytest.mark.parametrize(
    "name, kwargs", [("torchvision:shufflenet_v2_x0_5", {}), ("timm:vit_tiny_patch16_224", SMALL_VIT)]
)
def test_zoo_jacobian_rows_agree_with_torch_func(name, kwargs, kernel, monkeypatch):
    """Batch-norm (ShuffleNet, in eval mode with moved running statistics) and attention (ViT),
    by both kernels: vmap over samples, and one sample at a time (what networks from
    PER_SAMPLE_PARAMETERS on take, ResNet-18 among them)."""
    from jacobian_spectrum.jacobian import compute

    monkeypatch.setattr(compute, "PER_SAMPLE_PARAMETERS", 0 if kernel == "per_sample" else 10**12)
    monkeypatch.setattr(compute, "BATCH_MEMORY_BYTES", 1)  # per sample: batches of one, one reused buffer
    model = build_model(ModelSpec(name, 3, 8, 3, kwargs=kwargs), seed=0)
    model.train()(torch.randn(8, 3, 8, 8))  # running statistics away from their initial values
    model.eval()
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    J = jacobian(model, x)
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers()}
    for i in range(len(x)):
        rows = jacrev(lambda p, xi=x[i : i + 1]: functional_call(model, (p, buffers), (xi,))[0])(params)
        ref = torch.cat([rows[n].reshape(3, -1) for n in params], dim=1)
        err = (J[3 * i : 3 * i + 3] - ref).norm(dim=1) / ref.norm(dim=1)
        assert float(err.max()) < 1e-5, (name, i, err)
    assert J.shape == (9, count_parameters(model))
    # block by block into one reused buffer (as a streamed pass forms them): the same rows
    blocks = torch.cat([rows.clone() for _, rows in compute.jacobian_blocks(model, x)])
    assert torch.equal(blocks, J)


def test_local_weights_load_in_both_formats_and_bad_ones_are_refused(tmp_path):
    from safetensors.torch import save_file

    spec = ModelSpec("torchvision:shufflenet_v2_x0_5", 3, 8, 3)
    source = build_model(spec, seed=1)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    torch.save({"epoch": 3, "state_dict": source.state_dict()}, tmp_path / "wrapped.pt")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors"))
    for path in ("w.pt", "wrapped.pt", "w.safetensors"):
        target = build_model(spec, seed=2)
        apply_weights(target, tmp_path / path)
        assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values()))

    (tmp_path / "junk.pt").write_bytes(b"not a torch file at all")
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    other = build_model(ModelSpec("torchvision:shufflenet_v2_x0_5", 3, 8, 5), seed=0)  # 5 classes
    torch.save(other.state_dict(), tmp_path / "other.pt")
    cases = {
        "missing.pt": "does not exist",
        "junk.pt": "is not a weights file",
        "list.pt": "holds a list, not a state dict",
        "other.pt": "does not fit the network",
    }
    for name, words in cases.items():
        with pytest.raises(ValueError) as err:
            apply_weights(build_model(spec), tmp_path / name)
        assert words in str(err.value) and str(tmp_path / name) in str(err.value)
        if name == "other.pt":  # the misfit tensors are named with both shapes
            assert "fc.weight (5, 1024) (network (3, 1024))" in str(err.value)
    assert load_weights(tmp_path / "w.safetensors").keys() == source.state_dict().keys()


def test_the_config_check_refuses_bad_weights_and_names_before_any_job(tmp_path, in_root):
    assert validated(zoo_config())["model"]["weights"] is None
    torch.save([torch.zeros(3)], tmp_path / "list.pt")
    wrong = build_model(ModelSpec("torchvision:shufflenet_v2_x0_5", 3, 8, 5))
    torch.save(wrong.state_dict(), tmp_path / "wrong.pt")
    for model, words in (
        ({"weights": str(tmp_path / "nothing.pt")}, "does not exist"),
        ({"weights": str(tmp_path / "list.pt")}, "not a state dict"),
        ({"weights": str(tmp_path / "wrong.pt")}, "does not fit the network"),
        ({"name": "torchvision:resnet18", "kwargs": {"weights": "DEFAULT"}}, "nothing is downloaded"),
        ({"name": "torchvision:resnet81"}, "did you mean"),
    ):
        with pytest.raises(ConfigError, match=words):
            validated(zoo_config(**model))


@pytest.mark.slow
@pytest.mark.parametrize(
    "model",
    [
        {"name": "torchvision:shufflenet_v2_x0_5"},
        {"name": "timm:vit_tiny_patch16_224", "kwargs": SMALL_VIT},
    ],
    ids=["torchvision", "timm"],
)
def test_zoo_networks_run_through_the_whole_workflow(tmp_path, model):
    """A zoo network named in a config: every stage, and J_final's rows equal autograd's, the
    network's batch-norm statistics those recomputed for its weights (model.normalisation)."""
    from jacobian_spectrum.data.subset import read_split
    from jacobian_spectrum.train.models import load_checkpoint, read_checkpoint

    out = tmp_path / "results"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(zoo_config(**model)))
    snakemake("--cores", "2", "--configfile", str(config), "--config", f"results={out}")
    assert read_checkpoint(out / "init/checkpoints/epoch0.pt")["model"]["name"] == model["name"]
    net, payload = load_checkpoint(out / "runs/sgd_clean/checkpoints/epoch2.pt", normalisation="recomputed")
    assert payload["normalisation"] == ("recomputed" if model["name"].startswith("torchvision") else "none")
    net.eval()
    x = torch.from_numpy(read_split(out / "data/subset.h5", "train").x)
    with h5py.File(out / "runs/sgd_clean/jacobian/train_epoch2.h5") as f:
        assert f["J"].shape == (90, count_parameters(net))
        for i, k in ((0, 0), (17, 2)):
            net.zero_grad()
            net(x[i : i + 1])[0, k].backward()
            grad = torch.cat([p.grad.reshape(-1) for p in net.parameters()]).numpy()
            # in norm: with batch-norm working, a few entries are small sums of large terms
            # (batch-norm's parameters), which two passes round apart by more than 1e-4 each
            assert np.linalg.norm(f["J"][i * 3 + k] - grad) <= 1e-4 * np.linalg.norm(grad)
    assert model["name"] in (out / "tables/table1.md").read_text()


@pytest.mark.slow
def test_googlenet_with_its_unused_auxiliary_heads_runs_through_the_workflow(tmp_path):
    """torchvision's GoogLeNet keeps two auxiliary heads that its eval-mode forward pass never
    calls: training fits its main output, and their columns of J are zero (9.9M parameters:
    4 images a class of 32 x 32, spectra streamed)."""
    out = tmp_path / "results"
    cfg = zoo_config(name="torchvision:googlenet")
    cfg["dataset"].update(train_per_class=4, test_per_class=2)
    cfg["dataset"]["kwargs"]["size"] = 32  # GoogLeNet's pooling needs more than 8 x 8
    cfg["spectrum"].update(method="matrix_free", info_dim=4, topk=8, oversampling=8, memory_budget_mb=2500)
    cfg["analysis"]["track_runs"] = []
    cfg["runs"]["sgd_clean"]["epochs"] = 1
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    snakemake("--cores", "2", "--configfile", str(config), "--config", f"results={out}")
    with h5py.File(out / "runs/sgd_clean/spectrum/train_epoch1.h5") as f:
        assert f.attrs["normalisation"] == "recomputed" and f.attrs["degenerate"] == ""
        assert f.attrs["numerical_rank"] > 3
    assert "googlenet" in (out / "tables/table1.md").read_text()


def parameter_count(name: str) -> int:
    """A torchvision network's parameters at 3 classes, counted on the meta device (nothing is
    allocated); where its constructor needs real tensors (RegNets), its pretrained weights'
    count at 1000 classes, which is more."""
    import torchvision

    try:
        with torch.device("meta"):
            return sum(p.numel() for p in build_named_model(f"torchvision:{name}", 3, 32, 3).parameters())
    except Exception:
        return torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"]


def small_torchvision_classifiers(limit: int = 12_000_000) -> list[str]:
    """torchvision's classification models with under ``limit`` parameters that build at
    32 x 32 with 3 classes and run there."""
    import torchvision

    names = []
    for name in torchvision.models.list_models(module=torchvision.models):
        if parameter_count(name) >= limit:
            continue
        try:
            net = build_named_model(f"torchvision:{name}", 3, 32, 3)
            with torch.no_grad():
                net.eval()(torch.zeros(2, 3, 32, 32))
        except Exception:  # made for larger images, or arguments this size cannot take
            continue
        names.append(name)
    return names


@pytest.mark.slow
def test_no_small_torchvision_classifier_passes_silently_as_a_degenerate_network():
    """Each is measured at initialisation (batch-norm statistics recomputed on the images), with
    outputs that vary across samples and a J of numerical rank above K, or stopped with the
    degeneracy error: none gives numbers from a degenerate network."""
    from jacobian_spectrum.jacobian.degeneracy import SPREAD_TOLERANCE, DegenerateNetworkError
    from jacobian_spectrum.spaces import information_space
    from jacobian_spectrum.train.normalisation import evaluation_statistics

    names = small_torchvision_classifiers()
    assert {"resnet18", "mobilenet_v3_small", "googlenet", "shufflenet_v2_x0_5"} <= set(names)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    verdicts = {}
    for name in names:
        torch.manual_seed(0)
        net = build_named_model(f"torchvision:{name}", 3, 32, 3)
        try:
            space = information_space(net, x, rank=3)
        except DegenerateNetworkError as exc:
            verdicts[name] = f"stopped: {exc}"
            continue
        with evaluation_statistics(net, x, "recomputed"), torch.no_grad():
            out = net.eval()(x).double()
        spread = float(out.std(dim=0).pow(2).mean().sqrt() / out.pow(2).mean().sqrt())
        s = space.singular_values
        rank = int((s > np.finfo(np.float32).eps * s[0] * len(s)).sum())
        assert spread > SPREAD_TOLERANCE and rank > 3, f"{name}: spread {spread:.1e}, rank {rank}"
        verdicts[name] = f"measured: spread {spread:.2f}, rank {rank}"
    print("\n".join(f"{n}: {v}" for n, v in verdicts.items()))
    assert verdicts["mobilenet_v3_small"].startswith("measured")
