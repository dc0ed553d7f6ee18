"""Networks planted in tests (named as model.name tests.planted:<factory> from the repository root)."""

import torch
from torch import nn


class ConstantOutputs(nn.Module):
    """A convolution whose features are multiplied by zero before the head: every sample gets the
    head's bias as its output, and J has rank K (the bias columns), the degeneracy a network
    with switched-off batch-norm can fall into."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.head = nn.Linear(4, num_classes)
        nn.init.uniform_(self.head.bias, 0.5, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(0.0 * self.conv(x).mean(dim=(2, 3)))


def constant_outputs(num_classes: int, in_channels: int) -> nn.Module:
    return ConstantOutputs(in_channels, num_classes)


class WithUnusedHead(nn.Module):
    """Batch-norm network with a head that its forward pass never calls (as torchvision's
    GoogLeNet keeps its auxiliary heads in eval mode)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.norm = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, num_classes)
        self.unused = nn.Linear(6, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.conv(x))).mean(dim=(2, 3)))


def with_unused_head(num_classes: int, in_channels: int) -> nn.Module:
    return WithUnusedHead(in_channels, num_classes)


def small_batch_norm(num_classes: int, in_channels: int) -> nn.Module:
    """Two convolutions with batch-norm, then a linear head: a fast batch-norm network at 8 x 8."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1, stride=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(8, num_classes),
    )


class UnusedPlain(nn.Module):
    """Plain Conv2d / Linear layers (the per-layer kernel) with a head the forward pass never calls."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.head = nn.Linear(4 * 64, num_classes)
        self.unused = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


def unused_plain(num_classes: int, in_channels: int) -> nn.Module:
    return UnusedPlain(in_channels, num_classes)
