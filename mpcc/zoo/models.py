"""Reference models, written by hand, trained briefly on the real digits and exported to ONNX.

The architectures (``MODELS``) are in :mod:`mpcc.zoo.architectures`.

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
from mpcc.zoo.architectures import MODELS
from mpcc.zoo.digits import load_digits_28

__all__ = [
    "MODELS",
    "SPECS",
    "VERSION",
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
