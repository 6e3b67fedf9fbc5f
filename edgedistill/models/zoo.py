"""Built-in architectures: the small networks of the data-free KD literature, by the names a recipe uses (without a
prefix: the `builtin` entry of models.factory.ARCH_SOURCES reads ZOO)."""

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
def lenet5(num_classes: int = 10, in_channels: int = 1, image_size: int | None = None) -> nn.Module:
    return LeNet5(num_classes, in_channels, 1.0)


@ZOO.register("lenet5_half")
def lenet5_half(num_classes: int = 10, in_channels: int = 1, image_size: int | None = None) -> nn.Module:
    return LeNet5(num_classes, in_channels, 0.5)


# Ladders: the same family at several widths and depths, for `student: {candidates: [...]}` and `student: {arch: auto}`
# (edgedistill/stages/plan.py times each and keeps those that fit the budget). Channels and classes come from the
# teacher, like every architecture here.

LENET_WIDTHS = (0.25, 0.5, 1.0, 2.0)


def _width_name(width: float) -> str:
    return f"{width:g}"


for _w in LENET_WIDTHS:
    ZOO.register(f"lenet5_w{_width_name(_w)}")(
        lambda num_classes=10, in_channels=1, image_size=None, _w=_w: LeNet5(num_classes, in_channels, _w)
    )


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNets of He et al. (6n+2 layers: 3 stages of n basic blocks at widths w, 2w, 4w, stride-1 stem),
    the students of the data-free KD literature for small inputs; `width` is w (16 in the paper)."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3, width: int = 16):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has 6n+2 layers, not {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        layers, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            for b in range(n):
                layers.append(_BasicBlock(cin, cout, 2 if i > 0 and b == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.layers(self.stem(x))))


RESNET_DEPTHS = (8, 14, 20)
RESNET_WIDTHS = (8, 16, 32)

for _d in RESNET_DEPTHS:
    for _w in RESNET_WIDTHS:
        ZOO.register(f"resnet{_d}_w{_w}")(
            lambda num_classes=10, in_channels=3, image_size=None, _d=_d, _w=_w: CifarResNet(_d, num_classes, in_channels, _w)
        )


MOBILENET_WIDTHS = {"small": (0.35, 0.5, 0.75, 1.0), "large": (0.35, 0.5, 0.75, 1.0)}


SMALL_INPUT = 64  # below this side the zoo's MobileNetV3s take a stride-1 stem


def mobilenet_v3(size: str, width: float, num_classes: int = 1000, in_channels: int = 3, image_size: int | None = None) -> nn.Module:
    """torchvision's MobileNetV3-Small/Large at a width multiplier, random init, stem adapted to `in_channels`; below
    SMALL_INPUT px the stem has stride 1, as CIFAR adaptations do. The ImageNet stem halves a 32-px image before the
    first block and leaves the last stages at 1x1: trained on labels alone (S32-dev's symbols, lr 0.008), w0.5 was at
    11% after 2 epochs with it and 41% without, and w1 had not left chance after 13 epochs (docs/method.md)."""
    import torchvision

    build = torchvision.models.mobilenet_v3_small if size == "small" else torchvision.models.mobilenet_v3_large
    model = build(weights=None, num_classes=num_classes, width_mult=width)
    conv = model.features[0][0]
    if in_channels != 3:
        conv = model.features[0][0] = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=False)
    if image_size is not None and image_size < SMALL_INPUT:
        conv.stride = (1, 1)
    return model


for _s, _ws in MOBILENET_WIDTHS.items():
    for _w in _ws:
        ZOO.register(f"mobilenetv3_{_s}_w{_width_name(_w)}")(
            lambda num_classes=10, in_channels=3, image_size=None, _s=_s, _w=_w: mobilenet_v3(_s, _w, num_classes, in_channels, image_size)
        )

LADDERS: dict[str, tuple[str, ...]] = {
    "lenet5": tuple(f"lenet5_w{_width_name(w)}" for w in LENET_WIDTHS),
    "resnet": tuple(f"resnet{d}_w{w}" for w in RESNET_WIDTHS for d in RESNET_DEPTHS),
    "mobilenetv3": tuple(f"mobilenetv3_{s}_w{_width_name(w)}" for s, ws in MOBILENET_WIDTHS.items() for w in ws),
}


def auto_ladder(channels: int, size: int) -> tuple[str, ...]:
    """The candidates `student: {arch: auto}` takes for a teacher input of `channels` x `size` x `size`: LeNets and
    the thinner CIFAR ResNets for digit-sized inputs (up to 32 px), CIFAR ResNets and the small MobileNetV3s up to
    96 px, the MobileNetV3 ladders above (a stride-1 CIFAR ResNet at 224 px costs gigaflops)."""
    del channels  # every ladder adapts its stem to the teacher's channels
    if size <= 32:
        return LADDERS["lenet5"] + tuple(n for n in LADDERS["resnet"] if n.endswith(("_w8", "_w16")))
    if size <= 96:
        return LADDERS["resnet"] + tuple(n for n in LADDERS["mobilenetv3"] if "small" in n)
    return LADDERS["mobilenetv3"]
