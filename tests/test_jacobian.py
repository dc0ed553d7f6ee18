import h5py
import numpy as np
import pytest
import torch

from jacobian_spectrum.data import build_subset, write_subset
from jacobian_spectrum.jacobian import compute_chunk, gather, jacobian, layer_norms, parameter_table, probe_errors
from jacobian_spectrum.models import ModelSpec, build_model, save_checkpoint


def small_resnet():
    return build_model(ModelSpec("resnet20", 1, 8, 3, width=0.125), seed=0)


def test_jacobian_equals_autograd_functional_jacobian():
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Softplus(), torch.nn.Linear(5, 3)).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    J = jacobian(model, x, batch_size=4)
    params = tuple(model.parameters())
    names = [n for n, _ in model.named_parameters()]

    def f(*ps):
        return torch.func.functional_call(model, dict(zip(names, ps)), (x,))

    ref = torch.autograd.functional.jacobian(f, params)  # per tensor: (n, K, *shape)
    ref = torch.cat([r.reshape(6, 3, -1) for r in ref], dim=2).reshape(18, -1)
    assert torch.allclose(J, ref, rtol=1e-12, atol=1e-12)


def test_rows_are_sample_major():
    model = small_resnet()
    x = torch.randn(4, 1, 8, 8)
    J = jacobian(model, x)
    k = 3
    for i in range(4):
        for c in range(k):
            model.zero_grad()
            model(x[i : i + 1])[0, c].backward()
            g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
            assert torch.allclose(J[i * k + c], g, atol=1e-6), (i, c)


def test_parameter_table_offsets_slice_each_layer():
    model = small_resnet()
    table = parameter_table(model)
    assert table[0].offset == 0
    for a, b in zip(table, table[1:]):
        assert b.offset == a.offset + a.size
    x = torch.randn(2, 1, 8, 8)
    J = jacobian(model, x)
    last = table[-1]  # linear.bias: d f_k / d b_j = delta_kj
    assert last.name == "linear.bias"
    assert torch.allclose(J[:, last.offset : last.offset + last.size], torch.eye(3).repeat(2, 1))


def test_probes_agree_with_jvp_and_vjp_below_1e_5():
    model = small_resnet()
    x = torch.randn(10, 1, 8, 8)
    err_jvp, err_vjp = probe_errors(model, x, jacobian(model, x))
    assert err_jvp < 1e-5 and err_vjp < 1e-5
    # and the probe catches a wrong J
    bad = jacobian(model, x)
    bad[:, 0] += 1.0
    assert max(probe_errors(model, x, bad)) > 1e-3


@pytest.fixture
def subset_and_checkpoint(tmp_path):
    ds = {"name": "digits", "classes": [0, 1, 2], "train_per_class": 7, "test_per_class": 3, "seed": 0}
    subset, source = build_subset(ds)
    write_subset(tmp_path / "subset.h5", subset, source, ds)
    spec = ModelSpec("resnet20", 1, 8, 3, width=0.125)
    save_checkpoint(tmp_path / "epoch0.pt", build_model(spec, seed=0), spec, 0)
    return tmp_path


def chunks(root, size, n=21, tag="c"):
    paths = []
    for c in range(-(-n // size)):
        p = root / f"{tag}{c}.h5"
        compute_chunk(root / "epoch0.pt", root / "subset.h5", "train", c, size, p)
        paths.append(p)
    return paths


def test_chunked_equals_single_chunk(subset_and_checkpoint):
    root = subset_and_checkpoint
    gather(chunks(root, 21, tag="one"), root / "single.h5")
    gather(chunks(root, 5, tag="five")[::-1], root / "chunked.h5")  # order of inputs does not matter
    with h5py.File(root / "single.h5") as a, h5py.File(root / "chunked.h5") as b:
        assert a["J"].shape == (63, b["J"].shape[1])
        # equal up to float32 rounding (vmap batches of other sizes may sum in another order)
        Ja, Jb = a["J"][...], b["J"][...]
        assert np.abs(Ja - Jb).max() <= 1e-6 * np.abs(Ja).max()
        assert b.attrs["row_order"].startswith("sample-major")
    norms = dict(layer_norms(root / "chunked.h5"))
    with h5py.File(root / "chunked.h5") as f:
        total = np.linalg.norm(f["J"][...].astype(np.float64))
    assert np.isclose(np.sqrt(sum(v**2 for v in norms.values())), total)


def test_deleted_chunk_makes_the_gather_fail_naming_it(subset_and_checkpoint):
    root = subset_and_checkpoint
    paths = chunks(root, 5)
    paths[2].unlink()
    with pytest.raises(FileNotFoundError, match="c2.h5"):
        gather(paths, root / "J.h5")
    # a gap (chunk left out of the list) is named too
    with pytest.raises(ValueError, match="c3.h5: starts at row 45, expected 30"):
        gather([paths[0], paths[1], paths[3], paths[4]], root / "J.h5")
    assert not (root / "J.h5").exists()


def test_chunk_from_another_checkpoint_is_refused(subset_and_checkpoint):
    root = subset_and_checkpoint
    paths = chunks(root, 11)
    spec = ModelSpec("resnet20", 1, 8, 3, width=0.125)
    save_checkpoint(root / "epoch5.pt", build_model(spec, seed=1), spec, 5)
    compute_chunk(root / "epoch5.pt", root / "subset.h5", "train", 1, 11, paths[1])
    with pytest.raises(ValueError, match="c1.h5: checkpoint"):
        gather(paths, root / "J.h5")


def test_nan_in_a_chunk_is_refused(subset_and_checkpoint):
    root = subset_and_checkpoint
    paths = chunks(root, 11)
    with h5py.File(paths[1], "r+") as f:
        f["J"][3, 7] = np.nan
    with pytest.raises(ValueError, match="c1.h5: J: 1 non-finite"):
        gather(paths, root / "J.h5")


def test_layer_path_equals_the_torch_func_path():
    from jacobian_spectrum.jacobian import _layers, jacobian_by_layers, jacobian_vmap

    for spec in (ModelSpec("resnet20", 1, 8, 3, width=0.25), ModelSpec("resnet20", 3, 12, 4, width=0.125)):
        model = build_model(spec, seed=1).double()
        x = torch.randn(5, spec.in_channels, spec.image_size, spec.image_size, dtype=torch.float64)
        assert torch.allclose(jacobian_by_layers(model, x, _layers(model)), jacobian_vmap(model, x), atol=1e-12)
    # a network with a parameter outside Linear/Conv2d takes the torch.func path
    assert _layers(build_model(ModelSpec("one_hidden", 1, 4, 3, hidden=8))) is None
