"""Export a Keras 3 model (torch backend) to ONNX the way the compiler expects it.

A Keras 3 model on the torch backend *is* a ``torch.nn.Module``, so it is exported with
:func:`mpcc.frontends.torch.export` (the ``torch.export``-based exporter by default). Keras
layers are channels-last: the ONNX graph keeps the model's NHWC input as it is and holds the
layout changes as Transpose nodes, which the secure plan runs as local operations.

The batch size is fixed: from ``input_shape`` if given, else from the model's batch input
shape (``keras.Input(batch_shape=...)`` / ``batch_size=``), else 1.

Models come from memory, a ``.keras`` file or a full-model legacy ``.h5`` file. An ``.h5`` file
holding only weights has no architecture: build the model in code and pass ``weights=`` (or
call ``model.load_weights`` yourself). Keras 3's ``save_weights`` insists on the
``.weights.h5`` suffix; :func:`load_weights` also accepts such a file renamed to ``.h5``.

A few Keras idioms the compiler does not take directly are rewritten into equivalent standard
ops (exactly, on the ONNX graph): no-op Casts, channels-last global pooling (ReduceMean /
ReduceMax over H and W), Neg, and the edge padding Keras uses for ``padding="same"`` pooling.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from mpcc.errors import ModelError
from mpcc.frontends import onnx as onnx_frontend
from mpcc.frontends import torch as torch_frontend

if TYPE_CHECKING:
    import keras

__all__ = ["export", "import_keras", "input_shape_of", "is_keras_model", "load", "load_weights"]

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


def import_keras() -> Any:
    """Import Keras 3 on the torch backend (``KERAS_BACKEND`` defaults to ``torch`` here)."""
    if "keras" not in sys.modules:
        os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ModelError("the Keras frontend needs keras: pip install 'mpcc[keras]'") from e
    if not hasattr(keras, "version") or int(keras.version().split(".")[0]) < 3:
        raise ModelError(f"the Keras frontend needs Keras 3, not {keras.__version__}")
    backend = keras.backend.backend()
    if backend != "torch":
        raise ModelError(
            f"the Keras frontend needs Keras on the torch backend, not {backend!r}: "
            "set KERAS_BACKEND=torch before keras is first imported"
        )
    return keras


def is_keras_model(obj: object) -> bool:
    """True if ``obj`` is a Keras model (without importing Keras if it is not loaded)."""
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(obj, keras.Model)


def load(path: str | Path) -> keras.Model:
    """Load a whole model (architecture and weights) from a ``.keras`` or legacy ``.h5`` file."""
    keras = import_keras()
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise ModelError(f"{path}: expected a .keras or .h5 Keras model file")
    if path.suffix.lower() != ".keras" and _h5_kind(path) != "model":
        raise ModelError(
            f"{path} holds weights only, no architecture: build the model in code and pass it "
            "with the weights, e.g. mpcc.frontends.keras.export(model, weights=path) or "
            "mpcc.compile(model, weights=path)"
        )
    try:
        with _quiet():
            return keras.models.load_model(str(path), compile=False)
    except Exception as e:
        raise ModelError(f"{path}: Keras cannot load it: {type(e).__name__}: {e}") from e


def load_weights(model: keras.Model, path: str | Path) -> keras.Model:
    """``model.load_weights(path)``, also for a Keras 3 ``.weights.h5`` file renamed ``.h5``.

    Keras 3 reads ``*.weights.h5`` in its own format and any other ``*.h5`` as a legacy
    (Keras 2) weights file; a Keras 3 file under a plain ``.h5`` name is linked to a
    temporary ``.weights.h5`` name first. Returns ``model``.
    """
    import_keras()
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    try:
        if path.name.endswith(".h5") and not path.name.endswith(".weights.h5"):
            if _h5_kind(path) == "keras3-weights":
                with tempfile.TemporaryDirectory() as tmp:
                    alias = Path(tmp) / f"{path.stem}.weights.h5"
                    try:
                        alias.symlink_to(path.resolve())
                    except OSError:
                        shutil.copyfile(path, alias)
                    model.load_weights(str(alias))
                return model
        model.load_weights(str(path))
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(
            f"{path}: cannot load these weights into {model.name!r}: {type(e).__name__}: {e}"
        ) from e
    return model


def input_shape_of(
    model: keras.Model, input_shape: tuple[int, ...] | None = None
) -> tuple[int, ...]:
    """The fixed input shape to export with: ``input_shape`` checked against the model's,
    else the model's batch input shape with an unknown batch set to 1."""
    inputs = getattr(model, "inputs", None)
    if inputs is not None and len(inputs) != 1:
        raise ModelError(f"Keras model {model.name!r} has {len(inputs)} inputs; mpcc takes one")
    declared = tuple(inputs[0].shape) if inputs else None
    if input_shape is not None:
        shape = tuple(int(d) for d in input_shape)
        if any(d <= 0 for d in shape):
            raise ModelError(f"input_shape {shape}: every dim must be positive")
        if declared is not None:
            if len(declared) != len(shape) or any(
                d is not None and d != s for d, s in zip(declared, shape, strict=False)
            ):
                raise ModelError(
                    f"input_shape {shape} does not fit Keras model {model.name!r}'s input "
                    f"shape {declared} (None is free)"
                )
        return shape
    if declared is None:
        raise ModelError(
            f"Keras model {model.name!r} has no known input shape (a subclassed model?): "
            "give input_shape, e.g. (1, 28, 28, 1)"
        )
    if any(d is None for d in declared[1:]):
        raise ModelError(
            f"Keras model {model.name!r} has input shape {declared}: give input_shape to fix "
            "every dim, e.g. (1, 28, 28, 1)"
        )
    return (declared[0] or 1, *(int(d) for d in declared[1:]))


def export(
    model_or_path: keras.Model | str | Path,
    path: str | Path | None = None,
    input_shape: tuple[int, ...] | None = None,
    *,
    weights: str | Path | None = None,
    dynamo: bool | None = None,
    opset: int | None = None,
) -> onnx.ModelProto:
    """Export a Keras model (in memory, ``.keras`` or full-model ``.h5``) to ONNX.

    ``input_shape`` is the whole input shape, batch first (NHWC for image models); by default
    the model's batch input shape (batch 1 if unknown). ``weights`` loads a weights file into
    the model first (see :func:`load_weights`). ``dynamo=None`` uses torch's ``torch.export``
    exporter and falls back to the TorchScript one if it fails. The graph is returned with
    fixed shapes, constants folded (:func:`mpcc.frontends.onnx.load`) and Keras idioms
    rewritten (:func:`canonicalize`), and saved to ``path`` if given. Raises
    :class:`~mpcc.errors.ModelError`.
    """
    keras = import_keras()
    import torch

    if isinstance(model_or_path, str | Path):
        model = load(model_or_path)
    elif isinstance(model_or_path, keras.Model):
        model = model_or_path
    else:
        raise ModelError(
            f"expected a Keras model or a .keras/.h5 path, got {type(model_or_path).__name__}"
        )
    if weights is not None:
        load_weights(model, weights)
    policy = getattr(getattr(model, "dtype_policy", None), "name", "float32")
    if policy != "float32":
        raise ModelError(f"Keras model {model.name!r} has dtype policy {policy!r}; need float32")
    shape = input_shape_of(model, input_shape)
    x = torch.zeros(shape, dtype=torch.float32)
    try:
        with _quiet(), torch.no_grad():
            model(x)  # builds the model: Keras exports only a model that was called once
    except Exception as e:
        raise ModelError(
            f"Keras model {model.name!r} fails on an input of shape {shape}: "
            f"{type(e).__name__}: {e}"
        ) from e

    if dynamo is None:
        try:
            proto = torch_frontend.export(model, x, dynamo=True, opset=opset)
        except ModelError as first:
            try:
                proto = torch_frontend.export(model, x, dynamo=False, opset=opset)
            except ModelError as second:
                raise ModelError(
                    f"{first}; the TorchScript exporter failed too: {second}"
                ) from second
    else:
        proto = torch_frontend.export(model, x, dynamo=dynamo, opset=opset)
    proto = canonicalize(onnx_frontend.load(proto))
    proto.graph.name = model.name or proto.graph.name
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(proto, str(path))
    return proto


# ---- rewriting Keras idioms into ops the compiler takes ----------------------------------


def canonicalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite no-op Casts, NHWC global pooling, Neg and edge Pad into equivalent ops.

    Needs static shapes and folded constants (see :func:`mpcc.frontends.onnx.load`); a node
    it cannot prove it can rewrite is left as it is. Returns a new model.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inferred = shape_inference.infer_shapes(m)
    types = {
        vi.name: vi.type.tensor_type
        for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    }
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)

    def shape(t: str) -> tuple[int, ...] | None:
        tt = types.get(t)
        if tt is None or not tt.HasField("shape"):
            return None
        dims = tt.shape.dim
        if not all(d.HasField("dim_value") for d in dims):
            return None
        return tuple(d.dim_value for d in dims)

    def const(value: np.ndarray, hint: str) -> str:
        name, k = f"{hint}_c", 0
        while name in consts:
            k += 1
            name = f"{hint}_c{k}"
        consts[name] = value
        g.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    out: list[onnx.NodeProto] = []
    for n in g.node:
        rewrite = _REWRITES.get(n.op_type) if n.domain in ("", "ai.onnx") else None
        new = rewrite(n, shape, consts, const, types) if rewrite else None
        out.extend([n] if new is None else new)
    del g.node[:]
    g.node.extend(out)
    return m


def _cast(n, shape, consts, const, types):
    tt = types.get(n.input[0])
    to = next((a.i for a in n.attribute if a.name == "to"), None)
    if tt is not None and tt.elem_type == to:
        return [helper.make_node("Identity", [n.input[0]], [n.output[0]], n.name)]
    return None


def _neg(n, shape, consts, const, types):
    minus_one = const(np.array(-1.0, dtype=np.float32), n.name or "neg")
    return [helper.make_node("Mul", [n.input[0], minus_one], [n.output[0]], n.name)]


def _reduce_hw(n, shape, consts, const, types):
    """ReduceMean/ReduceMax over axes (1, 2) of [N, H, W, C]: a global pool of NCHW."""
    x, y = n.input[0], n.output[0]
    s = shape(x)
    attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
    if len(n.input) > 1 and n.input[1]:
        if n.input[1] not in consts:
            return None
        axes = [int(a) for a in consts[n.input[1]].reshape(-1)]
    else:
        axes = list(attrs.get("axes", []))
    if s is None or len(s) != 4 or sorted(a % 4 for a in axes) != [1, 2]:
        return None
    name = n.name or y
    pool = "GlobalAveragePool" if n.op_type == "ReduceMean" else "GlobalMaxPool"
    nchw, pooled = f"{name}_nchw", f"{name}_pooled"
    target = (s[0], 1, 1, s[3]) if attrs.get("keepdims", 1) else (s[0], s[3])
    return [
        helper.make_node("Transpose", [x], [nchw], f"{name}_to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node(pool, [nchw], [pooled], name),
        helper.make_node(
            "Reshape",
            [pooled, const(np.array(target, dtype=np.int64), name)],
            [y],
            f"{name}_reshape",
        ),
    ]


def _edge_pad(n, shape, consts, const, types):
    """Pad in mode 'edge' as Concat of the border slices (exact, local)."""
    mode = next((a.s.decode() for a in n.attribute if a.name == "mode"), "constant")
    x, y = n.input[0], n.output[0]
    s = shape(x)
    if mode != "edge" or s is None or len(n.input) < 2 or n.input[1] not in consts:
        return None
    rank = len(s)
    pads = [int(p) for p in consts[n.input[1]].reshape(-1)]
    if len(n.input) > 3 and n.input[3]:
        if n.input[3] not in consts:
            return None
        full = [0] * 2 * rank
        axes = [int(a) % rank for a in consts[n.input[3]].reshape(-1)]
        for i, a in enumerate(axes):
            full[a], full[a + rank] = pads[i], pads[i + len(axes)]
        pads = full
    if min(pads) < 0:
        return None
    name = n.name or y
    nodes: list[onnx.NodeProto] = []
    cur = x
    for ax in range(rank):
        before, after = pads[ax], pads[ax + rank]
        if not before and not after:
            continue
        parts = []
        for tag, start, end, count in (("first", 0, 1, before), ("last", s[ax] - 1, s[ax], after)):
            if not count:
                continue
            t = f"{name}_{tag}{ax}"
            nodes.append(
                helper.make_node(
                    "Slice",
                    [
                        cur,
                        const(np.array([start], np.int64), f"{t}_start"),
                        const(np.array([end], np.int64), f"{t}_end"),
                        const(np.array([ax], np.int64), f"{t}_axis"),
                    ],
                    [t],
                    t,
                )
            )
            parts.append((tag, [t] * count))
        first = next((p for tag, p in parts if tag == "first"), [])
        last = next((p for tag, p in parts if tag == "last"), [])
        nxt = f"{name}_axis{ax}"
        nodes.append(helper.make_node("Concat", [*first, cur, *last], [nxt], nxt, axis=ax))
        cur = nxt
    if not nodes:
        return [helper.make_node("Identity", [x], [y], name)]
    nodes[-1].output[0] = y
    return nodes


_REWRITES = {
    "Cast": _cast,
    "Neg": _neg,
    "ReduceMean": _reduce_hw,
    "ReduceMax": _reduce_hw,
    "Pad": _edge_pad,
}


# ---- helpers -----------------------------------------------------------------------------


def _h5_kind(path: Path) -> str:
    """'model' (legacy full model), 'keras3-weights', 'legacy-weights' or 'unknown'."""
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ModelError("reading .h5 files needs h5py: pip install 'mpcc[keras]'") from e
    try:
        with h5py.File(path, "r") as f:
            if "model_config" in f.attrs:
                return "model"
            if "layer_names" in f.attrs or "model_weights" in f:
                return "legacy-weights"
            if "layers" in f or "vars" in f:
                return "keras3-weights"
            return "unknown"
    except OSError as e:
        raise ModelError(f"{path}: not an HDF5 file ({e})") from e


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Keras's absl warnings (e.g. 'no training configuration found')."""
    import logging

    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)
