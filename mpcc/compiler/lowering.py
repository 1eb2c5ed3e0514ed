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
from dataclasses import dataclass, field

import numpy as np

from mpcc.compiler import lower_smooth, ops
from mpcc.compiler.graph import Graph
from mpcc.compiler.ir import SLACK_BITS, Program, Value, WeightSpec
from mpcc.compiler.ops import Op, RuleError
from mpcc.compiler.poolshapes import avgpool_counts
from mpcc.errors import ModelError


@dataclass
class Trace:
    """Where a lowering put each graph tensor (for calibration): `values` maps a tensor of the
    graph to the IR value holding it after its node; `nodes` maps every IR value to the graph
    node whose lowering emitted it ("input"/"output" for the plan's ends)."""

    values: dict[str, int] = field(default_factory=dict)
    nodes: dict[int, str] = field(default_factory=dict)


class _Lowering:
    def __init__(self, g: Graph, frac_bits: int, public_weights: bool) -> None:
        self.g = g
        self.f = frac_bits
        self.prog = Program(name=g.name, frac_bits=frac_bits, public_weights=public_weights)
        self.prog.notes = list(g.notes)
        self.weights: dict[str, np.ndarray] = {}
        self.env: dict[str, Value] = {}
        self.node = "input"  # the ONNX node being lowered, for error messages
        self._named: dict[tuple[str, int, str], str] = {}  # (tensor, scale, role) -> weight
        self.trace = Trace()

    def emit(
        self, op: Op, args: tuple[int, ...], weights: tuple[str, ...] = (), **attrs: object
    ) -> Value:
        """Append an instruction; its op's rule types the output. A rule the node breaks is
        a ModelError that names the node."""
        try:
            v = self.prog.emit(op, args, weights, **attrs)
        except RuleError as e:
            raise ModelError(f"node {self.node!r}: {op.name}: {e}") from None
        self.trace.nodes[v.id] = self.node
        return v

    def emit_as(
        self, data: dict, op: Op, args: tuple[int, ...], weights: tuple[str, ...] = (), **attrs
    ) -> Value:
        """`emit`, checking the output shape against the ONNX graph's (a lowering bug
        otherwise)."""
        v = self.emit(op, args, weights, **attrs)
        want = self.out_shape(data)
        if v.shape != want:
            raise ModelError(
                f"node {self.node!r}: {op.name} gives shape {list(v.shape)} where the ONNX "
                f"graph has {list(want)}"
            )
        return v

    # -- helpers -----------------------------------------------------------------------
    def weight(self, tensor: str, array: np.ndarray, scale: int, role: str = "w") -> str:
        """Register a weight operand, named after the instruction about to use it (`w5` is
        the weight of %5); the ONNX tensor it came from is kept as its `source`.

        `role` "w": a bilinear op's weight, masked once per session (F = W - B); "b": used
        as it is (a bias, an added constant). A constant used twice in the same role and at
        the same scale is one weight; in both roles it is two, since a masked weight's shares
        become F at session setup."""
        key = (tensor, scale, role)
        if key in self._named:
            return self._named[key]
        name = f"{role}{len(self.prog.instrs)}"
        self._named[key] = name
        arr = np.asarray(array, dtype=self.g.float_dtype, order="C")
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
        return self.emit(ops.trunc, (v.id,), shift=v.scale - self.f)

    def rescale(self, v: Value, scale: int) -> Value:
        """Represent v at a higher scale (multiply by a power of two: exact and local)."""
        if v.scale == scale:
            return v
        return self.emit(ops.rescale, (v.id,), bits=scale - v.scale)

    def align(self, vals: list[Value]) -> list[Value]:
        top = max(v.scale for v in vals)
        return [self.rescale(v, top) for v in vals]

    def out_shape(self, data: dict) -> tuple[int, ...]:
        return tuple(self.g.shapes[data["outputs"][0]])

    # -- ops -----------------------------------------------------------------------------
    def lower_linear(self, name: str, data: dict, op: Op) -> Value:
        x = self.fit(self.arg(name, data["inputs"][0]))
        ins = data["inputs"]
        w = self.weight(ins[1], self.g.const(ins[1]), self.f)
        weights = [w]
        if len(ins) > 2 and ins[2]:
            weights.append(self.weight(ins[2], self.g.const(ins[2]), x.scale + self.f, role="b"))
        attrs = {}
        if op is ops.conv_transpose:
            a = data["attrs"]
            attrs = dict(
                strides=list(a["strides"]),
                pads=list(a["pads"]),
                dilations=list(a["dilations"]),
                output_padding=list(a["output_padding"]),
                groups=int(a["group"]),
            )
        if op is ops.conv:
            a = data["attrs"]
            attrs = dict(
                strides=list(a["strides"]),
                pads=list(a["pads"]),
                dilations=list(a["dilations"]),
                groups=int(a["group"]),
            )
        return self.emit_as(data, op, (x.id,), tuple(weights), **attrs)

    def lower_add_sub(self, name: str, data: dict, op: str) -> Value:
        a_t, b_t = data["inputs"]
        if self.g.is_const(b_t) and op == "Add":
            x = self.arg(name, a_t)
            w = self.weight(b_t, self.g.const(b_t), x.scale, role="b")
            return self.emit_as(data, ops.add_w, (x.id,), (w,))
        if self.g.is_const(a_t) and op == "Sub":  # c - x = (-x) + c
            x = self.arg(name, b_t)
            neg = self.emit(ops.mul_public, (x.id,), factor=-1)
            w = self.weight(a_t, self.g.const(a_t), x.scale, role="b")
            return self.emit_as(data, ops.add_w, (neg.id,), (w,))
        a, b = self.align([self.arg(name, a_t), self.arg(name, b_t)])
        return self.emit_as(data, ops.add if op == "Add" else ops.sub, (a.id, b.id))

    def lower_mul(self, name: str, data: dict) -> Value:
        a_t, b_t = data["inputs"]
        if self.g.is_const(a_t):
            a_t, b_t = b_t, a_t
        if self.g.is_const(b_t):
            x = self.fit(self.arg(name, a_t), self.f)
            w = self.weight(b_t, self.g.const(b_t), self.f)
            return self.emit_as(data, ops.mul_w, (x.id,), (w,))
        a = self.fit(self.arg(name, a_t), self.f)
        if a_t == b_t:  # a square (Pow 2): a Beaver pair, half the traffic
            return self.emit_as(data, ops.square, (a.id,))
        b = self.fit(self.arg(name, b_t), self.f)
        return self.emit_as(data, ops.mul, (a.id, b.id))

    def lower_matmul_ss(self, name: str, data: dict) -> Value:
        a_t, b_t = data["inputs"]
        a = self.fit(self.arg(name, a_t), self.f)
        b = self.fit(self.arg(name, b_t), self.f)
        return self.emit_as(data, ops.matmul_ss, (a.id, b.id))

    def lower_neg(self, name: str, data: dict) -> Value:
        x = self.arg(name, data["inputs"][0])
        return self.emit(ops.mul_public, (x.id,), factor=-1)

    def lower_relu(self, name: str, data: dict) -> Value:
        x = self.arg(name, data["inputs"][0])
        return self.emit(ops.relu, (x.id,), shift=max(x.scale - self.f, 0))

    def lower_leaky_relu(self, name: str, data: dict) -> Value:
        x = self.fit(self.arg(name, data["inputs"][0]), self.f)
        return self.emit(ops.leaky_relu, (x.id,), alpha=float(data["attrs"]["alpha"]))

    def lower_prelu(self, name: str, data: dict) -> Value:
        # prelu(x) = relu(x) + slope * (x - relu(x)); the slope is a (secret) weight.
        x = self.fit(self.arg(name, data["inputs"][0]), self.f)
        r = self.emit(ops.relu, (x.id,), shift=0)
        neg = self.emit(ops.sub, (x.id, r.id))
        slope_t = data["inputs"][1]
        w = self.weight(slope_t, self.g.const(slope_t), self.f)
        m = self.emit(ops.mul_w, (neg.id,), (w,))
        return self.emit(ops.add, (self.rescale(r, m.scale).id, m.id))

    def lower_clip(self, name: str, data: dict) -> Value:
        x = self.arg(name, data["inputs"][0])
        lo, hi = float(data["attrs"]["min"]), float(data["attrs"]["max"])
        if math.isinf(lo) and math.isinf(hi):
            return x
        return self.emit(
            ops.clip,
            (x.id,),
            lo=None if math.isinf(lo) else lo,
            hi=None if math.isinf(hi) else hi,
            shift=max(x.scale - self.f, 0),
        )

    def pool_attrs(self, x: Value, data: dict, keys: tuple[str, ...], global_: bool) -> dict:
        """A pooling node's attributes named in `keys` (in that order); a global pool's
        window is all of the spatial axes."""
        rank = len(x.shape) - 2
        if global_:
            full = dict(
                kernel=list(x.shape[2:]),
                strides=[1] * rank,
                pads=[0] * 2 * rank,
                dilations=[1] * rank,
                ceil_mode=0,
                count_include_pad=1,
            )
        else:
            a = data["attrs"]
            full = dict(
                kernel=list(a["kernel_shape"]),
                strides=list(a["strides"]),
                pads=list(a["pads"]),
                dilations=list(a.get("dilations", (1,) * rank)),
                ceil_mode=int(a["ceil_mode"]),
                count_include_pad=int(a.get("count_include_pad", 0)),
            )
        return {k: full[k] for k in keys}

    def lower_maxpool(self, name: str, data: dict, global_: bool = False) -> Value:
        x = self.arg(name, data["inputs"][0])
        keys = ("kernel", "strides", "pads", "dilations", "ceil_mode")
        return self.emit(ops.maxpool, (x.id,), **self.pool_attrs(x, data, keys, global_))

    def lower_avgpool(self, name: str, data: dict, global_: bool = False) -> Value:
        x = self.arg(name, data["inputs"][0])
        keys = ("kernel", "strides", "pads", "dilations", "ceil_mode", "count_include_pad")
        attrs = self.pool_attrs(x, data, keys, global_)
        div = avgpool_counts(x.shape[2:], attrs)
        d = int(div.flat[0])
        if np.all(div == d) and d & (d - 1) == 0:
            k = d.bit_length() - 1
            # The mean is the sum at k more bits: truncate first if that would pass the budget.
            x = self.fit(x, 2 * self.f + SLACK_BITS - k)
            return self.emit(ops.avgpool, (x.id,), mode="shift", **attrs)
        # Multiply by round(2^bits / count), with enough bits that the reciprocal keeps f
        # significant bits (2^16/196 alone would be off by 0.1%), but with at most
        # f + SLACK_BITS bits so that the result stays within the budget.
        x = self.fit(x, self.f)
        bits = self.f + min(int(div.max()).bit_length(), SLACK_BITS)
        return self.emit(ops.avgpool, (x.id,), mode="mul", recip_bits=bits, **attrs)

    def lower_sumpool(self, name: str, data: dict) -> Value:
        x = self.arg(name, data["inputs"][0])
        keys = ("kernel", "strides", "pads", "dilations", "ceil_mode")
        return self.emit(ops.sumpool, (x.id,), **self.pool_attrs(x, data, keys, False))

    def lower_movement(self, name: str, data: dict, op: str) -> Value:
        a = data["attrs"]
        if op == "Concat":
            vals = self.align([self.arg(name, t) for t in data["inputs"]])
            return self.emit_as(data, ops.concat, tuple(v.id for v in vals), axis=int(a["axis"]))
        x = self.arg(name, data["inputs"][0])
        if op == "Reshape":
            return self.emit_as(data, ops.reshape, (x.id,), shape=list(self.out_shape(data)))
        if op == "Transpose":
            return self.emit_as(data, ops.transpose, (x.id,), perm=list(a["perm"]))
        if op == "Slice":
            return self.emit_as(
                data,
                ops.slice,
                (x.id,),
                starts=list(a["starts"]),
                ends=list(a["ends"]),
                axes=list(a["axes"]),
                steps=list(a["steps"]),
            )
        if op == "Gather":
            return self.emit_as(
                data,
                ops.gather,
                (x.id,),
                axis=int(a["axis"]),
                indices=list(a["indices"]),
                ishape=list(a["ishape"]),
            )
        if op == "Tile":
            return self.emit_as(data, ops.tile, (x.id,), reps=list(a["reps"]))
        if op == "Pad":
            mode = {"mode": a["mode"]} if a.get("mode", "constant") != "constant" else {}
            return self.emit_as(
                data,
                ops.pad,
                (x.id,),
                pads=list(a["pads"]),
                value=float(a.get("value", 0.0)),
                **mode,
            )
        if op == "Resize":
            shape = self.out_shape(data)
            index = [int(i) for axis in a["index"] for i in axis]
            return self.emit_as(data, ops.resize, (x.id,), shape=list(shape), index=index)
        raise AssertionError(op)

    def run(self) -> tuple[Program, dict[str, np.ndarray]]:
        p = self.prog
        for t in self.g.inputs:
            enc = self.g.input_encodings.get(t, {})
            if t in self.g.int_inputs and not enc:
                raise ModelError(
                    f"integer input {t!r} is not used as ids into a constant table; fix it "
                    f"with --fix-input {t}=VALUE if the plan need not take it"
                )
            v = self.emit(ops.input, (), name=t, shape=list(self.g.shapes[t]), **enc)
            self.env[t] = v
            p.inputs.append((t, v.id))
        for node in self.g.topo_nodes():
            data = self.g.nx.nodes[node]
            op = data["op"]
            self.node = node
            handler = _HANDLERS.get(op)
            if handler is None:
                raise ModelError(
                    f"node '{node}' (op {op}) survived the graph passes but has no secure "
                    f"lowering; lowered ops are: {', '.join(sorted(_HANDLERS))}"
                )
            out = handler(self, node, data)
            self.env[data["outputs"][0]] = out
        self.node = "output"
        for t in self.g.outputs:
            v = self.arg("output", t)
            o = self.emit(ops.output, (v.id,), name=t)
            p.outputs.append((t, o.id))
        self.trace.values = {t: v.id for t, v in self.env.items()}
        return p, self.weights


_HANDLERS: dict[str, Callable[[_Lowering, str, dict], Value]] = {
    "Conv": lambda s, n, d: s.lower_linear(n, d, ops.conv),
    "ConvTranspose": lambda s, n, d: s.lower_linear(n, d, ops.conv_transpose),
    "MatMul": lambda s, n, d: s.lower_linear(n, d, ops.matmul),
    "MatMulSS": _Lowering.lower_matmul_ss,
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
    "Resize": lambda s, n, d: s.lower_movement(n, d, "Resize"),
    "Gather": lambda s, n, d: s.lower_movement(n, d, "Gather"),
    "Tile": lambda s, n, d: s.lower_movement(n, d, "Tile"),
    **lower_smooth.HANDLERS,
}


def lower(
    g: Graph, frac_bits: int = 16, public_weights: bool = False, trace: Trace | None = None
) -> tuple[Program, dict[str, np.ndarray]]:
    """Lower a graph that went through `passes.run_all` to a Program and its weights;
    `trace`, if given, is filled with where each tensor went (see `Trace`)."""
    lowering = _Lowering(g, frac_bits, public_weights)
    out = lowering.run()
    if trace is not None:
        trace.values, trace.nodes = lowering.trace.values, lowering.trace.nodes
    return out
