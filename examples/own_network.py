"""A small CNN with batch-norm: an example of your own network (``model.name:
examples.own_network:small_cnn``).

The workflow calls the factory with the data's channels, image size and number of classes,
plus ``model.kwargs``. Batch-norm layers are not plain Conv2d / Linear layers, so the
Jacobian takes the ``torch.func`` path, and it is measured in eval mode: with the running
statistics fixed, J is the Jacobian of the network a user would deploy (docs/own.md).
"""

from torch import nn


def small_cnn(in_channels: int, image_size: int, num_classes: int, width: int = 8) -> nn.Module:
    """conv(3x3) - batch-norm - ReLU, twice (the second with stride 2), then a linear layer."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )
