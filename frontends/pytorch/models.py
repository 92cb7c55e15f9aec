"""Small CNNs for 1x28x28 and 3x32x32 inputs: SmallCNN, CIFAR-style ResNet-8/20, a small MobileNetV2.

Every model takes *normalised* NCHW input and returns logits; every layer is a module or an
op that :mod:`frontends.pytorch.export` can trace (conv, BN, ReLU/ReLU6, pools, add, flatten, linear).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from hwsim.errors import HwsimError


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class SmallCNN(nn.Module):
    """conv-bn-relu x3 (16, 32, 32 channels) with two 2x2 max pools, global average pool, linear (~14k params)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16):
        super().__init__()
        w1, w2 = width, 2 * width
        self.features = nn.Sequential(
            *_conv_bn(in_channels, w1), nn.ReLU(), nn.MaxPool2d(2),
            *_conv_bn(w1, w2), nn.ReLU(), nn.MaxPool2d(2),
            *_conv_bn(w2, w2), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.fc(torch.flatten(x, 1))


class BasicBlock(nn.Module):
    """ResNet basic block: conv-bn-relu-conv-bn + shortcut (1x1 conv-bn when the shape changes), relu."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, cout, 3, stride)
        self.relu1 = nn.ReLU()
        self.conv2, self.bn2 = _conv_bn(cout, cout, 3, 1)
        self.relu2 = nn.ReLU()
        self.shortcut = nn.Sequential(*_conv_bn(cin, cout, 1, stride)) if (stride != 1 or cin != cout) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016): depth = 6n+2, stages of 16/32/64 channels (depth 8 or 20)."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        if depth not in (8, 20):
            raise HwsimError(f"ResNet: depth {depth} is not supported; allowed: 8, 20")
        n = (depth - 2) // 6
        layers: list[nn.Module] = [*_conv_bn(in_channels, 16), nn.ReLU()]
        cin = 16
        for i, cout in enumerate((16, 32, 64)):
            for j in range(n):
                layers.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand-bn-relu6, 3x3 depthwise-bn-relu6, 1x1 project-bn, + x when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(cin, hid, 1), nn.ReLU6()]
        layers += [*_conv_bn(hid, hid, 3, stride, groups=hid), nn.ReLU6(), *_conv_bn(hid, cout, 1)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """A small MobileNetV2 (Sandler et al. 2018) for 28/32-pixel inputs: stem 16, blocks (t, c, n, s) below, head 128."""

    CONFIG = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 1, 1))

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(in_channels, 16), nn.ReLU6()]
        cin = 16
        for t, c, n, s in self.CONFIG:
            for j in range(n):
                layers.append(InvertedResidual(cin, c, s if j == 0 else 1, t))
                cin = c
        layers += [*_conv_bn(cin, 128, 1), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


ARCHS = ("smallcnn", "resnet8", "resnet20", "mobilenetv2")


def build_model(arch: str, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """The named architecture (one of ARCHS), freshly initialised from torch's global RNG."""
    a = arch.lower()
    if a == "smallcnn":
        return SmallCNN(num_classes, in_channels)
    if a in ("resnet8", "resnet20"):
        return ResNet(int(a[6:]), num_classes, in_channels)
    if a == "mobilenetv2":
        return MobileNetV2(num_classes, in_channels)
    raise HwsimError(f"unknown architecture {arch!r}; allowed: {', '.join(ARCHS)}")
