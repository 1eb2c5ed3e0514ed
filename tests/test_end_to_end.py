"""Secure and cleartext inference against onnxruntime on real digits, for the four reference
models, and the transport's counted traffic against the compiler's cost model.

The cleartext interpreter sees the whole test split (about 450 digits). Secure inference costs
about the same per digit at batch 1 or 64, so the default suite runs it on a prefix of the split
(batch 1: one query per digit; batch 64: one full query and one padded partial one); the
whole split, for every model and batch, is `test_secure_inference_on_the_whole_test_set` (slow).
"""

from __future__ import annotations

import numpy as np
import pytest

from mpcc.compiler.costmodel import estimate
from mpcc.compiler.pipeline import compile_onnx
from mpcc.runtime.cleartext import predict
from mpcc.runtime.cluster import LocalCluster
from mpcc.zoo.reference import run_logits

MODELS = ["mlp", "cnn", "lenet", "resnet"]


@pytest.fixture(scope="module")
def plans(zoo_model):
    cache: dict = {}

    def get(name: str, batch: int):
        if (name, batch) not in cache:
            path = zoo_model(name)
            cache[name, batch] = (path, *compile_onnx(path, (batch, 1, 28, 28), name=name))
        return cache[name, batch]

    return get


@pytest.fixture(scope="module")
def reference(zoo_model, digits_test):
    cache: dict = {}

    def get(name: str) -> np.ndarray:
        if name not in cache:
            cache[name] = run_logits(zoo_model(name), digits_test[0], batch=64)
        return cache[name]

    return get


def _agreement(got: np.ndarray, ref: np.ndarray) -> float:
    return float((got.argmax(1) == ref.argmax(1)).mean())


@pytest.mark.parametrize("name", MODELS)
def test_cleartext_interpreter_matches_onnxruntime(name, plans, reference, digits_test) -> None:
    _, prog, weights = plans(name, 64)
    got = predict(prog, weights, digits_test[0])
    ref = reference(name)
    assert got.shape == ref.shape == (len(digits_test[0]), 10)
    assert _agreement(got, ref) >= 0.995
    assert np.abs(got - ref).max() <= 0.01


# Digits the default suite classifies securely, by batch size: 32 queries of one digit, or a
# full batch of 64 then a partial one (padded) of 36.
PREFIX = {1: 32, 64: 100}


def _secure_matches(name, batch, n, plans, reference, digits_test) -> None:
    _, prog, weights = plans(name, batch)
    x = digits_test[0][:n]
    with LocalCluster(prog, weights) as cluster:
        got = cluster.predict(x)
        stats = cluster.stats
    ref = reference(name)[:n]
    assert got.shape == ref.shape == (len(x), 10)
    assert _agreement(got, ref) >= 0.995
    assert np.abs(got - ref).max() <= 0.02
    # What the transport counted for the last query is what the compiler predicted.
    want = estimate(prog).total
    assert stats.sent == (want.sent, want.sent)
    assert stats.rounds == want.rounds
    assert stats.dealer_bytes == want.dealer


@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("name", MODELS)
def test_secure_inference_matches_onnxruntime(name, batch, plans, reference, digits_test) -> None:
    _secure_matches(name, batch, PREFIX[batch], plans, reference, digits_test)


@pytest.mark.slow  # about a minute: the same path as above on ~450 digits per model and batch
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("name", MODELS)
def test_secure_inference_on_the_whole_test_set(name, batch, plans, reference, digits_test) -> None:
    _secure_matches(name, batch, None, plans, reference, digits_test)


def test_public_weights_make_linear_layers_local(plans, reference, digits_test) -> None:
    path = plans("lenet", 1)[0]
    prog, weights = compile_onnx(path, (8, 1, 28, 28), public_weights=True)
    x = digits_test[0][:16]
    with LocalCluster(prog, weights) as cluster:
        got = cluster.predict(x)
        stats = cluster.stats
    ref = reference("lenet")[:16]
    assert _agreement(got, ref) == 1.0 and np.abs(got - ref).max() <= 0.02
    secret = estimate(compile_onnx(path, (8, 1, 28, 28))[0]).total
    want = estimate(prog).total
    assert stats.rounds == want.rounds == secret.rounds - 4  # four linear layers, no rounds
    assert stats.sent == (want.sent, want.sent) and want.sent < secret.sent


def test_keep_softmax_returns_the_probabilities(zoo_model, digits_test) -> None:
    """The ResNet ends in Softmax: with keep_softmax the plan computes it securely, close to
    onnxruntime's probabilities, and the counted traffic is still the cost model's."""
    from mpcc.zoo.reference import run_onnxruntime

    path = zoo_model("resnet")
    prog, weights = compile_onnx(path, (16, 1, 28, 28), keep_softmax=True)
    x = digits_test[0][:16]
    with LocalCluster(prog, weights) as cluster:
        got = cluster.predict(x)
        stats = cluster.stats
    ref = run_onnxruntime(path, x)
    assert np.abs(got - ref).max() <= 2e-3
    assert np.allclose(got.sum(1), 1.0, atol=2e-3)
    want = estimate(prog).total
    assert stats.sent == (want.sent, want.sent) and stats.rounds == want.rounds
    assert stats.dealer_bytes == want.dealer
