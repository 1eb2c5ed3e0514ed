"""The table of supported ONNX ops and what each costs securely, generated from the code.

Every op in :data:`mpcc.compiler.supported.SUPPORTED_OPS` is compiled in a tiny sample model (one
per case, e.g. Mul by a constant or of two secrets) through the real passes and lowering; the
IR instructions it leaves and their rounds come from the lowered program and the cost model
(:func:`mpcc.compiler.costmodel.estimate`). Context nodes a case needs (the Conv before a
folded BatchNormalization) are compiled alone and subtracted. A supported op without a sample
is an error, so the table cannot fall behind the compiler.

A second table lists the secure IR's ops themselves, generated from their declarations
(`mpcc.compiler.ops`): operands, attributes and meaning.

    python -m mpcc.optable                      # print the markdown tables
    python -m mpcc.optable --write README.md    # replace them between the markers in files
    python -m mpcc.optable --check README.md    # exit 1 if a file's copy is stale
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mpcc.compiler import calls, ops
from mpcc.compiler.costmodel import estimate
from mpcc.compiler.pipeline import compile_onnx
from mpcc.compiler.supported import SUPPORTED_OPS
from mpcc.optable_samples import PREV, SAMPLES, SECRET, Sample

__all__ = [
    "START",
    "END",
    "IR_START",
    "IR_END",
    "Sample",
    "SAMPLES",
    "Row",
    "rows",
    "table",
    "ir_table",
    "replace_table",
]


START = "<!-- optable:start -->"
END = "<!-- optable:end -->"
IR_START = "<!-- irops:start -->"
IR_END = "<!-- irops:end -->"


def _model(sample: Sample, upto: int) -> onnx.ModelProto:
    nodes, prev = [], SECRET
    for i, (op, extra, attrs) in enumerate(sample.nodes[:upto]):
        out = f"t{i}"
        named = PREV in extra or (sample.ids and SECRET in extra)
        inputs = [prev if t == PREV else t for t in extra] if named else [prev, *extra]
        nodes.append(helper.make_node(op, inputs, [out], f"{op.lower()}_{i}", **attrs))
        prev = out
    used = {t for n in nodes for t in n.input}
    outputs = [n.output[0] for n in nodes if n.output[0] not in used]
    inits = [
        numpy_helper.from_array(np.asarray(v), k) for k, v in sample.consts.items() if k in used
    ]
    graph = helper.make_graph(
        nodes,
        f"{sample.op}_sample",
        [
            helper.make_tensor_value_info(
                SECRET, TensorProto.INT64 if sample.ids else TensorProto.FLOAT, list(sample.shape)
            )
        ],
        [helper.make_tensor_value_info(t, TensorProto.UNDEFINED, None) for t in outputs],
        inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", sample.opset)])
    m.ir_version = 8
    return onnx.shape_inference.infer_shapes(m)


def _lowered(sample: Sample, upto: int) -> tuple[Counter, int, set[type]]:
    """IR op counts, online rounds and protocol call types of the sample's first ``upto``
    nodes."""
    if upto == 0:
        return Counter(), 0, set()
    prog, _ = compile_onnx(_model(sample, upto), sample.shape, keep_softmax=sample.keep_softmax)
    used = Counter(i.op.name for i in prog.instrs if i.op not in (ops.input, ops.output))
    protocols = {type(c) for i in prog.instrs for c in i.op.calls(ops.Site(prog, i))}
    return used, estimate(prog).total.rounds, protocols


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    op: str
    case: str
    ir: tuple[str, ...]  # IR ops, in first-emitted order, with repeats as "op x2"
    cost: str  # "free", "local", "1 round", "N rounds" or "comparison"
    rounds: int


def _row(sample: Sample) -> Row:
    used, rounds, protocols = _lowered(sample, len(sample.nodes))
    ctx_ops, ctx_rounds, ctx_protocols = _lowered(sample, sample.context)
    own = used - ctx_ops
    rounds -= ctx_rounds
    if not own:
        cost = "free"
    elif calls.Relu in protocols - ctx_protocols:
        cost = "comparison"
    elif rounds == 0:
        cost = "local"
    else:
        cost = f"{rounds} round{'s' * (rounds > 1)}"
    ir = tuple(op if k == 1 else f"{op} x{k}" for op, k in own.items())
    return Row(sample.op, sample.case, ir, cost, rounds)


def rows() -> list[Row]:
    """One row per sample of a supported op, in :data:`SAMPLES` order.

    Raises if a supported op has no sample. Samples of ops the compiler does not support
    (yet) are left out.
    """
    missing = sorted(set(SUPPORTED_OPS) - {s.op for s in SAMPLES})
    if missing:
        raise AssertionError(f"mpcc.optable_samples.SAMPLES has no sample for {missing}: add one")
    return [_row(s) for s in SAMPLES if s.op in SUPPORTED_OPS]


_FREE_WHY = {
    "BatchNormalization": "folded into the weights",
    "Identity": "removed",
    "Cast": "removed",
    "Dropout": "removed",
    "Softmax": "dropped",
    "LogSoftmax": "dropped",
}


def table() -> str:
    """The markdown table (with its legend), as printed by ``python -m mpcc.optable``."""
    from mpcc import conformance

    lines = [
        "| ONNX op | case | secure IR | cost | online rounds | ONNX node tests |",
        "|---|---|---|---|---|---|",
    ]
    counted: set[str] = set()
    for r in rows():
        case = r.case or SUPPORTED_OPS[r.op]
        ir = ", ".join(f"`{op}`" for op in r.ir) if r.ir else f"none ({_FREE_WHY.get(r.op, '')})"
        tests = "" if r.op in counted else conformance.op_counts(r.op)
        counted.add(r.op)
        lines.append(f"| {r.op} | {case} | {ir} | {r.cost} | {r.rounds} | {tests} |")
    lines += [
        "",
        "*free*: no instruction; *local*: no communication; *N round(s)*: Beaver-triple "
        "products (with secret weights; `--public-weights` makes Conv/Gemm/MatMul local); "
        "*comparison*: masked opening + 62-bit comparison tree, 4 rounds per ReLU level "
        "(MaxPool: one level per halving of the window). A product's truncation is fused into "
        "the next ReLU/Clip, or costs 1 round where it is needed. Generated by "
        "`python -m mpcc.optable` from the compiler's passes, lowering and cost model.",
        "",
        conformance.legend(),
    ]
    return "\n".join(lines)


def _count(lo: int, hi: int | None, what: str) -> str:
    if hi == 0:
        return ""
    n = f"{lo}" if lo == hi else f"{lo}+" if hi is None else f"{lo}-{hi}"
    return f"{n} {what}{'s' if hi is None or hi > 1 else ''}"


def ir_table() -> str:
    """The IR's ops, from their declarations: operands, attributes, meaning."""
    from mpcc.compiler.ops.base import no_calls

    lines = [
        "| IR op | operands | attributes | meaning | online |",
        "|---|---|---|---|---|",
    ]
    for op in ops.ALL:
        operands = ", ".join(
            p for p in (_count(*op.args, "secret"), _count(*op.weights, "weight")) if p
        )
        attrs = ", ".join(f"`{a}`" for a in op.attrs) or "-"
        online = "local" if op.calls is no_calls and op.local_macs is None else "protocol"
        lines.append(f"| `{op.name}` | {operands or '-'} | {attrs} | {op.doc} | {online} |")
    lines += [
        "",
        "*protocol*: the op declares interactive protocol calls (`mpcc.compiler.calls`), "
        "priced by the cost model and dealt by the dealer; linear ops are local with "
        "`--public-weights`. Generated by `python -m mpcc.optable` from the op declarations.",
    ]
    return "\n".join(lines)


MARKERS = ((START, END, table), (IR_START, IR_END, ir_table))


def replace_table(
    text: str, new_table: str | None = None, start_mark: str = START, end_mark: str = END
) -> str:
    """``text`` with everything between a pair of markers replaced by the table."""
    body = table() if new_table is None else new_table
    start, end = text.find(start_mark), text.find(end_mark)
    if start < 0 or end < start:
        raise ValueError(f"no {start_mark} ... {end_mark} markers")
    return f"{text[: start + len(start_mark)]}\n{body}\n{text[end:]}"


def _replace_all(text: str, bodies: dict[str, str]) -> str:
    """Every table whose markers `text` has, replaced."""
    for start, end, _ in MARKERS:
        if start in text:
            text = replace_table(text, bodies[start], start, end)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mpcc.optable", description=__doc__.split("\n")[0])
    ap.add_argument("--write", nargs="+", metavar="FILE", help="update the table in FILEs")
    ap.add_argument("--check", nargs="+", metavar="FILE", help="exit 1 if a FILE's table is stale")
    args = ap.parse_args(argv)
    bodies = {start: make() for start, _, make in MARKERS}
    if not args.write and not args.check:
        print("\n\n".join(bodies.values()))
        return 0
    stale = []
    for name in [*(args.write or []), *(args.check or [])]:
        path = Path(name)
        text = path.read_text()
        new = _replace_all(text, bodies)
        if new != text:
            if args.write and name in args.write:
                path.write_text(new)
                print(f"updated {path}")
            else:
                stale.append(name)
    for name in stale:
        print(f"{name}: the op table is stale; run python -m mpcc.optable --write {name}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
