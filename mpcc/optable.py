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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from mpcc.compiler import calls, ops
from mpcc.compiler.costmodel import estimate
from mpcc.compiler.pipeline import compile_onnx
from mpcc.compiler.supported import SUPPORTED_OPS

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

IMAGE = (1, 4, 8, 8)
SIGNAL = (1, 4, 16)  # 1-D: [N, C, L]
VOLUME = (1, 4, 4, 8, 8)  # 3-D: [N, C, D, H, W]
FLAT = (1, 16)
IDS = (1, 8)
SEQUENCE = (4, 1, 8)  # [steps, batch, features]
SECRET = "x"  # an extra input named SECRET is the model's input itself (a second secret)
PREV = "<"  # an extra input naming the previous node's output


def _w(*shape: int) -> np.ndarray:
    """A deterministic, non-degenerate constant (the values do not matter)."""
    n = int(np.prod(shape))
    return (np.linspace(-1.0, 1.0, n) + 0.05).reshape(shape).astype(np.float32)


def _pos(*shape: int) -> np.ndarray:
    return (np.abs(_w(*shape)) + 0.5).astype(np.float32)


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


@dataclass(frozen=True)
class Sample:
    """A chain of nodes on input ``x``; each node takes the previous output, then ``extra``
    (unless ``extra`` names its inputs itself: ``PREV`` for the previous output, ``x``).

    The first ``context`` nodes are context: their own IR and rounds are subtracted. Outputs
    no later node reads are the model's outputs; ``ids``: ``x`` holds int64 token ids.
    """

    op: str
    case: str
    nodes: tuple[tuple[str, tuple[str, ...], dict], ...]
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    shape: tuple[int, ...] = IMAGE
    context: int = 0
    opset: int = 17
    keep_softmax: bool = False
    ids: bool = False


def _s(
    op: str,
    case: str,
    *nodes,
    consts=None,
    shape=IMAGE,
    context=0,
    opset=17,
    keep=False,
    ids=False,
) -> Sample:
    return Sample(op, case, tuple(nodes), dict(consts or {}), shape, context, opset, keep, ids)


def _n(op: str, *extra: str, **attrs) -> tuple[str, tuple[str, ...], dict]:
    return (op, extra, attrs)


_CONV = _n("Conv", "W", pads=[1, 1, 1, 1])
_CONV_W = {"W": _w(4, 4, 3, 3)}
_BN = {"g": _pos(4), "b": _w(4), "m": _w(4), "v": _pos(4)}

SAMPLES: tuple[Sample, ...] = (
    _s("Conv", "any kernel size, stride, padding, dilation, groups", _CONV, consts=_CONV_W),
    _s(
        "Conv",
        "1-D [N, C, L], same options",
        _n("Conv", "W", pads=[1, 1]),
        consts={"W": _w(4, 4, 3)},
        shape=SIGNAL,
    ),
    _s(
        "Conv",
        "3-D [N, C, D, H, W], same options",
        _n("Conv", "W", pads=[1] * 6),
        consts={"W": _w(4, 4, 3, 3, 3)},
        shape=VOLUME,
    ),
    _s(
        "ConvTranspose",
        "",
        _n("ConvTranspose", "W", strides=[2, 2], pads=[1, 1, 1, 1]),
        consts={"W": _w(4, 4, 3, 3)},
    ),
    _s("Gemm", "", _n("Gemm", "B", "C", transB=1), consts={"B": _w(8, 16), "C": _w(8)}, shape=FLAT),
    _s(
        "Gemm",
        "constant A (A @ x)",
        _n("Gemm", "A", PREV),
        consts={"A": _w(8, 16)},
        shape=(16, 4),
    ),
    _s("MatMul", "by a constant matrix", _n("MatMul", "W"), consts={"W": _w(16, 8)}, shape=FLAT),
    _s(
        "MatMul",
        "by a constant stack of matrices (rank >= 3, batch axes broadcast)",
        _n("MatMul", "W"),
        consts={"W": _w(4, 8, 5)},
    ),
    _s(
        "MatMul",
        "constant first (C @ x, any rank)",
        _n("MatMul", "C", PREV),
        consts={"C": _w(2, 4, 5, 8)},
    ),
    _s("MatMul", "two secrets (batched, e.g. attention)", _n("MatMul", SECRET)),
    _s("Add", "a constant", _n("Add", "c"), consts={"c": _w(1, 4, 8, 8)}),
    _s("Add", "two secrets", _n("Add", SECRET)),
    _s("Sub", "a constant", _n("Sub", "c"), consts={"c": _w(1, 4, 1, 1)}),
    _s("Sub", "two secrets", _n("Sub", SECRET)),
    _s("Mul", "by a constant", _n("Mul", "c"), consts={"c": _w(1, 4, 1, 1)}),
    _s("Mul", "two secrets", _n("Mul", SECRET)),
    _s("Div", "by a constant", _n("Div", "c"), consts={"c": _pos(1, 4, 1, 1)}),
    _s(
        "BatchNormalization",
        "after Conv / Gemm / MatMul",
        _CONV,
        _n("BatchNormalization", "g", "b", "m", "v"),
        consts={**_CONV_W, **_BN},
        context=1,
    ),
    _s("BatchNormalization", "elsewhere", _n("BatchNormalization", "g", "b", "m", "v"), consts=_BN),
    _s("Relu", "", _n("Relu")),
    _s("LeakyRelu", "", _n("LeakyRelu", alpha=0.1)),
    _s("Clip", "one bound (ReLU-like)", _n("Clip", "lo"), consts={"lo": np.float32(0.0)}),
    _s(
        "Clip",
        "both bounds (ReLU6)",
        _n("Clip", "lo", "hi"),
        consts={"lo": np.float32(0.0), "hi": np.float32(6.0)},
    ),
    _s("PRelu", "", _n("PRelu", "s"), consts={"s": _w(4, 1, 1)}),
    _s("MaxPool", "2x2 window", _n("MaxPool", kernel_shape=[2, 2], strides=[2, 2])),
    _s("MaxPool", "3x3 window", _n("MaxPool", kernel_shape=[3, 3], strides=[2, 2])),
    _s("MaxPool", "1-D", _n("MaxPool", kernel_shape=[2], strides=[2]), shape=SIGNAL),
    _s("MaxPool", "3-D", _n("MaxPool", kernel_shape=[2, 2, 2], strides=[2] * 3), shape=VOLUME),
    _s("AveragePool", "2^j window", _n("AveragePool", kernel_shape=[2, 2], strides=[2, 2])),
    _s("AveragePool", "other windows", _n("AveragePool", kernel_shape=[3, 3], strides=[1, 1])),
    _s(
        "AveragePool",
        "dilated (opset 19)",
        _n("AveragePool", kernel_shape=[2, 2], dilations=[2, 2]),
        opset=19,
    ),
    _s("AveragePool", "1-D", _n("AveragePool", kernel_shape=[3], pads=[1, 1]), shape=SIGNAL),
    _s(
        "AveragePool",
        "3-D",
        _n("AveragePool", kernel_shape=[2, 2, 2], strides=[2] * 3),
        shape=VOLUME,
    ),
    _s("GlobalAveragePool", "", _n("GlobalAveragePool")),
    _s("GlobalMaxPool", "8x8 input", _n("GlobalMaxPool")),
    _s("ReduceMean", "spatial axes (a pool)", _n("ReduceMean", axes=[2, 3])),
    _s("ReduceMean", "other axes (4 elements)", _n("ReduceMean", axes=[1])),
    _s("ReduceMax", "8x8 input", _n("ReduceMax", axes=[2, 3])),
    _s("ReduceMax", "other axes (4 elements)", _n("ReduceMax", axes=[1])),
    _s("ReduceSum", "", _n("ReduceSum", "ax"), consts={"ax": _i64(2, 3)}),
    _s("ReduceSum", "other axes", _n("ReduceSum", "ax"), consts={"ax": _i64(1)}),
    _s("ReduceL2", "", _n("ReduceL2", axes=[1])),
    _s("Neg", "", _n("Neg")),
    _s("Flatten", "", _n("Flatten")),
    _s("Reshape", "", _n("Reshape", "s"), consts={"s": _i64(1, 4, 64)}),
    _s("Transpose", "", _n("Transpose", perm=[0, 2, 3, 1])),
    _s("Concat", "", _n("Concat", SECRET, axis=1)),
    _s(
        "Slice", "", _n("Slice", "a", "b", "ax"), consts={"a": _i64(1), "b": _i64(5), "ax": _i64(2)}
    ),
    _s("Pad", "constant", _n("Pad", "p"), consts={"p": _i64(0, 0, 1, 1, 0, 0, 1, 1)}),
    _s(
        "Pad",
        "reflect / edge / wrap",
        _n("Pad", "p", mode="reflect"),
        consts={"p": _i64(0, 0, 1, 1, 0, 0, 1, 1)},
    ),
    _s(
        "Resize",
        "",
        _n("Resize", "", "sc", mode="nearest"),
        consts={"sc": np.array([1, 1, 2, 2], np.float32)},
    ),
    _s(
        "Upsample",
        "",
        _n("Upsample", "sc", mode="nearest"),
        consts={"sc": np.array([1, 1, 2, 2], np.float32)},
        opset=9,
    ),
    _s("Gather", "constant indices", _n("Gather", "i", axis=1), consts={"i": _i64(2, 0)}),
    _s(
        "Gather",
        "rows of a constant table by client ids (one-hot uploaded)",
        _n("Gather", "table", PREV),
        consts={"table": _w(12, 4)},
        shape=IDS,
        ids=True,
    ),
    *(
        _s(
            op,
            "ids compared with a constant, cast to float (a mask: local)",
            _n("Gather", "table", PREV),
            _n("Equal", SECRET, "pad"),
            _n("Not", PREV),
            _n("Cast", PREV, to=1),
            consts={"table": _w(12, 4), "pad": _i64(0)[0]},
            shape=IDS,
            ids=True,
            context=1,
        )
        for op in ("Equal", "Not", "Cast")
    ),
    _s("Split", "", _n("Split", "sp", axis=1), consts={"sp": _i64(4)}),
    _s("Tile", "", _n("Tile", "r"), consts={"r": _i64(1, 2, 1, 1)}),
    _s("Expand", "", _n("Expand", "s"), consts={"s": _i64(2, 1, 1, 1)}),
    _s("Squeeze", "", _n("Squeeze", "ax"), consts={"ax": _i64(0)}),
    _s("Unsqueeze", "", _n("Unsqueeze", "ax"), consts={"ax": _i64(0)}),
    _s("Identity", "", _n("Identity")),
    _s("Cast", "between float types", _n("Cast", to=int(TensorProto.DOUBLE))),
    _s("Dropout", "", _n("Dropout")),
    _s("Softmax", "final", _n("Flatten"), _n("Softmax", axis=1), context=1),
    _s("Softmax", "elsewhere (or kept), 4 elements", _n("Softmax", axis=1), keep=True),
    _s("LogSoftmax", "final", _n("Flatten"), _n("LogSoftmax", axis=1), context=1),
    _s("LogSoftmax", "elsewhere (or kept), 4 elements", _n("LogSoftmax", axis=1), keep=True),
    _s(
        "LayerNormalization",
        "8 elements",
        _n("LayerNormalization", "g", "b", axis=-1),
        consts={"g": _w(8), "b": _w(8)},
    ),
    _s("Exp", "", _n("Exp")),
    _s("Log", "", _n("Log")),
    _s("Sqrt", "", _n("Sqrt")),
    _s("Reciprocal", "", _n("Reciprocal")),
    _s("Div", "by a secret", _n("Div", SECRET)),
    _s("Pow", "exponent 2", _n("Pow", "e"), consts={"e": np.float32(2.0)}),
    _s("Sigmoid", "", _n("Sigmoid")),
    _s("Tanh", "", _n("Tanh")),
    _s("Erf", "", _n("Erf")),
    _s("Gelu", "erf (exact)", _n("Gelu"), opset=20),
    _s("Gelu", "tanh", _n("Gelu", approximate="tanh"), opset=20),
    _s("HardSigmoid", "", _n("HardSigmoid")),
    _s("HardSwish", "", _n("HardSwish")),
    _s("LpNormalization", "p = 2", _n("LpNormalization", axis=1)),
    _s(
        "LSTM",
        "4 steps, hidden 8",
        _n("LSTM", "W", "R", "B", hidden_size=8),
        consts={"W": _w(1, 32, 8), "R": _w(1, 32, 8), "B": _w(1, 64)},
        shape=SEQUENCE,
    ),
    _s(
        "GRU",
        "4 steps, hidden 8",
        _n("GRU", "W", "R", "B", hidden_size=8, linear_before_reset=1),
        consts={"W": _w(1, 24, 8), "R": _w(1, 24, 8), "B": _w(1, 48)},
        shape=SEQUENCE,
    ),
)


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
        raise AssertionError(f"mpcc.optable.SAMPLES has no sample for {missing}: add one")
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
        "*comparison*: masked opening + 62-bit comparison tree, 8 rounds per ReLU level "
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
