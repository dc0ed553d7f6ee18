import h5py
import numpy as np
import pytest
import torch

from jacobian_spectrum.data.subset import SplitData
from jacobian_spectrum.train.loop import TrainSettings, augment, least_squares_loss, predict, train
from jacobian_spectrum.train.models import (
    ModelSpec,
    build_model,
    count_parameters,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from jacobian_spectrum.train.trajectory import errors, read_trajectory, write_trajectory


def test_resnet20_has_the_papers_parameter_count():
    model = build_model(ModelSpec("resnet20", 3, 32, 3))
    # 16/32/64 channels, 9 basic blocks, conv biases instead of batch-norm, option-A shortcuts
    assert count_parameters(model) == 268_579
    assert abs(count_parameters(model) - 270_000) / 270_000 < 0.01  # the paper's "0.27M"


@pytest.mark.parametrize(
    "model",
    [
        {"name": "resnet20"},
        {"name": "resnet20", "width": 0.25},
        {"name": "resnet20", "width": 0.3},
        {"name": "vgg11_bn", "width": 0.125},
        {"name": "vgg11_bn", "width": 0.3},
        {"name": "mlp", "hidden": 64, "depth": 3},
        {"name": "one_hidden", "hidden": 50},
    ],
)
@pytest.mark.parametrize("channels,size,classes", [(1, 8, 3), (3, 32, 10)])
def test_builtin_parameter_counts_equal_the_built_networks(model, channels, size, classes):
    # the config check counts p without torch; a count that drifts from the network would
    # store a J it meant to stream, or refuse one that fits
    from jacobian_spectrum.train.spec import builtin_parameter_count, model_spec

    network = model_spec(model, channels, size, classes)
    assert builtin_parameter_count(network) == count_parameters(build_model(network))
    assert builtin_parameter_count(model_spec({"name": "torchvision:resnet18"}, channels, size, classes)) is None


@pytest.mark.parametrize("channels,size", [(1, 8), (1, 28), (3, 32)])
def test_forward_shapes_for_each_data_set(channels, size):
    for spec in (
        ModelSpec("resnet20", channels, size, 3, width=0.25),
        ModelSpec("one_hidden", channels, size, 3, hidden=16),
    ):
        out = build_model(spec, seed=0)(torch.randn(5, channels, size, size))
        assert out.shape == (5, 3)


def test_initialisation_keeps_activations_bounded_and_jacobian_nondegenerate():
    model = build_model(ModelSpec("resnet20", 3, 32, 3), seed=0)
    out = model(torch.randn(64, 3, 32, 32))
    assert 0.01 < out.std().item() < 10
    assert model.linear.weight.abs().sum() > 0  # last layer not zero-initialised


def test_one_hidden_layer_output_layer_is_fixed_rademacher():
    model = build_model(ModelSpec("one_hidden", 1, 4, 3, hidden=50, output_scale=2.0), seed=0)
    assert [n for n, _ in model.named_parameters()] == ["W"]
    assert torch.allclose(model.V.abs(), torch.full_like(model.V, 2.0 / np.sqrt(50 * 3)))


def test_same_seed_same_initialisation():
    a = build_model(ModelSpec("resnet20", 1, 8, 3, width=0.25), seed=3)
    b = build_model(ModelSpec("resnet20", 1, 8, 3, width=0.25), seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    spec = ModelSpec("resnet20", 1, 8, 3, width=0.25)
    model = build_model(spec, seed=0)
    save_checkpoint(tmp_path / "c.pt", model, spec, epoch=5, run="x")
    torch.load(tmp_path / "c.pt", weights_only=True)  # no pickled code
    loaded, payload = load_checkpoint(tmp_path / "c.pt")
    assert payload["epoch"] == 5
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt is not a readable checkpoint"):
        read_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt is not a jacobian_spectrum.checkpoint"):
        read_checkpoint(tmp_path / "other.pt")


def test_augmentation_crops_and_flips_within_the_padding():
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8)
    y = augment(x, crop=True, flip=False, generator=gen)
    assert y.shape == x.shape
    # every non-padding pixel of the crop comes from the original image
    assert set(y[0].unique().tolist()) <= set(x[0].unique().tolist()) | {0.0}
    flipped = augment(x, crop=False, flip=True, generator=torch.Generator().manual_seed(1))
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2))


def tiny_data(n=48, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32) + y[:, None, None, None].astype(np.float32)
    return SplitData(x, y, k, (1, 8, 8))


def settings(**kw):
    base = dict(
        optimizer="sgd",
        lr=0.05,
        epochs=6,
        momentum=0.9,
        milestones=[4],
        batch_size=16,
        augment_crop=True,
        augment_flip=False,
        seed=0,
        resume_every=2,
        checkpoint_epochs=[0, 3, 6],
    )
    return TrainSettings(**{**base, **kw})


def test_one_epoch_reduces_the_loss():
    spec = ModelSpec("resnet20", 1, 8, 3, width=0.25)
    model = build_model(spec, seed=0)
    data = tiny_data()
    traj, _ = train(model, spec, settings(epochs=1, augment_crop=False), data, data.y, data, torch.device("cpu"))
    y = np.eye(3)[data.y]
    losses = [0.5 * ((p - y) ** 2).sum(1).mean() for p in traj.train_predictions]
    assert losses[1] < losses[0]


def test_the_trajectory_records_each_splits_own_predictions():
    # both splits go through the network in one pass an epoch: each must get its own rows back
    spec = ModelSpec("resnet20", 1, 8, 3, width=0.25)
    data, test = tiny_data(), tiny_data(n=20, seed=1)
    s = settings(epochs=3, checkpoint_epochs=[0, 3])
    traj, ckpts = train(build_model(spec, seed=0), spec, s, data, data.y, test, torch.device("cpu"))
    for epoch in (0, 3):
        model = build_model(spec, seed=0)
        model.load_state_dict(ckpts[epoch])
        for recorded, split in ((traj.train_predictions[epoch], data), (traj.test_predictions[epoch], test)):
            assert recorded.shape == (len(split.y), 3)
            assert np.allclose(recorded, predict(model, torch.from_numpy(split.x)).numpy(), rtol=1e-5, atol=1e-6)


def test_resume_after_a_kill_equals_the_uninterrupted_run(tmp_path):
    spec = ModelSpec("resnet20", 1, 8, 3, width=0.25)
    data = tiny_data()
    s = settings()
    full, full_ckpts = train(build_model(spec, seed=0), spec, s, data, data.y, data, torch.device("cpu"))
    resume = tmp_path / "state.pt"
    # "killed" after epoch 5: the last resume state is from epoch 4
    train(build_model(spec, seed=0), spec, s, data, data.y, data, torch.device("cpu"), resume, stop_after=5)
    assert resume.exists()
    resumed, ckpts = train(build_model(spec, seed=0), spec, s, data, data.y, data, torch.device("cpu"), resume)
    assert len(resumed.train_predictions) == s.epochs + 1
    for a, b in zip(full.train_predictions, resumed.train_predictions):
        assert np.array_equal(a, b)
    assert sorted(ckpts) == [0, 3, 6]
    for e in ckpts:
        assert all(torch.equal(ckpts[e][k], full_ckpts[e][k]) for k in ckpts[e])


def test_resume_checkpoints_are_files_written_once_and_never_taken_from_other_settings(tmp_path):
    spec = ModelSpec("resnet20", 1, 8, 3, width=0.25)
    data = tiny_data()
    resume = tmp_path / "resume" / "state.pt"
    # a resume state and checkpoint file left by other settings (another learning rate)
    train(build_model(spec, seed=0), spec, settings(lr=0.2), data, data.y, data, torch.device("cpu"), resume, 5)
    stale = torch.load(resume.parent / "checkpoint_epoch3.pt", weights_only=True)
    full, full_ckpts = train(build_model(spec, seed=0), spec, settings(), data, data.y, data, torch.device("cpu"))
    train(build_model(spec, seed=0), spec, settings(), data, data.y, data, torch.device("cpu"), resume, 5)
    state = torch.load(resume, weights_only=True)
    assert "checkpoints" not in state and state["checkpoint_epochs"] == [0, 3]  # the state does not grow with them
    fresh = torch.load(resume.parent / "checkpoint_epoch3.pt", weights_only=True)
    assert all(torch.equal(fresh[k], full_ckpts[3][k]) for k in fresh)
    assert not all(torch.equal(fresh[k], stale[k]) for k in fresh)
    # a missing checkpoint file makes the state untrusted: training starts over and still ends equal
    (resume.parent / "checkpoint_epoch3.pt").unlink()
    resumed, ckpts = train(build_model(spec, seed=0), spec, settings(), data, data.y, data, torch.device("cpu"), resume)
    assert all(np.array_equal(a, b) for a, b in zip(full.train_predictions, resumed.train_predictions))
    assert all(torch.equal(ckpts[3][k], full_ckpts[3][k]) for k in ckpts[3])


def test_trajectory_file_shapes_and_recomputed_errors(tmp_path):
    spec = ModelSpec("resnet20", 1, 8, 3, width=0.25)
    data, test = tiny_data(), tiny_data(n=20, seed=1)
    labels = (data.y + (np.arange(len(data.y)) % 2)) % 3  # half "corrupted"
    traj, _ = train(build_model(spec, seed=0), spec, settings(epochs=3), data, labels, test, torch.device("cpu"))
    path = tmp_path / "trajectory.h5"
    write_trajectory(path, traj, labels, data.y, test.y, 3, {"run": "t"})
    t = read_trajectory(path)
    assert t.train_predictions.shape == (4, 48, 3) and t.test_predictions.shape == (4, 20, 3)
    assert np.array_equal(t.train_error, (t.train_predictions.argmax(-1) != labels).mean(-1))
    assert np.array_equal(t.train_error_clean, (t.train_predictions.argmax(-1) != data.y).mean(-1))
    assert np.array_equal(t.test_error, (t.test_predictions.argmax(-1) != test.y).mean(-1))
    # memorisation: the kept and the corrupted samples apart, each against the trained labels
    corrupted = labels != data.y
    wrong = t.train_predictions.argmax(-1) != labels
    assert np.array_equal(t.train_error_kept, wrong[:, ~corrupted].mean(-1))
    assert np.array_equal(t.train_error_corrupted, wrong[:, corrupted].mean(-1))
    # the two groups' errors weighted by their sizes are the whole training error
    assert np.allclose(
        corrupted.mean() * t.train_error_corrupted + (~corrupted).mean() * t.train_error_kept, t.train_error
    )
    y = np.eye(3)[labels]
    assert np.allclose(t.train_loss, 0.5 * ((t.train_predictions - y) ** 2).sum(-1).mean(-1))
    with h5py.File(path) as f:
        assert np.isnan(f["lr"][0]) and f["lr"][1] == 0.05


def test_least_squares_loss_is_half_squared_norm_per_sample():
    out = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    target = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    assert least_squares_loss(out, target).item() == pytest.approx((0.5 * 1 + 0.5 * 4) / 2)
    assert errors(np.array([[[1, 0], [0, 1]]]), np.array([0, 0])).tolist() == [0.5]
    assert predict(torch.nn.Linear(2, 2), torch.zeros(3, 2)).shape == (3, 2)


def test_a_training_state_continues_an_epoch_bit_for_bit():
    """train.loop.training_state after one epoch, loaded into fresh objects, gives the second
    epoch of an uninterrupted run exactly (the fused GPU run's checkpoints rely on it)."""
    import copy

    from jacobian_spectrum.train.loop import load_training_state, make_optimizer, train_epoch, training_state

    x, y = torch.randn(24, 1, 8, 8), torch.nn.functional.one_hot(torch.arange(24) % 3, 3).float()
    s = TrainSettings("sgd", 0.05, 2, momentum=0.9, milestones=[1], batch_size=8, augment_flip=True)
    init = build_model(ModelSpec("resnet20", 1, 8, 3, width=0.125), seed=0)

    def objects(model):
        opt, sched = make_optimizer(model, s)
        return model, opt, sched, torch.Generator().manual_seed(s.seed)

    model, opt, sched, gen = objects(copy.deepcopy(init))
    train_epoch(model, opt, x, y, s, gen)
    sched.step()
    state = copy.deepcopy(training_state(model, opt, sched, gen))
    last = train_epoch(model, opt, x, y, s, gen)
    again = objects(copy.deepcopy(init))
    load_training_state(state, *again)
    assert train_epoch(again[0], again[1], x, y, s, again[3]) == last
    for name, value in model.state_dict().items():
        assert torch.equal(value, again[0].state_dict()[name]), name
