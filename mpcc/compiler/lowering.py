"""Lowering: a normalized fixed-shape graph (after the passes) to the secure-op IR.

The lowering tracks each value's fixed-point scale. Weights are encoded with `f` fractional
bits, so a linear layer doubles its input's scale; truncations are inserted lazily, where a
value would otherwise grow past its budget, and fused into the next ReLU/Clip when there is
one. A window mean over 2^j elements costs nothing: the window sum *is* the mean at j more
fractional bits.

The budget: no value carries more than 2f + SLACK_BITS fractional bits. Since every secure
comparison and truncation needs |x| < 2^62 in the ring, a value at scale s must stay within
|v| < 2^(62 - s) in real terms: 2^30 at the usual 2f = 32 (f = 16), 2^22 at the most.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from mpcc.compiler.graph import Graph
from mpcc.compiler.ir import CLIENT, Program, Value, WeightSpec
from mpcc.compiler.poolshapes import avgpool_counts, pool_output_shape
from mpcc.errors import ModelError

# A value multiplied again may carry at most this many fractional bits above f (the window
# sum of a power-of-two average pool adds a few); larger ones are truncated to f first. So
# no value ever carries more than 2f + SLACK_BITS fractional bits.
SLACK_BITS = 8


# A global pool: one window over the whole plane.
_GLOBAL_POOL = dict(
    strides=[1, 1], pads=[0, 0, 0, 0], dilations=[1, 1], ceil_mode=0, count_include_pad=1
)


class _Lowering:
    def __init__(self, g: Graph, frac_bits: int, public_weights: bool) -> None:
        self.g = g
        self.f = frac_bits
        self.prog = Program(name=g.name, frac_bits=frac_bits, public_weights=public_weights)
        self.prog.notes = list(g.notes)
        self.weights: dict[str, np.ndarray] = {}
        self.env: dict[str, Value] = {}

    # -- helpers -----------------------------------------------------------------------
    def weight(self, tensor: str, array: np.ndarray, scale: int, role: str = "w") -> str:
        """Register a weight operand, named after the instruction about to use it (`w5` is
        the weight of %5); the ONNX tensor it came from is kept as its `source`."""
        for name, spec in self.prog.weights.items():
            if spec.source == tensor and spec.scale == scale:
                return name  # the same constant used twice at the same scale
        name = f"{role}{len(self.prog.instrs)}"
        arr = np.asarray(array, dtype=np.float64)
        shape = tuple(int(d) for d in arr.shape)
        self.prog.weights[name] = WeightSpec(name, shape, scale, source=tensor)
        self.weights[name] = arr
        return name

    def arg(self, node: str, tensor: str) -> Value:
        if tensor not in self.env:
            raise ModelError(
                f"node '{node}' needs a computed tensor '{tensor}' but got a constant or "
                "an unknown tensor; only weights of linear ops may be constants"
            )
        return self.env[tensor]

    def fit(self, v: Value, max_scale: int | None = None) -> Value:
        """Truncate v to f fractional bits if it carries more than `max_scale`."""
        limit = self.f + SLACK_BITS if max_scale is None else max_scale
        if v.scale <= limit:
            return v
        return self.prog.emit("trunc", (v.id,), v.shape, self.f, shift=v.scale - self.f)

    def rescale(self, v: Value, scale: int) -> Value:
        """Represent v at a higher scale (multiply by a power of two: exact and local)."""
        if v.scale == scale:
            return v
        k = scale - v.scale
        return self.prog.emit("mul_public", (v.id,), v.shape, scale, factor=2**k)

    def align(self, vals: list[Value]) -> list[Value]:
        top = max(v.scale for v in vals)
        return [self.rescale(v, top) for v in vals]

    def out_shape(self, data: dict) -> tuple[int, ...]:
        return tuple(self.g.shapes[data["outputs"][0]])

    def pool_shape(self, x: Value, attrs: dict) -> tuple[int, ...]:
        """A pool's output shape by ONNX Runtime's rule (onnx's shape inference disagrees
        for some ceil_mode windows that would start in the padding)."""
        hw = pool_output_shape(
            x.shape[2:],
            attrs["kernel"],
            attrs["strides"],
            attrs["pads"],
            attrs.get("dilations", (1, 1)),
            bool(attrs["ceil_mode"]),
        )
        return x.shape[:2] + hw

    # -- ops -----------------------------------------------------------------------------
    def lower_linear(self, name: str, data: dict, op: str) -> Value:
        x = self.fit(self.arg(name, data["inputs"][0]))
        ins = data["inputs"]
        w = self.weight(ins[1], self.g.const(ins[1]), self.f)
        out_scale = x.scale + self.f
        weights = [w]
        if len(ins) > 2 and ins[2]:
            weights.append(self.weight(ins[2], self.g.const(ins[2]), out_scale, role="b"))
        attrs = {}
        if op == "conv2d":
            a = data["attrs"]
            attrs = dict(
                strides=list(a["strides"]),
                pads=list(a["pads"]),
                dilations=list(a["dilations"]),
                groups=int(a["group"]),
            )
        return self.prog.emit(op, (x.id,), self.out_shape(data), out_scale, tuple(weights), **attrs)

    def lower_add_sub(self, name: str, data: dict, op: str) -> Value:
        a_t, b_t = data["inputs"]
        shape = self.out_shape(data)
        if self.g.is_const(b_t) and op == "Add":
            x = self.arg(name, a_t)
            w = self.weight(b_t, self.g.const(b_t), x.scale, role="b")
            return self.prog.emit("add_w", (x.id,), shape, x.scale, (w,))
        if self.g.is_const(a_t) and op == "Sub":  # c - x = (-x) + c
            x = self.arg(name, b_t)
            neg = self.prog.emit("mul_public", (x.id,), x.shape, x.scale, factor=-1)
            w = self.weight(a_t, self.g.const(a_t), x.scale, role="b")
            return self.prog.emit("add_w", (neg.id,), shape, x.scale, (w,))
        a, b = self.align([self.arg(name, a_t), self.arg(name, b_t)])
        return self.prog.emit(op.lower(), (a.id, b.id), shape, a.scale)

    def lower_mul(self, name: str, data: dict) -> Value:
        a_t, b_t = data["inputs"]
        shape = self.out_shape(data)
        if self.g.is_const(a_t):
            a_t, b_t = b_t, a_t
        if self.g.is_const(b_t):
            x = self.fit(self.arg(name, a_t), self.f)
            w = self.weight(b_t, self.g.const(b_t), self.f)
            return self.prog.emit("mul_w", (x.id,), shape, x.scale + self.f, (w,))
        a = self.fit(self.arg(name, a_t), self.f)
        b = self.fit(self.arg(name, b_t), self.f)
        return self.prog.emit("mul", (a.id, b.id), shape, a.scale + b.scale)

    def lower_neg(self, name: str, data: dict) -> Value:
        x = self.arg(name, data["inputs"][0])
        return self.prog.emit("mul_public", (x.id,), x.shape, x.scale, factor=-1)

    def lower_relu(self, name: str, data: dict) -> Value:
        x = self.arg(name, data["inputs"][0])
        shift = max(x.scale - self.f, 0)
        return self.prog.emit("relu", (x.id,), x.shape, x.scale - shift, shift=shift)

    def lower_leaky_relu(self, name: str, data: dict) -> Value:
        x = self.fit(self.arg(name, data["inputs"][0]), self.f)
        alpha = float(data["attrs"]["alpha"])
        return self.prog.emit("leaky_relu", (x.id,), x.shape, x.scale + self.f, alpha=alpha)

    def lower_prelu(self, name: str, data: dict) -> Value:
        # prelu(x) = relu(x) + slope * (x - relu(x)); the slope is a (secret) weight.
        x = self.fit(self.arg(name, data["inputs"][0]), self.f)
        p = self.prog
        r = p.emit("relu", (x.id,), x.shape, x.scale, shift=0)
        neg = p.emit("sub", (x.id, r.id), x.shape, x.scale)
        slope_t = data["inputs"][1]
        w = self.weight(slope_t, self.g.const(slope_t), self.f)
        m = p.emit("mul_w", (neg.id,), x.shape, x.scale + self.f, (w,))
        return p.emit("add", (self.rescale(r, m.scale).id, m.id), x.shape, m.scale)

    def lower_clip(self, name: str, data: dict) -> Value:
        x = self.arg(name, data["inputs"][0])
        lo, hi = float(data["attrs"]["min"]), float(data["attrs"]["max"])
        if math.isinf(lo) and math.isinf(hi):
            return x
        shift = max(x.scale - self.f, 0)
        return self.prog.emit(
            "clip",
            (x.id,),
            x.shape,
            x.scale - shift,
            lo=None if math.isinf(lo) else lo,
            hi=None if math.isinf(hi) else hi,
            shift=shift,
        )

    def pool_attrs(self, x: Value, data: dict, keys: tuple[str, ...], global_: bool) -> dict:
        """A pooling node's attributes named in `keys` (in that order); a global pool's
        window is the whole plane."""
        if global_:
            full = dict(_GLOBAL_POOL, kernel=list(x.shape[2:]))
        else:
            a = data["attrs"]
            full = dict(
                kernel=list(a["kernel_shape"]),
                strides=list(a["strides"]),
                pads=list(a["pads"]),
                dilations=list(a.get("dilations", (1, 1))),
                ceil_mode=int(a["ceil_mode"]),
                count_include_pad=int(a.get("count_include_pad", 0)),
            )
        return {k: full[k] for k in keys}

    def lower_maxpool(self, name: str, data: dict, global_: bool = False) -> Value:
        x = self.arg(name, data["inputs"][0])
        keys = ("kernel", "strides", "pads", "dilations", "ceil_mode")
        attrs = self.pool_attrs(x, data, keys, global_)
        return self.prog.emit("maxpool", (x.id,), self.pool_shape(x, attrs), x.scale, **attrs)

    def lower_avgpool(self, name: str, data: dict, global_: bool = False) -> Value:
        x = self.arg(name, data["inputs"][0])
        keys = ("kernel", "strides", "pads", "ceil_mode", "count_include_pad")
        attrs = self.pool_attrs(x, data, keys, global_)
        div = avgpool_counts(x.shape[2:], attrs)
        d = int(div.flat[0])
        if np.all(div == d) and d & (d - 1) == 0:
            k = d.bit_length() - 1
            # The mean is the sum at k more bits: truncate first if that would pass the budget.
            x = self.fit(x, 2 * self.f + SLACK_BITS - k)
            return self.prog.emit(
                "avgpool", (x.id,), self.pool_shape(x, attrs), x.scale + k, mode="shift", **attrs
            )
        # Multiply by round(2^bits / count), with enough bits that the reciprocal keeps f
        # significant bits (2^16/196 alone would be off by 0.1%), but with at most
        # f + SLACK_BITS bits so that the result stays within the budget.
        x = self.fit(x, self.f)
        bits = self.f + min(int(div.max()).bit_length(), SLACK_BITS)
        return self.prog.emit(
            "avgpool",
            (x.id,),
            self.pool_shape(x, attrs),
            x.scale + bits,
            mode="mul",
            recip_bits=bits,
            **attrs,
        )

    def lower_sumpool(self, name: str, data: dict) -> Value:
        x = self.arg(name, data["inputs"][0])
        attrs = self.pool_attrs(x, data, ("kernel", "strides", "pads", "ceil_mode"), False)
        return self.prog.emit("sumpool", (x.id,), self.pool_shape(x, attrs), x.scale, **attrs)

    def lower_movement(self, name: str, data: dict, op: str) -> Value:
        a = data["attrs"]
        shape = self.out_shape(data)
        if op == "Concat":
            vals = self.align([self.arg(name, t) for t in data["inputs"]])
            return self.prog.emit(
                "concat", tuple(v.id for v in vals), shape, vals[0].scale, axis=int(a["axis"])
            )
        x = self.arg(name, data["inputs"][0])
        if op == "Reshape":
            return self.prog.emit("reshape", (x.id,), shape, x.scale, shape=list(shape))
        if op == "Transpose":
            return self.prog.emit("transpose", (x.id,), shape, x.scale, perm=list(a["perm"]))
        if op == "Slice":
            return self.prog.emit(
                "slice",
                (x.id,),
                shape,
                x.scale,
                starts=list(a["starts"]),
                ends=list(a["ends"]),
                axes=list(a["axes"]),
                steps=list(a["steps"]),
            )
        if op == "Pad":
            return self.prog.emit(
                "pad",
                (x.id,),
                shape,
                x.scale,
                pads=list(a["pads"]),
                value=float(a.get("value", 0.0)),
            )
        raise AssertionError(op)

    def run(self) -> tuple[Program, dict[str, np.ndarray]]:
        p = self.prog
        for t in self.g.inputs:
            v = p.emit("input", (), tuple(self.g.shapes[t]), self.f, name=t)
            self.env[t] = v
            p.inputs.append((t, v.id))
        for node in self.g.topo_nodes():
            data = self.g.nx.nodes[node]
            op = data["op"]
            handler = _HANDLERS.get(op)
            if handler is None:
                raise ModelError(
                    f"node '{node}' (op {op}) survived the graph passes but has no secure "
                    f"lowering; lowered ops are: {', '.join(sorted(_HANDLERS))}"
                )
            out = handler(self, node, data)
            self.env[data["outputs"][0]] = out
        for t in self.g.outputs:
            v = self.arg("output", t)
            o = p.emit("output", (v.id,), v.shape, v.scale, vis=CLIENT, name=t)
            p.outputs.append((t, o.id))
        return p, self.weights


_HANDLERS: dict[str, Callable[[_Lowering, str, dict], Value]] = {
    "Conv": lambda s, n, d: s.lower_linear(n, d, "conv2d"),
    "MatMul": lambda s, n, d: s.lower_linear(n, d, "matmul"),
    "Add": lambda s, n, d: s.lower_add_sub(n, d, "Add"),
    "Sub": lambda s, n, d: s.lower_add_sub(n, d, "Sub"),
    "Mul": _Lowering.lower_mul,
    "Neg": lambda s, n, d: s.lower_neg(n, d),
    "Relu": _Lowering.lower_relu,
    "LeakyRelu": _Lowering.lower_leaky_relu,
    "PRelu": _Lowering.lower_prelu,
    "Clip": _Lowering.lower_clip,
    "MaxPool": _Lowering.lower_maxpool,
    "GlobalMaxPool": lambda s, n, d: s.lower_maxpool(n, d, global_=True),
    "AveragePool": _Lowering.lower_avgpool,
    "GlobalAveragePool": lambda s, n, d: s.lower_avgpool(n, d, global_=True),
    "SumPool": _Lowering.lower_sumpool,
    "Reshape": lambda s, n, d: s.lower_movement(n, d, "Reshape"),
    "Transpose": lambda s, n, d: s.lower_movement(n, d, "Transpose"),
    "Concat": lambda s, n, d: s.lower_movement(n, d, "Concat"),
    "Slice": lambda s, n, d: s.lower_movement(n, d, "Slice"),
    "Pad": lambda s, n, d: s.lower_movement(n, d, "Pad"),
}


def lower(
    g: Graph, frac_bits: int = 16, public_weights: bool = False
) -> tuple[Program, dict[str, np.ndarray]]:
    """Lower a graph that went through `passes.run_all` to a Program and its weights."""
    return _Lowering(g, frac_bits, public_weights).run()
