"""The ONNX ops mpcc compiles (`SUPPORTED_OPS`, with what it supports of each), the inputs they
need constant (`CONST_INPUTS`), and the check of a model's nodes against these tables
(`node_blockers`)."""

from __future__ import annotations

import numpy as np
import onnx

from mpcc.compiler.blockers import ATTRIBUTE, NEEDS_CONSTANT, UNSUPPORTED_OP, Blocker

SUPPORTED_OPS: dict[str, str] = {
    "Conv": "1-D, 2-D or 3-D convolution, any kernel, stride, padding, dilation and groups",
    "ConvTranspose": "1-D, 2-D or 3-D transposed convolution (a Beaver triple, like Conv)",
    "Gemm": "fully connected layer (becomes MatMul + bias); A constant, or B constant or computed",
    "MatMul": "product with a constant of any rank on either side, or of two computed tensors "
    "(batched, with broadcasting: attention)",
    "Add": "elementwise sum of two tensors, or of a tensor and a constant",
    "Sub": "elementwise difference of two tensors, or with a constant",
    "Mul": "elementwise product of two tensors, or of a tensor and a constant",
    "Div": "division by a constant (a Mul) or by a secret with |x| in [2^-6, 2^14]",
    "BatchNormalization": "inference batch norm (folded into the neighbouring Conv/MatMul)",
    "Relu": "max(x, 0)",
    "LeakyRelu": "x if x > 0 else alpha * x",
    "Clip": "clamp to constant bounds (e.g. ReLU6)",
    "PRelu": "leaky ReLU with a constant (per-channel) slope",
    "MaxPool": "1-D, 2-D or 3-D max pooling",
    "AveragePool": "1-D, 2-D or 3-D average pooling, dilated too",
    "GlobalAveragePool": "mean over the spatial dims",
    "GlobalMaxPool": "max over the spatial dims",
    "ReduceMean": "mean over any axes (local; a power-of-two count is free)",
    "ReduceMax": "max over any axes (a tournament of ReLUs)",
    "ReduceSum": "sum over any axes (local)",
    "ReduceL2": "sqrt of the sum of squares over any axes (fused with a Div: L2 normalization)",
    "Softmax": "over any axis, with max subtraction (a final one is dropped unless keep_softmax)",
    "LogSoftmax": "over any axis, with max subtraction (a final one is dropped unless "
    "keep_softmax)",
    "LayerNormalization": "over the trailing axes from `axis` (the decomposed form is fused)",
    "Exp": "exp on [-16, 8], clamped (range reduction and squaring)",
    "Log": "log on [2^-6, 2^14], clamped",
    "Sqrt": "sqrt on [2^-10, 2^14], clamped",
    "Reciprocal": "1/x for |x| in [2^-6, 2^14], clamped",
    "Pow": "constant exponent 2 (a secret square), 1, 0.5, -0.5 or -1",
    "Sigmoid": "piecewise polynomial, abs. error 2^-10",
    "Tanh": "piecewise polynomial, abs. error 2^-10",
    "Erf": "piecewise polynomial, abs. error 2^-10",
    "Gelu": "approximate none or tanh, abs. error 2^-10 (the decomposed forms are fused)",
    "HardSigmoid": "max(0, min(1, alpha x + beta))",
    "HardSwish": "x * HardSigmoid(x)",
    "LpNormalization": "p = 2: x / ||x|| along an axis",
    "LSTM": "unrolled over the fixed sequence length (MatMuls, Sigmoid, Tanh, products); any "
    "direction and layout, peepholes; no clip, input_forget or variable lengths",
    "GRU": "unrolled over the fixed sequence length (MatMuls, Sigmoid, Tanh, products); any "
    "direction and layout, linear_before_reset 0 or 1; no clip or variable lengths",
    "Neg": "negation",
    "Flatten": "reshape to 2-D",
    "Reshape": "change the shape (the target shape must be constant)",
    "Transpose": "permute the axes",
    "Concat": "join tensors along an axis (constants too)",
    "Slice": "take a strided sub-tensor (constant bounds)",
    "Pad": "padding: constant, reflect, edge or wrap",
    "Resize": "nearest-neighbour resize (constant scales or sizes; any coordinate transform but "
    "tf_crop_and_resize)",
    "Upsample": "nearest-neighbour upsampling (constant scales)",
    "Gather": "take entries at constant indices along any axis; or rows of a constant table "
    "by integer ids the client one-hot encodes (embeddings)",
    "Equal": "integer ids compared with a constant (a column of their one-hot; e.g. a mask)",
    "Not": "negation of an id comparison (1 - x)",
    "Split": "split along an axis (becomes Slices)",
    "Tile": "repeat along axes (constant repeats)",
    "Expand": "broadcast to a constant shape (becomes Reshape + Tile)",
    "Squeeze": "drop size-1 axes",
    "Unsqueeze": "insert size-1 axes",
    "Identity": "no-op (removed)",
    "Cast": "between float types, or of an id comparison to float: no-op (removed); Casts of "
    "constants fold",
    "Dropout": "no-op at inference (removed)",
}


# Inputs that must be constants, by op: input index -> what it is.
CONST_INPUTS: dict[str, dict[int, str]] = {
    "Conv": {1: "weight", 2: "bias"},
    "ConvTranspose": {1: "weight", 2: "bias"},
    "Gemm": {2: "bias C"},
    "BatchNormalization": {1: "scale", 2: "bias", 3: "mean", 4: "variance"},
    "PRelu": {1: "slope"},
    "Clip": {1: "min", 2: "max"},
    "Reshape": {1: "shape"},
    "Slice": {1: "starts", 2: "ends", 3: "axes", 4: "steps"},
    "Pad": {1: "pads", 2: "constant_value", 3: "axes"},
    "Squeeze": {1: "axes"},
    "ReduceMean": {1: "axes"},
    "ReduceMax": {1: "axes"},
    "ReduceSum": {1: "axes"},
    "ReduceL2": {1: "axes"},
    "LayerNormalization": {1: "scale", 2: "bias"},
    "Pow": {1: "exponent"},
    "Unsqueeze": {1: "axes"},
    "Split": {1: "split"},
    "Tile": {1: "repeats"},
    "Expand": {1: "shape"},
    "Dropout": {1: "ratio", 2: "training_mode"},
    "Resize": {1: "roi", 2: "scales", 3: "sizes"},
    "Upsample": {1: "scales"},
    "LSTM": {
        1: "weight W",
        2: "recurrence weight R",
        3: "bias B",
        4: "sequence_lens",
        7: "peephole P",
    },
    "GRU": {1: "weight W", 2: "recurrence weight R", 3: "bias B", 4: "sequence_lens"},
}


def integer_tensors(mg: onnx.GraphProto) -> set[str]:
    """The non-constant tensors the model declares with an integer type."""
    ints = {
        onnx.TensorProto.INT8,
        onnx.TensorProto.INT16,
        onnx.TensorProto.INT32,
        onnx.TensorProto.INT64,
        onnx.TensorProto.UINT8,
        onnx.TensorProto.UINT16,
        onnx.TensorProto.UINT32,
        onnx.TensorProto.UINT64,
    }
    return {
        vi.name
        for vi in [*mg.input, *mg.value_info, *mg.output]
        if vi.type.tensor_type.elem_type in ints
    }


def node_blockers(
    nodes: list[onnx.NodeProto], constants: dict[str, np.ndarray], integers: set[str]
) -> list[Blocker]:
    """Unsupported ops, computed tensors where a constant is needed, and integer division
    (ONNX truncates it; mpcc computes on fixed-point reals), one Blocker per node."""
    found = []
    for n in nodes:
        where = f"node {n.name!r} (op {n.domain + '.' if n.domain else ''}{n.op_type})"
        if n.op_type not in SUPPORTED_OPS or n.domain not in ("", "ai.onnx"):
            found.append(Blocker(UNSUPPORTED_OP, n.op_type, n.name, f"{where} is not supported"))
            continue
        for i, what in CONST_INPUTS.get(n.op_type, {}).items():
            if i < len(n.input) and n.input[i] and n.input[i] not in constants:
                found.append(
                    Blocker(
                        NEEDS_CONSTANT,
                        n.op_type,
                        n.name,
                        f"{where} needs a constant {what} as input {i}, "
                        f"but {n.input[i]!r} is computed",
                    )
                )
        if n.op_type == "Div" and n.output[0] in integers:
            found.append(
                Blocker(
                    ATTRIBUTE,
                    n.op_type,
                    n.name,
                    f"{where} divides integer tensors (ONNX truncates the quotient): not "
                    "supported, mpcc computes on fixed-point reals (integer dtype)",
                )
            )
    return found
