"""Build a one-input plan around a smooth function (tests, benchmarks and docs)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mpcc.compiler import ops
from mpcc.compiler.approx.core import Emitter, ProgramEmitter, to_scale
from mpcc.compiler.ir import Program, Value


def plan_of(
    fn: Callable[[Emitter, Value], Value],
    shape: tuple[int, ...],
    frac_bits: int = 16,
    out_scale: int | None = None,
    name: str = "fn",
) -> Program:
    """A Program computing fn on one input of `shape`, output at `out_scale` (default f)."""
    prog = Program(name=name, frac_bits=frac_bits)
    em = ProgramEmitter(prog)
    x = prog.emit(ops.input, (), name="x", shape=list(shape))
    prog.inputs.append(("x", x.id))
    y = fn(em, x)
    y = to_scale(em, y, frac_bits if out_scale is None else out_scale)
    o = prog.emit(ops.output, (y.id,), name="y")
    prog.outputs.append(("y", o.id))
    return prog


def run_clear(prog: Program, x: np.ndarray) -> np.ndarray:
    """The cleartext interpreter's (decoded) output for input x."""
    from mpcc.runtime.cleartext import run_encoded
    from mpcc.runtime.fixedpoint import decode, encode

    raw = run_encoded(prog, {}, {"x": encode(x, prog.frac_bits)})["y"]
    return decode(raw, prog.value(prog.outputs[0][1]).scale)
