"""The secure-operation IR: a flat, typed list of instructions with fixed shapes.

In the spirit of JAX's jaxpr, a whole model is a short list of equations that prints on
one screen. Every value has a static shape, a fixed-point scale (its number of fractional
bits) and a visibility; every instruction is one secure operation. Weights are named
operands stored outside the IR (the IR is public, the weights are the model owner's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

SECRET = "secret"  # additively shared between P0 and P1
PUBLIC = "public"  # known to every party
CLIENT = "client"  # revealed to the client only

# op -> (inputs, one-line meaning). The executor and the cleartext interpreter implement
# each of these; the cost model prices each of them (mpcc.compiler.costmodel).
OPS: dict[str, str] = {
    "input": "a client's input, secret-shared by the client",
    "output": "reveal a value to the client (only the client reconstructs it)",
    "matmul": "x[..., K] @ W[K, N] (+ b): Beaver triple, W masked once",
    "conv2d": "2-D convolution with weight W (+ b): Beaver triple, W masked once",
    "mul_w": "elementwise x * w with a broadcast weight: Beaver triple, w masked once",
    "add_w": "x + b with a broadcast weight (local)",
    "add": "x + y of two secrets (local)",
    "sub": "x - y of two secrets (local)",
    "mul": "x * y of two secrets, elementwise: fresh Beaver triple",
    "mul_public": "x * factor: multiply by a public integer (local)",
    "trunc": "drop `shift` fractional bits (known-MSB truncation, 1 round)",
    "relu": "max(x, 0), with `shift` fractional bits truncated in the same protocol",
    "leaky_relu": "x if x > 0 else alpha * x",
    "clip": "min(max(x, lo), hi), with `shift` bits truncated in the same protocol",
    "maxpool": "max over each window: a tournament of comparisons",
    "avgpool": "window mean: a local sum, the divisor folded into the scale or a public product",
    "sumpool": "window sum (local)",
    "reshape": "change the shape (local)",
    "transpose": "permute axes (local)",
    "concat": "join along an axis (local)",
    "slice": "strided slice (local)",
    "pad": "pad with a constant (local)",
}


@dataclass(frozen=True)
class Value:
    """A typed SSA value: `%id : vis [shape] @scale`."""

    id: int
    shape: tuple[int, ...]
    scale: int
    vis: str = SECRET

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Instr:
    """One secure operation: `out = op args, weights  attrs`."""

    op: str
    out: int
    args: tuple[int, ...] = ()
    weights: tuple[str, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WeightSpec:
    """A named weight operand: its shape, the scale it is encoded at, and the ONNX tensor it
    was made from (after folding)."""

    name: str
    shape: tuple[int, ...]
    scale: int
    source: str = ""

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass
class Program:
    """A compiled model: values, instructions, and the weights they refer to."""

    name: str
    frac_bits: int
    values: list[Value] = field(default_factory=list)
    instrs: list[Instr] = field(default_factory=list)
    weights: dict[str, WeightSpec] = field(default_factory=dict)
    inputs: list[tuple[str, int]] = field(default_factory=list)  # (name, value id)
    outputs: list[tuple[str, int]] = field(default_factory=list)
    public_weights: bool = False
    notes: list[str] = field(default_factory=list)

    def value(self, vid: int) -> Value:
        return self.values[vid]

    def new_value(self, shape: tuple[int, ...], scale: int, vis: str = SECRET) -> Value:
        v = Value(len(self.values), tuple(int(d) for d in shape), int(scale), vis)
        self.values.append(v)
        return v

    def emit(
        self,
        op: str,
        args: tuple[int, ...],
        out_shape: tuple[int, ...],
        out_scale: int,
        weights: tuple[str, ...] = (),
        vis: str = SECRET,
        **attrs: Any,
    ) -> Value:
        """Append an instruction computing a new value, and return that value."""
        if op not in OPS:
            raise ValueError(f"unknown IR op {op!r}")
        out = self.new_value(out_shape, out_scale, vis)
        self.instrs.append(Instr(op, out.id, tuple(args), tuple(weights), dict(attrs)))
        return out

    @property
    def batch(self) -> int:
        """The leading dimension of the first input: how many samples one query holds."""
        return self.values[self.inputs[0][1]].shape[0]

    def text(self, costs: list[Any] | None = None) -> str:
        """The program as readable text, one instruction per line (with costs if given)."""
        lines = [f"program {self.name}  ring=2^64 f={self.frac_bits}"]
        for i, ins in enumerate(self.instrs):
            v = self.values[ins.out]
            lhs = f"%{v.id} : {v.vis} [{','.join(map(str, v.shape))}] @{v.scale}"
            operands = [f"%{a}" for a in ins.args] + list(ins.weights)
            attrs = " ".join(
                f"{_SHORT.get(k, k)}={_fmt(val)}"
                for k, val in ins.attrs.items()
                if _DEFAULTS.get(k) != val
            )
            rhs = " ".join(p for p in (ins.op, ", ".join(operands), attrs) if p)
            line = f"  {lhs:<32} = {rhs}"
            if costs is not None:
                c = costs[i]
                line = f"{line:<84} {c.rounds:>3} rnd {_kb(c.sent):>10}"
            lines.append(line)
        return "\n".join(lines)


# Attributes at these values are not printed; these are printed under a short name.
_DEFAULTS: dict[str, Any] = {
    "strides": [1, 1],
    "pads": [0, 0, 0, 0],
    "dilations": [1, 1],
    "groups": 1,
    "ceil_mode": 0,
}
_SHORT = {"kernel": "k", "strides": "s", "pads": "p", "dilations": "d", "count_include_pad": "incl"}


def _fmt(val: Any) -> str:
    if isinstance(val, list | tuple):
        if len(val) == 4:  # pads: top,left,bottom,right
            return ",".join(map(str, val))
        return "x".join(map(str, val)) if val else "()"
    if isinstance(val, str):
        return val
    return str(val)


def _kb(n: int) -> str:
    return f"{n / 1000:.1f} KB" if n else "-"
