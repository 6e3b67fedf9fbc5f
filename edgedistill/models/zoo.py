"""Built-in architectures: the small networks of the data-free KD literature, by the names a recipe uses."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..registry import Registry

ZOO: Registry[Callable[..., nn.Module]] = Registry("built-in architecture")


class LeNet5(nn.Module):
    """LeNet-5 as used by the data-free KD literature (DAFL): conv 6-16, fc 120-84; `width` scales every layer."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0):
        super().__init__()
        c1, c2, f1, f2 = (max(1, round(n * width)) for n in (6, 16, 120, 84))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(5),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c2 * 25, f1), nn.ReLU(inplace=True), nn.Linear(f1, f2), nn.ReLU(inplace=True))
        self.fc = nn.Linear(f2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.features(x)))


@ZOO.register("lenet5")
def lenet5(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return LeNet5(num_classes, in_channels, 1.0)


@ZOO.register("lenet5_half")
def lenet5_half(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return LeNet5(num_classes, in_channels, 0.5)
