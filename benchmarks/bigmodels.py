"""torchvision's AlexNet, VGG-11, ResNet-18 and MobileNetV2, written out in torch alone.

torchvision does not import on every machine mpcc runs on, so the scale benchmark
(`benchmarks/scale.py`) builds these by hand with exactly torchvision's published layer
shapes: `PARAMS` holds torchvision's parameter counts and `build` checks them, so a slip in
a shape fails loudly instead of benchmarking a different model. Weights are random under a
fixed torch seed, initialised as torchvision initialises them; BatchNorm running statistics
are randomised a little (so folding them is not an identity) and every module is returned in
eval mode.

    model = build("vgg11")          # torch.nn.Module, eval mode, 132,863,336 parameters
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["INPUT_SHAPE", "MODELS", "PARAMS", "build", "count_params"]

INPUT_SHAPE = (1, 3, 224, 224)

# torchvision.models.<name>(weights=None), sum(p.numel() for p in m.parameters())
PARAMS = {
    "alexnet": 61_100_840,
    "vgg11": 132_863_336,
    "resnet18": 11_689_512,
    "mobilenet_v2": 3_504_872,
}


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- AlexNet (torchvision.models.alexnet) -----------------------------------------------------


class AlexNet(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=0.5),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(p=0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# ---- VGG-11 (torchvision.models.vgg11, configuration "A", no batch norm) ---------------------

VGG11_CFG: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


class VGG(nn.Module):
    def __init__(self, cfg: list[int | str] = VGG11_CFG, num_classes: int = 1000) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(c, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(True),
            nn.Dropout(p=0.5),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(p=0.5),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# ---- ResNet-18 (torchvision.models.resnet18) ----------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, 128, 2), BasicBlock(128, 128))
        self.layer3 = nn.Sequential(BasicBlock(128, 256, 2), BasicBlock(256, 256))
        self.layer4 = nn.Sequential(BasicBlock(256, 512, 2), BasicBlock(512, 512))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---- MobileNetV2 (torchvision.models.mobilenet_v2, width 1.0) -------------------------------


def conv_bn_relu6(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_relu6(cin, hidden, kernel=1))
        layers += [
            conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# t (expansion), c (channels), n (repeats), s (first stride)
MOBILENET_V2_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        c, last = 32, 1280
        features: list[nn.Module] = [conv_bn_relu6(3, c, stride=2)]
        for t, cout, n, s in MOBILENET_V2_SETTING:
            for i in range(n):
                features.append(InvertedResidual(c, cout, s if i == 0 else 1, t))
                c = cout
        features.append(conv_bn_relu6(c, last, kernel=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


# ---- building -------------------------------------------------------------------------------

MODELS: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    "alexnet": ("AlexNet", AlexNet),
    "vgg11": ("VGG-11", VGG),
    "resnet18": ("ResNet-18", ResNet18),
    "mobilenet_v2": ("MobileNetV2", MobileNetV2),
}


def init_like_torchvision(name: str, model: nn.Module) -> None:
    """torchvision's own initialisation of each model (AlexNet keeps torch's defaults):
    Kaiming-normal (fan out) convolutions, BatchNorm 1/0, and N(0, 0.01) classifiers in VGG
    and MobileNetV2. Then BatchNorm running statistics a little away from 0/1, as after
    training, so that folding them into the convolutions is not an identity."""
    if name == "alexnet":
        return
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.8, 1.2)
            elif isinstance(m, nn.Linear) and name != "resnet18":
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)


def build(name: str, seed: int = 0) -> nn.Module:
    """The model `name` (a key of MODELS) with seeded random weights, in eval mode; raises
    AssertionError if its parameter count differs from torchvision's."""
    torch.manual_seed(seed)
    model = MODELS[name][1]()
    n = count_params(model)
    assert n == PARAMS[name], f"{name}: {n:,} parameters, torchvision has {PARAMS[name]:,}"
    init_like_torchvision(name, model)
    return model.eval()
