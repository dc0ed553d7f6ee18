"""A network's settings (:class:`ModelSpec`, from the config's ``model`` section) and the
built-in networks' parameter counts p from them alone, without torch.

The config check settles ``spectrum.method: auto`` (a stored or a streamed J, from nK x p)
while Snakemake parses the Snakefile; building the network there imported torch, 2 s of every
parse. A factory or zoo network is still built to be counted. tests/test_train.py checks each
count here against the built network's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# VGG-11's convolutions (channels; "M" = 2x2 max-pool): Simonyan and Zisserman 2015, config A
VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network; stored in every checkpoint."""

    name: str  # one of MODEL_NAMES, a zoo name "torchvision:<name>" / "timm:<name>", or "package.module:factory"
    in_channels: int
    image_size: int
    num_classes: int
    width: float = 1.0  # ResNet20 / VGG channel multiplier (1.0 = 16/32/64, 64..512 channels)
    hidden: int = 256  # one_hidden: number of hidden units k; mlp: units of each hidden layer
    depth: int = 2  # mlp: number of hidden layers
    activation: str = "softplus"  # one_hidden: phi
    output_scale: float = 1.0  # one_hidden: nu in V ~ Rademacher * nu / sqrt(k K)
    kwargs: dict = field(default_factory=dict)  # a factory's extra keyword arguments (model.kwargs)


def model_spec(model_config: Mapping, in_channels: int, image_size: int, num_classes: int) -> ModelSpec:
    """The network of the config's ``model`` section for images of this shape and K classes."""
    return ModelSpec(
        name=model_config["name"],
        in_channels=in_channels,
        image_size=image_size,
        num_classes=num_classes,
        width=float(model_config.get("width", 1.0)),
        hidden=int(model_config.get("hidden", 256)),
        depth=int(model_config.get("depth", 2)),
        activation=model_config.get("activation", "softplus"),
        output_scale=float(model_config.get("output_scale", 1.0)),
        kwargs=dict(model_config.get("kwargs") or {}),
    )


def _conv3x3(cin: int, cout: int) -> int:
    return cin * cout * 9 + cout  # weights and bias


def builtin_parameter_count(spec: ModelSpec) -> int | None:
    """p of a built-in network (resnet20, vgg11_bn, mlp or one_hidden); None for any other."""
    name, width, hidden, depth = spec.name, spec.width, spec.hidden, spec.depth
    in_channels, image_size = spec.in_channels, spec.image_size
    k = spec.num_classes
    if name == "resnet20":  # 3 stages x 3 blocks of two convolutions, option-A shortcuts
        widths = [max(1, round(c * width)) for c in (16, 32, 64)]
        p, cin = _conv3x3(in_channels, widths[0]), widths[0]
        for planes in widths:
            for _ in range(3):
                p += _conv3x3(cin, planes) + _conv3x3(planes, planes)
                cin = planes
        return p + cin * k + k
    if name == "vgg11_bn":  # each convolution with batch-norm's scale and shift
        p, cin = 0, in_channels
        for v in VGG11:
            if v != "M":
                out = max(1, round(v * width))
                p, cin = p + _conv3x3(cin, out) + 2 * out, out
        return p + cin * k + k
    d = in_channels * image_size**2
    if name == "mlp":
        widths = [d] + [hidden] * depth
        return sum(a * b + b for a, b in zip(widths[:-1], widths[1:])) + widths[-1] * k + k
    if name == "one_hidden":  # W only: V is fixed
        return hidden * d
    return None
