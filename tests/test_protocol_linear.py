"""Bilinear layers with a masked-once weight and per-query matrix/conv Beaver triples."""

from __future__ import annotations

import math
import zlib
from functools import partial

import numpy as np
import pytest

from mpcc.compiler import costs
from mpcc.errors import MaterialError
from mpcc.runtime import kernels
from mpcc.runtime.prg import Prg, share
from mpcc.runtime.protocols import linear
from tests.twoparty import run_parties

SEED0, SEED1 = b"P0 session seed!", b"P1 session seed!"


def ring(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Test inputs: arbitrary ring elements (the protocol is exact over the whole ring)."""
    return rng.integers(0, 2**64, size=shape, dtype=np.uint64)


def conv_ref(x, w, strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), groups=1):
    """Plain numpy ring convolution (gather + einsum), independent of kernels.conv2d."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = strides, dilations, pads
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    ih = np.arange(oh)[:, None] * sh + np.arange(kh)[None, :] * dh  # (oh, kh)
    iw = np.arange(ow)[:, None] * sw + np.arange(kw)[None, :] * dw  # (ow, kw)
    patches = xp[:, :, ih[:, :, None, None], iw[None, None, :, :]]  # (n, c, oh, kh, ow, kw)
    patches = patches.reshape(n, groups, cg, oh, kh, ow, kw)
    wg = w.reshape(groups, o // groups, cg, kh, kw)
    return np.einsum("ngcaibj,gocij->ngoab", patches, wg).reshape(n, o, oh, ow)


class Session:
    """Dealer + both parties for one secret-weight layer: setup once, then queries."""

    def __init__(self, bilinear, w: np.ndarray, x_shape, op: int = 7, seeds=(SEED0, SEED1)):
        self.bilinear, self.op, self.seeds = bilinear, op, seeds
        self.x_shape = tuple(x_shape)
        w_shares = share(w, Prg.derive(b"client seed 0000", "w", op))
        wprg = [Prg.derive(s, "sess", "weights", op) for s in seeds]
        self.b_shares = [linear.weight_mask(w.shape, p) for p in wprg]
        dprg = [Prg.derive(s, "sess", "weights", op) for s in seeds]
        self.b = linear.dealer_weight_mask(w.shape, *dprg)

        def open_(ch, p):
            masks = {"w": Prg.derive(seeds[p], "sess", "weights", op)}
            return linear.open_weights(ch, p, {"w": w_shares[p]}, masks)["w"]

        (t0, f0), (t1, f1), chans = run_parties(open_)
        assert np.array_equal(f0, f1)
        assert np.array_equal(t0, self.b_shares[0] + f0) and np.array_equal(t1, self.b_shares[1])
        self.f = f0
        self.terms = (t0, t1)
        self.setup_traffic = [c.traffic.snapshot() for c in chans]
        self.z_shape = np.asarray(bilinear(np.zeros(x_shape, np.uint64), w)).shape
        self.query = 0

    def material(self):
        q, self.query = self.query, self.query + 1
        prgs = lambda: [Prg.derive(s, "sess", q, self.op) for s in self.seeds]  # noqa: E731
        corr = linear.deal(self.bilinear, self.x_shape, self.z_shape, self.b, *prgs())
        p0, p1 = prgs()
        mats = [
            linear.expand(0, self.bilinear, self.x_shape, self.z_shape, p0, None, self.f),
            linear.expand(1, self.bilinear, self.x_shape, self.z_shape, p1, corr, self.f),
        ]
        return corr, mats

    def run(self, x: np.ndarray, log: list | None = None):
        corr, mats = self.material()
        xs = share(x, Prg.derive(b"client seed 0000", "x", self.query))

        def party(ch, p):
            if log is not None:
                record(ch, log)
            return linear.run(ch, p, mats[p], xs[p], self.terms[p], self.bilinear)

        z0, z1, chans = run_parties(party)
        return z0 + z1, corr, [c.traffic for c in chans]


def record(ch, log: list) -> None:
    """Log every round's (sent, received) arrays of this channel."""
    orig = ch.exchange

    def exchange(arrays):
        got = orig(arrays)
        log.append(([a.copy() for a in arrays], [g.copy() for g in got]))
        return got

    ch.exchange = exchange


CONV = [
    # (x shape, w shape, strides, pads, dilations, groups)
    ((2, 4, 9, 9), (6, 2, 3, 3), (2, 2), (1, 0, 2, 1), (1, 1), 2),
    ((1, 3, 8, 7), (5, 3, 3, 2), (1, 2), (1, 1, 1, 1), (2, 1), 1),
    ((2, 4, 6, 6), (8, 1, 3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 4),  # depthwise
]

CASES = {
    "numpy_matmul": (lambda x, w: x @ w, (3, 5), (5, 4)),
    "dense": (kernels.dense, (2, 3, 16), (16, 10)),
    "mul_broadcast_w": (np.multiply, (2, 3, 4, 4), (3, 1, 1)),
    "mul_broadcast_x": (np.multiply, (4,), (3, 4)),
    "einsum_conv": (
        partial(conv_ref, strides=(2, 1), pads=(1, 0, 0, 1), groups=2),
        (1, 4, 6, 5),
        (4, 2, 2, 3),
    ),
}
for i, (xs, ws, s, pd, d, g) in enumerate(CONV):
    CASES[f"conv{i}"] = (partial(kernels.conv2d, strides=s, pads=pd, dilations=d, groups=g), xs, ws)


@pytest.mark.parametrize("name", list(CASES))
def test_exact_and_costs(name):
    bil, x_shape, w_shape = CASES[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    w = ring(rng, *w_shape)
    sess = Session(bil, w, x_shape)
    for t in sess.setup_traffic:
        assert t.bytes_sent == costs.weight_opening(w.size).setup
        assert t.rounds == 1
    opened = []
    inputs = [ring(rng, *x_shape)] * 2 + [ring(rng, *x_shape)]
    for x in inputs:  # several queries reuse F; each has a fresh A
        log: list = []
        z, corr, traffic = sess.run(x, log)
        expect = np.asarray(bil(x, w), dtype=np.uint64)
        assert np.array_equal(z, expect)
        cost = costs.linear(x.size, z.size, 0)
        assert corr.dtype == np.uint64 and corr.nbytes == cost.dealer
        for t in traffic:
            assert (t.rounds, t.bytes_sent) == (cost.rounds, cost.sent)
        opened.append(log[0][0][0] + log[0][1][0])
    # fresh A per query: the same input opens to unrelated values
    assert not np.any(opened[0] == opened[1])


def test_kernels_conv_matches_reference():
    rng = np.random.default_rng(3)
    for xs, ws, s, pd, d, g in CONV:
        x, w = ring(rng, *xs), ring(rng, *ws)
        ref = conv_ref(x, w, s, pd, d, g)
        got = kernels.conv2d(x, w, strides=s, pads=pd, dilations=d, groups=g)
        assert np.array_equal(got, ref)


def test_material_is_consistent():
    """P0's and P1's material come from the same draws the dealer made: pre_0 + pre_1 = L(A, W)."""
    rng = np.random.default_rng(4)
    w = ring(rng, 6, 5)
    sess = Session(kernels.dense, w, (4, 6))
    _, (m0, m1) = sess.material()
    assert np.array_equal(m0.pre + m1.pre, kernels.dense(m0.a + m1.a, w))


def test_weights_open_together_in_bounded_rounds(monkeypatch):
    # 23 words in rounds of 7: several weights share a round, one spans rounds; F overwrites
    # the shares in place, and only the setup bytes of the cost model cross the link.
    monkeypatch.setattr(linear, "OPEN_WORDS", 7)
    rng = np.random.default_rng(9)
    ws = {"a": ring(rng, 3, 5), "b": ring(rng, 4), "c": np.asfortranarray(ring(rng, 2, 2))}
    shares = [dict(), dict()]
    for n, w in ws.items():
        shares[0][n], shares[1][n] = share(w, Prg.derive(SEED0, "share", n))
    b = {n: linear.dealer_weight_mask(w.shape, *prgs(n)) for n, w in ws.items()}

    def open_(ch, p):
        masks = {n: prgs(n)[p] for n in ws}
        return linear.open_weights(ch, p, shares[p], masks, in_place=True)

    r0, r1, chans = run_parties(open_)
    for n, w in ws.items():
        (t0, f0), (t1, f1) = r0[n], r1[n]
        assert np.array_equal(f0, w - b[n]) and np.array_equal(f1, w - b[n])
        assert np.array_equal(t0 + t1, w)  # [B]_0 + F + [B]_1 = W
    assert shares[0]["a"] is r0["a"][1]  # in place: the share became F
    for ch in chans:
        assert ch.traffic.rounds == math.ceil(23 / 7)
        assert ch.traffic.bytes_sent == sum(costs.weight_opening(w.size).setup for w in ws.values())


def prgs(name: str) -> tuple[Prg, Prg]:
    return Prg.derive(SEED0, "mask", name), Prg.derive(SEED1, "mask", name)


def test_public_weights_is_local():
    rng = np.random.default_rng(5)
    x, w = ring(rng, 3, 8), ring(rng, 8, 2)
    x0, x1 = share(x)
    z = linear.public_weights(x0, w, kernels.dense) + linear.public_weights(x1, w, kernels.dense)
    assert np.array_equal(z, x @ w)


def test_material_misuse():
    rng = np.random.default_rng(6)
    w = ring(rng, 4, 3)
    sess = Session(kernels.dense, w, (2, 4))
    corr, (m0, m1) = sess.material()
    p = Prg.derive(SEED1, "other")
    with pytest.raises(MaterialError):
        linear.expand(1, kernels.dense, (2, 4), (2, 3), p, None, sess.f)
    with pytest.raises(MaterialError):
        linear.expand(1, kernels.dense, (2, 4), (2, 3), p, corr[:-1], sess.f)
    with pytest.raises(MaterialError):
        linear.expand(0, kernels.dense, (2, 4), (2, 3), p, corr, sess.f)
    x = ring(rng, 2, 4)
    xs = share(x)
    mats = (m0, m1)
    fn = lambda ch, p: linear.run(ch, p, mats[p], xs[p], sess.terms[p], kernels.dense)  # noqa: E731
    run_parties(fn)
    with pytest.raises(MaterialError):
        run_parties(fn)


# --- the parties' view ----------------------------------------------------------------------

# Chi-square on byte values, 255 degrees of freedom, six-sigma Wilson-Hilferty bound
# (p < 1e-9). Every input and mask below comes from fixed seeds, so the test is deterministic.
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
    """E (opened and as received) and F look uniform whatever X and W are, and never equal them."""
    x_shape, w_shape = (8, 64), (64, 16)
    if kind == "zero":
        x, w = np.zeros(x_shape, np.uint64), np.zeros(w_shape, np.uint64)
    else:
        x = np.full(x_shape, 2**63 - 1, np.uint64)
        x[::2] = np.arange(x[::2].size, dtype=np.uint64).reshape(x[::2].shape)
        w = np.full(w_shape, 2**62 + 12345, np.uint64)
    opened, received, fs = [], [], []
    for s in range(4):
        seeds = (
            Prg.derive(SEED0, kind, s).bytes(16).tobytes(),
            Prg.derive(SEED1, kind, s).bytes(16).tobytes(),
        )
        sess = Session(kernels.dense, w, x_shape, seeds=seeds)
        fs.append(sess.f)
        for _ in range(50):
            log: list = []
            sess.run(x, log)
            (sent, got) = log[0]  # party 0's round, then party 1's round
            opened.append((sent[0] + got[0]).reshape(x_shape))
            received.append(got[0])
            received.append(log[1][1][0])
    e, r, f = np.stack(opened), np.stack(received), np.stack(fs)
    assert not np.any(e == x) and not np.any(f == w)
    assert np.unique(e).size == e.size  # no mask reused across elements or queries
    assert max_chi2(e) < CHI2_BOUND
    assert max_chi2(r) < CHI2_BOUND
    assert max_chi2(f) < CHI2_BOUND
    assert max_chi2(e & np.uint64(2**63 - 1)) > CHI2_BOUND  # the test sees a one-bit bias
    top = np.bincount((e >> np.uint64(60)).reshape(-1).astype(np.int64), minlength=16)
    exp = e.size / 16
    assert ((top - exp) ** 2 / exp).sum() < 15 * (1 - 2 / 135 + 6 * math.sqrt(2 / 135)) ** 3
