"""Elementwise secret x secret product with a seeded Beaver triple."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mpcc.compiler import costs
from mpcc.errors import MaterialError
from mpcc.runtime.fixedpoint import decode, encode
from mpcc.runtime.prg import Prg, share
from mpcc.runtime.protocols import multiply, truncation
from tests.twoparty import run_parties

SEED0, SEED1 = b"P0 session seed!", b"P1 session seed!"


def ring(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.integers(0, 2**64, size=shape, dtype=np.uint64)


def record(ch, log: list) -> None:
    """Log every round's (sent, received) arrays of this channel."""
    orig = ch.exchange

    def exchange(arrays):
        got = orig(arrays)
        log.append(([a.copy() for a in arrays], [g.copy() for g in got]))
        return got

    ch.exchange = exchange


def secure_mul(x, y, q: int = 0, log: list | None = None, seeds=(SEED0, SEED1)):
    """Deal, expand and run one product; returns (z, correction, traffic of both parties)."""
    prgs = lambda: [Prg.derive(s, "sess", q, 3) for s in seeds]  # noqa: E731
    corr = multiply.deal(x.shape, y.shape, *prgs())
    p0, p1 = prgs()
    mats = [
        multiply.expand(0, x.shape, y.shape, p0, None),
        multiply.expand(1, x.shape, y.shape, p1, corr),
    ]
    xs = share(x, Prg.derive(b"client seed 0000", "x", q))
    ys = share(y, Prg.derive(b"client seed 0000", "y", q))

    def party(ch, p):
        if log is not None:
            record(ch, log)
        return multiply.run(ch, p, mats[p], xs[p], ys[p])

    z0, z1, chans = run_parties(party)
    return z0 + z1, corr, [c.traffic for c in chans]


@pytest.mark.parametrize(
    "xs,ys",
    [((1000,), (1000,)), ((4, 1, 5), (3, 5)), ((1,), (10,)), ((2, 3, 4), (3, 1)), ((), (7,))],
)
def test_exact_and_costs(xs, ys):
    rng = np.random.default_rng(sum(xs) * 31 + sum(ys))
    for q in range(3):
        x, y = ring(rng, *xs), ring(rng, *ys)
        z, corr, traffic = secure_mul(x, y, q)
        assert np.array_equal(z, x * y)
        cost = costs.multiply(x.size, y.size, z.size)
        assert corr.dtype == np.uint64 and corr.nbytes == cost.dealer
        for t in traffic:
            assert (t.rounds, t.bytes_sent) == (cost.rounds, cost.sent)


def test_material_is_consistent():
    """Dealer and parties draw the same values: [C]_0 + [C]_1 = ([A]_0 + [A]_1)([B]_0 + [B]_1)."""
    prgs = lambda: [Prg.derive(s, "m") for s in (SEED0, SEED1)]  # noqa: E731
    corr = multiply.deal((3, 1), (4,), *prgs())
    p0, p1 = prgs()
    m0 = multiply.expand(0, (3, 1), (4,), p0, None)
    m1 = multiply.expand(1, (3, 1), (4,), p1, corr)
    assert np.array_equal(m0.c + m1.c, (m0.a + m1.a) * (m0.b + m1.b))


def test_fixed_point_product_then_truncation():
    """Encoded reals: product at 2f bits, truncated back to f (error below 2 LSB)."""
    rng = np.random.default_rng(9)
    f = 16
    a, b = rng.normal(0, 30, 4096), rng.normal(0, 30, 4096)
    z, _, _ = secure_mul(encode(a, f), encode(b, f), q=11)
    z0, z1 = share(z)
    prgs = lambda: [Prg.derive(s, "t") for s in (SEED0, SEED1)]  # noqa: E731
    corr = truncation.deal(z.shape, f, *prgs())
    p0, p1 = prgs()
    mats = [truncation.expand(0, z.shape, f, p0, None), truncation.expand(1, z.shape, f, p1, corr)]
    y0, y1, _ = run_parties(lambda ch, p: truncation.run(ch, p, mats[p], (z0, z1)[p]))
    exact = decode(encode(a, f), f) * decode(encode(b, f), f)
    assert np.abs(decode(y0 + y1, f) - exact).max() < 2 * 2.0**-f


def test_material_misuse():
    prg = Prg.derive(SEED1, "x")
    with pytest.raises(MaterialError):
        multiply.expand(1, (3,), (3,), prg, None)
    with pytest.raises(MaterialError):
        multiply.expand(1, (3,), (3,), prg, np.zeros(2, np.uint64))
    with pytest.raises(MaterialError):
        multiply.expand(0, (3,), (3,), prg, np.zeros(3, np.uint64))
    m = multiply.expand(0, (3,), (3,), prg, None)
    m.used = True
    with pytest.raises(MaterialError):
        multiply.run(None, 0, m, np.zeros(3, np.uint64), np.zeros(3, np.uint64))


# Chi-square on byte values, 255 degrees of freedom, six-sigma Wilson-Hilferty bound
# (p < 1e-9). All inputs and masks come from fixed seeds, so the test is deterministic.
DF = 255
CHI2_BOUND = DF * (1 - 2 / (9 * DF) + 6 * math.sqrt(2 / (9 * DF))) ** 3


def max_chi2(words: np.ndarray) -> float:
    """Largest chi-square statistic over the 8 byte positions of uint64 words (uniform bytes)."""
    b = np.ascontiguousarray(words, dtype=np.uint64).reshape(-1).view(np.uint8).reshape(-1, 8)
    expected = b.shape[0] / 256
    stats = [
        ((np.bincount(b[:, j], minlength=256) - expected) ** 2).sum() / expected for j in range(8)
    ]
    return max(stats)


@pytest.mark.parametrize("kind", ["zero", "extreme"])
def test_view_is_uniform(kind):
    """E and F (opened and as received) are uniform whatever X and Y are, and never equal them."""
    n = 512
    if kind == "zero":
        x = y = np.zeros(n, np.uint64)
    else:
        x = np.full(n, 2**63 - 1, np.uint64)
        y = np.arange(n, dtype=np.uint64) << np.uint64(40)
    opened, received = [], []
    for q in range(100):
        log: list = []
        secure_mul(x, y, q, log, seeds=(SEED0 + kind.encode(), SEED1 + kind.encode()))
        (sent, got), (_, got1) = log
        opened.append(np.stack([sent[0] + got[0], sent[1] + got[1]]))
        received += [got[0], got[1], got1[0], got1[1]]
    opened_, received_ = np.stack(opened), np.stack(received)
    assert not np.any(opened_[:, 0] == x) and not np.any(opened_[:, 1] == y)
    assert np.unique(opened_).size == opened_.size  # no mask reused
    assert max_chi2(opened_[:, 0]) < CHI2_BOUND
    assert max_chi2(opened_[:, 1]) < CHI2_BOUND
    assert max_chi2(received_) < CHI2_BOUND
