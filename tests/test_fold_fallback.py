"""Constant folding falls back to onnxruntime where onnx's ReferenceEvaluator fails."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

from mpcc.compiler.pipeline import compile_onnx
from mpcc.errors import ModelError
from mpcc.runtime.cleartext import predict
from tests.onnx_builders import model, node, rand, run

# all-MiniLM-L6-v2's export: position ids [1, 512] gathered at [1, n] by GatherElements
DATA = np.arange(512, dtype=np.int64)[None]
INDICES = np.arange(3, 19, dtype=np.int64)[None]


def test_the_reference_evaluator_still_fails_on_gather_elements():
    """The case the fallback exists for (if onnx fixes it, this test says so)."""
    n = helper.make_node("GatherElements", ["d", "i"], ["o"], axis=1)
    with pytest.raises(Exception):  # noqa: B017 - whatever it raises
        ReferenceEvaluator(n, opsets={"": 17}).run(None, {"d": DATA, "i": INDICES})


def test_gather_elements_on_constants_folds_through_onnxruntime():
    m = model(
        [
            node("GatherElements", ["d", "i"], ["p"], axis=1),
            node("Cast", ["p"], ["pf"], to=1),
            node("Add", ["x", "pf"], ["y"]),
        ],
        {"x": [1, 16]},
        ["y"],
        {"d": DATA, "i": INDICES},
    )
    x = rand(1, 16)
    ref = run(m, {"x": x})[0]
    prog, weights = compile_onnx(m, (1, 16))
    assert [ins.op.name for ins in prog.instrs] == ["input", "add_w", "output"]
    assert np.abs(predict(prog, weights, x) - ref).max() < 1e-4


def test_a_node_neither_evaluator_runs_is_a_clear_error():
    m = model(
        [node("Gather", ["c", "i"], ["r"]), node("Add", ["x", "r"], ["y"])],
        {"x": [1, 4]},
        ["y"],
        {"c": np.ones(4, np.float32), "i": np.array([0, 1, 2, 9], np.int64)},
    )
    with pytest.raises(ModelError, match="reference evaluator says.*onnxruntime says"):
        compile_onnx(m, (1, 4))
