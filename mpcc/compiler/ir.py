"""The secure-operation IR: a flat, typed list of instructions with fixed shapes.

In the spirit of JAX's jaxpr, a whole model is a short list of equations that prints on
one screen. Every value has a static shape, a fixed-point scale (its number of fractional
bits) and a visibility; every instruction is one secure operation. Weights are named
operands stored outside the IR (the IR is public, the weights are the model owner's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mpcc.compiler.ops import Op

SECRET = "secret"  # additively shared between P0 and P1
PUBLIC = "public"  # known to every party
CLIENT = "client"  # revealed to the client only

# The ring budget. Every secure comparison and truncation needs |x| < 2^62, so a value at
# scale s holds |v| < 2^(62 - s) in real terms. The lowering keeps every value within
# 2f + SLACK_BITS fractional bits (a product of two values at f bits, plus the few bits a
# power-of-two window sum adds), and f within [MIN_FRAC_BITS, MAX_FRAC_BITS]: fewer bits
# lose precision, more shrink the range of values at 2f + SLACK_BITS (|v| < 2^6 at f = 24)
# below what ordinary networks need.
SLACK_BITS = 8
MIN_FRAC_BITS, MAX_FRAC_BITS = 8, 24


def max_scale(frac_bits: int) -> int:
    """The most fractional bits any value of a plan at `frac_bits` may carry."""
    return 2 * frac_bits + SLACK_BITS


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
    """One secure operation: `out = op args, weights  attrs` (op: a declared `ops.Op`)."""

    op: Op
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
        op: Op,
        args: tuple[int, ...] = (),
        weights: tuple[str, ...] = (),
        **attrs: Any,
    ) -> Value:
        """Append an instruction and return its output value, typed by the op's rule.

        Raises `ops.RuleError` if the operands or attributes break the rule."""
        from mpcc.compiler.ops.base import Site

        ins = Instr(op, len(self.values), tuple(args), tuple(weights), dict(attrs))
        t = op.infer(Site(self, ins))
        out = self.new_value(t.shape, t.scale, t.vis)
        self.instrs.append(ins)
        return out

    @property
    def batch(self) -> int:
        """The leading dimension of the first input: how many samples one query holds."""
        return self.values[self.inputs[0][1]].shape[0]

    def text(self, costs: list[Any] | None = None) -> str:
        """The program as readable text, one instruction per line (with costs if given)."""
        lines = [f"program {self.name}  ring=2^64 f={self.frac_bits}"]
        for i, ins in enumerate(self.instrs):
            line = f"  {self.lhs(ins):<32} = {rhs(ins)}"
            if costs is not None:
                c = costs[i]
                line = f"{line:<84} {c.rounds:>3} rnd {_kb(c.sent):>10}"
            lines.append(line)
        return "\n".join(lines)

    def lhs(self, ins: Instr) -> str:
        """`%5 : secret [1,20,24,24] @32`: the value an instruction defines."""
        v = self.values[ins.out]
        return f"%{v.id} : {v.vis} [{','.join(map(str, v.shape))}] @{v.scale}"


def rhs(ins: Instr) -> str:
    """`conv %0, w0  p=1,1,1,1`: an instruction's op, operands and printed attributes."""
    operands = [f"%{a}" for a in ins.args] + list(ins.weights)
    schema = ins.op.attrs
    shown = []
    for k, val in ins.attrs.items():
        spec = schema.get(k)
        if spec is not None and (spec.hide is ... or spec.hide == val or spec.hides(val)):
            continue
        shown.append(f"{spec.short if spec and spec.short else k}={_fmt(val, k == 'pads')}")
    return " ".join(p for p in (ins.op.name, ", ".join(operands), " ".join(shown)) if p)


def _fmt(val: Any, pads: bool = False) -> str:
    if isinstance(val, list | tuple):
        if pads or len(val) == 4:  # pads: begins, then ends (top,left,bottom,right)
            return ",".join(map(str, val))
        return "x".join(map(str, val)) if val else "()"
    if isinstance(val, str):
        return val
    return str(val)


def _kb(n: int) -> str:
    return f"{n / 1000:.1f} KB" if n else "-"
