"""Does a plan keep samples apart? The check that decides whether requests may share a query.

A plan's batch axis is dim 0 of its input. If every instruction computes row i of its output
from row i of its inputs only, the plan is *row-independent*: rows of different clients can
ride in one query, and each client's answer depends on its own rows alone. A plan that mixes
rows (a Transpose or Reshape across dim 0, a MatMul on a vector, a weight that differs per
row, ...) would let one client's input leak into another's answer, so the serving layer runs
each request of such a plan in a query of its own, and the runtime refuses to pad it.

The check is a dataflow pass over the public IR, so it is covered by the plan hash: no party
trusts a flag that could disagree with the instructions.
"""

from __future__ import annotations

from mpcc.compiler import ops
from mpcc.compiler.ir import Program
from mpcc.compiler.ops import Site


def row_mixing(prog: Program) -> str | None:
    """Why the plan mixes samples across its batch axis (the first offending instruction),
    or None if every output row depends only on the same input row. Each op's `rows` rule
    judges its own instructions."""
    if not prog.inputs:
        return "the plan has no input"
    batch = prog.batch
    rowwise: set[int] = set()
    for _, vid in prog.inputs:
        shape = prog.value(vid).shape
        if len(shape) < 1 or shape[0] != batch:
            return f"input %{vid} has shape {list(shape)}, not [{batch}, ...]"
        rowwise.add(vid)
    for ins in prog.instrs:
        if ins.op is ops.input:
            continue
        mixed = next((a for a in ins.args if a not in rowwise), None)
        why = (
            f"its input %{mixed} already mixes rows"
            if mixed is not None
            else ins.op.rows(Site(prog, ins))
        )
        if why is not None:
            return f"%{ins.out} = {ins.op.name}: {why}"
        rowwise.add(ins.out)
    for _, vid in prog.outputs:
        shape = prog.value(vid).shape
        if not shape or shape[0] != batch:
            return f"output %{vid} has shape {list(shape)}, not [{batch}, ...]"
    return None


def rows_independent(prog: Program) -> bool:
    """True if requests of different clients may share one query of this plan."""
    return row_mixing(prog) is None
