"""Legalization of the elementwise ops: Add/Sub/Mul/Div (constants second, division by a
constant as a product), BatchNormalization, LeakyRelu, Clip, PRelu, Cast, Dropout."""

from __future__ import annotations

import numpy as np
import onnx

from mpcc.compiler.graph import Graph
from mpcc.compiler.legalize_common import only_first_output, where
from mpcc.errors import ModelError


def binary(g: Graph, n: str) -> None:
    d, op = g.node(n), g.op(n)
    x, y = d["inputs"]
    out = d["outputs"][0]
    if op in ("Add", "Mul") and g.is_const(x):
        x, y = y, x
    if op == "Div" and not g.is_const(y):
        if g.is_const(x):  # c / y = reciprocal(y) * c
            r = g.new_tensor(f"{y}_recip", g.shape(y))
            g.add_node("Reciprocal", [y], [r], {}, name=f"{n}_recip")
            d["op"] = "Mul"
            g.set_inputs(n, [r, x])
            binary(g, n)
        return  # division by a secret (mpcc.compiler.approx.recip.divide)
    if op == "Div":
        c = g.const(y)
        if (c == 0).any():
            raise ModelError(f"{where(g, n)}: division by a constant containing zeros")
        op, y = "Mul", g.add_const(1.0 / c, f"{n}_recip")
    elif op == "Sub" and g.is_const(y):
        op, y = "Add", g.add_const(-g.const(y), f"{n}_neg")
    secret = y if g.is_const(x) else x
    if (g.is_const(x) or g.is_const(y)) and g.shape(secret) != g.shape(out):
        raise ModelError(
            f"{where(g, n)}: the constant operand broadcasts {secret!r} from {g.shape(secret)} "
            f"to {g.shape(out)}; only constants that keep the tensor's shape are supported"
        )
    d["op"], d["attrs"] = op, {}
    g.set_inputs(n, [x, y])
    if g.is_const(y) and not g.is_const(x) and g.shape(x) == g.shape(out):
        c = g.const(y)
        if (op == "Mul" and (c == 1).all()) or (op == "Add" and (c == 0).all()):
            d["op"] = "Identity"  # e.g. a mask of ones fixed by --fix-input; removed later
            g.set_inputs(n, [x])


def _batchnorm(g: Graph, n: str) -> None:
    d, a = g.node(n), g.node(n)["attrs"]
    if a.get("training_mode", 0):
        raise ModelError(f"{where(g, n)}: training mode is not supported")
    only_first_output(g, n, "the running mean/variance outputs are not supported")
    d["attrs"] = {"epsilon": float(a.get("epsilon", 1e-5))}


def _leaky_relu(g: Graph, n: str) -> None:
    g.node(n)["attrs"] = {"alpha": float(g.node(n)["attrs"].get("alpha", 0.01))}


def _clip(g: Graph, n: str) -> None:
    d = g.node(n)
    ins = [*d["inputs"], "", ""]
    lo = float(g.const(ins[1])) if ins[1] else -np.inf
    hi = float(g.const(ins[2])) if ins[2] else np.inf
    # ONNX's Clip is min(max(x, lo), hi): with lo > hi every element is hi.
    d["attrs"] = {"min": min(lo, hi), "max": hi}
    g.set_inputs(n, ins[:1])


def _prelu(g: Graph, n: str) -> None:
    """The slope broadcast (ONNX's unidirectional broadcast: trailing axes aligned) to the
    input's full shape, so that it multiplies elementwise."""
    x, slope = g.node(n)["inputs"][:2]
    shape, s = g.shape(x), g.const(slope)
    try:
        full = np.broadcast_to(s, shape)
    except ValueError:
        hint = ""
        if s.ndim == 1 and len(shape) > 2 and s.shape[0] == shape[1]:
            per_channel = (s.shape[0],) + (1,) * (len(shape) - 2)
            hint = f"; for a per-channel slope give it shape {per_channel}"
        raise ModelError(
            f"{where(g, n)}: the slope of shape {tuple(s.shape)} does not broadcast to the "
            f"input's shape {tuple(shape)} (ONNX aligns the trailing axes){hint}"
        ) from None
    if full.shape != s.shape:
        g.set_inputs(n, [x, g.add_const(full.copy(), f"{n}_slope")])


_FLOAT_TYPES = {1, 10, 11, 16}  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _cast(g: Graph, n: str) -> None:
    """A Cast between float types is a no-op on fixed-point values (becomes Identity)."""
    d = g.node(n)
    to = int(d["attrs"].get("to", 0))
    if to not in _FLOAT_TYPES:
        name = (
            onnx.TensorProto.DataType.Name(to) if to in onnx.TensorProto.DataType.values() else to
        )
        raise ModelError(
            f"{where(g, n)}: a Cast of a computed tensor to {name} is not supported (only "
            "Casts to FLOAT16, BFLOAT16, FLOAT or DOUBLE, and Casts of constants, which fold)"
        )
    d["op"], d["attrs"] = "Identity", {}


def _dropout(g: Graph, n: str) -> None:
    d = g.node(n)
    if len(d["inputs"]) > 2 and d["inputs"][2] and g.const(d["inputs"][2]).any():
        raise ModelError(f"{where(g, n)}: training mode is not supported")
    only_first_output(g, n, "the mask output is not supported")


RULES = {
    "Add": binary,
    "Sub": binary,
    "Mul": binary,
    "Div": binary,
    "BatchNormalization": _batchnorm,
    "LeakyRelu": _leaky_relu,
    "Clip": _clip,
    "PRelu": _prelu,
    "Cast": _cast,
    "Dropout": _dropout,
}
