"""Lowering of the smooth-function ops: each ONNX op to its `mpcc.compiler.approx` macro.

Results are left at the scale the macro produces (at most f + 4 bits, within the budget); the
lowering truncates lazily where a consumer needs fewer bits.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mpcc.compiler import approx, ops
from mpcc.compiler.approx.core import Emitter, at_most, to_scale
from mpcc.compiler.ir import Value, max_scale
from mpcc.errors import ModelError


def _checked(s, n: str, d: dict, v: Value) -> Value:  # noqa: ANN001
    want = s.out_shape(d)
    if v.shape != want:
        raise ModelError(
            f"node {n!r}: {d['op']} gives shape {list(v.shape)} where the ONNX graph has "
            f"{list(want)}"
        )
    return v


def _unary(fn: Callable[[Emitter, Value], Value]) -> Callable:
    def handler(s, n: str, d: dict) -> Value:  # noqa: ANN001
        return _checked(s, n, d, fn(s, s.arg(n, d["inputs"][0])))

    return handler


def _reduce(s, n: str, d: dict) -> Value:  # noqa: ANN001
    x = s.arg(n, d["inputs"][0])
    axes, keep = list(d["attrs"]["axes"]), bool(d["attrs"]["keepdims"])
    op = d["op"]
    if op == "ReduceMax":
        v = approx.reduce_max(s, x, axes, keep)
    elif op == "ReduceSum":
        v = approx.reduce_sum(s, x, axes, keep)
    elif op == "ReduceMean":
        k = int(np.prod([x.shape[a] for a in axes])).bit_length()
        v = approx.reduce_mean(s, at_most(s, x, max_scale(s.f) - k), axes, keep)
    else:  # ReduceL2 = sqrt(sum x^2)
        x = at_most(s, x, s.f)
        sq = s.emit(ops.square, (x.id,))
        v = approx.sqrt(s, approx.reduce_sum(s, sq, axes, keep))
    return _checked(s, n, d, v)


def _softmax(s, n: str, d: dict) -> Value:  # noqa: ANN001
    x = s.arg(n, d["inputs"][0])
    fn = approx.softmax if d["op"] == "Softmax" else approx.logsoftmax
    return _checked(s, n, d, fn(s, x, list(d["attrs"]["axes"]), s.f))


def _layernorm(s, n: str, d: dict) -> Value:  # noqa: ANN001
    x = s.arg(n, d["inputs"][0])
    a = d["attrs"]
    y = approx.normalise(s, x, list(a["axes"]), float(a["epsilon"]))
    ins = d["inputs"]
    if len(ins) > 1 and not np.all(s.g.const(ins[1]) == 1.0):
        w = s.weight(ins[1], s.g.const(ins[1]), s.f)
        y = s.emit(ops.mul_w, (y.id,), (w,))
    if len(ins) > 2 and np.any(s.g.const(ins[2]) != 0.0):
        b = s.weight(ins[2], s.g.const(ins[2]), y.scale, role="b")
        y = s.emit(ops.add_w, (y.id,), (b,))
    return _checked(s, n, d, y)


def _div(s, n: str, d: dict) -> Value:  # noqa: ANN001
    a, b = (s.arg(n, t) for t in d["inputs"])
    return _checked(s, n, d, approx.divide(s, a, b, s.f))


def _gelu(s, n: str, d: dict) -> Value:  # noqa: ANN001
    x = s.arg(n, d["inputs"][0])
    fn = approx.gelu_tanh if d["attrs"].get("approximate") == "tanh" else approx.gelu
    return _checked(s, n, d, fn(s, x))


def _hard_sigmoid(s, n: str, d: dict) -> Value:  # noqa: ANN001
    x = s.arg(n, d["inputs"][0])
    a = d["attrs"]
    return _checked(s, n, d, approx.hard_sigmoid(s, x, float(a["alpha"]), float(a["beta"])))


def _l2(s, n: str, d: dict) -> Value:  # noqa: ANN001
    x = s.arg(n, d["inputs"][0])
    return _checked(s, n, d, approx.l2_normalise(s, x, list(d["attrs"]["axes"])))


HANDLERS: dict[str, Callable] = {
    "ReduceSum": _reduce,
    "ReduceMean": _reduce,
    "ReduceMax": _reduce,
    "ReduceL2": _reduce,
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    "LayerNormalization": _layernorm,
    "Div": _div,
    "Exp": _unary(approx.exp_signed),
    "Log": _unary(approx.log),
    "Sqrt": _unary(approx.sqrt),
    "Reciprocal": _unary(lambda em, x: approx.reciprocal(em, x, signed=True)),
    "Rsqrt": _unary(approx.rsqrt),
    "Sigmoid": _unary(approx.sigmoid),
    "Tanh": _unary(approx.tanh),
    "Erf": _unary(approx.erf),
    "Gelu": _gelu,
    "Silu": _unary(approx.silu),
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": _unary(approx.hard_swish),
    "LpNormalization": _l2,
}

__all__ = ["HANDLERS", "to_scale"]
