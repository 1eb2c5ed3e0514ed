"""The sample models of `mpcc.optable`: one tiny chain of ONNX nodes per supported op and case
(e.g. Mul by a constant or of two secrets), with the constants it needs and the context nodes
whose cost the table subtracts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnx import TensorProto

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
