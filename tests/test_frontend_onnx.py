"""Tests for mpcc.frontends.onnx: input shapes, loading, checking and constant folding."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from mpcc.compiler.graph import Graph
from mpcc.compiler.passes import run_all
from mpcc.errors import ModelError
from mpcc.frontends.onnx import load, notes, parse_input_shapes
from tests.onnx_builders import export, feeds_for, model, node, rand, run


def shape_of(m: onnx.ModelProto, t: str) -> tuple[int, ...]:
    for vi in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
        if vi.name == t:
            return tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
    raise KeyError(t)


def relu_model(shape=("N", 3, 4, 4), opset=17) -> onnx.ModelProto:
    return model([node("Relu", ["x"], ["y"])], {"x": shape}, ["y"], opset=opset)


# ---- parse_input_shapes ------------------------------------------------------------------


def test_parse_input_shapes():
    assert parse_input_shapes(["1x1x28x28"]) == {None: (1, 1, 28, 28)}
    assert parse_input_shapes(["a=2x3", "b = 4"]) == {"a": (2, 3), "b": (4,)}
    assert parse_input_shapes([]) == {}


@pytest.mark.parametrize(
    "specs, match",
    [
        (["1x"], "expected dims"),
        (["a=1,2"], "expected dims"),
        (["x=1x0x3"], "positive"),
        (["a=1", "a=2"], "twice"),
        (["1x2", "b=3"], "single input"),
        ([""], "expected dims"),
    ],
)
def test_parse_input_shapes_errors(specs, match):
    with pytest.raises(ModelError, match=match):
        parse_input_shapes(specs)


# ---- reading and checking ----------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="no such file") as e:
        load(tmp_path / "nope.onnx")
    assert "nope.onnx" in str(e.value)


def test_non_onnx_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("this is not a model\n" * 10)
    with pytest.raises(ModelError, match="not an ONNX model") as e:
        load(path)
    assert str(path) in str(e.value)


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.onnx"
    path.write_bytes(relu_model().SerializeToString()[:-7])
    with pytest.raises(ModelError, match="cut.onnx"):
        load(path)


def test_invalid_model_fails_the_checker(tmp_path):
    m = model([node("Relu", ["nowhere"], ["y"])], {"x": (1, 3)}, ["y"])
    path = tmp_path / "bad.onnx"
    onnx.save(m, path)
    with pytest.raises(ModelError, match=r"bad\.onnx: not a valid ONNX model"):
        load(path)


def test_load_from_path_and_proto_does_not_mutate(tmp_path):
    m = relu_model()
    path = tmp_path / "relu.onnx"
    onnx.save(m, path)
    for src in (path, str(path), m):
        out = load(src)
        assert shape_of(out, "y") == (1, 3, 4, 4)
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


# ---- input shapes ------------------------------------------------------------------------


def test_symbolic_batch_defaults_to_one_with_a_note():
    m = load(relu_model())
    assert shape_of(m, "x") == (1, 3, 4, 4)
    assert notes(m) == [
        "input 'x': symbolic batch dim 'N' set to 1 (use --input-shape to change it)"
    ]


@pytest.mark.parametrize("shapes", [(5, 3, 4, 4), {None: (5, 3, 4, 4)}, {"x": (5, 3, 4, 4)}])
def test_given_input_shape(shapes):
    m = load(relu_model(), shapes)
    assert shape_of(m, "x") == shape_of(m, "y") == (5, 3, 4, 4)
    assert notes(m) == []


@pytest.mark.parametrize(
    "shapes, match",
    [
        ((1, 3, 4), "has 3 dims"),
        ((1, 2, 4, 4), "fixes it to 3"),
        ({"z": (1, 3, 4, 4)}, "unknown input 'z'"),
    ],
)
def test_bad_input_shape(shapes, match):
    with pytest.raises(ModelError, match=match):
        load(relu_model(), shapes)


def test_unfixed_non_batch_dim_is_an_error():
    with pytest.raises(ModelError) as e:
        load(relu_model(("N", 3, "H", 4)))
    msg = str(e.value)
    assert "input 'x'" in msg and "dim 2 ('H')" in msg and "--input-shape x=1x3x<?>x4" in msg
    assert shape_of(load(relu_model(("N", 3, "H", 4)), {"x": (2, 3, 7, 4)}), "y") == (2, 3, 7, 4)


def test_unnamed_shape_needs_a_single_input():
    m = model([node("Add", ["a", "b"], ["y"])], {"a": (1, 2), "b": (1, 2)}, ["y"])
    with pytest.raises(ModelError, match="one input"):
        load(m, (1, 2))


def test_initializer_listed_as_input_is_a_constant():
    m = model([node("Add", ["x", "w"], ["y"])], {"x": (1, 2), "w": (2,)}, ["y"], {"w": [1, 2.0]})
    out = load(m)
    assert [i.name for i in out.graph.input] == ["x"]
    assert [t.name for t in out.graph.initializer] == ["w"]


# ---- constant folding --------------------------------------------------------------------


def shape_chain_model() -> onnx.ModelProto:
    """x.reshape(x.shape[0], -1) the way the TorchScript exporter writes it."""
    nodes = [
        node("Shape", ["x"], ["s"]),
        node("Constant", [], ["zero"], value=onnx.numpy_helper.from_array(np.array(0))),
        node("Gather", ["s", "zero"], ["n"], axis=0),
        node("Unsqueeze", ["n", "axes"], ["n1"]),
        node("Constant", [], ["minus1"], value_ints=[-1]),
        node("Concat", ["n1", "minus1"], ["shape"], axis=0),
        node("Cast", ["shape"], ["shape64"], to=onnx.TensorProto.INT64),
        node("Reshape", ["x", "shape64"], ["y"]),
        node("Relu", ["y"], ["z"]),
    ]
    return model(nodes, {"x": ("N", 2, 3)}, ["z"], {"axes": np.array([0])})


def test_folds_shape_arithmetic():
    m = load(shape_chain_model(), (4, 2, 3))
    assert [n.op_type for n in m.graph.node] == ["Reshape", "Relu"]
    shape = next(t for t in m.graph.initializer if t.name == m.graph.node[0].input[1])
    assert onnx.numpy_helper.to_array(shape).tolist() == [4, -1]
    assert {t.name for t in m.graph.initializer} == {m.graph.node[0].input[1]}  # rest pruned
    assert shape_of(m, "z") == (4, 6)
    x = rand(4, 2, 3)
    np.testing.assert_array_equal(run(m, {"x": x})[0], np.maximum(x.reshape(4, 6), 0))


def test_folds_computations_on_initializers():
    nodes = [
        node("Transpose", ["wt"], ["w"], perm=[1, 0]),
        node("Mul", ["w", "two"], ["w2"]),
        node("MatMul", ["x", "w2"], ["y"]),
    ]
    wt = rand(3, 2)
    m = load(model(nodes, {"x": (1, 2)}, ["y"], {"wt": wt, "two": np.float32(2)}))
    assert [n.op_type for n in m.graph.node] == ["MatMul"]
    (w,) = m.graph.initializer
    np.testing.assert_allclose(onnx.numpy_helper.to_array(w), 2 * wt.T)


def test_dynamic_shape_after_folding_is_an_error():
    nodes = [node("NonZero", ["x"], ["idx"], name="nz"), node("Cast", ["idx"], ["y"], to=1)]
    with pytest.raises(ModelError) as e:
        load(model(nodes, {"x": (1, 4)}, ["y"]))
    assert "tensor 'idx'" in str(e.value) and "node 'nz', op NonZero" in str(e.value)


def test_constant_output_is_an_error():
    nodes = [
        node("Relu", ["x"], ["y"]),
        node("Shape", ["x"], ["s"]),
        node("Cast", ["s"], ["z"], to=1),
    ]
    with pytest.raises(ModelError, match="output 'z' is a constant"):
        load(model(nodes, {"x": (1, 4)}, ["y", "z"]))


def test_old_opset_is_upgraded():
    nodes = [node("Unsqueeze", ["x"], ["y"], axes=[0]), node("Relu", ["y"], ["z"])]
    m = load(model(nodes, {"x": (2, 3)}, ["z"], opset=11))
    assert next(o.version for o in m.opset_import if o.domain == "") >= 13
    assert shape_of(m, "z") == (1, 2, 3)


def test_custom_domain_ops_are_listed():
    nodes = [
        onnx.helper.make_node("Gelu", ["x"], ["a"], "g1", domain="com.microsoft"),
        onnx.helper.make_node("FusedX", ["a"], ["y"], "f1", domain="my.ops"),
    ]
    graph = onnx.helper.make_graph(
        nodes, "g", [onnx.helper.make_tensor_value_info("x", 1, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", 1, [1, 4])],
    )  # fmt: skip
    opsets = [onnx.helper.make_opsetid(d, 1) for d in ("com.microsoft", "my.ops")]
    m = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17), *opsets])
    with pytest.raises(ModelError) as e:
        load(m)
    assert "node 'g1' (op com.microsoft.Gelu), node 'f1' (op my.ops.FusedX)" in str(e.value)


def test_unnamed_nodes_get_unique_names():
    m = relu_model()
    m.graph.node.append(onnx.helper.make_node("Relu", ["y"], ["z"]))
    m.graph.node[0].name = ""
    m.graph.output[0].name = "z"
    names = [n.name for n in load(m).graph.node]
    assert all(names) and len(set(names)) == 2


# ---- torch exporters ---------------------------------------------------------------------


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_torch_exports_load_to_static_graphs(dynamo):
    m, _ = export("convnet", dynamo)
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    out = load(m, (3, 1, 12, 12))
    ops = {n.op_type for n in out.graph.node}
    assert not ops & {"Shape", "Gather", "Concat", "Constant", "Cast", "Unsqueeze"}
    assert shape_of(out, out.graph.output[0].name) == (3, 5)


@pytest.mark.parametrize("dynamo, opset", [(False, 17), (True, 21)], ids=["torchscript", "dynamo"])
def test_torch_export_other_opsets(dynamo, opset):
    m, _ = export("convnet", dynamo, opset)
    assert next(o.version for o in m.opset_import if o.domain == "") == opset
    g = Graph.from_onnx(load(m))
    feeds = feeds_for(g)
    ref = run(m, feeds)[0]
    (logits,) = run(run_all(g).to_onnx(), feeds)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(-1, keepdims=True), ref, rtol=1e-5, atol=1e-6)
