"""The paper's networks: ResNet20 without batch-norm and softmax, and the one-hidden-layer net;
two CIFAR-size networks for the architecture table (VGG-11 with batch-norm, a ReLU MLP); or a
researcher's own, from a factory named ``package.module:factory`` (``model.name``), called
with the data's channels, image size and number of classes (and ``model.kwargs``).

Checkpoints are plain dicts of tensors and primitives so that
``torch.load(path, weights_only=True)`` reads them without unpickling code;
:func:`load_checkpoint` rebuilds the model from one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..common.h5io import open_checked
from ..common.plugins import is_reference
from .normalisation import effective_mode, load_statistics, recompute_statistics
from .spec import VGG11, ModelSpec, model_spec
from .zoo import build_named_model

CHECKPOINT_FORMAT = "jacobian_spectrum.checkpoint/1"
RECOMPUTED_KEY = "normalisation_statistics"  # a checkpoint's recomputed batch-norm statistics
MODEL_NAMES = ("resnet20", "one_hidden", "vgg11_bn", "mlp")
ACTIVATIONS = {"softplus": F.softplus, "relu": F.relu}


class BasicBlock(nn.Module):
    """3x3-3x3 residual block without batch-norm; option-A (parameter-free) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=True)
        self.stride = stride
        self.pad = planes - in_planes

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = self.conv2(out)
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """He et al.'s CIFAR ResNet20 (3 stages x 3 blocks) with batch-norm and softmax removed.

    Initialisation (no batch-norm to keep activations in range): Kaiming-normal (fan-in,
    ReLU gain) for every convolution, zero biases, and the second convolution of each
    residual branch scaled by 1/sqrt(number of blocks), so the activation variance grows by
    at most (1 + 1/9)^9 ~ 2.6 through the 9 blocks instead of 2^9. The last layer keeps
    PyTorch's default (non-zero) initialisation so that J_init is not degenerate.
    """

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0, blocks_per_stage: int = 3) -> None:
        super().__init__()
        widths = [max(1, round(c * width)) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=True)
        layers: list[nn.Module] = []
        in_planes = widths[0]
        for stage, planes in enumerate(widths):
            for b in range(blocks_per_stage):
                stride = 2 if stage > 0 and b == 0 else 1
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
        self.blocks = nn.Sequential(*layers)
        self.linear = nn.Linear(in_planes, num_classes)
        n_blocks = len(layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        with torch.no_grad():
            for block in layers:
                block.conv2.weight.mul_(1.0 / math.sqrt(n_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = self.blocks(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class OneHiddenLayerNet(nn.Module):
    """f(x) = V phi(W x) of Section 1.2: W (k x d) trained, V (K x k) fixed.

    W0 has i.i.d. N(0, 1) entries and V i.i.d. Rademacher entries scaled by nu / sqrt(k K),
    as in Theorem 3.2. Images are flattened, so d = channels * size^2.
    """

    def __init__(
        self, d: int, hidden: int, num_classes: int, activation: str = "softplus", output_scale: float = 1.0
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {sorted(ACTIVATIONS)}")
        self.activation = activation
        self.W = nn.Parameter(torch.randn(hidden, d))
        signs = torch.randint(0, 2, (num_classes, hidden)).float() * 2 - 1
        self.register_buffer("V", signs * output_scale / math.sqrt(hidden * num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = ACTIVATIONS[self.activation](x.flatten(1) @ self.W.T)
        return h @ self.V.T


class VGG11BN(nn.Module):
    """VGG-11 with batch-norm after every convolution, as trained on CIFAR-10: on 32 x 32 images
    the five max-pools leave 1 x 1 x 512, so one linear layer classifies (ImageNet's three
    4096-wide layers would add 120M parameters). PyTorch's default initialisation."""

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in VGG11:
            if v == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))  # ceil: images under 32 x 32 keep a pixel
            else:
                out = max(1, round(v * width))
                layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
                channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class MLP(nn.Module):
    """Flattened image -> ``depth`` hidden ReLU layers of ``hidden`` units -> K outputs, every
    layer trained; PyTorch's default initialisation."""

    def __init__(self, d: int, hidden: int, depth: int, num_classes: int) -> None:
        super().__init__()
        widths = [d] + [hidden] * depth
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.out = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)
        for layer in self.hidden:
            h = F.relu(layer(h))
        return self.out(h)


def build_model(spec: ModelSpec, seed: int | None = None) -> nn.Module:
    """Build the network described by ``spec``; ``seed`` fixes the initialisation."""
    if spec.name not in MODEL_NAMES and not is_reference(spec.name):
        raise ValueError(
            f"config key 'model.name': {spec.name!r} is not one of {list(MODEL_NAMES)} nor a factory "
            "package.module:factory"
        )
    if seed is not None:
        torch.manual_seed(seed)
    if is_reference(spec.name):
        return factory_model(spec)
    if spec.name == "resnet20":
        return ResNet20(spec.in_channels, spec.num_classes, spec.width)
    if spec.name == "vgg11_bn":
        return VGG11BN(spec.in_channels, spec.num_classes, spec.width)
    d = spec.in_channels * spec.image_size**2
    if spec.name == "mlp":
        return MLP(d, spec.hidden, spec.depth, spec.num_classes)
    return OneHiddenLayerNet(d, spec.hidden, spec.num_classes, spec.activation, spec.output_scale)


def factory_model(spec: ModelSpec) -> nn.Module:
    """The network of a zoo name (``torchvision:<name>``, ``timm:<name>``) or a factory
    ``package.module:factory``, called with the data's channels, image size and number of
    classes under the names it accepts, and ``spec.kwargs`` (:mod:`.zoo`); ValueError naming
    model.name when it is not a torch.nn.Module or does not give one output per class (checked
    on two blank images, in eval mode, so that batch-norm's running statistics are left as
    they are)."""
    model = build_named_model(spec.name, spec.in_channels, spec.image_size, spec.num_classes, spec.kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"config key 'model.name': {spec.name} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    shape = (2, spec.in_channels, spec.image_size, spec.image_size)
    with torch.no_grad():
        try:
            out = model.eval()(torch.zeros(shape))
        except Exception as exc:
            raise ValueError(
                f"config key 'model.name': the network of {spec.name} fails on images of shape {shape}: "
                f"{type(exc).__name__}: {exc}. Images smaller than the network was made for need its own "
                "arguments in model.kwargs (timm: img_size, patch_size; torchvision ViTs: image_size) or a "
                "network made for this size"
            ) from exc
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, spec.num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"config key 'model.name': the network of {spec.name} gives outputs {got} for images of shape {shape}; "
            f"expected (2, {spec.num_classes}): one output per class"
        )
    return model.train()


def count_parameters(model: nn.Module) -> int:
    """Number of trained parameters p (the column count of the Jacobian)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    spec: ModelSpec,
    epoch: int,
    normalisation_statistics: Mapping[str, torch.Tensor] | None = None,
    **meta: object,
) -> None:
    """Write a weights-only checkpoint atomically (temporary name, then rename).

    ``normalisation_statistics``: the batch-norm statistics recomputed for these weights
    (:mod:`.normalisation`), stored beside the trained ones under their own key; a network
    without normalisation layers has none, and its checkpoint no such key."""
    from ..common.h5io import atomic_path

    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": asdict(spec),
        "epoch": int(epoch),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": {k: v for k, v in meta.items()},
    }
    if normalisation_statistics:
        payload[RECOMPUTED_KEY] = {k: v.detach().cpu() for k, v in normalisation_statistics.items()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dict safely (``weights_only=True``) and check it is ours."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated file or foreign pickle
        raise ValueError(f"{path} is not a readable checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint (missing or wrong 'format' key)")
    return payload


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", normalisation: str = "stored"
) -> tuple[nn.Module, dict]:
    """Return ``(model, checkpoint)`` for a checkpoint written by :func:`save_checkpoint`.

    ``normalisation``: "stored" loads the running statistics as trained; "recomputed" those
    recomputed for these weights on the training split (model.normalisation, :mod:`.normalisation`),
    ValueError naming the checkpoint when a network with normalisation layers has none stored.
    ``checkpoint["normalisation"]`` says which the model holds ("none" without such layers)."""
    payload = read_checkpoint(path)
    spec = ModelSpec(**payload["model"])
    model = build_model(spec)
    model.load_state_dict(payload["state_dict"])
    mode = effective_mode(model, normalisation)
    if mode == "recomputed":
        if RECOMPUTED_KEY not in payload:
            raise ValueError(
                f"{path}: the network has batch-norm layers but the checkpoint holds no recomputed statistics "
                "(written with model.normalisation: stored, or by another tool); rerun the rule that wrote it "
                "with model.normalisation: recomputed, or measure with model.normalisation: stored"
            )
        load_statistics(model, payload[RECOMPUTED_KEY])
    payload["normalisation"] = mode
    return model.to(device), payload


# ---------------------------------------------------------------- local weights (model.weights)
def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path``: a safetensors file (``.safetensors``), or a torch file read
    with ``weights_only=True`` holding a state dict, one under ``state_dict`` or ``model``, or
    one of our checkpoints. ValueError naming model.weights and the file when it is missing or
    holds no weights."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config key 'model.weights': {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            payload = load_file(str(path))
        else:
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign or unsafe pickles
        raise ValueError(
            f"config key 'model.weights': {path} is not a weights file (a torch state dict, read with "
            f"weights_only=True, or .safetensors): {type(exc).__name__}: {exc}"
        ) from exc
    payload = _state_dict_in(payload)
    if (
        not isinstance(payload, Mapping)
        or not payload
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items())
    ):
        raise ValueError(
            f"config key 'model.weights': {path} holds a {type(payload).__name__}, not a state dict "
            "(a mapping from parameter names to tensors)"
        )
    return dict(payload)


def _state_dict_in(payload: object) -> object:
    """The state dict inside a saved object: one of our checkpoints, or a training script's
    dict with it under ``state_dict`` or ``model``; else the object itself."""
    if isinstance(payload, Mapping):
        if payload.get("format") == CHECKPOINT_FORMAT:
            return payload.get("state_dict")
        for key in ("state_dict", "model"):
            if isinstance(payload.get(key), Mapping):
                return payload[key]
    return payload


def apply_weights(model: nn.Module, path: str | Path) -> None:
    """Load the state dict in ``path`` into ``model``; ValueError naming model.weights, the file,
    and the first missing, unexpected or misshapen tensors when they do not fit the network."""
    weights = load_weights(path)
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    misshapen = [
        f"{k} {tuple(weights[k].shape)} (network {tuple(v.shape)})"
        for k, v in own.items()
        if k in weights and weights[k].shape != v.shape
    ]
    problems = [
        f"{what}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}"
        for what, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshapen))
        if items
    ]
    if problems:
        raise ValueError(
            f"config key 'model.weights': {path} does not fit the network ({len(own)} tensors): " + "; ".join(problems)
        )
    model.load_state_dict(weights)


# ---------------------------------------------------------------- the initialise rule
def model_spec_from(subset_path: str | Path, model_config: Mapping) -> ModelSpec:
    """The network for this subset: input channels and size from the data, K outputs."""
    with open_checked(subset_path, ["train/x"], artifact="subset") as f:
        c, h, _ = (int(v) for v in f.attrs["image_shape"])
        k = int(f.attrs["num_classes"])
    return model_spec(model_config, c, h, k)


def initialise(subset_path: str | Path, model_config: Mapping, out_path: str | Path) -> tuple[nn.Module, ModelSpec]:
    """Write the shared epoch-0 checkpoint: every run starts from (and J_init is taken at) it.
    With model.normalisation recomputed, it also holds the batch-norm statistics of these
    weights on the training split (:mod:`.normalisation`)."""
    spec = model_spec_from(subset_path, model_config)
    model = build_model(spec, seed=int(model_config.get("init_seed", 0)))
    weights = model_config.get("weights")
    if weights:
        apply_weights(model, weights)
    stats = None
    if effective_mode(model, model_config.get("normalisation", "recomputed")) == "recomputed":
        from ..data.subset import read_split

        stats = recompute_statistics(model, torch.from_numpy(read_split(subset_path, "train").x))
    save_checkpoint(
        out_path,
        model,
        spec,
        0,
        normalisation_statistics=stats,
        run="init",
        init_seed=int(model_config.get("init_seed", 0)),
        weights=str(weights or ""),
    )
    return model, spec
