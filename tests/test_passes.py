"""Tests for mpcc.compiler.passes: each pass alone on a tiny model, checked with onnxruntime
before and after, then run_all on torch exports from both exporters."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from mpcc.compiler import rewrites as R
from mpcc.compiler import rewrites_affine as A
from mpcc.compiler.graph import Graph
from mpcc.compiler.legalize import legalize
from mpcc.compiler.passes import run_all
from mpcc.errors import ModelError
from tests.onnx_builders import (
    check_graph,
    check_passes,
    export,
    feeds_for,
    graph_of,
    model,
    node,
    ops,
    rand,
    run,
)

# The output contract of run_all: op -> exact attribute names.
POOL = {"kernel_shape", "strides", "pads", "ceil_mode"}
CONTRACT = {
    "Conv": {"kernel_shape", "strides", "pads", "dilations", "group"},
    "MatMul": set(),
    "Add": set(),
    "Sub": set(),
    "Mul": set(),
    "Relu": set(),
    "LeakyRelu": {"alpha"},
    "Clip": {"min", "max"},
    "PRelu": set(),
    "MaxPool": POOL | {"dilations"},
    "AveragePool": POOL | {"count_include_pad"},
    "SumPool": POOL | {"count_include_pad"},
    "GlobalAveragePool": set(),
    "GlobalMaxPool": set(),
    "Reshape": {"shape"},
    "Transpose": {"perm"},
    "Concat": {"axis"},
    "Slice": {"starts", "ends", "axes", "steps"},
    "Pad": {"pads", "value"},
    **{op: {"axes", "keepdims"} for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceL2")},
    "Softmax": {"axes"},
    "LogSoftmax": {"axes"},
    "LayerNormalization": {"axes", "epsilon"},
}


def check_contract(g: Graph) -> None:
    for n in g.topo_nodes():
        d = g.node(n)
        optional = {"AveragePool": "dilations", "SumPool": "dilations", "Pad": "mode"}
        extra = {optional.get(d["op"])} & set(d["attrs"])
        assert set(d["attrs"]) - extra == CONTRACT[d["op"]], (n, d)
        if d["op"] in ("Conv", "MatMul"):
            assert all(g.is_const(t) for t in d["inputs"][1:]) and not g.is_const(d["inputs"][0])
        if d["op"] in ("Add", "Mul"):
            assert not g.is_const(d["inputs"][0])
        if d["op"] == "MatMul":
            assert g.const(d["inputs"][1]).ndim >= 2
            if len(d["inputs"]) == 3:
                assert g.const(d["inputs"][2]).shape == (g.const(d["inputs"][1]).shape[1],)
        if d["op"] == "Reshape":
            assert min(d["attrs"]["shape"]) > 0


def conv_w(cout=3, cin=2, k=3, seed=1):
    return rand(cout, cin, k, k, seed=seed)


# ---- 1. normalize ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attrs, pads",
    [
        ({}, (0, 0, 0, 0)),
        ({"auto_pad": "VALID"}, (0, 0, 0, 0)),
        ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (0, 0, 1, 1)),
        ({"auto_pad": "SAME_LOWER", "strides": [2, 2]}, (1, 1, 0, 0)),
        ({"pads": [1, 0, 2, 1], "group": 2}, (1, 0, 2, 1)),
    ],
)
def test_normalize_conv(attrs, pads):
    w = rand(4, 1 if attrs.get("group") else 2, 3, 3)
    m = model([node("Conv", ["x", "w"], ["y"], **attrs)], {"x": (1, 2, 6, 6)}, ["y"], {"w": w})
    g = check_passes(m, legalize)
    a = g.node("y")["attrs"]
    assert a["pads"] == pads and a["kernel_shape"] == (3, 3)
    assert a["strides"] == tuple(attrs.get("strides", (1, 1)))
    assert a["dilations"] == tuple(attrs.get("dilations", (1, 1)))
    assert a["group"] == attrs.get("group", 1)
    check_contract(g)


def test_normalize_dilated_same_conv():  # onnxruntime cannot run the original
    def conv(**attrs):
        w = {"w": conv_w()}
        return model([node("Conv", ["x", "w"], ["y"], **attrs)], {"x": (1, 2, 6, 6)}, ["y"], w)

    attrs = {"dilations": [2, 1], "strides": [1, 2]}
    g = graph_of(conv(auto_pad="SAME_LOWER", **attrs))
    legalize(g)
    assert g.node("y")["attrs"]["pads"] == (2, 1, 2, 0)
    feeds = feeds_for(g)
    check_graph(g, feeds, run(conv(pads=[2, 1, 2, 0], **attrs), feeds))


@pytest.mark.parametrize(
    "op, attrs",
    [
        ("MaxPool", {"kernel_shape": [3, 3], "auto_pad": "SAME_UPPER", "strides": [2, 2]}),
        ("MaxPool", {"kernel_shape": [2, 2], "ceil_mode": 1, "strides": [2, 2]}),
        ("AveragePool", {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
        ("AveragePool", {"kernel_shape": [2, 3], "auto_pad": "SAME_LOWER"}),
    ],
)
def test_normalize_pools(op, attrs):
    m = model([node(op, ["x"], ["y"], **attrs)], {"x": (1, 2, 7, 7)}, ["y"])
    g = check_passes(m, legalize)
    check_contract(g)


def test_normalize_pool_errors():
    m = model([node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2])], {"x": (1, 1, 4, 4)},
              ["y", "i"])  # fmt: skip
    with pytest.raises(ModelError, match="Indices"):
        legalize(graph_of(m))
    x4 = {"x": (1, 1, 3, 3, 3, 3)}
    m = model([node("MaxPool", ["x"], ["y"], kernel_shape=[2] * 4)], x4, ["y"])
    with pytest.raises(ModelError, match=r"1-3 spatial axes.*\(1, 1, 3, 3, 3, 3\)"):
        legalize(graph_of(m))
    w = {"w": rand(1, 1, 3, 3, 3, 3)}
    m = model([node("Conv", ["x", "w"], ["y"], name="c1")], x4, ["y"], w)
    with pytest.raises(ModelError, match="node 'c1' \\(op Conv\\): only \\[N, C, \\*spatial\\]"):
        legalize(graph_of(m))


@pytest.mark.parametrize(
    "attrs, c_shape",
    [
        ({}, (4,)),
        ({"transB": 1, "alpha": 0.5, "beta": 2.0}, (1, 4)),
        ({"transA": 1}, (3, 4)),
        ({"transA": 1, "transB": 1}, None),
    ],
)
def test_normalize_gemm(attrs, c_shape):
    a_shape = (5, 3) if attrs.get("transA") else (3, 5)
    b = rand(4, 5) if attrs.get("transB") else rand(5, 4)
    inits = {"b": b} | ({"c": rand(*c_shape)} if c_shape else {})
    ins = ["a", "b", "c"] if c_shape else ["a", "b"]
    m = model([node("Gemm", ins, ["y"], name="gemm", **attrs)], {"a": a_shape}, ["y"], inits)
    g = check_passes(m, legalize)
    check_contract(g)
    assert "MatMul" in ops(g) and "Gemm" not in ops(g)
    assert ("Transpose" in ops(g)) == bool(attrs.get("transA"))
    assert ("Add" in ops(g)) == (c_shape == (3, 4))  # a bias that differs per row stays an Add


def test_normalize_matmul_forms():
    nodes = [
        node("MatMul", ["c", "x"], ["a"]),  # constant first: transposed
        node("MatMul", ["a", "w3"], ["b"]),  # 3-D weights with a leading 1
        node("MatMul", ["b", "v"], ["y"]),  # 1-D weights: reshaped
    ]
    inits = {"c": rand(4, 2), "v": rand(5), "w3": rand(1, 3, 5)}
    m = model(nodes, {"x": (2, 2, 3)}, ["y"], inits)
    g = check_passes(m, legalize)
    check_contract(g)
    assert ops(g) == ["Transpose", "MatMul", "Transpose", "MatMul", "MatMul", "Reshape"]


def test_normalize_arithmetic():
    nodes = [
        node("Sub", ["x", "mean"], ["a"]),
        node("Div", ["a", "std"], ["b"]),
        node("Add", ["one", "b"], ["c"]),
        node("Mul", ["half", "c"], ["d"]),
        node("Sub", ["one", "d"], ["e"]),
        node("Sub", ["e", "x"], ["f"]),
        node("Mul", ["f", "e"], ["y"]),
    ]
    inits = {"mean": [0.5, 0.25], "std": [[2.0], [4.0]], "one": 1.0, "half": [0.5]}
    g = check_passes(model(nodes, {"x": (2, 2)}, ["y"], inits), legalize)
    check_contract(g)
    assert ops(g) == ["Add", "Mul", "Add", "Mul", "Sub", "Sub", "Mul"]
    assert g.node("e")["inputs"] == ["one", "d"]  # constant - x stays a Sub


@pytest.mark.parametrize(
    "nodes, inits, match",
    [
        ([node("Div", ["x", "z"], ["y"])], {"z": [1.0, 0.0]}, "zeros"),
        ([node("Add", ["x", "z"], ["y"])], {"z": np.ones((3, 2))}, "broadcasts 'x'"),
    ],
)
def test_normalize_arithmetic_errors(nodes, inits, match):
    with pytest.raises(ModelError, match=match):
        legalize(graph_of(model(nodes, {"x": (1, 2)}, ["y"], inits)))


def test_normalize_shape_ops():
    nodes = [
        node("Flatten", ["x"], ["a"], axis=2),
        node("Unsqueeze", ["a", "ax0"], ["b"]),
        node("Squeeze", ["b", "ax0"], ["c"]),
        node("Reshape", ["c", "shape"], ["d"]),
        node("Transpose", ["d"], ["e"]),
        node("Concat", ["e", "e"], ["f"], axis=-1),
        node("Slice", ["f", "starts", "ends", "axes", "steps"], ["g"]),
        node("Pad", ["g", "pads", "pv"], ["h"], mode="constant"),
        node("Clip", ["h", "", "hi"], ["i"]),
        node("LeakyRelu", ["i"], ["y"]),
    ]
    inits = {
        "ax0": np.array([0]),
        "shape": np.array([0, 2, -1]),
        "starts": np.array([-1, 1]),
        "ends": np.array([-100, 100]),
        "axes": np.array([-1, 0]),
        "steps": np.array([-2, 1]),
        "pads": np.array([0, 1, 2, 0, 0, 1]),
        "pv": np.float32(0.5),
        "hi": np.float32(0.75),
    }
    g = check_passes(model(nodes, {"x": (2, 2, 2, 3)}, ["y"], inits), legalize)
    check_contract(g)
    assert ops(g)[:4] == ["Reshape"] * 4
    assert [g.node(t)["attrs"]["shape"] for t in "abcd"] == [(4, 6), (1, 4, 6), (4, 6), (4, 2, 3)]
    assert g.node("e")["attrs"] == {"perm": (2, 1, 0)}
    assert g.node("f")["attrs"] == {"axis": 2}
    assert g.node("g")["attrs"] == {"starts": (1, 7), "ends": (3, -1), "axes": (0, 2),
                                    "steps": (1, -2)}  # fmt: skip
    assert g.node("h")["attrs"] == {"pads": (0, 1, 2, 0, 0, 1), "value": 0.5}
    assert g.node("i")["attrs"] == {"min": -np.inf, "max": 0.75}
    assert g.node("y")["attrs"] == {"alpha": 0.01}


def test_normalize_pad_with_axes_opset18():
    nodes = [node("Pad", ["x", "pads", "", "axes"], ["y"])]
    inits = {"pads": np.array([1, 2, 3, 4]), "axes": np.array([-1, 1])}
    g = check_passes(model(nodes, {"x": (1, 2, 3)}, ["y"], inits, opset=18), legalize)
    assert g.node("y")["attrs"] == {"pads": (0, 2, 1, 0, 4, 3), "value": 0.0}


@pytest.mark.parametrize(
    "mode, pads, match",
    [
        ("reflect", [0, 3, 0, 1], "smaller than the axes"),
        ("constant", [0, -1, 0, 0], "negative"),
    ],
)
def test_normalize_pad_errors(mode, pads, match):
    m = model([node("Pad", ["x", "p"], ["y"], mode=mode)], {"x": (2, 3)}, ["y"],
              {"p": np.array(pads)})  # fmt: skip
    with pytest.raises(ModelError, match=match):
        legalize(graph_of(m))


@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("opset", [17, 18])
def test_normalize_reduce_mean(keepdims, opset):
    if opset >= 18:
        nodes = [node("ReduceMean", ["x", "axes"], ["y"], keepdims=keepdims)]
        inits = {"axes": np.array([-1, 2])}
    else:
        nodes, inits = [node("ReduceMean", ["x"], ["y"], axes=[3, -2], keepdims=keepdims)], {}
    m = model(nodes, {"x": (2, 3, 4, 5)}, ["y"], inits, opset=opset)
    g = check_passes(m, legalize)
    check_contract(g)
    assert ops(g) == ["GlobalAveragePool"] + ["Reshape"] * (1 - keepdims)


def test_reduce_mean_over_other_axes_keeps_its_axes():
    m = model([node("ReduceMean", ["x"], ["y"], axes=[-3])], {"x": (2, 3, 4, 5)}, ["y"])
    g = graph_of(m)
    legalize(g)
    (n,) = g.topo_nodes()
    assert g.op(n) == "ReduceMean" and g.node(n)["attrs"] == {"axes": (1,), "keepdims": 1}


# ---- 2. Identity / Dropout ---------------------------------------------------------------


def test_remove_identity_and_dropout():
    nodes = [
        node("Identity", ["x"], ["a"]),
        node("Relu", ["a"], ["b"]),
        node("Dropout", ["b", "ratio"], ["c"]),
        node("Relu", ["c"], ["d"]),
        node("Identity", ["d"], ["y"]),
    ]
    m = model(nodes, {"x": (2, 3)}, ["y"], {"ratio": np.float32(0.3)})
    g = check_passes(m, legalize, R.remove_identity)
    assert ops(g) == ["Relu", "Relu"] and g.outputs == ["y"] and g.node("b")["inputs"] == ["x"]


def test_dropout_mask_output_is_an_error():
    nodes = [node("Dropout", ["x"], ["y", "mask"])]
    with pytest.raises(ModelError, match="mask"):
        legalize(graph_of(model(nodes, {"x": (2, 3)}, ["y", "mask"])))


def test_merge_reshapes():
    nodes = [
        node("Flatten", ["x"], ["a"]),
        node("Reshape", ["a", "s1"], ["b"]),
        node("Reshape", ["b", "s2"], ["c"]),
        node("Relu", ["c"], ["y"]),
    ]
    inits = {"s1": np.array([1, 6, 1]), "s2": np.array([1, 6])}
    g = check_passes(model(nodes, {"x": (1, 2, 3)}, ["y"], inits), legalize, R.merge_reshapes)
    assert ops(g) == ["Reshape", "Relu"] and g.node("y")["inputs"] == ["c"]


# ---- 3. final Softmax --------------------------------------------------------------------


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_drop_final_softmax(op):
    nodes = [
        node("MatMul", ["x", "w"], ["logits"]),
        node(op, ["logits"], ["p"], name="sm"),
        node("Flatten", ["p"], ["q"]),
        node("Identity", ["q"], ["y"]),
    ]
    m = model(nodes, {"x": (2, 3)}, ["y"], {"w": rand(3, 4)})
    g = graph_of(m)
    feeds = feeds_for(g)
    logits = feeds["x"] @ g.const("w")
    expected = softmax(logits) if op == "Softmax" else np.log(softmax(logits))
    np.testing.assert_allclose(run(m, feeds)[0], expected, rtol=1e-5, atol=1e-6)
    legalize(g)
    R.remove_identity(g)
    R.drop_final_softmax(g)
    check_graph(g, feeds, [logits])
    assert ops(g) == ["MatMul", "Reshape"] and g.outputs == ["y"]
    assert g.notes[-1] == f"dropped final {op} 'sm': the plan returns logits (argmax is unchanged)"


@pytest.mark.parametrize("also_output", [False, True])
def test_softmax_in_the_middle_is_kept(also_output):
    nodes = [node("Softmax", ["x"], ["p"], name="sm"), node("Relu", ["p"], ["y"])]
    m = model(nodes, {"x": (2, 3)}, ["y", "p"] if also_output else ["y"])
    g = graph_of(m)
    legalize(g)
    R.drop_final_softmax(g)
    assert g.op("sm") == "Softmax" and g.node("sm")["attrs"] == {"axes": (1,)}


# ---- 4. BatchNormalization ---------------------------------------------------------------


def bn_inits(c, seed=2):
    rng = np.random.default_rng(seed)
    return {
        "scale": rng.uniform(0.5, 1.5, c),
        "bias": rng.uniform(-1, 1, c),
        "mean": rng.uniform(-1, 1, c),
        "var": rng.uniform(0.5, 2, c),
    }


BN_IN = ["scale", "bias", "mean", "var"]


def test_fold_batchnorm_into_conv():
    nodes = [
        node("Conv", ["x", "w"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
        node("BatchNormalization", ["c", *BN_IN], ["y"], name="bn1", epsilon=1e-3),
    ]
    m = model(nodes, {"x": (1, 2, 5, 5)}, ["y"], {"w": conv_w()} | bn_inits(3))
    g = check_passes(m, legalize, A.fold_batchnorm)
    assert ops(g) == ["Conv"] and g.node("conv1")["outputs"] == ["y"]
    assert g.notes[-1] == "folded BatchNormalization 'bn1' into Conv 'conv1'"


def test_batchnorm_after_a_3d_matmul_is_not_folded():
    nodes = [
        node("MatMul", ["x", "w"], ["f"], name="fc"),
        node("BatchNormalization", ["f", *BN_IN], ["y"], name="bn"),  # over axis 1: 3 rows
    ]
    inits = {"w": rand(4, 5)} | bn_inits(3)
    g = check_passes(model(nodes, {"x": (2, 3, 4)}, ["y"], inits), legalize, A.fold_batchnorm)
    assert ops(g) == ["MatMul", "Mul", "Add"]
    assert g.notes == [
        "kept BatchNormalization 'bn' apart from MatMul 'fc': it normalizes axis 1 of a 3-D "
        "tensor, not the output features",
        "turned BatchNormalization 'bn' into Mul 'bn' and Add 'bn_1'",
    ]


def test_fold_batchnorm_into_gemm():
    nodes = [
        node("Gemm", ["x", "w", "b"], ["f"], name="fc", transB=1),
        node("BatchNormalization", ["f", *BN_IN], ["y"], name="bn"),
    ]
    inits = {"w": rand(4, 3), "b": rand(4)} | bn_inits(4)
    g = check_passes(model(nodes, {"x": (2, 3)}, ["y"], inits), legalize, A.fold_batchnorm)
    assert ops(g) == ["MatMul"]


def test_batchnorm_without_affine_producer_becomes_mul_add():
    nodes = [
        node("BatchNormalization", ["x", *BN_IN], ["a"], name="bn0"),
        node("Conv", ["a", "w"], ["c"], name="conv"),
        node("BatchNormalization", ["c", *BN_IN], ["d"], name="bn1"),
        node("Add", ["c", "d"], ["y"]),  # c has two readers: bn1 cannot be folded
    ]
    inits = {"w": conv_w(2, 2)} | bn_inits(2)
    m = model(nodes, {"x": (1, 2, 5, 5)}, ["y"], inits)
    g = check_passes(m, legalize, A.fold_batchnorm)
    assert ops(g) == ["Mul", "Add", "Conv", "Mul", "Add", "Add"]
    assert g.notes[-2:] == [
        "turned BatchNormalization 'bn0' into Mul 'bn0' and Add 'bn0_1'",
        "turned BatchNormalization 'bn1' into Mul 'bn1' and Add 'bn1_1'",
    ]
    # then the input normalization folds into the Conv (no padding)
    A.fold_affine_constants(g)
    check_graph(g, feeds_for(g), run(m, feeds_for(g)))
    assert ops(g) == ["Conv", "Mul", "Add", "Add"]


# ---- 5. constants into Conv / MatMul -----------------------------------------------------


def test_fold_constants_after_conv():
    nodes = [
        node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        node("Mul", ["c", "s"], ["d"], name="scale"),
        node("Add", ["d", "b"], ["e"], name="shift"),
        node("Mul", ["e", "two"], ["y"], name="twice"),
    ]
    inits = {"w": conv_w(), "s": rand(1, 3, 1, 1), "b": rand(3, 1, 1), "two": np.float32(2)}
    m = model(nodes, {"x": (1, 2, 5, 5)}, ["y"], inits)
    g = check_passes(m, legalize, A.fold_affine_constants)
    assert ops(g) == ["Conv"] and g.node("conv")["outputs"] == ["y"]
    assert g.notes[-3:] == [
        "folded Mul 'scale' into the weights of the Conv 'conv' before it",
        "folded Add 'shift' into the bias of the Conv 'conv' before it",
        "folded Mul 'twice' into the weights and bias of the Conv 'conv' before it",
    ]


def test_fold_constants_before_conv():
    nodes = [
        node("Mul", ["x", "s"], ["a"], name="scale"),
        node("Add", ["a", "b"], ["c"], name="shift"),
        node("Conv", ["c", "w", "cb"], ["y"], name="conv", group=2),
    ]
    inits = {"w": conv_w(4, 1), "cb": rand(4), "s": rand(2, 1, 1), "b": rand(1, 2, 1, 1)}
    g = check_passes(model(nodes, {"x": (1, 2, 5, 5)}, ["y"], inits), legalize,
                     A.fold_affine_constants)  # fmt: skip
    assert ops(g) == ["Conv"] and g.node("conv")["inputs"][0] == "x"
    assert g.notes[-2:] == [
        "folded Add 'shift' into the bias of the Conv 'conv' after it",
        "folded Mul 'scale' into the weights of the Conv 'conv' after it",
    ]


def test_add_before_padded_conv_is_not_folded():
    nodes = [
        node("Mul", ["x", "s"], ["a"]),
        node("Add", ["a", "b"], ["c"]),
        node("Conv", ["c", "w"], ["y"], pads=[0, 1, 0, 1]),
    ]
    inits = {"w": conv_w(), "s": np.float32(3), "b": np.float32(0.5)}
    g = check_passes(model(nodes, {"x": (1, 2, 5, 5)}, ["y"], inits), legalize,
                     A.fold_affine_constants)  # fmt: skip
    assert ops(g) == ["Mul", "Add", "Conv"]
    assert g.notes == [
        "kept Add 'c' before Conv 'y': the Conv pads with zeros, and those borders would miss "
        "the constant"
    ]


def test_fold_input_normalization_into_matmul_and_bias_after():
    nodes = [
        node("Sub", ["x", "mean"], ["a"]),
        node("Div", ["a", "std"], ["b"]),
        node("MatMul", ["b", "w"], ["c"], name="mm"),
        node("Add", ["c", "bias"], ["y"]),
    ]
    inits = {"mean": rand(3), "std": [1.0, 2.0, 4.0], "w": rand(3, 4), "bias": rand(1, 4)}
    g = check_passes(model(nodes, {"x": (2, 5, 3)}, ["y"], inits), legalize,
                     A.fold_affine_constants)  # fmt: skip
    assert ops(g) == ["MatMul"] and len(g.node("mm")["inputs"]) == 3
    check_contract(g)


def test_constants_that_are_not_per_channel_stay():
    nodes = [
        node("MatMul", ["x", "w"], ["c"]),
        node("Add", ["c", "full"], ["d"]),  # differs per row
        node("Relu", ["d"], ["e"]),
        node("Mul", ["e", "s"], ["f"]),  # no affine op next to it
        node("Conv", ["x4", "cw"], ["g"]),
        node("Add", ["g", "g"], ["y"]),
    ]
    inits = {"w": rand(3, 4), "full": rand(2, 4), "s": rand(4), "cw": conv_w(1, 1)}
    m = model(nodes, {"x": (2, 3), "x4": (1, 1, 4, 4)}, ["f", "y"], inits)
    g = check_passes(m, legalize, A.fold_affine_constants)
    assert ops(g) == ["MatMul", "Add", "Relu", "Mul", "Conv", "Add"]
    # only the Add after the MatMul is a near miss
    assert g.notes == [
        "kept Add 'd' after MatMul 'c': its constant is not one value per output channel"
    ]


# ---- Transposes ---------------------------------------------------------------------------

NHWC, NCHW = [0, 2, 3, 1], [0, 3, 1, 2]


def transposes(*nodes, outputs=("y",), shape=(1, 2, 3, 4), inits=None):
    """Legalize and merge_transposes, checked with onnxruntime after each."""
    m = model(list(nodes), {"x": shape}, list(outputs), inits)
    return check_passes(m, legalize, R.merge_transposes)


def test_inverse_transposes_cancel():
    g = transposes(
        node("Transpose", ["x"], ["a"], perm=NHWC),
        node("Transpose", ["a"], ["b"], perm=NCHW),
        node("Relu", ["b"], ["y"]),
    )
    assert ops(g) == ["Relu"] and g.node("y")["inputs"] == ["x"]


def test_transposes_compose_into_one():
    g = transposes(
        node("Transpose", ["x"], ["a"], perm=NHWC),
        node("Transpose", ["a"], ["b"], perm=NHWC),
        node("Relu", ["b"], ["y"]),
    )
    assert ops(g) == ["Transpose", "Relu"]
    assert g.node("b")["inputs"] == ["x"] and g.node("b")["attrs"] == {"perm": (0, 3, 1, 2)}


@pytest.mark.parametrize("also_output", [False, True])
def test_a_transposed_tensor_with_other_readers_is_kept(also_output):
    # 'a' is read by Neg too (and is a graph output): the inverse Transpose 'b' goes alone
    g = transposes(
        node("Transpose", ["x"], ["a"], perm=NHWC),
        node("Transpose", ["a"], ["b"], perm=NCHW),
        node("Relu", ["b"], ["y"]),
        node("Neg", ["a"], ["n"]),
        outputs=["y", "n", "a"] if also_output else ["y", "n"],
    )
    assert ops(g) == ["Transpose", "Relu", "Neg"]
    assert g.node("y")["inputs"] == ["x"] and g.node("n")["inputs"] == ["a"]


def test_transposes_cancel_across_elementwise_ops_and_pad():
    inits = {"hi": np.float32(0.5), "pads": np.array([0, 1, 2, 0, 0, 2, 1, 0])}  # NHWC order
    g = transposes(
        node("Transpose", ["x"], ["a"], perm=NHWC),
        node("Clip", ["a", "", "hi"], ["b"]),
        node("Pad", ["b", "pads"], ["c"]),
        node("LeakyRelu", ["c"], ["d"], alpha=0.1),
        node("Transpose", ["d"], ["e"], perm=NCHW),
        node("Relu", ["e"], ["y"]),
        inits=inits,
    )
    assert ops(g) == ["Clip", "Pad", "LeakyRelu", "Relu"] and g.node("b")["inputs"] == ["x"]
    assert g.node("c")["attrs"]["pads"] == (0, 0, 1, 2, 0, 0, 2, 1)  # NCHW order
    assert g.shapes["c"] == (1, 2, 6, 7)


def test_transposes_around_an_elementwise_op_compose():
    g = transposes(
        node("Transpose", ["x"], ["a"], perm=NHWC),
        node("Relu", ["a"], ["b"]),
        node("Transpose", ["b"], ["y"], perm=NHWC),
    )
    assert ops(g) == ["Relu", "Transpose"] and g.node("y")["attrs"] == {"perm": (0, 3, 1, 2)}


def test_no_op_transposes_go_but_graph_outputs_stay():
    g = transposes(
        node("Transpose", ["x"], ["a"], perm=[0, 1, 2, 3]),
        node("Relu", ["a"], ["y"]),
        node("Transpose", ["x"], ["z"], perm=[0, 1, 2, 3]),  # the graph input as an output
        outputs=["y", "z"],
    )
    assert ops(g) == ["Relu", "Transpose"] and g.outputs == ["y", "z"]
    g = transposes(
        node("Relu", ["x"], ["r"], name="relu"),
        node("Transpose", ["r"], ["a"], perm=NHWC),
        node("Transpose", ["a"], ["y"], perm=NCHW),
    )
    assert ops(g) == ["Relu"] and g.outputs == ["y"] and g.node("relu")["outputs"] == ["y"]


# ---- 6. ReLU after MaxPool ---------------------------------------------------------------


def test_swap_relu_maxpool():
    nodes = [
        node("Relu", ["x"], ["r"], name="relu"),
        node("MaxPool", ["r"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
    ]
    m = model(nodes, {"x": (1, 2, 6, 6)}, ["y"])
    g = check_passes(m, legalize, R.swap_relu_maxpool)
    assert ops(g) == ["MaxPool", "Relu"] and g.node("relu")["outputs"] == ["y"]
    assert g.notes[-1] == (
        "moved Relu 'relu' after MaxPool 'pool' (they commute; it now runs on 4x fewer elements)"
    )


def test_relu_with_other_readers_is_not_swapped():
    nodes = [
        node("Relu", ["x"], ["r"]),
        node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2]),
        node("LeakyRelu", ["r"], ["y"], alpha=-1.0),
        node("MaxPool", ["y"], ["q"], kernel_shape=[2, 2]),  # negative alpha: not monotone
    ]
    m = model(nodes, {"x": (1, 2, 6, 6)}, ["p", "q"])
    g = check_passes(m, legalize, R.swap_relu_maxpool)
    assert ops(g) == ["Relu", "MaxPool", "LeakyRelu", "MaxPool"]
    assert g.notes == ["kept LeakyRelu 'y' before MaxPool 'q': alpha < 0 does not commute with max"]


# ---- 7. AveragePool divisor --------------------------------------------------------------


def avgpool_model(k=3, pads=(0, 0, 0, 0), include=0, ceil=0, branch=False):
    nodes = [
        node("AveragePool", ["x"], ["a"], name="avg", kernel_shape=[k, k], strides=[k, k],
             pads=list(pads), count_include_pad=include, ceil_mode=ceil),
        node("Relu", ["a"], ["r"]),
        node("Flatten", ["r"], ["f"]),
        node("Gemm", ["f", "w", "b"], ["y"], name="fc"),
    ]  # fmt: skip
    outputs = ["y", "r"] if branch else ["y"]
    side = 7 if ceil else 6
    a = (side + pads[0] + pads[2] - k + (k - 1 if ceil else 0)) // k + 1
    m = model(nodes, {"x": (1, 2, side, side)}, outputs, {"w": rand(2 * a * a, 3), "b": rand(3)})
    return m


def test_fold_avgpool_into_next_matmul():
    g = check_passes(avgpool_model(), legalize, A.fold_avgpool)
    assert ops(g) == ["SumPool", "Relu", "Reshape", "MatMul"]
    assert g.notes[-1] == (
        "folded the 1/9 of AveragePool 'avg' into the weights of MatMul 'fc' (it is now a SumPool)"
    )
    check_contract(g)


KEPT_AVG = "kept the 1/9 of AveragePool 'avg' out of MatMul 'fc': "


@pytest.mark.parametrize(
    "kwargs, notes",
    [
        ({"k": 2}, []),  # power of two: free in fixed point
        # count_include_pad=0 with padding: the divisor varies
        ({"pads": (1, 1, 1, 1)},
         [KEPT_AVG + "windows over its padding, which it does not count, divide by less"]),
        ({"ceil": 1}, [KEPT_AVG + "the partial windows of its ceil_mode divide by less"]),
        ({"branch": True}, []),  # the path forks
    ],
)  # fmt: skip
def test_avgpool_left_alone(kwargs, notes):
    g = check_passes(avgpool_model(**kwargs), legalize, A.fold_avgpool)
    assert "SumPool" not in ops(g)
    assert g.notes == notes


def test_fold_avgpool_with_counted_padding_into_conv():
    nodes = [
        node("AveragePool", ["x"], ["a"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
             count_include_pad=1),
        node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2]),
        node("Pad", ["p", "pads"], ["q"]),
        node("Conv", ["q", "w"], ["y"]),
    ]  # fmt: skip
    inits = {"w": conv_w(), "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1])}
    g = check_passes(model(nodes, {"x": (1, 2, 6, 6)}, ["y"], inits), legalize, A.fold_avgpool)
    assert ops(g) == ["SumPool", "MaxPool", "Pad", "Conv"]


# ---- run_all -----------------------------------------------------------------------------


def test_run_all_on_a_hand_built_model():
    nodes = [
        node("Sub", ["x", "mu"], ["a"]),
        node("Conv", ["a", "w"], ["c"], name="conv", auto_pad="SAME_UPPER"),
        node("BatchNormalization", ["c", *BN_IN], ["d"], name="bn"),
        node("Relu", ["d"], ["r"]),
        node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        node("Dropout", ["p"], ["q"]),
        node("GlobalAveragePool", ["q"], ["gap"]),
        node("Flatten", ["gap"], ["f"]),
        node("Gemm", ["f", "fw", "fb"], ["logits"], name="fc", transB=1),
        node("Softmax", ["logits"], ["y"], name="sm"),
    ]
    inits = {"mu": np.float32(0.5), "w": conv_w(), "fw": rand(4, 3), "fb": rand(4)}
    m = model(nodes, {"x": ("N", 2, 6, 6)}, ["y"], inits | bn_inits(3))
    g = graph_of(m, (2, 2, 6, 6))
    feeds = feeds_for(g)
    ref = run(m, feeds)[0]
    run_all(g)
    check_contract(g)
    (got,) = run(g.to_onnx(), feeds)
    np.testing.assert_allclose(softmax(got), ref, rtol=1e-5, atol=1e-6)
    assert ops(g) == ["Add", "Conv", "MaxPool", "Relu", "GlobalAveragePool", "Reshape", "MatMul"]
    assert g.notes == [
        "dropped final Softmax 'sm': the plan returns logits (argmax is unchanged)",
        "folded BatchNormalization 'bn' into Conv 'conv'",
        "kept Add 'a' before Conv 'conv': the Conv pads with zeros, and those borders would "
        "miss the constant",
        "moved Relu 'r' after MaxPool 'p' (they commute; it now runs on 4x fewer elements)",
    ]
    assert set(g.constants) == {t for n in g.nx.nodes for t in g.node(n)["inputs"]} - {
        "x",
        *g.shapes,
    }


FINAL = {"convnet": "Softmax", "mixed": "LogSoftmax", "kitchen": None}


@pytest.mark.parametrize("kind", ["convnet", "mixed", "kitchen"])
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_run_all_on_torch_exports(kind, dynamo):
    import torch

    m, module = export(kind, dynamo)
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    for shape in [None, (3, *dims[1:])]:
        g = graph_of(m, shape)
        feeds = feeds_for(g, seed=7)
        ref = run(m, feeds)[0]
        with torch.no_grad():
            np.testing.assert_allclose(module(torch.from_numpy(feeds["x"])), ref, atol=1e-5)
        run_all(g)
        check_contract(g)
        g.validate()
        out = g.to_onnx()
        onnx.checker.check_model(out, full_check=True)
        (got,) = run(out, feeds)
        if FINAL[kind] == "Softmax":
            got = softmax(got)
        elif FINAL[kind] == "LogSoftmax":
            got = np.log(softmax(got))
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
        assert "BatchNormalization" not in ops(g) and "Softmax" not in ops(g)
        assert any(n.startswith("dropped final") for n in g.notes) == bool(FINAL[kind])
    if kind == "mixed":
        # (x - 0.5) / 0.25: the Mul folds into the Conv, the Add cannot (the Conv pads)
        assert ops(g) == ["Add", "Conv", "Relu", "SumPool", "Conv", "Relu", "Reshape", "MatMul",
                          "LeakyRelu", "MatMul"]  # fmt: skip
    elif kind == "convnet":
        assert ops(g) == ["Conv", "MaxPool", "Relu", "Reshape", "MatMul"]
