"""What a compute party receives during a whole query (its view) does not depend on the
input: every word it receives is uniformly random, whatever the input, and no message
carries a plaintext input or weight."""

from __future__ import annotations

import numpy as np
import pytest

from mpcc.compiler.pipeline import compile_onnx
from mpcc.runtime.cleartext import encode_weights
from mpcc.runtime.cluster import LocalCluster
from mpcc.runtime.fixedpoint import encode
from mpcc.runtime.transport import ChannelObserver


class _Recorder(ChannelObserver):
    """Every array each compute party receives (the transport's observer hook)."""

    def __init__(self) -> None:
        self.log: dict[str, list[np.ndarray]] = {}

    def received(self, channel, arrays, waited_s) -> None:
        self.log.setdefault(channel.name, []).extend(np.asarray(a).copy() for a in arrays)


def _views(prog, weights, x) -> dict[str, np.ndarray]:
    """Every uint64 word each compute party received in one query (setup excluded)."""
    rec = _Recorder()
    with LocalCluster(prog, weights) as c:
        for party in c.parties:  # after the session set-up (the masked weights F)
            party.ch.observers.append(rec)
        c.predict(x)
    return {
        k: np.concatenate([a.reshape(-1).view(np.uint64) for a in v]) for k, v in rec.log.items()
    }


def _chi2_bytes(words: np.ndarray) -> float:
    counts = np.bincount(words.view(np.uint8), minlength=256)
    expect = counts.sum() / 256
    return float(((counts - expect) ** 2 / expect).sum())


@pytest.fixture(scope="module")
def lenet(zoo_model):
    return compile_onnx(zoo_model("lenet"), (1, 1, 28, 28))


def test_views_are_uniform_for_very_different_inputs(lenet, digits_test) -> None:
    prog, weights = lenet
    inputs = {
        "zeros": np.zeros((1, 1, 28, 28)),
        "digit": digits_test[0][:1],
        "large": np.full((1, 1, 28, 28), 50.0),
    }
    for label, x in inputs.items():
        views = _views(prog, weights, x)
        assert set(views) == {"P0", "P1"}, label
        for party, words in views.items():
            assert words.size > 40_000  # enough for the statistics below
            # 255 degrees of freedom: mean 255, sd 22.6; 6 sd keeps a false alarm < 1e-8.
            assert _chi2_bytes(words) < 255 + 6 * 22.6, (label, party)
            top = (words >> np.uint64(63)).mean()
            assert abs(top - 0.5) < 6 * 0.5 / np.sqrt(words.size), (label, party)


def test_no_message_carries_a_plaintext_input_or_weight(lenet, digits_test) -> None:
    prog, weights = lenet
    x = digits_test[0][:1]
    views = _views(prog, weights, x)
    secrets_ = [encode(x, prog.frac_bits).reshape(-1)]
    secrets_ += [w.reshape(-1) for w in encode_weights(prog, weights).values()]
    secret_words = np.unique(np.concatenate(secrets_))
    secret_words = secret_words[secret_words != 0]
    assert secret_words.size > 5_000
    for party, words in views.items():
        # ~10^5 uniform words hit a set of ~10^4 values with probability ~10^-10.
        assert np.intersect1d(words, secret_words).size == 0, party
