"""Reference models, written by hand, trained briefly on the real digits and exported to ONNX.

Every model takes float32 ``[N, 1, 28, 28]`` and returns ``[N, 10]`` (logits, except
:class:`ResNet`, whose forward ends in Softmax so that its ONNX graph does too).

``build(name)`` trains a model on the digits train split (or loads it from the cache), exports
it with a symbolic batch dimension and returns the ``.onnx`` path. Seeds here only make the
training reproducible; they protect nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
    fcntl = None  # type: ignore[assignment]

from mpcc.frontends.torch import export
from mpcc.zoo.digits import load_digits_28

__all__ = [
    "CNN",
    "MLP",
    "MODELS",
    "SPECS",
    "VERSION",
    "LeNet",
    "MobileNet",
    "MobileNetV2Untrained",
    "ResNet",
    "ResNetDeep",
    "TrainSpec",
    "accuracy",
    "build",
    "cache_dir_default",
    "info",
    "train",
    "trained",
]

# Bump when a model's architecture, the data or the training recipe changes: it is part of
# every cache key, so old weights and ONNX files are never picked up by mistake.
VERSION = "1"


# --------------------------------------------------------------------------- models


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


@dataclass(frozen=True)
class TrainSpec:
    """How a zoo model is trained, and the test accuracy it must reach."""

    epochs: int
    lr: float
    batch_size: int = 64
    seed: int = 0
    min_accuracy: float = 0.9


SPECS: dict[str, TrainSpec] = {
    "mlp": TrainSpec(epochs=10, lr=3e-3, min_accuracy=0.95),
    "cnn": TrainSpec(epochs=12, lr=1e-2, min_accuracy=0.95),
    "lenet": TrainSpec(epochs=8, lr=2e-3, min_accuracy=0.95),
    "resnet": TrainSpec(epochs=8, lr=1e-2, min_accuracy=0.95),
    "mobilenet": TrainSpec(epochs=12, lr=2e-2, min_accuracy=0.95),
    "resnet_deep": TrainSpec(epochs=4, lr=5e-3, min_accuracy=0.95),
}


# --------------------------------------------------------------------------- training


def train(
    module: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    seed: int = 0,
) -> nn.Module:
    """Train ``module`` in place with Adam and cross-entropy; deterministic for a given seed.

    Modules whose forward ends in Softmax provide ``logits()``, which the loss uses instead.
    Runs on one thread: these models are too small to gain from more, and a second thread makes
    training many times slower when other processes compete for the cores. Leaves the module
    in eval mode; the caller's torch RNG state and thread count are left untouched.
    """
    Xt = torch.tensor(np.asarray(X), dtype=torch.float32)  # a copy: X may be read-only
    yt = torch.tensor(np.asarray(y), dtype=torch.int64)
    fwd = getattr(module, "logits", module)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _train_loop(module, fwd, Xt, yt, epochs, lr, batch_size, seed)
    finally:
        torch.set_num_threads(threads)
    module.eval()
    return module


def _train_loop(
    module: nn.Module,
    fwd: Callable[[torch.Tensor], torch.Tensor],
    Xt: torch.Tensor,
    yt: torch.Tensor,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> None:
    with torch.random.fork_rng(devices=[]):  # not secret
        torch.manual_seed(seed)  # not secret
        opt = torch.optim.Adam(module.parameters(), lr=lr)
        # Full batches only (the remainder changes with each shuffle): a tiny last batch would
        # give BatchNorm noisy statistics.
        steps = max(1, len(Xt) // batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
        loss_fn = nn.CrossEntropyLoss()
        module.train()
        for _ in range(epochs):
            perm = torch.randperm(len(Xt))  # not secret
            for i in range(steps):
                idx = perm[i * batch_size : (i + 1) * batch_size]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(fwd(Xt[idx]), yt[idx])
                loss.backward()
                opt.step()
                sched.step()


@torch.no_grad()
def accuracy(module: nn.Module, X: np.ndarray, y: np.ndarray, batch_size: int = 512) -> float:
    """Fraction of ``X`` that ``module`` (in eval mode) classifies as ``y``."""
    module.eval()
    Xt = torch.tensor(np.asarray(X), dtype=torch.float32)
    pred = torch.cat(
        [module(Xt[i : i + batch_size]).argmax(1) for i in range(0, len(Xt), batch_size)]
    )
    return float((pred.numpy() == np.asarray(y)).mean())


# --------------------------------------------------------------------------- build and cache


def cache_dir_default() -> Path:
    """``$MPCC_CACHE_DIR`` if set, else ``<cwd>/.cache/mpcc``."""
    env = os.environ.get("MPCC_CACHE_DIR")
    return Path(env) if env else Path.cwd() / ".cache" / "mpcc"


def _key(name: str) -> str:
    spec = json.dumps(asdict(SPECS[name]), sort_keys=True)
    digest = hashlib.sha256(f"{VERSION}|{torch.__version__}|{spec}".encode()).hexdigest()[:10]
    return f"{name}-v{VERSION}-{digest}"


def trained(name: str, *, cache_dir: Path | None = None) -> nn.Module:
    """The named zoo model, trained on the digits train split (cached), in eval mode."""
    _check(name)
    cache = Path(cache_dir) if cache_dir is not None else cache_dir_default()
    weights = cache / f"{_key(name)}.pt"
    module = _fresh(name)
    if not weights.exists():
        with _locked(weights):
            if not weights.exists():
                _train_and_save(name, module, weights)
                return module
    module.load_state_dict(torch.load(weights, weights_only=True))
    return module.eval()


def build(name: str, *, dynamo: bool = False, cache_dir: Path | None = None) -> Path:
    """Train (or load) the named model and export it to ONNX with a symbolic batch dimension.

    Returns the path of the cached ``.onnx`` file; a second call returns at once.
    """
    _check(name)
    cache = Path(cache_dir) if cache_dir is not None else cache_dir_default()
    path = cache / f"{_key(name)}-{'dynamo' if dynamo else 'torchscript'}.onnx"
    if path.exists():
        return path
    module = trained(name, cache_dir=cache)
    with _locked(path):
        if not path.exists():
            proto = export(module, torch.zeros(2, 1, 28, 28), dynamo=dynamo, dynamic_batch=True)
            _atomic_write(path, proto.SerializeToString())
    return path


def info(name: str, *, cache_dir: Path | None = None) -> dict[str, float]:
    """Test accuracy and training seconds recorded when the named model was trained."""
    cache = Path(cache_dir) if cache_dir is not None else cache_dir_default()
    trained(name, cache_dir=cache)
    return json.loads((cache / f"{_key(name)}.json").read_text())


def _check(name: str) -> None:
    if name not in MODELS:
        raise KeyError(f"unknown zoo model {name!r}; choose from {', '.join(MODELS)}")


def _fresh(name: str) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # not secret
        torch.manual_seed(SPECS[name].seed)  # not secret
        return MODELS[name]()


def _train_and_save(name: str, module: nn.Module, weights: Path) -> None:
    spec = SPECS[name]
    X, y = load_digits_28("train")
    t0 = time.perf_counter()
    train(module, X, y, epochs=spec.epochs, lr=spec.lr, batch_size=spec.batch_size, seed=spec.seed)
    seconds = time.perf_counter() - t0
    Xt, yt = load_digits_28("test")
    meta = {"test_accuracy": accuracy(module, Xt, yt), "train_seconds": round(seconds, 2)}
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    _atomic_write(weights.with_suffix(".json"), json.dumps(meta).encode())
    _atomic_write(weights, buf.getvalue())  # written last: its presence means "all done"


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same directory, then rename: readers never see half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these files are shareable
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` so concurrent processes do the work once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
