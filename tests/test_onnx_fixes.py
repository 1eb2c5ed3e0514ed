"""Regression tests for issue 12's wrong results, crashes and unclear messages, each checked
against onnxruntime: Clip with min > max, IR < 4 models, PRelu's broadcast, several inputs and
no weights (LocalCluster, cleartext, `mpcc run`), constant-input messages, ReduceSum's
noop_with_empty_axes, internal op names, Cast between floats and the Keras 3 ONNX export."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from mpcc.cli import main
from mpcc.compiler import planfile
from mpcc.compiler.pipeline import compile_onnx
from mpcc.errors import InputError, ModelError
from mpcc.runtime.cleartext import predict
from mpcc.runtime.cluster import LocalCluster
from tests.onnx_builders import model, node, rand, run

TOL = dict(atol=2e-4, rtol=1e-4)


def both(m: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The compiled model's first output in cleartext and securely."""
    plan = compile_onnx(m)
    x = feeds if len(feeds) > 1 else next(iter(feeds.values()))
    with LocalCluster(plan) as cluster:
        secure = cluster.predict(x)
    return predict(plan.program, plan.weights, x), secure


def check(m: onnx.ModelProto, feeds: dict[str, np.ndarray], tol: dict = TOL) -> None:
    want = run(m, feeds)[0]
    for got in both(m, feeds):
        np.testing.assert_allclose(got, want, **tol)


def test_clip_with_min_above_max_gives_max() -> None:
    """ONNX's Clip is min(max(x, lo), hi): with lo > hi every element is hi."""
    m = model([node("Clip", ["x", "lo", "hi"], ["y"])], {"x": (3,)}, ["y"], {"lo": 2.0, "hi": 1.0})
    x = np.array([-2.0, 0.0, 6.0], np.float32)
    np.testing.assert_array_equal(run(m, {"x": x})[0], [1, 1, 1])
    check(m, {"x": x})


def _ir3(nodes, inputs, outputs, inits, opset: int = 8) -> onnx.ModelProto:
    """An IR-3 model: every initializer is also a graph input, as IR < 4 required."""
    tensors = [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()]
    ins = [helper.make_tensor_value_info(k, TensorProto.FLOAT, s) for k, s in inputs.items()]
    ins += [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in tensors]
    outs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, s) for k, s in outputs.items()]
    g = helper.make_graph(nodes, "ir3", ins, outs, tensors)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 3
    return m


def test_ir3_slice_then_squeeze_keeps_its_shape() -> None:
    """Upgraded to opset 13, Squeeze's axes become an initializer: IR 3 shape inference
    ignored it and squeezed every size-1 axis (shape [] instead of [1])."""
    nodes = [
        node("Slice", ["x"], ["s"], starts=[0], ends=[1], axes=[1]),
        node("Squeeze", ["s"], ["y"], axes=[0]),
        node("Relu", ["y"], ["z"]),
    ]
    m = _ir3(nodes, {"x": [1, 2]}, {"z": [1]}, {})
    plan = compile_onnx(m)
    assert plan.program.value(plan.program.outputs[0][1]).shape == (1,)
    check(m, {"x": np.array([[-0.5, 2.0]], np.float32)})


def test_ir3_conv_gemm_export_compiles() -> None:
    """An old IR-3 export (weights listed as graph inputs) compiles and matches."""
    nodes = [
        node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
        node("Relu", ["c"], ["r"]),
        node("Flatten", ["r"], ["f"]),
        node("Gemm", ["f", "G", "C"], ["y"], transB=1),
    ]
    inits = {"W": rand(2, 1, 3, 3), "B": rand(2), "G": rand(3, 32, seed=1), "C": rand(3)}
    m = _ir3(nodes, {"x": [1, 1, 4, 4]}, {"y": [1, 3]}, inits)
    check(m, {"x": rand(1, 1, 4, 4, seed=2)}, dict(atol=2e-3, rtol=1e-3))


def test_prelu_broadcasts_like_onnx() -> None:
    """A slope of shape (5,) broadcasts over the trailing axis of (2, 3, 4, 5)."""
    m = model([node("PRelu", ["x", "s"], ["y"])], {"x": (2, 3, 4, 5)}, ["y"], {"s": rand(5)})
    check(m, {"x": rand(2, 3, 4, 5, seed=3)})


def test_prelu_slope_that_does_not_broadcast_is_a_clear_error(tmp_path, capsys) -> None:
    """A (3,) slope on (2, 3, 4, 5) is not an ONNX broadcast: exit 2 and a hint, no trace."""
    m = model([node("PRelu", ["x", "s"], ["y"], name="pr")], {"x": (2, 3, 4, 5)}, ["y"])
    m.graph.initializer.append(numpy_helper.from_array(rand(3), "s"))
    path = tmp_path / "prelu.onnx"
    onnx.save(m, path)
    assert main(["compile", str(path), "-o", str(tmp_path / "p.mpcc")]) == 2
    err = capsys.readouterr().err
    assert "node 'pr' (op PRelu)" in err and "(3,) does not broadcast" in err
    assert "give it shape (3, 1, 1)" in err and "Traceback" not in err


def _two_inputs() -> onnx.ModelProto:
    nodes = [node("Add", ["x", "y"], ["s"]), node("Relu", ["s"], ["z"])]
    return model(nodes, {"x": (2, 3), "y": (2, 3)}, ["z"])


def test_several_inputs_cleartext_and_secure() -> None:
    m = _two_inputs()
    feeds = {"x": rand(2, 3), "y": rand(2, 3, seed=1)}
    check(m, feeds)
    plan = compile_onnx(m)
    assert not plan.weights  # a plan without weights runs too
    with pytest.raises(InputError, match="2 inputs .*give a dict"):
        predict(plan.program, plan.weights, feeds["x"])
    with pytest.raises(InputError, match="input 'y' is missing"):
        predict(plan.program, plan.weights, {"x": feeds["x"]})
    # more samples than one batch: each input cut along its batch axis
    many = {"x": rand(5, 3, seed=4), "y": rand(5, 3, seed=5)}
    want = np.maximum(many["x"] + many["y"], 0)
    np.testing.assert_allclose(predict(plan.program, plan.weights, many), want, atol=1e-4)


def test_mpcc_run_several_inputs_and_no_weights(tmp_path, capsys) -> None:
    m = _two_inputs()
    onnx.save(m, tmp_path / "add.onnx")
    plan = tmp_path / "add.mpcc"
    assert main(["compile", str(tmp_path / "add.onnx"), "-o", str(plan)]) == 0
    x, y = rand(2, 3), rand(2, 3, seed=1)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    want = run(m, {"x": x, "y": y})[0]
    for inputs in (
        ["--input", f"x={tmp_path / 'x.npy'}", "--input", f"y={tmp_path / 'y.npy'}"],
        ["--input", str(tmp_path / "xy.npz")],
    ):
        for mode in (["--cleartext"], []):
            out = tmp_path / "out.npy"
            assert main(["run", str(plan), *inputs, *mode, "-q", "--output", str(out)]) == 0
            np.testing.assert_allclose(np.load(out), want, **TOL)
    capsys.readouterr()
    assert main(["run", str(plan), "--input", str(tmp_path / "x.npy"), "-q"]) == 2
    assert "give --input NAME=FILE.npy for each" in capsys.readouterr().err


def test_mpcc_run_plan_without_weights(tmp_path) -> None:
    m = model([node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2])], {"x": (1, 1, 4, 4)}, ["y"])
    plan = tmp_path / "mp.mpcc"
    planfile.save(plan, *compile_onnx(m))
    x = rand(1, 1, 4, 4)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "y.npy"
    assert (
        main(["run", str(plan), "--input", str(tmp_path / "x.npy"), "-q", "--output", str(out)])
        == 0
    )
    np.testing.assert_allclose(np.load(out), run(m, {"x": x})[0], **TOL)


@pytest.mark.parametrize(
    ("op", "extra", "name"),
    [
        ("Reshape", {}, "shape"),
        ("Unsqueeze", {}, "axes"),
        ("Slice", {}, "starts"),
    ],
)
def test_computed_shape_input_must_be_a_constant(op, extra, name) -> None:
    """A shape, axes or starts computed from the inputs: 'must be a constant', not 'no
    static shape'."""
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
        helper.make_tensor_value_info("k", TensorProto.INT64, [2 if op == "Reshape" else 1]),
    ]
    ins = ["x", "k", "e"] if op == "Slice" else ["x", "k"]
    if op == "Slice":
        inputs.append(helper.make_tensor_value_info("e", TensorProto.INT64, [1]))
    g = helper.make_graph(
        [node(op, ins, ["y"], name="n", **extra)],
        "g",
        inputs,
        [
            helper.make_tensor_value_info(
                "y", TensorProto.FLOAT, [None] * (3 if op == "Unsqueeze" else 2)
            )
        ],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m = onnx.shape_inference.infer_shapes(m)
    with pytest.raises(ModelError) as e:
        compile_onnx(m)
    msg = str(e.value)
    assert f"node 'n' (op {op}): its input 1 ({name}) 'k'" in msg
    assert "must be a constant, but is computed" in msg or "must be constants, but are" in msg
    assert "no static shape" not in msg


def test_reduce_sum_noop_with_empty_axes_is_identity() -> None:
    m = model(
        [node("ReduceSum", ["x"], ["s"], noop_with_empty_axes=1), node("Relu", ["s"], ["y"])],
        {"x": (1, 2, 3, 3)},
        ["y"],
    )
    check(m, {"x": rand(1, 2, 3, 3)})


def test_reduce_sum_that_named_an_internal_op_compiles() -> None:
    """ReduceSum over the last axis of a 3-D tensor was refused naming the internal op
    "SumPool"; it now compiles (h-smooth's general reduction) and matches."""
    nodes = [node("ReduceSum", ["x", "ax"], ["y"], name="rs")]
    m = model(nodes, {"x": (1, 4, 8)}, ["y"], {"ax": np.array([2], np.int64)})
    check(m, {"x": rand(1, 4, 8)})


def test_cast_between_floats_is_a_no_op_and_shape_casts_fold() -> None:
    """Cast float->double->float is removed; Shape -> Cast -> Mul -> Cast -> Reshape folds."""
    nodes = [
        node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE),
        node("Cast", ["d"], ["f"], to=TensorProto.FLOAT),
        node("Shape", ["f"], ["sh"]),
        node("Cast", ["sh"], ["shf"], to=TensorProto.FLOAT),
        node("Mul", ["shf", "half"], ["hf"]),
        node("Cast", ["hf"], ["h"], to=TensorProto.INT64),
        node("Reshape", ["f", "h2"], ["r"]),
        node("Relu", ["r"], ["y"]),
    ]
    nodes.insert(6, node("Concat", ["h", "h"], ["h2"], axis=0))
    m = model(nodes, {"x": (4,)}, ["y"], {"half": np.array([0.5], np.float32)})
    plan = compile_onnx(m)
    assert [i.op.name for i in plan.program.instrs] == ["input", "reshape", "relu", "output"]
    check(m, {"x": rand(4)})


def test_cast_to_integer_of_a_computed_tensor_is_refused() -> None:
    m = model([node("Cast", ["x"], ["y"], name="c", to=TensorProto.INT64)], {"x": (4,)}, ["y"])
    with pytest.raises(
        ModelError, match="node 'c' \\(op Cast\\): a Cast .* to INT64 is not supported"
    ):
        compile_onnx(m)


def test_keras3_own_onnx_export_compiles_and_matches(tmp_path) -> None:
    """Keras 3's `model.export(path, format="onnx")` (torch backend) puts float-to-float Casts
    around every layer."""
    if os.environ.get("KERAS_BACKEND", "torch") != "torch":
        pytest.skip("Keras must run on the torch backend")
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    from keras import layers as L

    keras.utils.set_random_seed(0)
    k = keras.Sequential(
        [
            keras.Input((12, 12, 1)),
            L.Conv2D(4, 3, activation="relu"),
            L.MaxPooling2D(2),
            L.Conv2D(6, 3, padding="same"),
            L.BatchNormalization(),
            L.ReLU(),
            L.Flatten(),
            L.Dense(10),
        ]
    )
    x = rand(3, 12, 12, 1)
    k(x)  # built and called once before the export
    path = tmp_path / "cnn.onnx"
    k.export(str(path), format="onnx")
    m = onnx.load(path)
    assert sum(n.op_type == "Cast" for n in m.graph.node) >= 10
    plan = compile_onnx(path, (3, 12, 12, 1))
    want = run(m, {m.graph.input[0].name: x})[0]
    np.testing.assert_allclose(predict(plan.program, plan.weights, x), want, atol=2e-3)
    with LocalCluster(plan) as cluster:
        np.testing.assert_allclose(cluster.predict(x), want, atol=2e-3)
