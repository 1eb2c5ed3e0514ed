"""The node builder the recurrent unrolling (`mpcc.compiler.recurrent`) emits through: ONNX
nodes on `Value`s (a computed tensor's name, or a constant folded while unrolling), computing
in numpy whatever is constant."""

from __future__ import annotations

import numpy as np

from mpcc.compiler.graph import Graph
from mpcc.compiler.legalize_common import where
from mpcc.errors import ModelError

Value = str | np.ndarray  # a computed tensor's name, or a constant folded while unrolling

ACTIVATIONS = {
    "Sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "Tanh": np.tanh,
    "Relu": lambda x: np.maximum(x, 0.0),
}


class Builder:
    """Emits ONNX nodes for one recurrent node, folding the parts that are constant."""

    def __init__(self, g: Graph, node: str, dtype: np.dtype) -> None:
        self.g, self.node, self.dtype = g, node, dtype

    def shape(self, v: Value) -> tuple[int, ...]:
        return tuple(v.shape) if isinstance(v, np.ndarray) else self.g.shape(v)

    def emit(self, op: str, inputs: list[Value], shape: tuple[int, ...], hint: str, **attrs):
        names = [self.const(v) if isinstance(v, np.ndarray) else v for v in inputs]
        out = self.g.new_tensor(f"{self.node}_{hint}", shape)
        self.g.add_node(op, names, [out], attrs, name=f"{self.node}_{hint}")
        return out

    def const(self, v: np.ndarray) -> str:
        v = v if v.dtype.kind == "i" else v.astype(self.dtype)
        return self.g.add_const(v, f"{self.node}_c")

    def full(self, c: np.ndarray, like: Value) -> np.ndarray:
        """A constant operand of a computed one, which it broadcasts to: with a single row
        when its rows are all equal, so that the plan keeps the batch's rows apart."""
        c = np.asarray(c, self.dtype)
        if c.ndim == len(self.shape(like)) and c.shape[0] > 1 and (c == c[:1]).all():
            c = c[:1]
        return np.ascontiguousarray(c)

    def matmul(self, x: Value, w: np.ndarray, hint: str) -> Value:
        if isinstance(x, np.ndarray):
            return (x @ w).astype(self.dtype)
        return self.emit("MatMul", [x, w], (*self.shape(x)[:-1], w.shape[1]), hint)

    def add(self, a: Value, b: Value, hint: str) -> Value:
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            return (a + b).astype(self.dtype)
        if isinstance(a, np.ndarray):
            a, b = b, a
        if isinstance(b, np.ndarray):
            if not b.any():
                return a
            b = self.full(b, a)
        return self.emit("Add", [a, b], self.shape(a), hint)

    def sub(self, a: Value, b: Value, hint: str) -> Value:
        if isinstance(b, np.ndarray):
            return self.add(a, -b, hint)
        if isinstance(a, np.ndarray):
            if not a.any():
                return self.emit("Neg", [b], self.shape(b), hint)
            a = self.full(a, b)
        return self.emit("Sub", [a, b], self.shape(b), hint)

    def mul(self, a: Value, b: Value, hint: str) -> Value:
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            return (a * b).astype(self.dtype)
        if isinstance(a, np.ndarray):
            a, b = b, a
        if isinstance(b, np.ndarray):
            if not b.any():
                return np.zeros(self.shape(a), self.dtype)
            if (b == 1).all():
                return a
            b = self.full(b, a)
        return self.emit("Mul", [a, b], self.shape(a), hint)

    def act(self, kind: str, x: Value, hint: str) -> Value:
        if isinstance(x, np.ndarray):
            return ACTIVATIONS[kind](x).astype(self.dtype)
        return self.emit(kind, [x], self.shape(x), hint)

    def slice(self, x: Value, axis: int, start: int, end: int, hint: str) -> Value:
        if isinstance(x, np.ndarray):
            return np.take(x, range(start, end), axis=axis)
        shape = list(self.shape(x))
        if (start, end) == (0, shape[axis]):
            return x
        shape[axis] = end - start
        ints = [np.array([v], np.int64) for v in (start, end, axis)]
        return self.emit("Slice", [x, *ints], tuple(shape), hint)

    def reverse(self, x: Value, axis: int, hint: str) -> Value:
        """x in reverse order along `axis`."""
        if isinstance(x, np.ndarray):
            return np.flip(x, axis).copy()
        dim = self.shape(x)[axis]
        ints = [np.array([v], np.int64) for v in (dim - 1, -dim - 1, axis, -1)]
        return self.emit("Slice", [x, *ints], self.shape(x), hint)

    def reshape(self, x: Value, shape: tuple[int, ...], hint: str) -> Value:
        if isinstance(x, np.ndarray):
            return x.reshape(shape)
        if self.shape(x) == shape:
            return x
        return self.emit("Reshape", [x, np.array(shape, np.int64)], shape, hint)

    def concat(self, xs: list[Value], axis: int, hint: str) -> Value:
        if len(xs) == 1:
            return xs[0]
        if all(isinstance(x, np.ndarray) for x in xs):
            return np.concatenate(xs, axis=axis)
        shape = list(self.shape(xs[0]))
        shape[axis] = sum(self.shape(x)[axis] for x in xs)
        return self.emit("Concat", xs, tuple(shape), hint, axis=axis)

    def transpose(self, x: Value, perm: tuple[int, ...], hint: str) -> Value:
        if isinstance(x, np.ndarray):
            return x.transpose(perm)
        shape = tuple(self.shape(x)[p] for p in perm)
        moved = [p for p in perm if self.shape(x)[p] != 1]
        if moved == sorted(moved):  # only size-1 axes move: the same order, a Reshape
            return self.reshape(x, shape, hint)
        return self.emit("Transpose", [x], shape, hint, perm=perm)

    def bind(self, v: Value, out: str) -> None:
        """Make `v` the value of the node's output tensor `out` (an Identity the rewrites
        remove)."""
        if isinstance(v, np.ndarray):
            raise ModelError(
                f"{where(self.g, self.node)}: output {out!r} does not depend on the input"
            )
        self.g.add_node("Identity", [v], [out], {}, name=f"{self.node}_{out}")
