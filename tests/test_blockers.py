"""A compile that cannot succeed reports every blocker at once, grouped by kind and op, with
counts, node names and what to do (issue 12, item 4)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from mpcc.cli import main
from mpcc.compiler.blockers import ADVICE, ATTRIBUTE, NEEDS_CONSTANT, UNFIXED, UNSUPPORTED_OP
from mpcc.compiler.pipeline import compile_onnx
from mpcc.errors import ModelError
from tests.onnx_builders import model, node


def _errors(m: onnx.ModelProto) -> list[str]:
    with pytest.raises(ModelError) as e:
        compile_onnx(m)
    return str(e.value).splitlines()


def test_every_kind_of_blocker_in_one_report(tmp_path, capsys) -> None:
    nodes = [
        node("Sin", ["x"], ["s1"], name="sig_b"),
        node("Sin", ["s1"], ["s2"], name="sig_a"),
        node("Cos", ["s2"], ["e"], name="cos"),
        node("Resize", ["e", "", "sc"], ["p"], name="resize", mode="linear"),
        node("Dropout", ["p", "r", "t"], ["d"], name="drop"),
        node("Relu", ["d"], ["y"], name="relu"),
        node("Relu", ["x"], ["w"], name="wr"),
        node("Conv", ["x", "w"], ["c"], name="conv"),
    ]
    inits = {
        "sc": np.array([1, 1, 2, 2], np.float32),  # a linear resize: only nearest is supported
        "r": np.float32(0.5),
        "t": np.bool_(True),
    }
    m = model(nodes, {"x": (1, 2, 2, 2)}, ["y", "c"], inits)
    lines = _errors(m)
    assert lines[0] == (
        "the model cannot be compiled: 6 blockers (3 unsupported op, "
        "1 computed where a constant is needed, 2 unsupported attribute, mode or shape)"
    )
    text = "\n".join(lines)
    assert lines[1:4] == [
        f"{UNSUPPORTED_OP} (3):",
        "  Sin x2: 'sig_a', 'sig_b'",
        "  Cos x1: 'cos'",
    ]
    assert lines[4].startswith(f"  what to do: {ADVICE[UNSUPPORTED_OP]}")
    assert f"{NEEDS_CONSTANT} (1):\n  Conv x1:\n    node 'conv' (op Conv) needs a constant" in text
    assert f"{ATTRIBUTE} (2):\n  Dropout x1:\n    node 'drop' (op Dropout): training mode" in text
    assert "  Resize x1:\n    node 'resize' (op Resize): " in text and "'linear'" in text
    assert text.count("what to do:") == 3 and "relu" not in text
    # the command line: the same report, exit 2
    onnx.save(m, tmp_path / "m.onnx")
    assert main(["compile", str(tmp_path / "m.onnx")]) == 2
    assert "6 blockers" in capsys.readouterr().err


def test_unfixed_dims_and_computed_shapes_with_unsupported_ops() -> None:
    """Shape blockers come with the ops that cannot be compiled anyway."""
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "width"]),
        helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4]),
        helper.make_tensor_value_info("k", TensorProto.INT64, [2]),
    ]
    nodes = [
        node("Atan", ["x"], ["t"], name="tanh"),
        node("Reshape", ["z", "k"], ["r"], name="reshape"),
        node("Relu", ["r"], ["y"], name="relu"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        inputs,
        [
            helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, "width"]),
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None]),
        ],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    text = "\n".join(_errors(m))
    assert "3 blockers (1 unsupported op, 1 computed where a constant is needed, " in text
    assert "  Atan x1: 'tanh'" in text
    assert "node 'reshape' (op Reshape): its input 1 (shape) 'k' must be a constant" in text
    assert f"{UNFIXED} (1):\n  input x1:\n    input 'x': dim 1 ('width') is not fixed" in text
    assert f"what to do: {ADVICE[UNFIXED]}" in text


def test_one_blocker_is_its_own_message() -> None:
    m = model(
        [node("Conv", ["x", "w"], ["y"], name="c")], {"x": (1, 1, 4, 4), "w": (1, 1, 3, 3)}, ["y"]
    )
    assert _errors(m) == [
        "node 'c' (op Conv) needs a constant weight as input 1, but 'w' is computed"
    ]


def test_many_nodes_of_one_op_are_counted_not_all_named() -> None:
    nodes, prev = [], "x"
    for i in range(12):
        nodes.append(node("Sin", [prev], [f"t{i:02d}"], name=f"s{i:02d}"))
        prev = f"t{i:02d}"
    m = model(nodes, {"x": (1, 3)}, [prev])
    lines = _errors(m)
    assert lines[0] == "the model cannot be compiled: 12 blockers (12 unsupported op)"
    assert lines[2] == "  Sin x12: " + ", ".join(f"'s{i:02d}'" for i in range(8)) + ", ... (4 more)"
