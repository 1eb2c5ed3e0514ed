"""A content-keyed disk cache for ``mpcc.frontends.torch.export`` in tests.

torch's ``torch.export``-based (dynamo) exporter takes about a second and a half per graph on
the test machine, and the Keras and PyTorch op tests export dozens of small graphs, the same
ones on every run. ``cache_exports(monkeypatch, request)`` replaces the exporter for one test
with one that looks the ONNX graph up in ``<cache>/exports/`` first. The key is a SHA-256 of
everything that decides the exported graph:

* the versions of torch, onnx, onnxscript and keras, and the source of
  ``mpcc/frontends/torch.py`` (the export options);
* the test's node id and the source of its test file (the module definitions), and which
  export of this test it is;
* the module's ``repr`` (a Keras model's JSON config too), every parameter and buffer (its
  weights), the example input, and the export's keyword arguments.

A miss runs the real exporter and stores its graph; an export that fails is not cached (it
fails again, as it should). A hit puts the module in eval mode as ``export`` does. Whatever
is cached, the tests still check the graph against the module (onnxruntime against torch or
Keras) and the compiled plan against onnxruntime. Clearing the cache (``make clean``) or a
fresh clone runs every export again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

REPO = Path(__file__).resolve().parents[1]


def _cache_dir() -> Path:
    env = os.environ.get("MPCC_CACHE_DIR")
    return (Path(env) if env else REPO / ".cache" / "mpcc") / "exports"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def _tensors(module: Any) -> list[np.ndarray]:
    import torch

    out = []
    if isinstance(module, torch.nn.Module):
        for t in itertools.chain(module.parameters(), module.buffers()):
            out.append(t.detach().cpu().numpy())
    for v in getattr(module, "weights", None) or []:  # Keras variables
        out.append(np.asarray(v.numpy() if hasattr(v, "numpy") else v))
    return out


def _key(nodeid: str, test_source: bytes, index: int, module: Any, x: Any, kwargs: dict) -> str:
    import mpcc.frontends.torch as torch_frontend

    xa = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
    return torch_key(
        Path(torch_frontend.__file__).read_bytes(),
        nodeid,
        test_source,
        str(index),
        f"{type(module).__module__}.{type(module).__qualname__}",
        repr(module),
        module.to_json() if hasattr(module, "to_json") else "",  # a Keras model's layers
        f"{xa.dtype}{xa.shape}",
        np.ascontiguousarray(xa).tobytes(),
        repr(sorted(kwargs.items())),
        module=module,
    )


def cached_onnx(digest: str, make: Callable[[], onnx.ModelProto]) -> onnx.ModelProto:
    """The graph stored under ``digest`` (a content key), else ``make()``'s, stored."""
    file = _cache_dir() / f"{digest[:32]}.onnx"
    if file.exists():
        return onnx.load(str(file))
    proto = make()
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(proto.SerializeToString())
    os.replace(tmp, file)  # atomic: concurrent runs see a whole file or none
    return proto


def torch_key(*parts: str | bytes, module: Any = None) -> str:
    """A SHA-256 of the torch/onnx/onnxscript/keras versions, ``parts`` and ``module``'s
    weights (every parameter and buffer, and a Keras model's variables)."""
    h = hashlib.sha256()

    def put(part: bytes | str) -> None:
        b = part.encode() if isinstance(part, str) else part
        h.update(len(b).to_bytes(8, "little") + b)

    for dist in ("torch", "onnx", "onnxscript", "keras"):
        put(f"{dist}={_version(dist)}")
    for part in parts:
        put(part)
    if module is not None:
        for a in _tensors(module):
            put(f"{a.dtype}{a.shape}")
            put(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def cache_exports(monkeypatch: Any, request: Any) -> None:
    """Cache every ``mpcc.frontends.torch.export`` call of this test (see the module doc)."""
    import mpcc.frontends.torch as torch_frontend

    real = torch_frontend.export
    test_source = Path(str(request.path)).read_bytes()
    calls = itertools.count()

    def export(module, example_input, path=None, **kwargs) -> onnx.ModelProto:
        index = next(calls)
        digest = _key(request.node.nodeid, test_source, index, module, example_input, kwargs)
        module.eval()  # as export does, hit or miss
        proto = cached_onnx(digest, lambda: real(module, example_input, **kwargs))
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            onnx.save_model(proto, str(path))
        return proto

    monkeypatch.setattr(torch_frontend, "export", export)
