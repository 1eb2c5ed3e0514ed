"""Recurrent and transformer classifiers of the real 8x8 digits (`tests.digits_seq`), trained
briefly in torch, exported to ONNX and compared with onnxruntime:

* the unrolled LSTM/GRU graph in float, on every test digit, for both exporters;
* secure inference of the LSTM and GRU classifiers (max error <= 0.01, same argmax) and of the
  small ViT (argmax agreement >= 99.5%) through a LocalCluster, with the transport's counted
  traffic equal to the cost model. The default suite runs a few digits; the `slow` runs take
  every test digit.

A secure test whose model the compiler still refuses for want of an op another branch is
building (Sigmoid/Tanh, LayerNormalization, GELU/Erf, Softmax inside the graph, a MatMul of two
secrets) is skipped, naming the refusal; any other refusal fails.
"""

from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
import pytest

from mpcc.compiler.costmodel import estimate
from mpcc.compiler.graph import Graph
from mpcc.compiler.passes import run_all
from mpcc.compiler.pipeline import compile_onnx
from mpcc.errors import ModelError
from mpcc.frontends.onnx import load
from mpcc.runtime.cluster import LocalCluster
from tests import digits_seq as D

pytest.importorskip("torch")
pytest.importorskip("sklearn")

# What other branches are adding: a refusal of a node with one of these ops skips a secure test.
PENDING = re.compile(
    r"\(op (Sigmoid|Tanh|LayerNormalization|Erf|Gelu|Softmax)\)"
    r"|\(op MatMul\) multiplies two computed tensors"
)
FEW = 16  # test digits in the default suite's secure runs


@pytest.fixture(scope="module")
def test_digits() -> tuple[np.ndarray, np.ndarray]:
    return D.load("test")


def _onnxruntime(path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _compile(path, shape: tuple[int, ...]):
    try:
        return compile_onnx(path, shape)
    except ModelError as e:
        pending = sorted({m.group(0) for m in PENDING.finditer(str(e))})
        if pending:
            pytest.skip(f"compile refuses the model: {'; '.join(pending)}")
        raise


def _secure(name: str, cache, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(secure logits, onnxruntime's logits) for images X, in one query; checks the traffic
    counted against the cost model."""
    path = D.onnx_path(name, cache)
    x = D.model_input(name, X)
    plan = _compile(path, x.shape)
    with LocalCluster(plan.program, plan.weights) as cluster:
        got = cluster.predict(x)
        stats = cluster.stats
    want = estimate(plan.program).total
    assert stats.sent == (want.sent, want.sent)
    assert stats.rounds == want.rounds
    assert stats.dealer_bytes == want.dealer
    return got, _onnxruntime(path, x)


# ---- float ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_unrolled_rnn_matches_onnxruntime_in_float(name, dynamo, zoo_cache_dir, test_digits):
    """The exported LSTM/GRU node, unrolled and legalized, computes what onnxruntime computes
    on every test digit (to float rounding)."""
    path = D.onnx_path(name, zoo_cache_dir, dynamo=dynamo)
    X, y = test_digits
    g = Graph.from_onnx(load(path, X.shape))
    assert {g.op(n) for n in g.topo_nodes()} & {"LSTM", "GRU"}
    run_all(g)
    assert not {g.op(n) for n in g.topo_nodes()} & {"LSTM", "GRU"}
    # Unrolled batch-first: the exporter's Transpose to time-major cancels, rows stay apart.
    assert "Transpose" not in {g.op(n) for n in g.topo_nodes()}
    sess = ort.InferenceSession(g.to_onnx().SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {g.inputs[0]: X})[0]
    ref = _onnxruntime(path, X)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert D.accuracy(ref, y) >= 0.9  # the model did learn the digits


def test_vit_float_model_learned(zoo_cache_dir, test_digits):
    X, y = test_digits
    ref = _onnxruntime(D.onnx_path("vit", zoo_cache_dir), D.model_input("vit", X))
    assert D.accuracy(ref, y) >= 0.9


# ---- secure ---------------------------------------------------------------------------------


def _check_rnn(name, cache, X):
    got, ref = _secure(name, cache, X)
    assert got.shape == ref.shape == (len(X), 10)
    assert np.abs(got - ref).max() <= 0.01
    assert (got.argmax(1) == ref.argmax(1)).all()


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_secure_rnn_classifier(name, zoo_cache_dir, test_digits):
    _check_rnn(name, zoo_cache_dir, test_digits[0][:FEW])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_secure_rnn_classifier_all_test_digits(name, zoo_cache_dir, test_digits):
    _check_rnn(name, zoo_cache_dir, test_digits[0])


def test_secure_vit(zoo_cache_dir, test_digits):
    got, ref = _secure("vit", zoo_cache_dir, test_digits[0][:FEW])
    assert (got.argmax(1) == ref.argmax(1)).all()


@pytest.mark.slow
def test_secure_vit_all_test_digits(zoo_cache_dir, test_digits):
    got, ref = _secure("vit", zoo_cache_dir, test_digits[0])
    assert len(got) == 450
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.995
