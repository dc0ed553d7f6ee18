"""Batch-norm statistics that belong to the network being measured.

J and every evaluation are taken in eval mode, where a batch-norm layer normalises with its
running statistics. Those are the defaults (mean 0, variance 1) at initialisation and a
momentum average of past batches after training, so in eval mode the measured network is not
the one being trained: at initialisation every batch-norm layer is the identity (MobileNetV3's
outputs are then the same for every sample). ``model.normalisation`` picks what J and the
trajectory's evaluations use:

  recomputed  (default) each layer's mean and variance of its inputs over the whole training
              split, unaugmented, with the network as in training (every earlier batch-norm
              layer normalising with its batch's statistics, dropout off): the statistics of
              this checkpoint's weights, in the manner of ``torch.optim.swa_utils.update_bn``
              but exact over batches. Computed once per evaluation and once per checkpoint and
              stored in the checkpoint beside the trained statistics, which stay as trained.
  stored      the running statistics as training left them (or the network's defaults).

Train-mode J (differentiating through the batch statistics) is not offered: each sample's
outputs would then depend on every other sample in its batch, and J on how samples are batched.
A network without normalisation layers is untouched by either mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

NORMALISATION_MODES = ("recomputed", "stored")
NO_NORMALISATION = "none"  # the mode recorded for a network without normalisation layers
NORMALISATION_MEANING = {
    "recomputed": "batch-norm running statistics recomputed for this checkpoint over the training split "
    "(unaugmented, exact mean and unbiased variance over all samples), network in eval mode",
    "stored": "batch-norm running statistics as training stored them (momentum averages; defaults at initialisation)",
    NO_NORMALISATION: "the network has no normalisation layers with running statistics",
}
STATISTICS_BATCH = 1024  # samples per forward pass of the recomputation, as a prediction pass (no autograd graph)
STATISTICS = ("running_mean", "running_var")


def normalisation_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """The layers whose eval-mode output depends on running statistics (batch-norm of any
    dimension, and instance-norm that tracks running statistics)."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None
    ]


def effective_mode(model: nn.Module, mode: str) -> str:
    """The mode recorded in files: ``mode``, or "none" for a network without normalisation layers."""
    if mode not in NORMALISATION_MODES:
        raise ValueError(f"config key 'model.normalisation': {mode!r} is not one of {list(NORMALISATION_MODES)}")
    return mode if normalisation_layers(model) else NO_NORMALISATION


def current_statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    """The running statistics of every normalisation layer, by state-dict name (copies)."""
    prefix = {m: f"{name}." if name else "" for name, m in normalisation_layers(model)}
    return {f"{p}{stat}": getattr(m, stat).detach().clone() for m, p in prefix.items() for stat in STATISTICS}


def load_statistics(model: nn.Module, statistics: Mapping[str, torch.Tensor]) -> None:
    """Copy ``statistics`` (state-dict names -> tensors) into the model's running statistics;
    ValueError when they are not exactly the model's normalisation layers."""
    own = current_statistics(model)
    if set(own) != set(statistics):
        missing, extra = sorted(set(own) - set(statistics)), sorted(set(statistics) - set(own))
        raise ValueError(f"normalisation statistics do not fit the network: missing {missing[:3]}, extra {extra[:3]}")
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, value in statistics.items():
            buffers[name].copy_(value)


class _Moments:
    """Per-channel count, mean and sum of squared deviations, merged over batches in float64
    (Chan et al.'s pairwise update: no cancellation as in E[x^2] - E[x]^2)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, count: int, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        """One batch: ``count`` values per channel, their mean and unbiased variance."""
        mean = mean.double()
        m2 = unbiased_var.double() * max(1, count - 1)
        if self.mean is None:
            self.count, self.mean, self.m2 = count, mean, m2
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * count / total)
        self.count = total


def _batch_moments(moments: _Moments):
    """A forward hook for a normalisation layer run with momentum 1: after the call its running
    statistics are that batch's mean and unbiased variance, computed by the layer's own kernel
    (no second pass over its inputs)."""

    def hook(module: _BatchNorm, args: tuple, output: torch.Tensor) -> None:
        x = args[0]
        moments.add(x.numel() // x.shape[1], module.running_mean.detach(), module.running_var.detach())

    return hook


@torch.no_grad()
def recompute_statistics(
    model: nn.Module, x: torch.Tensor, batch_size: int = STATISTICS_BATCH
) -> dict[str, torch.Tensor]:
    """Every normalisation layer's running statistics for the current weights, over the samples
    ``x`` (the training split, as the network sees it in evaluation): the mean and unbiased
    variance of each layer's inputs over all samples, the network run as in training (each
    normalisation layer normalising with its batch's statistics, as ``update_bn`` runs it) but
    with dropout and other train-only randomness off. With one batch this is exactly
    ``torch.optim.swa_utils.update_bn``'s result; over several it is the exact average, where
    ``update_bn`` averages the batches' variances and misses the spread of their means.

    The model is left as it was (weights, running statistics, train/eval mode). Returns {} for a
    network without normalisation layers, at no cost."""
    layers = normalisation_layers(model)
    if not layers:
        return {}
    if len(x) < 2:
        raise ValueError("recomputing normalisation statistics needs at least 2 samples")
    saved = current_statistics(model)
    counters = {name: m.num_batches_tracked.detach().clone() for name, m in layers}
    momenta = {name: m.momentum for name, m in layers}
    modes = {m: m.training for m in model.modules()}
    moments = {name: _Moments() for name, _ in layers}
    hooks = [m.register_forward_hook(_batch_moments(moments[name])) for name, m in layers]
    for _, m in layers:
        m.momentum = 1.0  # each call leaves its batch's statistics in the running buffers
    try:
        model.eval()
        for _, m in layers:
            m.train()  # normalise with the batch's statistics, as in training
        n = len(x)
        count = -(-n // max(2, batch_size))
        bounds = [n * i // count for i in range(count + 1)]  # equal batches, none of a single sample
        for a, b in zip(bounds, bounds[1:]):
            model(x[a:b])
    finally:
        for h in hooks:
            h.remove()
        load_statistics(model, saved)
        for name, m in layers:
            m.num_batches_tracked.copy_(counters[name])
            m.momentum = momenta[name]
        for m, training in modes.items():
            m.training = training
    out = {}
    for name, m in layers:
        acc = moments[name]
        prefix = f"{name}." if name else ""
        if acc.mean is None:  # a layer the forward pass does not use: its statistics stay as stored
            out[f"{prefix}running_mean"] = saved[f"{prefix}running_mean"]
            out[f"{prefix}running_var"] = saved[f"{prefix}running_var"]
            continue
        dtype = m.running_mean.dtype
        out[f"{prefix}running_mean"] = acc.mean.to(dtype).to(m.running_mean.device)
        out[f"{prefix}running_var"] = (acc.m2 / max(1, acc.count - 1)).to(dtype).to(m.running_var.device)
    return out


@contextlib.contextmanager
def evaluation_statistics(model: nn.Module, x: torch.Tensor, mode: str) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, the model's normalisation layers hold the statistics of ``mode`` for
    the samples ``x`` (recomputed: :func:`recompute_statistics`; stored: as they are); after it,
    the trained statistics again, bit for bit. Yields the statistics it loaded ({} when none)."""
    if mode == "stored" or not normalisation_layers(model):
        yield {}
        return
    saved = current_statistics(model)
    stats = recompute_statistics(model, x)
    load_statistics(model, stats)
    try:
        yield stats
    finally:
        load_statistics(model, saved)
