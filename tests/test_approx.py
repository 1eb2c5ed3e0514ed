"""The smooth-function library (`mpcc.compiler.approx`): each function's documented error
bound over 10^6 points in the cleartext interpreter (exact up to +1 LSB per truncation),
over 10^4 points through the secure protocols (with counted traffic equal to the cost
model), and over 10^6 secure points behind `slow`.

Bounds are |y_hat - y| <= rel * |y| + c * 2^-scale at the output's scale, against the
function of the *encoded* input (the input's own rounding to f bits is not the function's).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mpcc.compiler import approx
from mpcc.compiler.approx.harness import plan_of, run_clear
from mpcc.compiler.costmodel import estimate
from mpcc.runtime.cluster import LocalCluster

F = 16
N = 10**6
_ERF = np.vectorize(math.erf, otypes=[np.float64])
_K = math.sqrt(2.0 / math.pi)


def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def _uniform(lo, hi):
    return lambda rng, n: rng.uniform(lo, hi, n)


def _log_uniform(lo, hi):
    return lambda rng, n: 2.0 ** rng.uniform(lo, hi, n)


# name: (macro, reference, sampler, relative bound, absolute bound in output LSBs, out scale)
CASES = {
    "exp": (approx.exp, np.exp, _uniform(-16, 0), 2**-10, 2, F),
    "exp_clamped": (
        approx.exp,
        lambda v: np.exp(np.clip(v, -16, 0)),
        _uniform(-40, 8),
        2**-10,
        2,
        F,
    ),
    "exp_signed": (approx.exp_signed, np.exp, _uniform(-16, 8), 2**-10, 2, F),
    "reciprocal_signed": (
        lambda em, x: approx.reciprocal(em, x, signed=True),
        np.reciprocal,
        lambda rng, n: 2.0 ** rng.uniform(-6, 14, n) * rng.choice([-1.0, 1.0], n),
        2**-10,
        2,
        F + 4,
    ),
    "reciprocal": (approx.reciprocal, np.reciprocal, _log_uniform(-6, 14), 2**-10, 2, F + 4),
    "rsqrt": (approx.rsqrt, lambda v: 1 / np.sqrt(v), _log_uniform(-10, 14), 2**-10, 2, F + 4),
    "sqrt": (approx.sqrt, np.sqrt, _log_uniform(-10, 14), 2**-10, 2, F),
    "log": (approx.log, np.log, _log_uniform(-6, 14), 0.0, 2**-12 * 2**F + 2, F),
    "sigmoid": (approx.sigmoid, _sig, _uniform(-16, 16), 0.0, 2**-10 * 2**F, F),
    "tanh": (approx.tanh, np.tanh, _uniform(-16, 16), 0.0, 2**-10 * 2**F, F),
    "erf": (approx.erf, _ERF, _uniform(-16, 16), 0.0, 2**-10 * 2**F, F),
    "gelu": (
        approx.gelu,
        lambda v: v * 0.5 * (1 + _ERF(v / math.sqrt(2))),
        _uniform(-16, 16),
        0.0,
        2**-10 * 2**F,
        F,
    ),
    "gelu_tanh": (
        approx.gelu_tanh,
        lambda v: 0.5 * v * (1 + np.tanh(_K * (v + 0.044715 * v**3))),
        _uniform(-16, 16),
        0.0,
        2**-10 * 2**F,
        F,
    ),
    "silu": (approx.silu, lambda v: v * _sig(v), _uniform(-16, 16), 0.0, 2**-10 * 2**F, F),
    "hard_sigmoid": (
        lambda em, x: approx.hard_sigmoid(em, x, 0.2, 0.5),
        lambda v: np.clip(0.2 * v + 0.5, 0, 1),
        _uniform(-16, 16),
        0.0,
        4,
        F,
    ),
    "hard_swish": (
        approx.hard_swish,
        lambda v: v * np.clip(v / 6 + 0.5, 0, 1),
        _uniform(-16, 16),
        0.0,
        16,
        F,
    ),
}


def _excess(name: str, x: np.ndarray, y: np.ndarray, scale: int) -> float:
    """The largest error beyond the bound, in output LSBs (<= 0 when the bound holds)."""
    _, ref, _, rel, lsbs, _ = CASES[name]
    xq = np.rint(x * 2.0**F) / 2.0**F
    r = ref(xq)
    return float(((np.abs(y - r) - rel * np.abs(r)) * 2.0**scale - lsbs).max())


def _points(name: str, n: int) -> np.ndarray:
    rng = np.random.default_rng(sum(map(ord, name)))
    x = CASES[name][2](rng, n)
    return x.reshape(-1, 1000)


# Per-row functions (a softmax denominator, a variance): their batched comparisons make 10^6
# points a 15 s run, so the default suite takes 2^17 of them and `slow` the full 10^6.
PER_ROW = {"reciprocal", "reciprocal_signed", "rsqrt", "sqrt", "log"}


def _clear(name: str, n: int) -> None:
    fn, _, _, _, _, scale = CASES[name]
    x = _points(name, n)
    prog = plan_of(fn, x.shape, F, scale)
    y = run_clear(prog, x)
    assert _excess(name, x, y, scale) <= 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_bound_in_cleartext(name: str) -> None:
    _clear(name, 131_000 if name in PER_ROW else N)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PER_ROW))
def test_bound_over_a_million_points_in_cleartext(name: str) -> None:
    _clear(name, N)


def _secure(name: str, n: int) -> None:
    fn, _, _, _, _, scale = CASES[name]
    x = _points(name, n)
    prog = plan_of(fn, x.shape, F, scale)
    with LocalCluster(prog, {}) as cluster:
        y = cluster.predict(x)
        stats = cluster.stats
    assert _excess(name, x, y, scale) <= 0
    want = estimate(prog).total
    assert stats.sent == (want.sent, want.sent)
    assert stats.rounds == want.rounds
    assert stats.dealer_bytes == want.dealer


@pytest.mark.parametrize("name", sorted(CASES))
def test_bound_and_traffic_through_the_secure_protocols(name: str) -> None:
    _secure(name, 10**4)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_bound_over_a_million_secure_points(name: str) -> None:
    _secure(name, N)


def test_reduce_max_any_axes_matches_numpy() -> None:
    x = np.random.default_rng(1).standard_normal((3, 5, 7, 2)) * 100
    for axes, keep in [((1,), True), ((1, 3), False), ((0, 2), True), ((3,), False)]:
        prog = plan_of(lambda em, v, a=axes, k=keep: approx.reduce_max(em, v, a, k), x.shape)
        got = run_clear(prog, x)
        want = np.max(np.rint(x * 2**F) / 2**F, axis=axes, keepdims=keep)
        np.testing.assert_array_equal(got, want)


def test_softmax_rows_sum_to_one_within_the_bound() -> None:
    x = np.random.default_rng(2).standard_normal((64, 128)) * 4
    prog = plan_of(lambda em, v: approx.softmax(em, v, [1], F), x.shape)
    y = run_clear(prog, x)
    e = np.exp(x - x.max(1, keepdims=True))
    ref = e / e.sum(1, keepdims=True)
    assert np.abs(y - ref).max() <= 2**-10 * ref.max() + 4 * 2**-F
