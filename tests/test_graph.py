"""Tests for mpcc.compiler.graph: building from ONNX, helpers, errors and to_onnx."""

from __future__ import annotations

import numpy as np
import pytest

from mpcc.compiler.graph import Graph
from mpcc.compiler.supported import SUPPORTED_OPS
from mpcc.errors import ModelError
from tests.onnx_builders import check_graph, feeds_for, graph_of, model, node, ops, rand, run


def small_model():
    """x -> Conv -> Relu -> (Add with itself) -> y, plus a Constant."""
    nodes = [
        node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        node("Relu", ["c"], ["r"], name="relu"),
        node("Constant", [], ["k"], value_float=2.0),
        node("Mul", ["r", "k"], ["m"], name="mul"),
        node("Add", ["m", "r"], ["y"], name="add"),
    ]
    inits = {"w": rand(2, 1, 3, 3), "b": rand(2), "shape": np.array([1, -1])}
    return model(nodes, {"x": ("N", 1, 4, 4)}, ["y"], inits)


def test_from_onnx_builds_nodes_edges_and_facts():
    g = graph_of(small_model())
    g.validate()
    assert g.name == "tiny" and g.inputs == ["x"] and g.outputs == ["y"]
    assert list(g.nx.nodes) == ["conv", "relu", "mul", "add"]
    assert g.node("conv") == {
        "op": "Conv",
        "inputs": ["x", "w", "b"],
        "outputs": ["c"],
        "attrs": {"pads": [1, 1, 1, 1]},
    }
    assert g.nx.edges["relu", "add"]["tensors"] == ["r"]
    assert set(g.nx.edges) == {("conv", "relu"), ("relu", "mul"), ("relu", "add"), ("mul", "add")}
    # constants keep their source precision: no float64 copy of a model's weights
    assert g.constants["w"].dtype == np.float32 and g.constants["k"].dtype == np.float32
    assert float(g.const("k")) == 2.0
    assert g.shapes == {"x": (1, 1, 4, 4), "c": (1, 2, 4, 4), "r": (1, 2, 4, 4),
                        "m": (1, 2, 4, 4), "y": (1, 2, 4, 4)}  # fmt: skip
    assert g.notes == [
        "input 'x': symbolic batch dim 'N' set to 1 (use --input-shape to change it)"
    ]


def test_queries():
    g = graph_of(small_model())
    assert g.producer("r") == "relu" and g.producer("x") is None and g.producer("w") is None
    assert g.consumers("r") == ["mul", "add"] and g.consumers("x") == ["conv"]
    assert g.only_consumer("c") == "relu" and g.only_consumer("r") is None
    assert g.only_consumer("y") is None  # a graph output
    assert g.topo_nodes() == ["conv", "relu", "mul", "add"]
    assert g.is_const("w") and not g.is_const("c")
    assert g.shape("w") == (2, 1, 3, 3) and g.shape("r") == (1, 2, 4, 4)
    assert list(g.nodes_by_op("Mul", "Add")) == ["mul", "add"]
    with pytest.raises(KeyError, match="not a constant"):
        g.const("c")


def test_mutations_keep_edges_consistent():
    g = graph_of(small_model())
    feeds = feeds_for(g)
    ref = run(g.to_onnx(), feeds)
    # insert a Relu between conv and relu (idempotent, so the outputs are unchanged)
    t = g.new_tensor("c_relu", g.shape("c"))
    n = g.add_node("Relu", ["c"], [t], name="relu")
    assert n == "relu_1"
    g.set_inputs("relu", [t])
    assert g.topo_nodes() == ["conv", "relu_1", "relu", "mul", "add"]
    check_graph(g, feeds, ref)
    # and remove it again
    g.bypass(n)
    assert g.node("relu")["inputs"] == ["c"] and "c_relu" not in g.shapes
    check_graph(g, feeds, ref)
    # replace the Mul by 2 with an Add of r to itself
    g.remove_node("mul")
    g.add_node("Add", ["r", "r"], ["m"], name="double")
    assert g.nx.edges["relu", "double"]["tensors"] == ["r"]
    check_graph(g, feeds, ref)
    # rename a tensor, including a graph output
    g.rename("y", "out")
    g.rename("r", "rr")
    assert g.outputs == ["out"] and g.consumers("rr") == ["add", "double"]
    check_graph(g, feeds, ref)
    g.prune()
    assert "k" not in g.constants
    c = g.add_const(np.array([1, 2]), "w")
    assert c == "w_1" and g.const(c).dtype == np.int64


def test_bypass_keeps_graph_output_names():
    nodes = [node("Relu", ["x"], ["r"]), node("Identity", ["r"], ["y"], name="id")]
    g = graph_of(model(nodes, {"x": (1, 3)}, ["y"]))
    g.bypass("id")
    assert g.outputs == ["y"] and g.node("r")["outputs"] == ["y"] and "r" not in g.shapes
    g.validate()


def test_replace_uses_updates_outputs():
    nodes = [node("Relu", ["x"], ["r"]), node("Neg", ["r"], ["y"])]
    g = Graph()
    g.inputs, g.outputs, g.shapes = ["x"], ["y"], {"x": (2,), "r": (2,), "y": (2,)}
    for n in nodes:
        g.add_node(n.op_type, list(n.input), list(n.output), name=n.name)
    g.replace_uses("y", "r")
    assert g.outputs == ["r"]
    g.replace_uses("r", "x")
    assert g.node("y")["inputs"] == ["x"] and not g.nx.edges
    with pytest.raises(ValueError, match="already produced"):
        g.add_node("Relu", ["x"], ["r"])


def test_unsupported_ops_are_listed_at_once():
    nodes = [
        node("Sin", ["x"], ["a"], name="n1"),
        node("Relu", ["a"], ["b"], name="n2"),
        node("Cos", ["b"], ["c"], name="n3"),
        node("Atan", ["c"], ["y"], name="n4"),
    ]
    with pytest.raises(ModelError) as e:
        graph_of(model(nodes, {"x": (1, 4)}, ["y"]))
    lines = str(e.value).splitlines()
    assert lines[0] == "the model cannot be compiled: 3 blockers (3 unsupported op)"
    assert lines[1:5] == [
        "unsupported op (3):",
        "  Atan x1: 'n4'",
        "  Cos x1: 'n3'",
        "  Sin x1: 'n1'",
    ]
    assert lines[5].startswith("  what to do: ") and "python -m mpcc.optable" in lines[5]
    assert "n2" not in str(e.value)


def test_non_constant_conv_weight():
    nodes = [node("Relu", ["w"], ["w2"]), node("Conv", ["x", "w2"], ["y"], name="conv")]
    m = model(nodes, {"x": (1, 1, 4, 4), "w": (1, 1, 3, 3)}, ["y"])
    with pytest.raises(ModelError) as e:
        graph_of(m)
    assert "node 'conv' (op Conv) needs a constant weight as input 1, but 'w2' is computed" in str(
        e.value
    )


def test_graph_without_static_shapes_needs_load():
    m = model([node("Relu", ["x"], ["y"])], {"x": ("N", 3)}, ["y"])
    with pytest.raises(ModelError, match="frontends.onnx.load"):
        Graph.from_onnx(m)


def test_supported_ops_are_described():
    assert len(SUPPORTED_OPS) >= 58  # other branches add ops too
    assert all(isinstance(d, str) and d and "\n" not in d for d in SUPPORTED_OPS.values())


def test_to_onnx_round_trip():
    m = small_model()
    g = graph_of(m)
    feeds = feeds_for(g)
    check_graph(g, feeds, run(m, feeds))


def test_to_onnx_emits_mpcc_forms():
    """SumPool, MatMul with bias and attribute forms of Clip/Slice/Pad/Reshape."""
    g = Graph("forms", opset=17)
    g.inputs, g.outputs = ["x"], ["y"]
    shapes = {"x": (1, 2, 6, 6), "p": (1, 2, 3, 3), "c": (1, 2, 3, 3), "s": (1, 2, 3, 3),
              "q": (1, 2, 5, 5), "f": (1, 50), "y": (1, 3)}  # fmt: skip
    g.shapes = shapes
    w, b = rand(50, 3), rand(3)
    k = g.add_const(w, "w")
    bb = g.add_const(b, "b")
    attrs = {"kernel_shape": (3, 3), "strides": (2, 2), "pads": (1, 1, 0, 0)}
    attrs |= {"count_include_pad": 1, "ceil_mode": 0}
    g.add_node("SumPool", ["x"], ["p"], attrs)
    g.add_node("Clip", ["p"], ["c"], {"min": -np.inf, "max": 0.5})
    g.add_node("Slice", ["c"], ["s"], {"starts": (2,), "ends": (-1,), "axes": (3,), "steps": (-1,)})
    g.add_node("Pad", ["s"], ["q"], {"pads": (0, 0, 1, 1, 0, 0, 1, 1), "value": 0.25})
    g.add_node("Reshape", ["q"], ["f"], {"shape": (1, 50)})
    g.add_node("MatMul", ["f", k, bb], ["y"])
    x = rand(1, 2, 6, 6)
    xp = np.pad(x, [(0, 0), (0, 0), (1, 0), (1, 0)])
    pooled = np.array(
        [[xp[:, :, i : i + 3, j : j + 3].sum(axis=(2, 3)) for j in (0, 2, 4)] for i in (0, 2, 4)]
    ).transpose(2, 3, 0, 1)
    sliced = np.minimum(pooled, 0.5)[..., ::-1]
    padded = np.pad(sliced, [(0, 0), (0, 0), (1, 1), (1, 1)], constant_values=0.25)
    check_graph(g, {"x": x}, [padded.reshape(1, 50) @ w + b])
    assert ops(g) == ["SumPool", "Clip", "Slice", "Pad", "Reshape", "MatMul"]
