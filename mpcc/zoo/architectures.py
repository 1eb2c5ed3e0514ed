"""The zoo's network architectures, written by hand in torch (`MODELS` by name; `mpcc.zoo.models`
trains, caches and exports them).

Every model takes float32 ``[N, 1, 28, 28]`` and returns ``[N, 10]`` (logits, except
:class:`ResNet`, whose forward ends in Softmax so that its ONNX graph does too). Changing one
changes its cached weights: bump `mpcc.zoo.models.VERSION`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = [
    "CNN",
    "MLP",
    "MODELS",
    "LeNet",
    "MobileNet",
    "MobileNetV2Untrained",
    "ResNet",
    "ResNetDeep",
]


class MLP(nn.Module):
    """Flatten -> Linear(784, 500) -> ReLU -> Linear(500, 10)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 500), nn.ReLU(), nn.Linear(500, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """Three [Conv3x3 (padding 1) -> AvgPool2d(2) -> ReLU] stages with 16, 32, 64 filters.

    Spatial sizes: 28 -conv-> 28 -pool-> 14 -conv-> 14 -pool-> 7 -conv-> 7 -pool-> 3 (floor),
    so the classifier is Flatten (64*3*3 = 576) -> Linear(576, 10).
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in (16, 32, 64):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.AvgPool2d(2), nn.ReLU()]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 3 * 3, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LeNet(nn.Module):
    """LeNet-5 as in Caffe's MNIST example.

    Conv5x5(20) 28->24, ReLU, MaxPool 24->12, Conv5x5(50) 12->8, ReLU, MaxPool 8->4,
    Flatten (50*4*4 = 800), Linear(800, 500), ReLU, Linear(500, 10).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 20, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _conv_bn(c_in: int, c_out: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias, as BN follows) + BatchNorm."""
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, groups=groups, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus a shortcut, then ReLU.

    The shortcut is the identity when shape is kept, else a strided 1x1 conv + BN (projection).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv_bn(c_in, c_out, 3, stride)
        self.conv2 = _conv_bn(c_out, c_out, 3)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = _conv_bn(c_in, c_out, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.relu(self.conv1(x)))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Small ResNet ending in Softmax.

    Stem Conv3x3(16)+BN+ReLU at 28x28; a residual block at 16 channels (identity shortcut);
    a block to 32 channels with stride 2 (28 -> 14) and a 1x1 stride-2 conv+BN projection on the
    skip path; global average pool; Linear(32, 10); Softmax. ``logits()`` skips the Softmax
    (used for training).
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(1, 16), nn.ReLU())
        self.blocks = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 32, stride=2))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(32, 10)
        self.softmax = nn.Softmax(dim=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.softmax(self.logits(x))


def _dw_separable(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """MobileNet v1 block: depthwise 3x3 + BN + ReLU6, pointwise 1x1 + BN + ReLU6."""
    return nn.Sequential(
        _conv_bn(c_in, c_in, 3, stride, groups=c_in),
        nn.ReLU6(),
        _conv_bn(c_in, c_out, 1),
        nn.ReLU6(),
    )


class MobileNet(nn.Module):
    """MobileNet-style net: depthwise-separable blocks with ReLU6 (exported as Clip(0, 6)).

    Stem Conv3x3(16, stride 2)+BN+ReLU6 (28 -> 14); block 16 -> 32 at stride 1 (14 -> 14);
    block 32 -> 64 at stride 2 (14 -> 7); global average pool; Linear(64, 10).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(1, 16, 3, stride=2),
            nn.ReLU6(),
            _dw_separable(16, 32, stride=1),
            _dw_separable(32, 64, stride=2),
        )
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ResNetDeep(nn.Module):
    """ResNet with three stages (16, 32, 64 channels), one block each, stride 2 between stages.

    Spatial sizes 28 -> 28 -> 14 -> 7; the second and third stages use projection shortcuts.
    Global average pool; Linear(64, 10).
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv_bn(1, 16), nn.ReLU())
        self.stages = nn.Sequential(
            BasicBlock(16, 16), BasicBlock(16, 32, stride=2), BasicBlock(32, 64, stride=2)
        )
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.stages(self.stem(x)))


class _InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand + BN + ReLU6, 3x3 depthwise + BN + ReLU6, 1x1 project
    + BN, with the identity shortcut when the shape is kept."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int = 6) -> None:
        super().__init__()
        h = c_in * expand
        self.residual = stride == 1 and c_in == c_out
        self.block = nn.Sequential(
            _conv_bn(c_in, h, 1),
            nn.ReLU6(),
            _conv_bn(h, h, 3, stride, groups=h),
            nn.ReLU6(),
            _conv_bn(h, c_out, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2Untrained(nn.Module):
    """A small MobileNetV2 (7 inverted-residual blocks, 16 -> 64 channels, 28 -> 7) with
    torchvision's initialisation (Kaiming-normal fan-out convs, N(0, 0.01) classifier, zero
    biases) and no training: its logits are about 1e-5, the "untrained models fail silently"
    case of the calibration report. Not in MODELS (nothing to train)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(1, 16, 3), nn.ReLU6()]
        c = 16
        for c_out, n, stride in ((16, 1, 1), (24, 2, 2), (32, 2, 1), (64, 2, 2)):
            for i in range(n):
                layers.append(_InvertedResidual(c, c_out, stride if i == 0 else 1))
                c = c_out
        layers += [_conv_bn(c, 128, 1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(128, 10)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


MODELS: dict[str, Callable[[], nn.Module]] = {
    "mlp": MLP,
    "cnn": CNN,
    "lenet": LeNet,
    "resnet": ResNet,
    "mobilenet": MobileNet,
    "resnet_deep": ResNetDeep,
}
