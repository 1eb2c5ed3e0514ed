"""Every supported ONNX op, compiled and run in cleartext and securely, against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest

from mpcc.compiler.costmodel import estimate
from mpcc.compiler.pipeline import compile_onnx
from mpcc.runtime.cleartext import predict
from mpcc.runtime.cluster import LocalCluster
from tests.onnx_builders import model, node, rand, run

X = [2, 3, 8, 8]


def w(*shape: int, seed: int = 1, scale: float = 0.5) -> np.ndarray:
    return (rand(*shape, seed=seed) * scale).astype(np.float32)


def pos(*shape: int, seed: int = 2) -> np.ndarray:
    return (np.abs(rand(*shape, seed=seed)) * 0.5 + 0.5).astype(np.float32)


def conv(**attrs):
    groups = attrs.get("group", 1)
    k = attrs.pop("k", 3)
    o = attrs.pop("o", 4 if groups == 1 else 3 * attrs.pop("mult", 1))
    return [node("Conv", ["x", "W", "B"], ["y"], **attrs)], {
        "W": w(o, 3 // groups, k, k),
        "B": w(o, seed=3),
    }


CASES = {
    "conv": conv(pads=[1, 1, 1, 1]),
    "conv_stride_asym_pads": conv(strides=[2, 2], pads=[0, 1, 2, 1]),
    "conv_dilation": conv(dilations=[2, 2]),
    "conv_groups_depthwise": conv(group=3, pads=[1, 1, 1, 1]),
    "conv_depthwise_multiplier": conv(group=3, mult=2),
    "conv_same_upper": conv(auto_pad="SAME_UPPER", strides=[2, 2]),
    "conv_1x1": conv(k=1),
    "gemm_transb_alpha_beta": (
        [
            node("Flatten", ["x"], ["f"]),
            node("Gemm", ["f", "W", "C"], ["y"], transB=1, alpha=0.5, beta=2.0),
        ],
        {"W": w(5, 192), "C": w(5, seed=3)},
    ),
    "matmul_add": (
        [
            node("Reshape", ["x", "s"], ["r"]),
            node("MatMul", ["r", "W"], ["m"]),
            node("Add", ["m", "b"], ["y"]),
        ],
        {"s": np.array([2, 24, 8], np.int64), "W": w(8, 6), "b": w(6, seed=4)},
    ),
    "add_sub_mul_div_constants": (
        [
            node("Add", ["x", "c1"], ["a"]),
            node("Mul", ["a", "c2"], ["b"]),
            node("Sub", ["b", "c3"], ["c"]),
            node("Div", ["c", "c4"], ["y"]),
        ],
        {"c1": w(3, 1, 1), "c2": w(1, 3, 1, 1, seed=5), "c3": np.float32(0.25), "c4": pos(3, 1, 1)},
    ),
    "constant_minus_x": ([node("Sub", ["c", "x"], ["y"])], {"c": w(1, 3, 1, 1)}),
    "secret_add_sub_mul": (
        [
            node("Relu", ["x"], ["r"]),
            node("Add", ["x", "r"], ["a"]),
            node("Sub", ["a", "x"], ["s"]),
            node("Mul", ["s", "x"], ["y"]),
        ],
        {},
    ),
    "batchnorm_standalone": (
        [node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], epsilon=1e-3)],
        {"g": w(3), "b": w(3, seed=4), "m": w(3, seed=5), "v": pos(3)},
    ),
    "conv_batchnorm_relu": (
        [
            node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
            node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"]),
            node("Relu", ["n"], ["y"]),
        ],
        {"W": w(4, 3, 3, 3), "g": w(4), "b": w(4, seed=4), "m": w(4, seed=5), "v": pos(4)},
    ),
    "relu": ([node("Relu", ["x"], ["y"])], {}),
    "leaky_relu": ([node("LeakyRelu", ["x"], ["y"], alpha=0.1)], {}),
    "relu6_clip": (
        [node("Mul", ["x", "k"], ["z"]), node("Clip", ["z", "lo", "hi"], ["y"])],
        {"k": np.float32(4.0), "lo": np.float32(0.0), "hi": np.float32(6.0)},
    ),
    "clip_max_only": ([node("Clip", ["x", "", "hi"], ["y"])], {"hi": np.float32(0.5)}),
    "prelu": ([node("PRelu", ["x", "s"], ["y"])], {"s": w(3, 1, 1)}),
    "maxpool_2x2": ([node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])], {}),
    "maxpool_3x3_pads_ceil": (
        [
            node(
                "MaxPool",
                ["x"],
                ["y"],
                kernel_shape=[3, 3],
                strides=[2, 2],
                pads=[1, 1, 1, 1],
                ceil_mode=1,
            )
        ],
        {},
    ),
    "relu_then_maxpool": (
        [
            node("Relu", ["x"], ["r"]),
            node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
        ],
        {},
    ),
    "avgpool_2x2": (
        [node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
        {},
    ),
    "avgpool_3x3_pads_exclude": (
        [node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        {},
    ),
    "avgpool_3x3_pads_include": (
        [
            node(
                "AveragePool",
                ["x"],
                ["y"],
                kernel_shape=[3, 3],
                pads=[1, 1, 1, 1],
                count_include_pad=1,
            )
        ],
        {},
    ),
    "avgpool_3x3_then_conv": (
        [
            node("AveragePool", ["x"], ["a"], kernel_shape=[3, 3], strides=[1, 1]),
            node("Relu", ["a"], ["r"]),
            node("Conv", ["r", "W"], ["y"]),
        ],
        {"W": w(4, 3, 3, 3)},
    ),
    "global_average_pool": ([node("GlobalAveragePool", ["x"], ["y"])], {}),
    "global_max_pool": ([node("GlobalMaxPool", ["x"], ["y"])], {}),
    "transpose_slice_pad_concat": (
        [
            node("Transpose", ["x"], ["t"], perm=[0, 1, 3, 2]),
            node("Slice", ["t", "st", "en", "ax", "sp"], ["s"]),
            node("Pad", ["s", "pads", "pv"], ["p"]),
            node("Concat", ["p", "p"], ["y"], axis=1),
        ],
        {
            "st": np.array([1, 0], np.int64),
            "en": np.array([7, 8], np.int64),
            "ax": np.array([2, 3], np.int64),
            "sp": np.array([2, 1], np.int64),
            "pads": np.array([0, 0, 1, 0, 0, 0, 0, 2], np.int64),
            "pv": np.float32(0.5),
        },
    ),
    "squeeze_unsqueeze_identity_dropout": (
        [
            node("GlobalAveragePool", ["x"], ["g"]),
            node("Squeeze", ["g", "axes"], ["s"]),
            node("Identity", ["s"], ["i"]),
            node("Dropout", ["i"], ["d"]),
            node("Unsqueeze", ["d", "axes0"], ["y"]),
        ],
        {"axes": np.array([2, 3], np.int64), "axes0": np.array([0], np.int64)},
    ),
    "final_softmax_dropped": (
        [
            node("Flatten", ["x"], ["f"]),
            node("Gemm", ["f", "W"], ["l"], transB=1),
            node("Softmax", ["l"], ["y"], axis=1),
        ],
        {"W": w(10, 192)},
    ),
}


def _case(name: str):
    nodes, inits = CASES[name]
    m = model(nodes, {"x": X}, ["y"], inits, name=name)
    x = (rand(*X, seed=7) * 1.5).astype(np.float32)
    ref = run(m, {"x": x})[0].astype(np.float64)
    if name == "final_softmax_dropped":
        ref = x.reshape(2, -1).astype(np.float64) @ inits["W"].T.astype(np.float64)
    return m, x, ref


def check_cleartext_and_secure(m, x: np.ndarray, ref: np.ndarray, tol: float, name=None):
    """Compile m for x's shape; cleartext and secure results are within tol of ref and the
    transport's rounds and bytes equal the cost model's. Returns the program."""
    prog, weights = compile_onnx(m, tuple(x.shape), name=name)
    clear = predict(prog, weights, x).reshape(ref.shape)
    assert np.abs(clear - ref).max() <= tol, prog.text()
    with LocalCluster(prog, weights) as cluster:
        secure = cluster.predict(x).reshape(ref.shape)
        stats = cluster.stats
    assert np.abs(secure - ref).max() <= tol, prog.text()
    want = estimate(prog).total
    assert (stats.rounds, stats.sent[0], stats.dealer_bytes) == (
        want.rounds,
        want.sent,
        want.dealer,
    )
    return prog


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_cleartext_and_secure_match_onnxruntime(name: str) -> None:
    m, x, ref = _case(name)
    check_cleartext_and_secure(m, x, ref, 2e-3 * max(1.0, float(np.abs(ref).max())), name)
