"""Small CNNs for 1x28x28 and 3x32x32 inputs: SmallCNN, CIFAR-style ResNet-8/20, a small MobileNetV2,
a MobileNetV3-small-style, an EfficientNet-B0-style network and a narrow ResNet-18.

Every model takes *normalised* NCHW input and returns logits; every layer is a module or an
op that :mod:`frontends.pytorch.export` can trace (conv, BN, ReLU/ReLU6, hard-swish, hard-sigmoid,
SiLU, sigmoid, pools, add, elementwise mul for squeeze-excitation, flatten, linear, dropout and
stochastic depth, which are the identity in eval mode).
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
    STEM, HEAD, STEM_STRIDE = 16, 128, 1

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(in_channels, self.STEM, 3, self.STEM_STRIDE), nn.ReLU6()]
        cin = self.STEM
        for t, c, n, s in self.CONFIG:
            for j in range(n):
                layers.append(InvertedResidual(cin, c, s if j == 0 else 1, t))
                cin = c
        layers += [*_conv_bn(cin, self.HEAD, 1), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.HEAD, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class MobileNetV2Tiny(MobileNetV2):
    """``mobilenetv2`` at width multiplier 0.5 (Sandler et al. 2018 §6.1's width multiplier; every channel
    count halved, no rounding to multiples of 8): the same six inverted-residual blocks, each with its
    3x3 depthwise layer; stem 8, head 64, and the stem at stride 2 as in the paper (Table 2). Built for
    the studies (issue 20), whose 45-minute budget the full-width net does not fit (docs/results.md)."""

    CONFIG = ((1, 8, 1, 1), (4, 12, 2, 2), (4, 16, 2, 2), (4, 32, 1, 1))
    STEM, HEAD, STEM_STRIDE = 8, 64, 2


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor``, never more than 10% down (MobileNet's rule)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): global average pool, 1x1 conv, activation, 1x1 conv,
    gate, and the input scaled channel-wise by the gate (an elementwise ``mul`` broadcast over H, W)."""

    def __init__(self, channels: int, squeeze: int, act: type[nn.Module], gate: type[nn.Module]):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


class StochasticDepth(nn.Module):
    """Row-wise stochastic depth (Huang et al. 2016) as torchvision applies it: in training, each sample's
    residual branch is dropped with probability ``p`` and survivors are scaled by 1/(1-p); in eval mode
    the identity (which is what export sees)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class V3Block(nn.Module):
    """MobileNetV3 bneck (Howard et al. 2019): [1x1 expand-bn-act], kxk depthwise-bn-act, [SE with
    ReLU + hard-sigmoid], 1x1 project-bn, + x when shapes match."""

    def __init__(self, cin: int, k: int, exp: int, cout: int, se: bool, act: type[nn.Module], stride: int):
        super().__init__()
        layers: list[nn.Module] = []
        if exp != cin:
            layers += [*_conv_bn(cin, exp, 1), act()]
        layers += [*_conv_bn(exp, exp, k, stride, groups=exp), act()]
        if se:
            layers.append(SqueezeExcite(exp, _make_divisible(exp // 4), nn.ReLU, nn.Hardsigmoid))
        layers += _conv_bn(exp, cout, 1)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV3Small(nn.Module):
    """A MobileNetV3-small-style network scaled to 28/32-pixel inputs: the paper's small config with
    the stem at stride 1, fewer and narrower blocks (k, exp, out, SE, act, stride below), head 144,
    hidden linear 256 with hard-swish, dropout 0.2."""

    RE, HS = nn.ReLU, nn.Hardswish
    CONFIG = ((3, 16, 16, True, RE, 2), (3, 48, 24, False, RE, 2), (3, 64, 24, False, RE, 1),
              (5, 72, 32, True, HS, 2), (5, 96, 32, True, HS, 1), (5, 96, 48, True, HS, 1))

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(in_channels, 16), nn.Hardswish()]
        cin = 16
        for k, exp, cout, se, act, s in self.CONFIG:
            layers.append(V3Block(cin, k, exp, cout, se, act, s))
            cin = cout
        layers += [*_conv_bn(cin, 144, 1), nn.Hardswish()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(144, 256), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(256, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class MBConv(nn.Module):
    """EfficientNet MBConv (Tan & Le 2019): [1x1 expand-bn-SiLU], kxk depthwise-bn-SiLU, SE (SiLU +
    sigmoid, squeeze = block input / 4), 1x1 project-bn, + stochastic depth(x) when shapes match."""

    def __init__(self, cin: int, expand: int, k: int, stride: int, cout: int, drop: float):
        super().__init__()
        hid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(cin, hid, 1), nn.SiLU()]
        layers += [*_conv_bn(hid, hid, k, stride, groups=hid), nn.SiLU(),
                   SqueezeExcite(hid, max(1, cin // 4), nn.SiLU, nn.Sigmoid), *_conv_bn(hid, cout, 1)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout
        self.drop = StochasticDepth(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + self.drop(y) if self.residual else y


class EfficientNetB0(nn.Module):
    """An EfficientNet-B0-style network scaled to 28/32-pixel inputs: stem 16 at stride 1, MBConv stages
    (expand, k, stride, out, repeats) below, stochastic depth rising linearly to 0.1, head 160,
    dropout 0.2."""

    CONFIG = ((1, 3, 1, 16, 1), (4, 3, 2, 24, 2), (4, 5, 2, 32, 2), (4, 3, 2, 48, 1))

    def __init__(self, num_classes: int = 10, in_channels: int = 3, drop_path: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(in_channels, 16), nn.SiLU()]
        total = sum(r for *_, r in self.CONFIG)
        cin, i = 16, 0
        for e, k, s, c, r in self.CONFIG:
            for j in range(r):
                layers.append(MBConv(cin, e, k, s if j == 0 else 1, c, drop_path * i / total))
                cin, i = c, i + 1
        layers += [*_conv_bn(cin, 160, 1), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(160, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class ResNet18(nn.Module):
    """ResNet-18's topology (He et al. 2016, Table 1, the 18-layer column) at a reduced width for 28/32-pixel
    inputs: stem conv-BN-ReLU and a max pool, four stages of two BasicBlocks (``width`` x 1, 2, 4, 8 channels;
    the first block of stages 2-4 at stride 2 with a 1x1 stride-2 conv + BN on the shortcut), global average
    pool, linear: 17 convs + 3 shortcut convs + 1 linear. The paper's 7x7 stride-2 stem and 3x3 stride-2 pool
    are for 224-pixel images; here the stem is 3x3 at stride 1 and the pool 2x2 (28 -> 14 -> 7 -> 4 -> 2
    pixels through the stages). ``resnet18-narrow`` = width 8 (8/16/32/64 channels, 175k weights: its int8
    LiteRT file stays small, tests/fixtures/litert/resnet18_narrow_int8.tflite)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 8):
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(in_channels, width), nn.ReLU(), nn.MaxPool2d(2)]
        cin = width
        for i in range(4):
            cout = width << i
            for j in range(2):
                layers.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


from frontends.pytorch import ARCHS  # noqa: E402  (one list, torch-free for the CLI help)


def build_model(arch: str, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """The named architecture (one of ARCHS), freshly initialised from torch's global RNG."""
    a = arch.lower()
    if a == "smallcnn":
        return SmallCNN(num_classes, in_channels)
    if a in ("resnet8", "resnet20"):
        return ResNet(int(a[6:]), num_classes, in_channels)
    if a == "mobilenetv2":
        return MobileNetV2(num_classes, in_channels)
    if a == "mobilenetv2-tiny":
        return MobileNetV2Tiny(num_classes, in_channels)
    if a == "mobilenetv3":
        return MobileNetV3Small(num_classes, in_channels)
    if a == "efficientnet":
        return EfficientNetB0(num_classes, in_channels)
    if a == "resnet18-narrow":
        return ResNet18(num_classes, in_channels, width=8)
    raise HwsimError(f"unknown architecture {arch!r}; allowed: {', '.join(ARCHS)}")

