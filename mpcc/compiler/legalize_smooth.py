"""Legalization of the smooth-function ops (`mpcc.compiler.approx` lowers them).

After these rules:

- ReduceSum / ReduceMean / ReduceMax / ReduceL2 [x]: axes (sorted, non-negative, all axes when
  none are given), keepdims; from opset 13 (axes attribute) and 18 (axes input) forms alike.
  A ReduceMean/Max/Sum over all the spatial axes of an NCHW image still becomes a pool.
- Softmax / LogSoftmax [x]: axes (opset < 13: axis..rank-1, the coerced 2-D form; else
  (axis,)).
- LayerNormalization [x, scale, (bias)]: axes (axis..rank-1), epsilon; scale and bias
  constant.
- Pow [x, 2] becomes Mul [x, x]; exponents 1, 0.5, -0.5 and -1 become Identity, Sqrt, Rsqrt
  (an mpcc op) and Reciprocal.
- Div [a, b] with a computed b stays a Div (division by a secret).
- Gelu: approximate ("none" or "tanh"); HardSigmoid: alpha, beta; LpNormalization: axes, p=2.
- Exp, Log, Sqrt, Reciprocal, Sigmoid, Tanh, Erf, HardSwish: no attributes.
"""

from __future__ import annotations

import numpy as np

from mpcc.compiler.graph import Graph
from mpcc.compiler.legalize_common import ints, where
from mpcc.errors import ModelError


def reduce_axes(g: Graph, n: str) -> tuple[tuple[int, ...], int, bool]:
    """(axes, keepdims, noop): a Reduce node's axes in either opset's form."""
    d, a = g.node(n), g.node(n)["attrs"]
    rank = len(g.shape(d["inputs"][0]))
    if len(d["inputs"]) > 1 and d["inputs"][1]:
        axes = ints(g.const(d["inputs"][1]))
    else:
        axes = ints(a.get("axes", []))
    noop = not axes and bool(a.get("noop_with_empty_axes", 0))
    axes = tuple(sorted({ax % rank for ax in axes})) or tuple(range(rank))
    return axes, int(a.get("keepdims", 1)), noop


def reduce_general(g: Graph, n: str) -> None:
    """Normalize a Reduce node to attrs {axes, keepdims}; an empty-axes no-op becomes
    Identity."""
    axes, keepdims, noop = reduce_axes(g, n)
    d = g.node(n)
    if noop:
        d["op"], d["attrs"] = "Identity", {}
    else:
        d["attrs"] = {"axes": axes, "keepdims": keepdims}
    g.set_inputs(n, d["inputs"][:1])


def softmax(g: Graph, n: str) -> None:
    d = g.node(n)
    rank = len(g.shape(d["inputs"][0]))
    default = 1 if g.opset < 13 else -1
    axis = int(d["attrs"].get("axis", default)) % rank
    axes = tuple(range(axis, rank)) if g.opset < 13 else (axis,)
    d["attrs"] = {"axes": axes}


def layernorm(g: Graph, n: str) -> None:
    d, a = g.node(n), g.node(n)["attrs"]
    ins = d["inputs"]
    rank = len(g.shape(ins[0]))
    axis = int(a.get("axis", -1)) % rank
    outs = d["outputs"]
    if any(t and (g.consumers(t) or t in g.outputs) for t in outs[1:]):
        raise ModelError(f"{where(g, n)}: the Mean and InvStdDev outputs are not supported")
    for t in outs[1:]:
        g.shapes.pop(t, None)
    g.set_outputs(n, outs[:1])
    for i in (1, 2):
        if i < len(ins) and ins[i] and not g.is_const(ins[i]):
            raise ModelError(f"{where(g, n)}: the scale and bias must be constants")
    d["attrs"] = {"axes": tuple(range(axis, rank)), "epsilon": float(a.get("epsilon", 1e-5))}
    g.set_inputs(n, [t for t in ins if t])


_POW = {1.0: "Identity", 0.5: "Sqrt", -0.5: "Rsqrt", -1.0: "Reciprocal"}


def pow_(g: Graph, n: str) -> None:
    d = g.node(n)
    x, e = d["inputs"]
    if not g.is_const(e) or g.is_const(x):
        raise ModelError(f"{where(g, n)}: only a computed base and a constant exponent")
    ev = np.unique(np.asarray(g.const(e), dtype=np.float64))
    if ev.size != 1 or (float(ev[0]) != 2.0 and float(ev[0]) not in _POW):
        raise ModelError(
            f"{where(g, n)}: exponent {ev.tolist()} is not supported (supported: 2, 1, 0.5, "
            "-0.5, -1)"
        )
    if float(ev[0]) == 2.0:
        d["op"], d["attrs"] = "Mul", {}
        g.set_inputs(n, [x, x])
    else:
        d["op"], d["attrs"] = _POW[float(ev[0])], {}
        g.set_inputs(n, [x])


def gelu(g: Graph, n: str) -> None:
    a = g.node(n)["attrs"]
    approx = a.get("approximate", "none")
    if approx not in ("none", "tanh"):
        raise ModelError(f"{where(g, n)}: approximate={approx!r} (supported: none, tanh)")
    g.node(n)["attrs"] = {"approximate": approx}


def hard_sigmoid(g: Graph, n: str) -> None:
    a = g.node(n)["attrs"]
    g.node(n)["attrs"] = {"alpha": float(a.get("alpha", 0.2)), "beta": float(a.get("beta", 0.5))}


def lp_normalization(g: Graph, n: str) -> None:
    d, a = g.node(n), g.node(n)["attrs"]
    if int(a.get("p", 2)) != 2:
        raise ModelError(f"{where(g, n)}: only p = 2 is supported")
    rank = len(g.shape(d["inputs"][0]))
    d["attrs"] = {"axes": (int(a.get("axis", -1)) % rank,)}


def no_attrs(g: Graph, n: str) -> None:
    g.node(n)["attrs"] = {}


RULES = {
    "ReduceL2": reduce_general,
    "Softmax": softmax,
    "LogSoftmax": softmax,
    "LayerNormalization": layernorm,
    "Pow": pow_,
    "Gelu": gelu,
    "HardSigmoid": hard_sigmoid,
    "LpNormalization": lp_normalization,
    **{
        op: no_attrs
        for op in ("Exp", "Log", "Sqrt", "Reciprocal", "Sigmoid", "Tanh", "Erf", "HardSwish")
    },
}
