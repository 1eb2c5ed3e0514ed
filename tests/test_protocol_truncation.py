"""Known-MSB truncation with a 2^62 bias: y = floor(x / 2^shift) + u, u in {0, 1}."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mpcc.compiler import costs
from mpcc.errors import MaterialError
from mpcc.runtime.fixedpoint import arith_shift
from mpcc.runtime.prg import Prg, share
from mpcc.runtime.protocols import truncation
from tests.twoparty import run_parties

SEED0, SEED1 = b"P0 session seed!", b"P1 session seed!"
LO, HI = -(2**62), 2**62  # valid inputs: LO <= x < HI


def record(ch, log: list) -> None:
    """Log every round's (sent, received) arrays of this channel."""
    orig = ch.exchange

    def exchange(arrays):
        got = orig(arrays)
        log.append(([a.copy() for a in arrays], [g.copy() for g in got]))
        return got

    ch.exchange = exchange


def secure_trunc(x: np.ndarray, shift: int, q: int = 0, log: list | None = None, tag=""):
    """Deal, expand and run one truncation of int64 x; returns (y int64, correction, traffic)."""
    prgs = lambda: [Prg.derive(s, "sess", tag, q, 5) for s in (SEED0, SEED1)]  # noqa: E731
    corr = truncation.deal(x.shape, shift, *prgs())
    p0, p1 = prgs()
    mats = [
        truncation.expand(0, x.shape, shift, p0, None),
        truncation.expand(1, x.shape, shift, p1, corr),
    ]
    xs = share(x.view(np.uint64), Prg.derive(b"client seed 0000", tag, q))

    def party(ch, p):
        if log is not None:
            record(ch, log)
        return truncation.run(ch, p, mats[p], xs[p])

    y0, y1, chans = run_parties(party)
    return (y0 + y1).view(np.int64), corr, [c.traffic for c in chans]


def edge_values(shift: int) -> np.ndarray:
    """Values at the edges of the valid range and of the shift, as int64 (all in range)."""
    base = [0, 1, 2**62 - 1, 2**62 - 2**40, 2**62 - 2**shift, 2**48, 2**48 + 1, 2**32, 2**47 - 1]
    for k in (shift - 1, shift, shift + 1):
        if 0 <= k <= 62:
            base += [2**k - 1, 2**k, 2**k + 1]
    vals = {s * v for v in base for s in (1, -1)} | {LO, LO + 1, HI - 2**shift}
    return np.array(sorted(v for v in vals if LO <= v < HI), dtype=np.int64)


def make_inputs(shift: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n inputs: every edge value many times, the full range, and realistic product sizes."""
    edges = edge_values(shift)
    parts = [
        np.tile(edges, n // (4 * edges.size)),
        rng.integers(LO, HI, n // 4, dtype=np.int64),  # uniform over the valid range
        rng.integers(-(2**48), 2**48, n // 4, dtype=np.int64),  # largest model products
        rng.integers(-(2**36), 2**36, n // 8, dtype=np.int64),
        rng.integers(-(2**20), 2**20, n // 8, dtype=np.int64),
    ]
    x = np.concatenate(parts)
    return np.concatenate([x, np.zeros(n - x.size, np.int64)])


@pytest.mark.parametrize("shift", [1, 16, 32, 62])
def test_error_is_zero_or_plus_one_on_1e6(shift):
    """Over 10^6 elements: y - floor(x / 2^shift) is in {0, +1}; 0 exactly when 2^shift | x."""
    rng = np.random.default_rng(shift)
    x = make_inputs(shift, 10**6, rng)
    y, corr, traffic = secure_trunc(x, shift, tag="big")
    err = y - arith_shift(x.view(np.uint64), shift).view(np.int64)
    assert set(np.unique(err).tolist()) == {0, 1}
    divisible = x & np.int64(2**shift - 1) == 0
    assert np.all(err[divisible] == 0)
    cost = costs.truncate(x.size)
    assert corr.dtype == np.uint64 and corr.nbytes == cost.dealer
    for t in traffic:
        assert (t.rounds, t.bytes_sent) == (cost.rounds, cost.sent)


@pytest.mark.parametrize("shift", [2, 8, 15, 17, 31, 33, 40, 47, 48, 49, 61])
def test_error_other_shifts(shift):
    rng = np.random.default_rng(100 + shift)
    x = make_inputs(shift, 2 * 10**5, rng)
    y, _, _ = secure_trunc(x, shift, tag="mid")
    err = y - arith_shift(x.view(np.uint64), shift).view(np.int64)
    assert set(np.unique(err).tolist()) <= {0, 1}
    assert np.all(err[x & np.int64(2**shift - 1) == 0] == 0)


def test_rounding_is_unbiased():
    """P(u = 1) = (x mod 2^shift) / 2^shift: the mean error equals the mean dropped fraction."""
    shift, n = 16, 400_000
    frac = np.array([0, 1, 2**14, 2**15, 3 * 2**14, 2**16 - 1], dtype=np.int64)
    x = np.repeat(frac, n // frac.size) + (np.int64(-12345) << np.int64(shift))
    y, _, _ = secure_trunc(x, shift, tag="bias")
    err = (y - arith_shift(x.view(np.uint64), shift).view(np.int64)).reshape(frac.size, -1)
    p = frac / 2**shift
    sd = np.sqrt(p * (1 - p) / err.shape[1])
    assert np.all(np.abs(err.mean(axis=1) - p) <= 6 * sd + 1e-12)


def test_material_is_consistent():
    """Dealer and parties draw the same r: the shares reconstruct r_hi and r_63 of r."""
    shift = 16
    prgs = lambda: [Prg.derive(s, "m") for s in (SEED0, SEED1)]  # noqa: E731
    corr = truncation.deal((1000,), shift, *prgs())
    p0, p1 = prgs()
    m0 = truncation.expand(0, 1000, shift, p0, None)
    m1 = truncation.expand(1, (1000,), shift, p1, corr)
    r = m0.r + m1.r
    assert np.array_equal(m0.r_hi + m1.r_hi, (r & np.uint64(2**63 - 1)) >> np.uint64(shift))
    assert np.array_equal(m0.r_63 + m1.r_63, r >> np.uint64(63))


def test_bad_shift_and_material_misuse():
    prg = Prg.derive(SEED0, "bad")
    for shift in (0, 63, 64, -1):
        with pytest.raises(ValueError):
            truncation.deal(4, shift, prg, prg)
    with pytest.raises(MaterialError):
        truncation.expand(1, 4, 16, prg, None)
    with pytest.raises(MaterialError):
        truncation.expand(1, 4, 16, prg, np.zeros(4, np.uint64))
    with pytest.raises(MaterialError):
        truncation.expand(0, 4, 16, prg, np.zeros(8, np.uint64))
    m = truncation.expand(0, 4, 16, prg, None)
    m.used = True
    with pytest.raises(MaterialError):
        truncation.run(None, 0, m, np.zeros(4, np.uint64))


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
    """c = x + 2^62 + r (opened and as received) is uniform whatever x is; never x or x + 2^62."""
    n = 1024
    if kind == "zero":
        x = np.zeros(n, np.int64)
    else:
        x = np.where(np.arange(n) % 2 == 0, HI - 1, LO).astype(np.int64)
    opened, received = [], []
    for q in range(100):
        log: list = []
        secure_trunc(x, 16, q, log, tag=kind)
        (sent, got), (_, got1) = log
        opened.append(sent[0] + got[0])
        received += [got[0], got1[0]]
    c, r = np.stack(opened), np.stack(received)
    xu = x.view(np.uint64)
    assert not np.any(c == xu) and not np.any(c == xu + np.uint64(2**62))
    assert np.unique(c).size == c.size  # no mask reused
    assert max_chi2(c) < CHI2_BOUND
    assert max_chi2(r) < CHI2_BOUND
    top = np.bincount((c >> np.uint64(60)).reshape(-1).astype(np.int64), minlength=16)
    exp = c.size / 16
    assert ((top - exp) ** 2 / exp).sum() < 15 * (1 - 2 / 135 + 6 * math.sqrt(2 / 135)) ** 3
