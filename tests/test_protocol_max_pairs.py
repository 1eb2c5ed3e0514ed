"""The max of 3 or 4 candidates with every pair compared at once (`max_pairs`), and with the
ReLU after it (truncating or not): exact against cleartext at the edges of its range
(|x| < 2^61, MaxPool's pad -2^61, ties; a truncating ReLU errs by 0 or +1 LSB, never for a
negative max), traffic and dealer bytes == costs.max_pairs, the dealer's material what it
claims, and each party's view independent of the input.

All seeds are derived from fixed labels, so every run (and every statistical threshold
below) is deterministic.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from mpcc.compiler import calls, costs
from mpcc.errors import MaterialError
from mpcc.runtime import bitslice
from mpcc.runtime.prg import Prg
from mpcc.runtime.protocols import max_pairs
from mpcc.runtime.rules.pool import MAXPOOL_PAD
from tests.twoparty import run_call

ROOT = bytes(16)
LIMIT = (1 << 61) - 1  # |x| <= LIMIT, and the pad -2^61


def _seed(*label: object) -> bytes:
    return Prg.derive(ROOT, *label).bytes(16).tobytes()


def _secure(x: np.ndarray, tag: object, record: bool = False, relu: int | None = None):
    """Deal, expand and run on x [k, n]; returns (output as int64, channels, correction,
    views, material), views[p] listing party p's rounds as (arrays sent, arrays received)."""
    k, n = x.shape
    seeds = _seed("p0", tag), _seed("p1", tag)
    y, chans, corr, views, mats = run_call(
        calls.MaxPairs(n, k, relu), x, seeds, Prg.derive(ROOT, "input", tag), record
    )
    assert y.shape == (n,)
    return y.view(np.int64), chans, corr, views, mats


def _check(x: np.ndarray, y: np.ndarray, relu: int | None) -> None:
    m = x.max(axis=0)
    if relu is None:
        np.testing.assert_array_equal(y, m)
        return
    err = y - np.maximum(m >> relu, 0)  # int64 >> is floor division
    assert np.all((err == 0) | (err == 1)), np.unique(err)
    assert not np.any(err[m < 0]), "a negative max must give exactly 0"
    if relu == 0:
        assert not np.any(err)


RELUS = [None, 0, 16]


def _edge_inputs(k: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """[k, n] signed values in [-2^61, 2^61): edges, ties, pads, uniform and model-like."""
    e = np.arange(61)
    powers = np.concatenate([1 << e, (1 << e) - 1, (1 << e) + 1]).astype(np.int64)
    edges = np.concatenate([[0, 1, -1, LIMIT, -LIMIT, MAXPOOL_PAD], powers, -powers])
    edges = edges[(edges >= MAXPOOL_PAD) & (edges <= LIMIT)]
    q = n // 5
    parts = [
        rng.choice(edges, (k, q)),  # edges against edges
        np.repeat(rng.choice(edges, (1, q)), k, axis=0),  # all tied
        rng.integers(MAXPOOL_PAD, LIMIT + 1, (k, q)),  # uniform over the range
        np.round(rng.uniform(-1000, 1000, (k, q)) * 2.0**32).astype(np.int64),  # model-like
    ]
    small = rng.integers(-3, 4, (k, n - 4 * q))  # small: many partial ties
    x = np.concatenate([*parts, small], axis=1)
    x[rng.integers(0, k, n), np.arange(n)] = rng.choice(edges, n)  # an edge in every window
    return x[:, rng.permutation(n)]


@pytest.mark.parametrize("relu", RELUS)
@pytest.mark.parametrize("k", [3, 4])
def test_exact_at_edges_over_a_million_elements(k: int, relu: int | None) -> None:
    rng = np.random.default_rng(k)
    x = _edge_inputs(k, 1_000_000 // k + 1, rng)
    y, *_ = _secure(x, ("edges", k, relu), relu=relu)
    _check(x, y, relu)


@pytest.mark.parametrize("relu", [1, 32, 61, 62])
def test_other_shifts(relu: int) -> None:
    x = _edge_inputs(4, 20_000, np.random.default_rng(100 + relu))
    y, *_ = _secure(x, ("shifts", relu), relu=relu)
    _check(x, y, relu)


def test_the_truncation_rounds_stochastically() -> None:
    """The +1 LSB happens with probability frac(max / 2^shift): unbiased on average."""
    rng = np.random.default_rng(3)
    x = np.round(rng.uniform(0, 1000, (4, 200_000)) * 2.0**32).astype(np.int64)
    y, *_ = _secure(x, "bias", relu=16)
    m = x.max(axis=0)
    err = y - (m >> 16)
    assert abs(err.sum() - ((m & 0xFFFF) / 2.0**16).sum()) < 6 * np.sqrt(len(m) / 4)


@pytest.mark.parametrize("relu", RELUS)
@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 1000])
@pytest.mark.parametrize("k", [3, 4])
def test_shapes_and_exact_traffic(n: int, k: int, relu: int | None) -> None:
    x = np.random.default_rng(n).integers(-LIMIT, LIMIT + 1, (k, n))
    y, chans, corr, *_ = _secure(x, ("shape", n, k, relu), relu=relu)
    _check(x, y, relu)
    want = costs.max_pairs(n, k, relu)
    for ch in chans:
        assert ch.traffic.bytes_sent == want.sent
        assert ch.traffic.bytes_received == want.sent
        assert ch.traffic.rounds == want.rounds == 5
    assert corr.dtype == np.uint64 and corr.ndim == 1 and corr.nbytes == want.dealer


@pytest.mark.parametrize("relu", RELUS)
@pytest.mark.parametrize("k", [3, 4])
def test_dealer_material_is_what_it_claims(k: int, relu: int | None) -> None:
    n = 200
    s0, s1 = _seed("m0", k, relu), _seed("m1", k, relu)
    corr = max_pairs.deal(n, k, Prg.derive(s0), Prg.derive(s1), relu)
    m0 = max_pairs.expand(0, n, k, Prg.derive(s0), None, relu)
    m1 = max_pairs.expand(1, n, k, Prg.derive(s1), corr, relu)
    ncmp = k * (k - 1) // 2 + (0 if relu is None else k)
    bits = k - 1 + (relu is not None)
    r = m0.r + m1.r
    np.testing.assert_array_equal(m0.r_bits ^ m1.r_bits, bitslice.pack(r, 63))
    assert r.size == ncmp * n
    mask = m0.and_mask ^ m1.and_mask
    mono = m0.and_mono ^ m1.and_mono
    for i, lits in enumerate(max_pairs.literals(k, relu is not None)):
        assert len(lits) == bits
        j = 0
        for t in range(1 << bits):
            if t.bit_count() < 2:
                continue
            want = np.bitwise_and.reduce([mask[p] for at, (p, _) in enumerate(lits) if t >> at & 1])
            np.testing.assert_array_equal(mono[i, j], want)
            j += 1
        assert j == mono.shape[1]
    rho = np.stack([bitslice.unpack(row, n) for row in m0.rho_bits ^ m1.rho_bits])
    np.testing.assert_array_equal(m0.rho + m1.rho, rho)
    np.testing.assert_array_equal(m0.rho_sigma + m1.rho_sigma, rho * (m0.sigma + m1.sigma))
    assert 0.3 < rho.mean() < 0.7 and 0.3 < bitslice.unpack(mask[0], n).mean() < 0.7
    if relu:  # the truncation's corrections, of the sign comparisons' masks
        r_sign = r[(ncmp - k) * n :].reshape(k, n)
        want_hi = (r_sign & np.uint64(2**63 - 1)) >> np.uint64(relu)
        np.testing.assert_array_equal(m0.r_hi + m1.r_hi, want_hi)
        np.testing.assert_array_equal(m0.r_63 + m1.r_63, r_sign >> np.uint64(63))
    else:
        assert m0.r_hi is None and m1.r_hi is None


def test_each_candidate_wins_on_its_own_literals() -> None:
    """Candidate i's literals are its k - 1 pairs, negated where it is the pair's second, and
    with the ReLU its sign."""
    assert max_pairs.literals(3) == [
        [(0, False), (1, False)],
        [(0, True), (2, False)],
        [(1, True), (2, True)],
    ]
    assert max_pairs.literals(3, True)[2] == [(1, True), (2, True), (5, False)]
    for k in (3, 4):
        for relu in (False, True):
            for i, lits in enumerate(max_pairs.literals(k, relu)):
                assert len(lits) == k - 1 + relu
                for p, neg in lits:
                    a, b = max_pairs.comparisons(k, relu)[p]
                    assert (a, b)[neg] == i


def test_material_misuse_raises() -> None:
    s0, s1 = _seed("x0"), _seed("x1")
    corr = max_pairs.deal(10, 4, Prg.derive(s0), Prg.derive(s1))
    with pytest.raises(MaterialError):
        max_pairs.expand(1, 10, 4, Prg.derive(s1), corr[:-1])
    with pytest.raises(MaterialError):
        max_pairs.expand(0, 10, 4, Prg.derive(s0), corr)
    for k in (2, 5, 9):
        with pytest.raises(ValueError, match="3 or 4 candidates"):
            max_pairs.deal(10, k, Prg.derive(s0), Prg.derive(s1))
    with pytest.raises(ValueError, match="0..62"):
        max_pairs.deal(10, 4, Prg.derive(s0), Prg.derive(s1), 63)
    mat = max_pairs.expand(0, 10, 4, Prg.derive(s0), None)
    mat.used = True
    with pytest.raises(MaterialError, match="already used"):
        max_pairs.run(None, 0, mat, np.zeros((4, 10), np.uint64))  # type: ignore[arg-type]
    mat = max_pairs.expand(0, 10, 4, Prg.derive(s0), None)
    with pytest.raises(ValueError, match="shape"):
        max_pairs.run(None, 0, mat, np.zeros((3, 10), np.uint64))  # type: ignore[arg-type]


# --- the parties' views ---------------------------------------------------------------------

VIEW_N = 1000  # not a multiple of 64: padding lanes are in the view too
VIEW_RUNS = 40
K = 4


def _opened(rounds: list[tuple[list[np.ndarray], list[np.ndarray]]]) -> list[list[np.ndarray]]:
    """The values a party learns each round: its share combined with the peer's (c and d are
    additive, the rest XOR)."""
    assert [len(sent) for sent, _ in rounds] == [1, 2, 1, 1, 1]
    out = []
    for i, (sent, got) in enumerate(rounds):
        arith = [i == 0] if i != 1 else [False, True]
        out.append([a + b if ar else a ^ b for a, b, ar in zip(sent, got, arith, strict=True)])
    return out


def _views(x: np.ndarray, tag: str, relu: int | None) -> dict[str, np.ndarray]:
    """What the parties learn over VIEW_RUNS runs, by kind, flat: the opened values (the same
    for both), and each with party p's own share of its mask removed ("|Pp")."""
    kinds: dict[str, list[np.ndarray]] = defaultdict(list)
    for run in range(VIEW_RUNS):
        y, _, _, views, mats = _secure(x, (tag, run), record=True, relu=relu)
        _check(x, y, relu)
        opened = _opened(views[0])
        for a, b in zip(opened, _opened(views[1]), strict=True):
            for u, v in zip(a, b, strict=True):
                np.testing.assert_array_equal(u, v)
        c, d, wires, o, e = opened[0][0], opened[1][1], opened[1][0], opened[3][0], opened[4][0]
        wires = np.concatenate([wires.reshape(-1), opened[2][0].reshape(-1)])
        kinds["c"].append(c)
        kinds["d"].append(d)
        kinds["wire"].append(wires)
        kinds["o"].append(o)
        kinds["e"].append(e)
        for p, mat in enumerate(mats):
            kinds[f"c|P{p}"].append(c - mat.r)
            kinds[f"d|P{p}"].append(d + mat.sigma.reshape(-1))
            kinds[f"wire|P{p}"].append(wires ^ mat.mu)
            kinds[f"o|P{p}"].append(o ^ mat.and_mask.reshape(-1))
            kinds[f"e|P{p}"].append(e ^ mat.rho_bits.reshape(-1))
    return {k: np.concatenate(v) for k, v in kinds.items()}


def _bit_freq(a: np.ndarray) -> np.ndarray:
    return ((a[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).mean(axis=0)


def _winners(x: np.ndarray, relu: int | None = None) -> np.ndarray:
    """Each candidate's win bit, packed [k, words], ties to the lowest index (with the ReLU:
    none when the max is negative)."""
    win = np.arange(x.shape[0])[:, None] == np.argmax(x, axis=0)
    if relu is not None:
        win &= x.max(axis=0) >= 0
    return np.stack([bitslice.pack(row, 1)[0] for row in win.astype(np.uint64)])


@pytest.mark.parametrize("relu", [None, 16])
def test_view_does_not_depend_on_input(relu: int | None) -> None:
    rng = np.random.default_rng(11)
    inputs = {
        "tied": np.zeros((K, VIEW_N), np.int64),
        "first_wins": np.stack([np.full(VIEW_N, LIMIT - i) for i in range(K)]),
        "mixed": rng.integers(-LIMIT, LIMIT + 1, (K, VIEW_N)),
    }
    views = {name: _views(x, f"view-{name}-{relu}", relu) for name, x in inputs.items()}
    freqs = {}
    for name in inputs:
        for kind, a in views[name].items():
            sigma = 0.5 / np.sqrt(a.size)
            f = _bit_freq(a)
            assert np.all(np.abs(f - 0.5) < 6 * sigma), (name, kind, f)
            freqs[name, kind] = (f, sigma)
    for kind in views["tied"]:
        (fa, sigma), (fb, _) = freqs["tied", kind], freqs["first_wins", kind]
        assert np.all(np.abs(fa - fb) < 6 * np.sqrt(2) * sigma), kind
    # the opened win bits never track who wins, lane by lane
    win = np.tile(_winners(inputs["mixed"], relu).reshape(-1), VIEW_RUNS)
    agree = _bit_freq(~(views["mixed"]["e"] ^ win))
    assert np.all(np.abs(agree - 0.5) < 6 * 0.5 / np.sqrt(win.size))
    # nor do the opened comparison bits track the comparisons
    bits = np.tile(_comparison_bits(inputs["mixed"], relu).reshape(-1), VIEW_RUNS)
    agree = _bit_freq(~(views["mixed"]["o"] ^ bits))
    assert np.all(np.abs(agree - 0.5) < 6 * 0.5 / np.sqrt(bits.size))


def _comparison_bits(x: np.ndarray, relu: int | None) -> np.ndarray:
    """Each comparison's bit in the clear, packed [comparisons, words]."""
    rows = [
        x[a] >= (0 if b is None else x[b])
        for a, b in max_pairs.comparisons(len(x), relu is not None)
    ]
    return np.stack([bitslice.pack(r.astype(np.uint64), 1)[0] for r in rows])


def test_no_message_is_a_plaintext() -> None:
    """Neither a received share nor an opened value equals the cleartext it carries: the
    differences, the candidates, the comparison bits or the winners."""
    x = np.random.default_rng(12).integers(-LIMIT, LIMIT + 1, (K, VIEW_N))
    x[:, :50] = 0
    _, _, _, views, _ = _secure(x, "plain", record=True)
    a, b = (list(s) for s in zip(*max_pairs.comparisons(K), strict=True))
    z = (x[a] - x[b]).astype(np.uint64).reshape(-1)
    t = np.stack([bitslice.pack(row, 1)[0] for row in (x[a] >= x[b]).astype(np.uint64)])
    received = [[got for _, got in views[p]] for p in (0, 1)]
    for msgs in (*received, _opened(views[0])):
        assert not np.any(msgs[0][0] == z)
        assert not np.any(msgs[1][1] == x.astype(np.uint64).reshape(-1))
        assert not np.any(msgs[3][0] == t.reshape(-1))
        assert not np.any(msgs[4][0] == _winners(x).reshape(-1))


@pytest.mark.slow
@pytest.mark.parametrize("relu", [None, 16])
@pytest.mark.parametrize("k", [3, 4])
def test_exhaustive_ten_million(k: int, relu: int | None) -> None:
    rng = np.random.default_rng(1000 + k)
    for chunk in range(10):
        x = _edge_inputs(k, 1_000_000, rng)
        y, *_ = _secure(x, ("slow", k, chunk, relu), relu=relu)
        _check(x, y, relu)
