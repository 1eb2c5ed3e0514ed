"""Everything that stops a model from compiling, gathered into one report.

Each check (`frontends.onnx_shapes.static_problems`, `supported.node_blockers`, `legalize`)
records a `Blocker` instead of stopping at the first; `raise_if_any` raises one ModelError
grouping them by kind and op, with counts, node names and one line per kind on what to do. A
single blocker is reported as its own message.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from mpcc.errors import ModelError

UNSUPPORTED_OP = "unsupported op"
NEEDS_CONSTANT = "computed where a constant is needed"
ATTRIBUTE = "unsupported attribute, mode or shape"
UNFIXED = "unfixed dimension"

ADVICE = {
    UNSUPPORTED_OP: "mpcc has no secure form of these ops: replace them in the model, or see "
    "the supported ops (python -m mpcc.optable)",
    NEEDS_CONSTANT: "make these inputs constants (initializers, or computed from constants "
    "only) when exporting; with a fixed input shape exporters fold most shape arithmetic",
    ATTRIBUTE: "re-export with the attributes, modes and ranks the op table lists for the op",
    UNFIXED: "fix the input shapes with --input-shape NAME=DIMS (input_shape= in Python)",
}
ORDER = (UNSUPPORTED_OP, NEEDS_CONSTANT, ATTRIBUTE, UNFIXED)
_NAMES_SHOWN = 8


@dataclass(frozen=True)
class Blocker:
    """One reason the model cannot compile, at one node."""

    kind: str  # one of ORDER
    op: str
    node: str
    detail: str  # the full message for this node


def report(blockers: list[Blocker]) -> str:
    """The grouped, sorted report of several blockers (one blocker: its own message)."""
    if len(blockers) == 1:
        return blockers[0].detail
    by_kind: dict[str, dict[str, list[Blocker]]] = defaultdict(lambda: defaultdict(list))
    for b in blockers:
        by_kind[b.kind][b.op].append(b)
    kinds = sorted(by_kind, key=lambda k: ORDER.index(k) if k in ORDER else len(ORDER))
    lines = [
        f"the model cannot be compiled: {len(blockers)} blockers "
        f"({', '.join(f'{sum(map(len, by_kind[k].values()))} {k}' for k in kinds)})"
    ]
    for kind in kinds:
        ops = by_kind[kind]
        lines.append(f"{kind} ({sum(map(len, ops.values()))}):")
        for op in sorted(ops, key=lambda o: (-len(ops[o]), o)):
            found = sorted(ops[op], key=lambda b: b.node)
            if kind == UNSUPPORTED_OP:
                names = ", ".join(repr(b.node) for b in found[:_NAMES_SHOWN])
                extra = len(found) - _NAMES_SHOWN
                more = f", ... ({extra} more)" if extra > 0 else ""
                lines.append(f"  {op} x{len(found)}: {names}{more}")
            else:
                lines.append(f"  {op} x{len(found)}:")
                lines += [f"    {b.detail}" for b in found]
        advice = ADVICE.get(kind, "see the messages above")
        if kind == UNSUPPORTED_OP:
            from mpcc.compiler.supported import SUPPORTED_OPS  # supported imports this module

            advice += f". Supported ops: {', '.join(sorted(SUPPORTED_OPS))}"
        lines.append(f"  what to do: {advice}")
    return "\n".join(lines)


def raise_if_any(blockers: list[Blocker]) -> None:
    """Raise one ModelError reporting every blocker, if there is any."""
    if blockers:
        raise ModelError(report(blockers))
