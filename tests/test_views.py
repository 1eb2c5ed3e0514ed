"""What a compute party receives during a whole query (its view) does not depend on the
input: every word it receives is uniformly random, whatever the input, and no message
carries a plaintext input or weight."""

from __future__ import annotations

import numpy as np
import pytest

from mpcc.compiler.pipeline import compile_onnx
from mpcc.runtime import cluster as cluster_mod
from mpcc.runtime.cleartext import encode_weights
from mpcc.runtime.cluster import LocalCluster
from mpcc.runtime.fixedpoint import encode
from mpcc.runtime.transport import local_link


def _recording_link(log: dict[str, list[np.ndarray]]):
    def link(a: str, b: str, timeout: float = 30.0):
        ca, cb = local_link(a, b, timeout)
        for ch in (ca, cb):
            inner = ch._get

            def get(inner=inner, name=ch.name):
                msg = inner()
                log.setdefault(name, []).extend(np.asarray(m).copy() for m in msg)
                return msg

            ch._get = get
        return ca, cb

    return link


def _views(prog, weights, x, monkeypatch) -> dict[str, np.ndarray]:
    """Every uint64 word each compute party received in one query (setup excluded)."""
    log: dict[str, list[np.ndarray]] = {}
    monkeypatch.setattr(cluster_mod, "local_link", _recording_link(log))
    with LocalCluster(prog, weights) as c:
        log.clear()  # forget the session set-up (the masked weights F)
        c.predict(x)
    return {k: np.concatenate([a.reshape(-1).view(np.uint64) for a in v]) for k, v in log.items()}


def _chi2_bytes(words: np.ndarray) -> float:
    counts = np.bincount(words.view(np.uint8), minlength=256)
    expect = counts.sum() / 256
    return float(((counts - expect) ** 2 / expect).sum())


@pytest.fixture(scope="module")
def lenet(zoo_model):
    return compile_onnx(zoo_model("lenet"), (1, 1, 28, 28))


def test_views_are_uniform_for_very_different_inputs(lenet, digits_test, monkeypatch) -> None:
    prog, weights = lenet
    inputs = {
        "zeros": np.zeros((1, 1, 28, 28)),
        "digit": digits_test[0][:1],
        "large": np.full((1, 1, 28, 28), 50.0),
    }
    for label, x in inputs.items():
        views = _views(prog, weights, x, monkeypatch)
        assert set(views) == {"P0", "P1"}, label
        for party, words in views.items():
            assert words.size > 50_000
            # 255 degrees of freedom: mean 255, sd 22.6; 6 sd keeps a false alarm < 1e-8.
            assert _chi2_bytes(words) < 255 + 6 * 22.6, (label, party)
            top = (words >> np.uint64(63)).mean()
            assert abs(top - 0.5) < 6 * 0.5 / np.sqrt(words.size), (label, party)


def test_no_message_carries_a_plaintext_input_or_weight(lenet, digits_test, monkeypatch) -> None:
    prog, weights = lenet
    x = digits_test[0][:1]
    views = _views(prog, weights, x, monkeypatch)
    secrets_ = [encode(x, prog.frac_bits).reshape(-1)]
    secrets_ += [w.reshape(-1) for w in encode_weights(prog, weights).values()]
    secret_words = np.unique(np.concatenate(secrets_))
    secret_words = secret_words[secret_words != 0]
    assert secret_words.size > 5_000
    for party, words in views.items():
        # ~10^5 uniform words hit a set of ~10^4 values with probability ~10^-10.
        assert np.intersect1d(words, secret_words).size == 0, party
