import copy
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from jacobian_spectrum.common.h5io import open_checked
from jacobian_spectrum.data.subset import build_subset, write_subset
from jacobian_spectrum.jacobian.chunk import compute_chunk
from jacobian_spectrum.jacobian.compute import jacobian, parameter_table, rows_kernel
from jacobian_spectrum.jacobian.probe import probe_errors
from jacobian_spectrum.jacobian.store import gather, layer_norms
from jacobian_spectrum.train.models import ModelSpec, build_model, save_checkpoint


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
        # equal up to float32 rounding (batches of other sizes may sum in another order)
        Ja, Jb = a["J"][...], b["J"][...]
        assert np.abs(Ja - Jb).max() <= 1e-6 * np.abs(Ja).max()
        assert b.attrs["row_order"].startswith("sample-major")
    norms = dict(layer_norms(root / "chunked.h5"))
    with h5py.File(root / "chunked.h5") as f:
        total = np.linalg.norm(f["J"][...].astype(np.float64))
    assert np.isclose(np.sqrt(sum(v**2 for v in norms.values())), total)


def test_gathered_J_is_a_virtual_dataset_over_the_chunks_written_once(subset_and_checkpoint):
    root = subset_and_checkpoint
    (root / "chunks").mkdir()
    paths = [root / "chunks" / p.name for p in chunks(root, 5)]
    for p in paths:
        (root / p.name).rename(p)
    gather(paths, root / "J.h5")
    with h5py.File(root / "J.h5") as f:
        assert f["J"].is_virtual
        assert all(not Path(vs.file_name).is_absolute() for vs in f["J"].virtual_sources())
        J = f["J"][...]
    parts = []
    for p in paths:
        with h5py.File(p) as c:
            parts.append(c["J"][...])
    np.testing.assert_array_equal(J, np.concatenate(parts))
    # the gathered file holds no copy of J: the chunks are its storage
    assert (root / "J.h5").stat().st_size < 0.05 * sum(p.stat().st_size for p in paths)
    # the sources are relative to J's folder: the folder can move
    moved = root.parent / (root.name + "-moved")
    root.rename(moved)
    with open_checked(moved / "J.h5", ["J"], artifact="jacobian") as f:
        np.testing.assert_array_equal(f["J"][...], J)


def test_a_chunk_deleted_or_replaced_after_the_gather_is_named_when_J_is_read(subset_and_checkpoint):
    from jacobian_spectrum.spectrum.dense import gram, read_slab
    from jacobian_spectrum.spectrum.methods import compute_spectrum

    root = subset_and_checkpoint
    paths = chunks(root, 11)
    gather(paths, root / "J.h5")
    # a chunk of another checkpoint under the same name
    spec = ModelSpec("resnet20", 1, 8, 3, width=0.125)
    save_checkpoint(root / "epoch5.pt", build_model(spec, seed=1), spec, 5)
    compute_chunk(root / "epoch5.pt", root / "subset.h5", "train", 1, 11, root / "other.h5")
    paths[1].rename(root / "kept.h5")
    (root / "other.h5").rename(paths[1])
    with pytest.raises(ValueError, match=r"J.h5: J is stored in .*c1.h5, whose checkpoint is .*epoch5.pt"):
        open_checked(root / "J.h5", ["J"], artifact="jacobian")
    # a missing chunk is named, not read as fill values
    paths[1].unlink()
    settings = {"info_dim": 5, "method": "full", "memory_budget_mb": 100, "threads": 1}
    with pytest.raises(FileNotFoundError, match=r"J.h5: J is a virtual dataset over 2 chunk.*1 do not exist: .*c1.h5"):
        compute_spectrum(root / "J.h5", settings)
    with pytest.raises(FileNotFoundError, match=r"do not exist: .*c1.h5"):
        gram(root / "J.h5", 100, 1)
    # a reader that skips the check reads NaN (the fill value) there, which every check of J refuses
    slab = read_slab(root / "J.h5", 0, 5)
    assert np.isnan(slab[33:66]).all() and np.isfinite(slab[:33]).all()


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
    with pytest.raises(
        ValueError, match=r"c1.h5: J rows 0..30: 1 non-finite value\(s\) \(NaN or Inf\), first at index \[3, 7\]"
    ):
        gather(paths, root / "J.h5")


def test_layer_path_equals_the_torch_func_path():
    from jacobian_spectrum.jacobian.compute import jacobian_by_layers, jacobian_vmap, plain_layers

    for spec in (ModelSpec("resnet20", 1, 8, 3, width=0.25), ModelSpec("resnet20", 3, 12, 4, width=0.125)):
        model = build_model(spec, seed=1).double()
        x = torch.randn(5, spec.in_channels, spec.image_size, spec.image_size, dtype=torch.float64)
        assert torch.allclose(jacobian_by_layers(model, x, plain_layers(model)), jacobian_vmap(model, x), atol=1e-12)
    # a network with a parameter outside Linear/Conv2d takes the torch.func path
    assert plain_layers(build_model(ModelSpec("one_hidden", 1, 4, 3, hidden=8))) is None


def per_sample_conv_grads(conv, a, backprops):
    """Reference: one autograd.grad per sample and backprop, (n, K, weight + bias)."""
    rows = []
    for i in range(len(a)):
        rows.append(
            torch.stack(
                [
                    torch.cat(
                        [
                            t.reshape(-1)
                            for t in torch.autograd.grad(
                                (conv(a[i : i + 1]) * g[i : i + 1]).sum(), [conv.weight, conv.bias]
                            )
                        ]
                    )
                    for g in backprops
                ]
            )
        )
    return torch.stack(rows)


@pytest.mark.parametrize("method", ["unfold", "grouped"])
@pytest.mark.parametrize(
    "c_in, c_out, hw, kernel, stride, padding",
    [
        (4, 5, (8, 8), 3, 1, 1),  # the ResNet20 case
        (3, 4, (7, 9), 3, 1, 2),  # non-square input, padding wider than the kernel's half
        (3, 4, (7, 9), (3, 1), 1, (1, 0)),  # rectangular kernel
        (5, 4, (8, 8), 3, 2, 1),  # stride 2 (the stage transitions)
        (3, 2, (9, 7), 3, (2, 1), 1),  # mixed strides
        (3, 2, (6, 6), 1, 1, 0),  # 1x1, no padding
    ],
)
def test_conv_grads_equal_per_sample_autograd(method, c_in, c_out, hw, kernel, stride, padding):
    from jacobian_spectrum.jacobian.compute import Workspace, conv_grads

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding).double()
    a = torch.randn(3, c_in, *hw, dtype=torch.float64)
    backprops = [torch.randn_like(conv(a)) for _ in range(2)]
    ref = per_sample_conv_grads(conv, a, backprops)
    workspace = Workspace()
    for _ in range(2):  # the second call reuses the workspace, stale values and all
        weight, bias = conv_grads(backprops, a, conv, method, workspace)
        assert torch.allclose(torch.cat([weight, bias], 2), ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="allowed: auto, grouped, unfold"):
        conv_grads(backprops, a, conv, "im2col")


def test_larger_images_take_the_grouped_path_and_agree_with_torch_func():
    from jacobian_spectrum.jacobian.compute import grouped_conv_is_faster, jacobian_vmap, plain_layers

    spec = ModelSpec("resnet20", 3, 16, 3, width=0.5)  # 8 channels on 16x16 maps: grouped on CPU
    model = build_model(spec, seed=2).double()
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    convs = [m for _, m in plain_layers(model) if isinstance(m, torch.nn.Conv2d)]
    assert grouped_conv_is_faster(convs[1].in_channels, 16 * 16, torch.device("cpu"))
    assert not grouped_conv_is_faster(convs[0].in_channels, 16 * 16, torch.device("cpu"))  # 3-channel input
    assert torch.allclose(jacobian(model, x, batch_size=3), jacobian_vmap(model, x), atol=1e-12)


def test_jacobian_is_bit_for_bit_reproducible():
    model = build_model(ModelSpec("resnet20", 3, 16, 3, width=0.5), seed=3)
    x = torch.randn(6, 3, 16, 16)
    assert torch.equal(jacobian(model, x, batch_size=4), jacobian(model, x, batch_size=4))


def test_workspace_views_are_disjoint_and_grow():
    from jacobian_spectrum.jacobian.compute import Workspace

    ws = Workspace()
    like = torch.empty(0)
    a, b = ws.take(like, (2, 3), (4,))
    a.fill_(1.0)
    b.fill_(2.0)
    assert a.shape == (2, 3) and b.shape == (4,) and (a == 1).all() and (b == 2).all()
    (c,) = ws.take(like, (100,))  # larger than the buffer so far: a new one
    assert c.numel() == 100


def test_batch_size_keeps_the_batch_memory_under_the_budget():
    from jacobian_spectrum.jacobian.compute import (
        BATCH_MEMORY_BYTES,
        MAX_BATCH,
        _per_sample_sizes,
        batch_size_for,
        plain_layers,
    )

    sizes = []
    for spec in (ModelSpec("resnet20", 1, 8, 3, width=0.25), ModelSpec("resnet20", 3, 32, 3, width=1.0)):
        model = build_model(spec, seed=0)
        layers = plain_layers(model)
        k, activations = _per_sample_sizes(
            model, layers, torch.randn(1, spec.in_channels, spec.image_size, spec.image_size)
        )
        b = batch_size_for(k, activations, layers, 4)
        p_max = max(m.weight.numel() for _, m in layers)
        assert 1 <= b <= MAX_BATCH
        assert b * ((k + 4) * activations + 2 * k * p_max) * 4 <= BATCH_MEMORY_BYTES
        sizes.append(b)
    assert sizes[0] == MAX_BATCH and sizes[1] < 128  # the full-width CIFAR network takes smaller batches


def test_jacobian_does_not_depend_on_the_batch_size():
    model = small_resnet()
    x = torch.randn(7, 1, 8, 8)
    assert torch.allclose(jacobian(model, x, batch_size=3), jacobian(model, x), atol=1e-6)


@pytest.mark.parametrize("n, batch_size", [(128, 87), (150, 512), (10, 3), (1, 5), (9, 3), (64, 64)])
def test_batch_slices_are_the_fewest_and_even(n, batch_size):
    from jacobian_spectrum.jacobian.compute import batch_slices

    slices = batch_slices(n, batch_size)
    assert slices[0].start == 0 and slices[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(slices, slices[1:]))
    sizes = [s.stop - s.start for s in slices]
    assert max(sizes) <= batch_size and max(sizes) - min(sizes) <= 1
    assert len(slices) == -(-n // batch_size)


def test_jacobian_blocks_reuse_one_buffer_and_equal_the_whole_jacobian():
    from jacobian_spectrum.jacobian.compute import jacobian_blocks

    model = small_resnet()
    x = torch.randn(10, 1, 8, 8)
    whole = jacobian(model, x, batch_size=4)  # the same batches: the same bits
    pointers = set()
    for batch, block in jacobian_blocks(model, x, batch_size=4):
        pointers.add(block.data_ptr())
        assert torch.equal(block, whole[batch.start * 3 : batch.stop * 3])
    assert len(pointers) == 1  # never more than one batch of J in memory


def test_streamed_chunk_equals_the_jacobian_in_memory(subset_and_checkpoint, monkeypatch):
    from jacobian_spectrum.data.subset import read_split
    from jacobian_spectrum.jacobian import compute as jac
    from jacobian_spectrum.train.models import load_checkpoint

    root = subset_and_checkpoint
    monkeypatch.setattr(jac, "MAX_BATCH", 4)  # 21 samples: six batches written one after another
    compute_chunk(root / "epoch0.pt", root / "subset.h5", "train", 0, 21, root / "c.h5")
    model, _ = load_checkpoint(root / "epoch0.pt", torch.device("cpu"))
    x = torch.from_numpy(read_split(root / "subset.h5", "train").x)
    with h5py.File(root / "c.h5") as f:
        assert f.attrs["probe_error_jvp"] < 1e-5 and f.attrs["probe_error_vjp"] < 1e-5
        np.testing.assert_allclose(f["J"][...], jacobian(model, x).numpy(), rtol=0, atol=1e-6)


def test_a_chunk_job_imports_neither_dynamo_nor_sympy(subset_and_checkpoint):
    # torch.func.jvp through a product, or autograd.grad given an output gradient, import
    # torch._dynamo (2.5 s) or sympy (1 s): most of a small chunk job, 29 times in the default
    root = subset_and_checkpoint
    code = (
        "import sys; from jacobian_spectrum.jacobian.chunk import compute_chunk; "
        f"compute_chunk({str(root / 'epoch0.pt')!r}, {str(root / 'subset.h5')!r}, 'train', 0, 21, "
        f"{str(root / 'c.h5')!r}); print(sorted(m for m in ('torch._dynamo', 'sympy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
    with h5py.File(root / "c.h5") as f:
        assert f.attrs["probe_error_jvp"] < 1e-5 and f.attrs["probe_error_vjp"] < 1e-5


def test_probe_check_catches_a_wrong_or_missing_batch():
    from jacobian_spectrum.jacobian.compute import batch_slices
    from jacobian_spectrum.jacobian.probe import ProbeCheck

    model = small_resnet()
    x = torch.randn(9, 1, 8, 8)
    J = jacobian(model, x)
    wrong, missing = ProbeCheck(model, *J.shape), ProbeCheck(model, *J.shape)
    for i, batch in enumerate(batch_slices(9, 3)):
        rows = slice(batch.start * 3, batch.stop * 3)
        block = J[rows].clone()
        if i == 1:
            block[4, 10] += 1.0
        else:
            missing.add(x[batch], rows, block)
        wrong.add(x[batch], rows, block)
    assert min(wrong.errors()) > 1e-4
    assert all(np.isnan(missing.errors()))  # compute_chunk refuses NaN errors (not <= tolerance)


def test_nan_in_a_batch_stops_the_chunk_job_naming_the_rows(subset_and_checkpoint, monkeypatch):
    from jacobian_spectrum.jacobian import compute as jac

    root = subset_and_checkpoint
    monkeypatch.setattr(jac, "MAX_BATCH", 4)  # 21 samples in batches of 3, 4, 3, ...: the second is rows 9..21
    real = jac.jacobian_by_layers
    calls = []

    def with_nan_in_second_batch(*args, **kwargs):
        rows = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            rows[5, 17] = float("nan")
        return rows

    monkeypatch.setattr(jac, "jacobian_by_layers", with_nan_in_second_batch)
    with pytest.raises(
        ValueError, match=r"c.h5: J rows 9..21: 1 non-finite value\(s\) \(NaN or Inf\), first at index \[14, 17\]"
    ):
        compute_chunk(root / "epoch0.pt", root / "subset.h5", "train", 0, 21, root / "c.h5")
    assert not (root / "c.h5").exists() and not list(root.glob(".c.h5.tmp*"))


def test_gather_reading_row_blocks_equals_reading_whole_chunks(subset_and_checkpoint, monkeypatch):
    from jacobian_spectrum.jacobian import store as jacobian_store

    root = subset_and_checkpoint
    paths = chunks(root, 5)
    gather(paths, root / "whole.h5")
    p = parameter_table(small_resnet())[-1]
    monkeypatch.setattr(jacobian_store, "GATHER_READ_BYTES", 4 * 4 * (p.offset + p.size))  # 4 rows per read
    gather(paths, root / "blocks.h5")
    with h5py.File(root / "whole.h5") as a, h5py.File(root / "blocks.h5") as b:
        np.testing.assert_array_equal(a["J"][...], b["J"][...])
    with h5py.File(paths[1], "r+") as f:
        f["J"][9, 2] = np.inf
    # the index counts in the chunk file, not in the block read
    with pytest.raises(
        ValueError, match=r"c1.h5: J rows 8..12: 1 non-finite value\(s\) \(NaN or Inf\), first at index \[9, 2\]"
    ):
        gather(paths, root / "J.h5")


def test_a_failed_probe_check_stops_the_chunk_job_and_leaves_no_file(subset_and_checkpoint, monkeypatch):
    from jacobian_spectrum.jacobian import compute as jac
    from jacobian_spectrum.jacobian import probe as jacobian_probe

    root = subset_and_checkpoint
    real = jac.jacobian_by_layers

    def off_by_one_entry(*args, **kwargs):
        rows = real(*args, **kwargs)
        rows[2, 40] += 1.0  # finite, wrong
        return rows

    monkeypatch.setattr(jac, "jacobian_by_layers", off_by_one_entry)
    with pytest.raises(ArithmeticError, match=r"c.h5: Jacobian probe check failed"):
        compute_chunk(root / "epoch0.pt", root / "subset.h5", "train", 0, 21, root / "c.h5")
    assert not list(root.glob("*c.h5*"))
    monkeypatch.setattr(jac, "jacobian_by_layers", real)
    monkeypatch.setattr(jacobian_probe.ProbeCheck, "errors", lambda self: (float("nan"), 0.0))  # NaN never passes
    with pytest.raises(ArithmeticError, match=r"jvp_s\|/\|J_s\|_F = nan"):
        compute_chunk(root / "epoch0.pt", root / "subset.h5", "train", 0, 21, root / "c.h5")
    assert not list(root.glob("*c.h5*"))


def bn_resnet(widths=(32, 64, 128, 256), k=3):
    """A ResNet-18 of half the channels: torchvision's BasicBlock with batch-norm, 2 per stage."""
    from torchvision.models.resnet import BasicBlock

    conv = torch.nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
    layers, c_in = [conv, torch.nn.BatchNorm2d(widths[0]), torch.nn.ReLU(inplace=True)], widths[0]
    for stage, c in enumerate(widths):
        for b in range(2):
            stride = 2 if stage > 0 and b == 0 else 1
            down = None
            if stride != 1 or c_in != c:
                down = torch.nn.Sequential(torch.nn.Conv2d(c_in, c, 1, stride, bias=False), torch.nn.BatchNorm2d(c))
            layers.append(BasicBlock(c_in, c, stride, down))
            c_in = c
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(c_in, k)]
    return torch.nn.Sequential(*layers)


def test_probe_check_of_a_large_batch_norm_network_with_a_relu_input_on_its_kink():
    """The 11M-parameter ResNet-18 case, at 2.8M parameters and 4 samples (3 to 5 s on 2 cores).

    What failed there: a ReLU input within float32 rounding of 0 falls on either side in two
    forward passes that round differently, and moves its sample's rows of J by 1e-3 or more,
    as much as a wrong row. With batch-norm and 1M parameters or more, J takes the per-sample
    path (the model's own pass on one sample at a time), which rounds batch-norm differently
    from vmap and from the check's batched and forward-mode passes; at 557k ReLU units a
    sample, about one sample in eight has such a unit (docs/reliability.md). Here one is
    planted: the batch-norm bias before a ReLU of the last stage is moved so that the unit where
    the rows' float32 pass and float64 differ most lies between them. References that take
    their own decisions (here float64's) then fail the correct J; the check, which pins the
    decisions of the rows' own pass, passes it at rounding level and fails it with one row
    scaled by 1.01 or one row's block of one layer zeroed. (Pinning a vmap pass's decisions
    instead, as the check did before it followed the per-sample path, fails the correct J.)
    """
    from torchvision.models.resnet import BasicBlock

    from jacobian_spectrum.jacobian.probe import ProbeCheck, RecordKinks

    torch.manual_seed(0)
    model = bn_resnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(10):  # batch-norm statistics and affine parameters away from their initial values
        loss = ((model(torch.randn(16, 3, 16, 16)) - torch.eye(3)[torch.randint(0, 3, (16,))]) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x = torch.randn(4, 3, 16, 16)
    p = sum(q.numel() for q in model.parameters())
    assert p > 2_700_000 and rows_kernel(model) == "per_sample"  # J's rows by the model's own pass, a sample at a time

    def float64_inputs(values=True):
        with torch.no_grad(), RecordKinks(values) as rec:
            copy.deepcopy(model).double()(x.double())
        return rec.masks

    # ReLU call 1 + 2 b follows block b's bn1; plant the kink in the last block's
    call, bn = 1 + 2 * 7, [m for m in model if isinstance(m, BasicBlock)][7].bn1
    check = ProbeCheck(model, 12, p)
    z32, z64 = check.kink_masks(x, values=True)[call][0], float64_inputs()[call][0]
    unit = np.unravel_index(int((z32.double() - z64).abs().argmax()), tuple(z32.shape))
    with torch.no_grad():
        bn.bias[unit[0]] -= float((z32[unit].double() + z64[unit]) / 2)
    assert check.kink_masks(x)[call][0][unit] != float64_inputs(values=False)[call][0][unit]

    class OwnDecisions(ProbeCheck):  # references in float64 that decide the ReLUs themselves
        def kink_masks(self, x, values=False):
            with torch.no_grad(), RecordKinks(values) as rec:
                copy.deepcopy(self.model).double()(x.double())
            return rec.masks

    J = jacobian(model, x)
    own = OwnDecisions(model, *J.shape, reference_dtype=torch.float64)
    own.add(x, slice(0, 12), J)
    assert max(own.errors()) > 1e-4  # the correct J fails against references with their own decisions
    assert max(probe_errors(model, x, J)) < 1e-5
    pinned64 = ProbeCheck(model, *J.shape, reference_dtype=torch.float64)
    pinned64.add(x, slice(0, 12), J)
    assert max(pinned64.errors()) < 1e-5
    table = {e.name: e for e in parameter_table(model)}
    block = table["4.conv1.weight"]  # the second block's first convolution
    for wrong in (lambda r: r.mul_(1.01), lambda r: r[block.offset : block.offset + block.size].zero_()):
        bad = J.clone()
        wrong(bad[1])
        assert max(probe_errors(model, x, bad)) > 1e-4
