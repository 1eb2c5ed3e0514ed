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

from mpcc.compiler.ir import Instr, Program

# Elementwise on one secret: row i of the output is a function of row i of the input.
_ELEMENTWISE = {"trunc", "relu", "leaky_relu", "clip", "mul_public", "output"}
# Pool windows slide over the trailing (spatial) axes of an [N, C, ...] tensor.
_POOLS = {"maxpool", "avgpool", "sumpool"}


def row_mixing(prog: Program) -> str | None:
    """Why the plan mixes samples across its batch axis (the first offending instruction),
    or None if every output row depends only on the same input row."""
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
        if ins.op == "input":
            continue
        why = _mixes(prog, ins, rowwise)
        if why is not None:
            return f"%{ins.out} = {ins.op}: {why}"
        rowwise.add(ins.out)
    for _, vid in prog.outputs:
        shape = prog.value(vid).shape
        if not shape or shape[0] != batch:
            return f"output %{vid} has shape {list(shape)}, not [{batch}, ...]"
    return None


def rows_independent(prog: Program) -> bool:
    """True if requests of different clients may share one query of this plan."""
    return row_mixing(prog) is None


def _mixes(prog: Program, ins: Instr, rowwise: set[int]) -> str | None:
    out = prog.value(ins.out).shape
    for a in ins.args:
        if a not in rowwise:
            return f"its input %{a} already mixes rows"
        shape = prog.value(a).shape
        same_rank = len(shape) == len(out) or ins.op == "reshape"
        if not same_rank or not out or shape[0] != out[0]:
            return f"input %{a} {list(shape)} and output {list(out)} differ on the batch axis"
    # A matmul's or conv's first weight is contracted; any other weight (a bias, a scale) is
    # broadcast over the output, and one with a full leading axis differs per row.
    broadcast = ins.weights[1:] if ins.op in ("matmul", "conv2d") else ins.weights
    for w in broadcast:
        wshape = prog.weights[w].shape
        if len(wshape) == len(out) and wshape[0] != 1:
            return f"weight {w} {list(wshape)} differs per row"
    a = ins.attrs
    if ins.op in _ELEMENTWISE or ins.op in ("add", "sub", "mul", "add_w", "mul_w"):
        return None
    if ins.op in ("matmul", "conv2d"):
        # matmul contracts the last axis; conv2d works per image of an [N, C, H, W] tensor.
        return None if len(out) >= 2 else "a product on a vector has no batch axis"
    if ins.op in _POOLS:
        return None if len(out) >= 3 else "a pool needs [N, C, ...] input"
    if ins.op == "reshape":
        return None  # dim 0 unchanged (checked above): row-major keeps each row's elements
    if ins.op == "transpose":
        return None if a["perm"][0] == 0 else f"perm {a['perm']} moves the batch axis"
    if ins.op == "concat":
        return None if a["axis"] % len(out) != 0 else "it joins along the batch axis"
    if ins.op == "slice":
        axes = [ax % len(out) for ax in a["axes"]]
        return None if 0 not in axes else "it slices the batch axis"
    if ins.op == "pad":
        r = len(out)
        return None if a["pads"][0] == 0 and a["pads"][r] == 0 else "it pads the batch axis"
    return f"no row rule for op {ins.op!r}"
