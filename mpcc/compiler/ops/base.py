"""What an IR op is: one declared object with its operands, attribute schema and rules.

In the spirit of JAX's `Primitive` (`jax/_src/core.py`), an op is a small named object, and
everything the compiler knows about it is declared beside it, once:

- `args`, `weights`: how many secret operands and weight operands it takes;
- `attrs`: the attribute schema (kind, range, whether it may be absent, how it prints);
- `infer`: the shape, scale and visibility rule: the output type from the operands' types
  and the attributes, raising `RuleError` with a reason when they break a rule;
- `calls`: the interactive protocol invocations it makes, in order (`mpcc.compiler.calls`):
  the dealer prepares material for exactly these, the executor consumes it in this order,
  and the cost model prices them;
- `rows`: whether row i of its output depends on row i of its inputs only (batching);
- `masks_weight`: whether its first weight is masked once per session (F = W - B).

The runtime registers each op's evaluation rule (cleartext and secure) in its own table keyed
by these objects (`mpcc.runtime.rules`); a test checks that every op has every rule. The IR
verifier (`mpcc.compiler.verify`) checks a program against these declarations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mpcc.compiler.calls import Call
from mpcc.compiler.costs import FREE, Cost
from mpcc.compiler.ir import SECRET

if TYPE_CHECKING:
    from mpcc.compiler.ir import Instr, Program, Value, WeightSpec


class RuleError(ValueError):
    """An instruction breaks one of its op's rules; the message says which and why."""


# ---- attribute schema --------------------------------------------------------------------


EVERY_1 = object()  # `Attr.hide`: an int list of ones, of any length
EVERY_0 = object()  # `Attr.hide`: an int list of zeros, of any length


@dataclass(frozen=True)
class Attr:
    """One attribute: its kind, bounds, and how it prints in the IR text.

    kinds: "int", "ints" (a list of ints, `length` long if given), "float", "floats" (a
    non-empty list of finite numbers), "str".
    `lo`/`hi` bound an int or every element of an int list; `choices` a string; `optional`
    allows the attribute to be absent or None; `hide` is a value not printed (`...`: never
    printed; `EVERY_1` / `EVERY_0`: a list of ones / zeros of any length, a window's default
    over any number of axes); `short` is the name it prints under."""

    kind: str
    lo: int | None = None
    hi: int | None = None
    length: int | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False
    hide: Any = None
    short: str | None = None

    def hides(self, value: Any) -> bool:
        """Whether `value` is a default that the IR text leaves out."""
        if self.hide is EVERY_1 or self.hide is EVERY_0:
            fill = 1 if self.hide is EVERY_1 else 0
            return isinstance(value, list | tuple) and all(v == fill for v in value)
        return False

    def problem(self, value: Any) -> str | None:
        """Why `value` is not valid for this attribute, or None."""
        if value is None:
            return None if self.optional else "is missing"
        if self.kind == "int":
            return _int_problem(value, self.lo, self.hi)
        if self.kind == "ints":
            if not isinstance(value, list | tuple):
                return f"must be a list of ints, not {value!r}"
            if self.length is not None and len(value) != self.length:
                return f"must have {self.length} elements, not {len(value)}"
            for v in value:
                why = _int_problem(v, self.lo, self.hi)
                if why:
                    return f"element {v!r} {why}"
            return None
        if self.kind == "float":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            return None if ok and math.isfinite(value) else f"must be a finite number: {value!r}"
        if self.kind == "floats":
            if not isinstance(value, list | tuple) or not value:
                return f"must be a non-empty list of numbers, not {value!r}"
            for v in value:
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    return f"element {v!r} must be a finite number"
            return None
        if self.kind == "str":
            if not isinstance(value, str):
                return f"must be a string, not {value!r}"
            if self.choices and value not in self.choices:
                return f"must be one of {', '.join(self.choices)}, not {value!r}"
            return None
        raise AssertionError(self.kind)


def _int_problem(v: Any, lo: int | None, hi: int | None) -> str | None:
    if not isinstance(v, int | np.integer) or isinstance(v, bool):
        return f"must be an int, not {v!r}"
    if lo is not None and v < lo:
        return f"must be >= {lo}, got {v}"
    if hi is not None and v > hi:
        return f"must be <= {hi}, got {v}"
    return None


def Int(lo: int | None = None, hi: int | None = None, **kw: Any) -> Attr:  # noqa: N802
    """An int attribute in [lo, hi]."""
    return Attr("int", lo=lo, hi=hi, **kw)


def Ints(length: int | None = None, lo: int | None = None, **kw: Any) -> Attr:  # noqa: N802
    """A list of ints (`length` of them, if given), each >= lo."""
    return Attr("ints", lo=lo, length=length, **kw)


def Float(**kw: Any) -> Attr:  # noqa: N802
    """A finite number."""
    return Attr("float", **kw)


def Floats(**kw: Any) -> Attr:  # noqa: N802
    """A non-empty list of finite numbers."""
    return Attr("floats", **kw)


def Str(*choices: str, **kw: Any) -> Attr:  # noqa: N802
    """A string, one of `choices` if any are given."""
    return Attr("str", choices=choices, **kw)


# ---- the op -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Type:
    """The type of an instruction's output: shape, fixed-point scale, visibility."""

    shape: tuple[int, ...]
    scale: int
    vis: str = SECRET


@dataclass(frozen=True)
class Site:
    """An instruction in its program: what a rule reads (operand types, weights, attrs)."""

    prog: Program
    ins: Instr

    @property
    def args(self) -> list[Value]:
        return [self.prog.value(a) for a in self.ins.args]

    @property
    def x(self) -> Value:
        return self.prog.value(self.ins.args[0])

    @property
    def weights(self) -> list[WeightSpec]:
        return [self.prog.weights[w] for w in self.ins.weights]

    @property
    def attrs(self) -> dict[str, Any]:
        return self.ins.attrs

    @property
    def f(self) -> int:
        return self.prog.frac_bits

    @property
    def out(self) -> Value:
        return self.prog.value(self.ins.out)


def no_calls(site: Site) -> list[Call]:
    """A local op's calls: none."""
    return []


def no_row_rule(site: Site) -> str | None:
    """An op that declares no row rule is taken to mix rows (the safe answer)."""
    return f"no row rule for op {site.ins.op.name!r}"


@dataclass(frozen=True, eq=False)
class Op:
    """One IR operation and the compiler's rules for it (see the module docstring)."""

    name: str
    doc: str
    infer: Callable[[Site], Type]
    args: tuple[int, int | None] = (1, 1)  # (min, max) secret operands; max None: any
    weights: tuple[int, int] = (0, 0)  # (min, max) weight operands
    attrs: Mapping[str, Attr] = field(default_factory=dict)
    calls: Callable[[Site], list[Call]] = no_calls
    rows: Callable[[Site], str | None] = no_row_rule
    masks_weight: bool = False
    local_macs: Callable[[Site], int] | None = None  # ring MACs of a local evaluation

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<op {self.name}>"

    def cost(self, site: Site) -> Cost:
        """Online rounds and bytes, dealer bytes and MACs of one evaluation."""
        total = FREE
        if self.local_macs is not None:
            total = Cost(macs=self.local_macs(site))
        for call in self.calls(site):
            total = total + call.cost()
        return total


REGISTRY: dict[str, Op] = {}


def declare(op: Op) -> Op:
    """Register an op under its name (once)."""
    if op.name in REGISTRY:
        raise ValueError(f"IR op {op.name!r} declared twice")
    REGISTRY[op.name] = op
    return op


def lookup(name: str) -> Op:
    """The op called `name`; RuleError naming the known ops if there is none."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        raise RuleError(f"unknown op {name!r} (known: {', '.join(sorted(REGISTRY))})") from None


# ---- helpers the rules share ------------------------------------------------------------

WEIGHTS = "weights"  # the verifier rule of a weight operand's shape or scale


def require(cond: bool, reason: str, rule: str = "type") -> None:
    """Raise RuleError(reason) unless `cond`; `rule` names the verifier rule it belongs to
    ("type": shapes, scales, visibility; "weights": a weight operand's shape or scale)."""
    if not cond:
        raise RuleError(reason, rule)


def broadcast(*shapes: Sequence[int], rule: str = "type") -> tuple[int, ...]:
    """numpy's broadcast of `shapes`, or RuleError."""
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*(tuple(s) for s in shapes)))
    except ValueError:
        listed = " and ".join(str(list(s)) for s in shapes)
        raise RuleError(f"shapes {listed} do not broadcast", rule) from None


def same_as_input(site: Site) -> Type:
    x = site.x
    return Type(x.shape, x.scale)


def weight_broadcasts_to_input(site: Site) -> None:
    """The first weight broadcasts to the input's shape (an elementwise weight)."""
    x, w = site.x, site.weights[0]
    require(
        broadcast(x.shape, w.shape, rule=WEIGHTS) == x.shape,
        f"weight {w.name} {list(w.shape)} must broadcast to the input {list(x.shape)}",
        WEIGHTS,
    )


def weight_scale(site: Site, k: int, scale: int, what: str) -> None:
    """The k-th weight must be encoded at `scale`."""
    w = site.weights[k]
    require(w.scale == scale, f"{what} {w.name} is at scale {w.scale}, expected {scale}", WEIGHTS)


def window_lengths(attrs: Mapping[str, Any], rank: int) -> None:
    """A window's per-axis attributes have one value per spatial axis (pads: two)."""
    for k in ("kernel", "strides", "dilations", "pads"):
        if attrs.get(k) is not None:
            n = 2 * rank if k == "pads" else rank
            msg = f"{k} {list(attrs[k])} needs {n} values for {rank} spatial axes"
            require(len(attrs[k]) == n, msg, "attributes")
