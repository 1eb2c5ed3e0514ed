"""The IR verifier: a program checked against its ops' declarations, wherever a plan enters.

In the spirit of JAX's `check_jaxpr`: it runs after lowering, when a plan file is loaded and
in every party when a plan is deployed, so a bad plan is refused up front with a message that
names the instruction and the rule it breaks, never later as a `KeyError` mid-session. The
rules, each tested with a hand-corrupted plan:

- `ids`: value i has id i; every instruction defines one new value, and every value is
  defined by exactly one instruction;
- `defined before use`: every operand is defined by an earlier instruction;
- `known op`: every op is a declared IR op;
- `operands`: the number of secret operands and weights the op takes, every weight declared;
- `attributes`: exactly the op's attributes, each of its kind and within its bounds;
- `type`: the output's shape, scale and visibility are what the op's rule gives;
- `ring budget`: f within its bounds and every value within 2f + SLACK_BITS fractional bits;
- `inputs and outputs`: the plan's input and output lists match its input/output
  instructions;
- `weights`: every weight referenced exists, is declared with a shape and a scale, is masked
  (the first weight of a bilinear op) or read as it is but not both, and (given the owner's
  arrays) has its shape;
- `public_weights` is a bool (it decides whether weights are opened or shared).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from mpcc.compiler.ir import (
    CLIENT,
    MAX_FRAC_BITS,
    MIN_FRAC_BITS,
    SECRET,
    Instr,
    Program,
    max_scale,
    rhs,
)
from mpcc.compiler.ops import REGISTRY, Op, RuleError, Site
from mpcc.errors import PlanError


class VerifyError(PlanError):
    """A program breaks a rule of the IR; `index` is the instruction (None: the program)."""

    def __init__(self, message: str, rule: str, index: int | None = None) -> None:
        super().__init__(message)
        self.rule = rule
        self.index = index


def verify(prog: Program, weights: Mapping[str, np.ndarray] | None = None) -> None:
    """Check `prog` (and the owner's `weights`, if given); raise VerifyError on the first
    broken rule."""
    _program(prog)
    masked = {
        i.weights[0]
        for i in prog.instrs
        if isinstance(i.op, Op)
        and i.op.masks_weight
        and i.weights
        and isinstance(i.weights[0], str)
    }
    defined: set[int] = set()
    for i, ins in enumerate(prog.instrs):
        try:
            _instr(prog, ins, defined, masked)
        except RuleError as e:
            rule = e.args[1] if len(e.args) > 1 else "type"
            raise VerifyError(
                f"plan check: instruction {i} ({_describe(prog, ins)}): {e.args[0]} [rule: {rule}]",
                rule,
                i,
            ) from None
        defined.add(ins.out)
    _io(prog, defined)
    if weights is not None:
        _weights(prog, weights)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _fail(reason: str, rule: str) -> RuleError:
    return RuleError(reason, rule)


def _describe(prog: Program, ins: Instr) -> str:
    try:
        return f"%{ins.out} = {rhs(ins)}"
    except Exception:  # noqa: BLE001 - a corrupted instruction may not even print
        return repr(ins)


def _program_error(reason: str, rule: str) -> VerifyError:
    return VerifyError(f"plan check: {reason} [rule: {rule}]", rule)


def _program(prog: Program) -> None:
    if not isinstance(prog.public_weights, bool):
        raise _program_error(f"public_weights is {prog.public_weights!r}, not a bool", "weights")
    f = prog.frac_bits
    if not _is_int(f) or not MIN_FRAC_BITS <= f <= MAX_FRAC_BITS:
        raise _program_error(
            f"frac_bits {f!r} is outside [{MIN_FRAC_BITS}, {MAX_FRAC_BITS}]", "ring budget"
        )
    for k, v in enumerate(prog.values):
        if v.id != k:
            raise _program_error(f"value {k} carries id {v.id}", "ids")
        if v.vis not in (SECRET, CLIENT):
            raise _program_error(f"value %{k} has visibility {v.vis!r}", "type")
        _shape_and_scale(f"value %{k}", v.shape, v.scale, f, "type")
    for name, spec in prog.weights.items():
        if spec.name != name:
            raise _program_error(f"weight {name!r} is declared as {spec.name!r}", "weights")
        _shape_and_scale(f"weight {name}", spec.shape, spec.scale, f, "weights")


def _shape_and_scale(what: str, shape: tuple, scale: object, f: int, shape_rule: str) -> None:
    """A declared shape of non-negative ints, and a scale within the ring's budget."""
    if not all(_is_int(d) and d >= 0 for d in shape):
        raise _program_error(f"{what} has shape {list(shape)}", shape_rule)
    if not _is_int(scale) or not 0 <= scale <= max_scale(f):
        raise _program_error(
            f"{what} carries {scale!r} fractional bits; at f = {f} it may carry 0..{max_scale(f)}",
            "ring budget",
        )


def _instr(prog: Program, ins: Instr, defined: set[int], masked: set[str]) -> None:
    op = ins.op
    if not isinstance(op, Op) or REGISTRY.get(op.name) is not op:
        raise _fail(f"unknown op {op!r}", "known op")
    if not _is_int(ins.out) or not 0 <= ins.out < len(prog.values):
        raise _fail(f"defines %{ins.out}, which is not a value of the plan", "ids")
    if ins.out in defined:
        raise _fail(f"defines %{ins.out} a second time", "ids")
    for a in ins.args:
        if not _is_int(a) or not 0 <= a < len(prog.values):
            raise _fail(f"reads %{a}, which is not a value of the plan", "defined before use")
        if a not in defined:
            raise _fail(f"reads %{a}, which is not defined before it", "defined before use")
        if prog.values[a].vis != SECRET:
            raise _fail(f"reads %{a}, which is not a secret", "operands")
    lo, hi = op.args
    if len(ins.args) < lo or (hi is not None and len(ins.args) > hi):
        want = f"{lo}" if lo == hi else f"{lo}..{'' if hi is None else hi}"
        raise _fail(f"{op.name} takes {want} operands, not {len(ins.args)}", "operands")
    lo, hi = op.weights
    if not lo <= len(ins.weights) <= hi:
        want = f"{lo}" if lo == hi else f"{lo}..{hi}"
        raise _fail(f"{op.name} takes {want} weights, not {len(ins.weights)}", "operands")
    for k, w in enumerate(ins.weights):
        if not isinstance(w, str) or w not in prog.weights:
            raise _fail(f"uses weight {w!r}, which the plan does not declare", "weights")
        if w in masked and not (op.masks_weight and k == 0):
            raise _fail(
                f"reads weight {w} as it is, but a bilinear op masks it (F = W - B): a "
                "constant used both ways needs two weights",
                "weights",
            )
    unknown = sorted(set(ins.attrs) - set(op.attrs))
    if unknown:
        raise _fail(
            f"{op.name} has no attribute {', '.join(unknown)} "
            f"(it takes {', '.join(op.attrs) or 'none'})",
            "attributes",
        )
    for name, spec in op.attrs.items():
        why = spec.problem(ins.attrs.get(name))
        if why:
            raise _fail(f"attribute {name} {why}", "attributes")
    try:
        t = op.infer(Site(prog, ins))
    except RuleError:
        raise
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as e:
        raise _fail(f"{op.name}'s rule cannot read it ({type(e).__name__}: {e})", "type") from None
    v = prog.values[ins.out]
    if (tuple(v.shape), v.scale, v.vis) != (t.shape, t.scale, t.vis):
        raise _fail(
            f"the output is declared {v.vis} {list(v.shape)} @{v.scale}, but {op.name}'s rule "
            f"gives {t.vis} {list(t.shape)} @{t.scale}",
            "type",
        )


def _io(prog: Program, defined: set[int]) -> None:
    missing = [k for k in range(len(prog.values)) if k not in defined]
    if missing:
        raise _program_error(f"value %{missing[0]} is never defined", "ids")
    for kind, listed in (("input", prog.inputs), ("output", prog.outputs)):
        op = REGISTRY[kind]
        found = [(i.attrs.get("name"), i.out) for i in prog.instrs if i.op is op]
        if [tuple(p) for p in listed] != found:
            raise _program_error(
                f"the plan lists {kind}s {[tuple(p) for p in listed]}, but its {kind} "
                f"instructions are {found}",
                "inputs and outputs",
            )
        if not found:
            raise _program_error(f"the plan has no {kind}", "inputs and outputs")
        names = [n for n, _ in found]
        if len(set(names)) != len(names):
            raise _program_error(f"{kind} names repeat: {names}", "inputs and outputs")


def _weights(prog: Program, weights: Mapping[str, np.ndarray]) -> None:
    missing = sorted(set(prog.weights) - set(weights))
    if missing:
        raise _program_error(f"no array for weight {', '.join(missing)}", "weights")
    for name, spec in prog.weights.items():
        shape = tuple(np.shape(weights[name]))
        if shape != spec.shape:
            raise _program_error(
                f"weight {name} has shape {list(shape)}, the plan declares {list(spec.shape)}",
                "weights",
            )
