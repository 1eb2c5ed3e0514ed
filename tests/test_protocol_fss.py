"""Function secret sharing: the DCF (`runtime.dcf`) against its definition, and the one-round
sign (`sign_fss`) and two-round ReLU (`relu_fss`) exact against cleartext at the edges of
|x| < 2^62, with counted traffic == costs, material used once, and views independent of
the input.

All seeds are derived from fixed labels, so every run (and every statistical threshold
below) is deterministic.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from mpcc.compiler import calls, costs
from mpcc.errors import MaterialError
from mpcc.runtime import bitslice, dcf
from mpcc.runtime.prg import Prg
from mpcc.runtime.protocols import BY_CALL, relu_fss, sign_fss
from tests.twoparty import run_call

ROOT = bytes(16)
BIAS = 1 << 62
LIMIT = (1 << 62) - 1
U64 = np.uint64


def _prg(*label: object) -> Prg:
    return Prg.derive(ROOT, *label)


# --- the DCF itself -------------------------------------------------------------------------


def _dcf_points(bits: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """alpha and x in [0, 2^bits): x at alpha, alpha +- 1, 0, the top, and uniform."""
    top = (1 << bits) - 1
    alpha = rng.integers(0, top, n, dtype=np.uint64, endpoint=True)
    alpha[:4] = [0, top, 1, top - 1 if bits > 1 else 0]
    x = rng.integers(0, top, n, dtype=np.uint64, endpoint=True)
    k = n // 6
    x[:k] = alpha[:k]
    x[k : 2 * k] = alpha[k : 2 * k] - U64(1)
    x[2 * k : 3 * k] = alpha[2 * k : 3 * k] + U64(1)
    x[3 * k : 3 * k + 8] = 0
    x[3 * k + 8 : 3 * k + 16] = top
    if bits < 64:
        x &= U64(top)
    return alpha, x


@pytest.mark.parametrize("ring", [True, False])
@pytest.mark.parametrize("bits", [1, 2, 7, 62, 64])
def test_dcf_shares_the_comparison(bits: int, ring: bool) -> None:
    n = 3000
    rng = np.random.default_rng(bits)
    alpha, x = _dcf_points(bits, n, rng)
    beta = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    gamma = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    roots = (dcf.root_seeds(_prg("r0", bits), n), dcf.root_seeds(_prg("r1", bits), n))
    key = dcf.gen(alpha, beta, gamma, roots, bits, ring)
    assert key.size == dcf.key_words(n, bits, ring)
    y0 = dcf.evaluate(0, roots[0], key, x, bits, ring)
    y1 = dcf.evaluate(1, roots[1], key, x, bits, ring)
    want = gamma + beta * (x < alpha).astype(np.uint64)
    if ring:
        np.testing.assert_array_equal(y0 + y1, want)
    else:
        assert set(np.unique(y0)) <= {0, 1} and set(np.unique(y1)) <= {0, 1}
        np.testing.assert_array_equal(y0 ^ y1, want & U64(1))
    # one party's output alone says nothing: about half its bits are set at x = alpha too
    assert 0.4 < (y0 & U64(1)).mean() < 0.6


@pytest.mark.parametrize("ring", [True, False])
def test_dcf_in_chunks(ring: bool, monkeypatch) -> None:
    """Elements go through the levels in chunks: several, the last one short."""
    monkeypatch.setattr(dcf, "CHUNK", 128)
    n, bits = 1000, 62
    alpha, x = _dcf_points(bits, n, np.random.default_rng(9))
    roots = (dcf.root_seeds(_prg("c0"), n), dcf.root_seeds(_prg("c1"), n))
    key = dcf.gen(alpha, 1, 0, roots, bits, ring)
    y = sum(dcf.evaluate(p, roots[p], key, x, bits, ring) for p in (0, 1))
    want = (x < alpha).astype(np.uint64)
    np.testing.assert_array_equal(y if ring else y & U64(1), want)
    monkeypatch.setattr(dcf, "CHUNK", 1 << 20)  # the same words in one pass
    np.testing.assert_array_equal(dcf.gen(alpha, 1, 0, roots, bits, ring), key)


@pytest.mark.parametrize("ring", [True, False])
def test_dcf_key_words_look_uniform(ring: bool) -> None:
    """Every bit of the common words is a fair coin whatever alpha is (the seed words' 2 low
    bits excepted: clear by design), so the words a party receives say nothing of alpha."""
    n = 2048  # whole packed words: no padding lanes
    roots = (dcf.root_seeds(_prg("u0", ring), n), dcf.root_seeds(_prg("u1", ring), n))
    alphas = {
        "zero": np.zeros(n, np.uint64),
        "top": np.full(n, 2**62 - 1, np.uint64),
        "random": np.random.default_rng(5).integers(0, 2**62, n, dtype=np.uint64),
    }
    for name, alpha in alphas.items():
        key = dcf.split(dcf.gen(alpha, 1, 0, roots, 62, ring), n, 62, ring)
        parts = {
            "scw0": key["scw"][..., 0] >> U64(2),
            "scw1": key["scw"][..., 1],
            "vcw": key["vcw"],
            "tcw": key["tcw"],
            "last": key["last"],
        }
        for part, a in parts.items():
            a = np.ascontiguousarray(a).reshape(-1)
            f = _bit_freq(a)[: 62 if part == "scw0" else 64]
            assert np.all(np.abs(f - 0.5) < 6 * 0.5 / np.sqrt(a.size)), (name, part, f)
        assert not np.any(key["scw"][..., 0] & U64(3))


def test_dcf_refuses_bad_keys_and_inputs() -> None:
    roots = (dcf.root_seeds(_prg("b0"), 4), dcf.root_seeds(_prg("b1"), 4))
    with pytest.raises(ValueError, match="fit in 8 bits"):
        dcf.gen(np.array([256, 0, 0, 0], np.uint64), 1, 0, roots, 8)
    key = dcf.gen(np.zeros(4, np.uint64), 1, 0, roots, 8)
    with pytest.raises(ValueError, match="key"):
        dcf.evaluate(0, roots[0], key[:-1], np.zeros(4, np.uint64), 8)
    with pytest.raises(ValueError, match="point does not fit"):
        dcf.evaluate(0, roots[0], key, np.array([0, 0, 256, 0], np.uint64), 8)
    with pytest.raises(ValueError, match="1..64"):
        dcf.gen(np.zeros(4, np.uint64), 1, 0, roots, 65)


# --- the protocols ----------------------------------------------------------------------------


def _low(call: calls.Call) -> int:
    """The smallest input the call is exact for: -2^62, or -2^62 + 2^min(shift, 61) for an
    FSS ReLU with a truncation (its comparison ignores the low bits: relu_fss docstring)."""
    if isinstance(call, calls.ReluFss) and call.shift:
        return -(1 << 62) + (1 << min(call.shift, 61))
    return -(1 << 62)


def _edge_inputs(n: int, rng: np.random.Generator, low: int = -(1 << 62)) -> np.ndarray:
    """n signed values with low <= x < 2^62: every edge, uniform, model-like and small."""
    k = np.arange(62)
    powers = np.concatenate([1 << k, (1 << k) - 1, (1 << k) + 1]).astype(np.int64)
    powers = powers[powers <= LIMIT]
    special = np.array([0, 1, 2, 65535, 65536, 65537, LIMIT, LIMIT - 1], dtype=np.int64)
    edges = np.concatenate([special, powers, -powers, -special, [-1, low, low + 1, low + 2]])
    uniform = rng.integers(-LIMIT, LIMIT + 1, n // 3)
    model = np.round(rng.uniform(-1000, 1000, n // 3) * 2.0**32).astype(np.int64)
    small = rng.integers(-(1 << 20), 1 << 20, n // 6)
    x = np.concatenate([np.resize(edges, n - 2 * (n // 3) - n // 6), uniform, model, small])
    return rng.permutation(np.maximum(x, low))


def _secure(call: calls.Call, x: np.ndarray, tag: object, record: bool = False):
    """Deal, expand (P0 gets the shared words, P1 the whole correction) and run `call` on x.
    Returns (output as int64, channels, correction, views, material), views[p] listing
    party p's rounds as (arrays sent, arrays received)."""
    seeds = _prg("p0", tag).bytes(16).tobytes(), _prg("p1", tag).bytes(16).tobytes()
    y, chans, corr, views, mats = run_call(call, x, seeds, _prg("input", tag), record)
    assert y.shape == x.shape
    return y.view(np.int64), chans, corr, views, mats


def _check(call: calls.Call, x: np.ndarray, y: np.ndarray) -> None:
    if isinstance(call, calls.SignFss):
        np.testing.assert_array_equal(y, (x >= 0).astype(np.int64))
    elif call.shift == 0:
        np.testing.assert_array_equal(y, np.maximum(x, 0))
    else:
        err = y - np.maximum(x >> call.shift, 0)  # int64 >> is floor division
        assert np.all((err == 0) | (err == 1)), np.unique(err)
        assert not np.any(err[x < 0]), "negative inputs must give exactly 0"


CALLS = [lambda n: calls.SignFss(n), lambda n: calls.ReluFss(n, 0), lambda n: calls.ReluFss(n, 16)]
IDS = ["sign", "relu", "relu_trunc16"]


@pytest.mark.parametrize("make", CALLS, ids=IDS)
def test_exact_at_edges(make) -> None:
    call = make(12_000)
    x = _edge_inputs(call.n, np.random.default_rng(1), _low(call))
    y, *_ = _secure(call, x, ("edges", repr(call)))
    _check(call, x, y)


@pytest.mark.parametrize("shift", [1, 2, 31, 61, 62])
def test_relu_other_shifts(shift: int) -> None:
    call = calls.ReluFss(3000, shift)
    x = _edge_inputs(call.n, np.random.default_rng(100 + shift), _low(call))
    x[:64] = np.arange(64) - 32  # around 0, where the comparison drops the low bits
    y, *_ = _secure(call, x, ("shifts", shift))
    _check(call, x, y)


def test_relu_range_bound_is_tight() -> None:
    """The FSS ReLU with a shift is exact from -2^62 + 2^shift up, and not below (down to
    -2^62): the bound in its docstring is the real one."""
    call = calls.ReluFss(512, 8)
    low = _low(call)
    x = np.concatenate([low - 1 - np.arange(256), low + np.arange(256)])
    y, *_ = _secure(call, x, "range")
    _check(call, x[256:], y[256:])
    # below: a wrong sign for about half (when the low 8 bits of x + r do not carry), and
    # then the output is floor(x / 2^8), hugely negative
    assert 64 < np.sum(y[:256] < 0) < 192


@pytest.mark.parametrize("make", CALLS, ids=IDS)
@pytest.mark.parametrize("shape", [(1,), (63,), (64,), (65,), (2, 3, 5, 7), (0,)])
def test_shapes_and_exact_traffic(make, shape: tuple[int, ...]) -> None:
    call = make(int(np.prod(shape)))
    x = np.random.default_rng(len(shape)).integers(_low(call), LIMIT + 1, shape)
    y, chans, corr, *_ = _secure(call, x, ("shape", shape, repr(call)))
    assert y.shape == shape
    _check(call, x, y)
    want = call.cost()
    for ch in chans:
        assert ch.traffic.bytes_sent == ch.traffic.bytes_received == want.sent
        assert ch.traffic.rounds == want.rounds
    assert corr.dtype == np.uint64 and corr.ndim == 1 and corr.nbytes == want.dealer
    assert 8 * BY_CALL[type(call)].shared_words(call) == call.dealer_p0()


def test_costs_are_the_papers_key_sizes() -> None:
    """~n (lambda + 2 + 64) bits + 64 per 64-bit-output DCF; ~n (lambda + 3) + 1 per bit DCF."""
    n = 64 * 1000
    per = costs.sign_fss(n).dealer / n
    assert per == 62 * (128 + 2 + 64) / 8 + 8
    assert calls.ReluFss(n, 0).dealer_p0() / n == 62 * (128 + 3) / 8 + 1 / 8
    assert calls.ReluFss(n, 16).dealer_p0() / n == 46 * (128 + 3) / 8 + 1 / 8  # bits 16..61
    assert costs.sign_fss(n).rounds == 1 and costs.relu_fss(n, 16).rounds == 2


def test_material_is_consistent() -> None:
    n = 300
    s0, s1 = b"m0" * 8, b"m1" * 8
    corr = relu_fss.deal(n, 16, Prg.derive(s0), Prg.derive(s1))
    k = relu_fss.key_words(n, 16)
    m0 = relu_fss.expand(0, n, 16, Prg.derive(s0), corr[:k])
    m1 = relu_fss.expand(1, n, 16, Prg.derive(s1), corr)
    np.testing.assert_array_equal(m0.key, m1.key)
    rho = m0.rho + m1.rho
    assert set(np.unique(rho)) == {0, 1} and 0.3 < rho.mean() < 0.7
    np.testing.assert_array_equal(m0.rho_sigma + m1.rho_sigma, rho * (m0.sigma + m1.sigma))
    r = m0.r + m1.r
    np.testing.assert_array_equal(m0.r_hi + m1.r_hi, (r & U64(2**63 - 1)) >> U64(16))
    np.testing.assert_array_equal(m0.r_63 + m1.r_63, r >> U64(63))
    # the key compares bits 16..61 and its offset hides rho: at c_hi = r_hi, [c_hi <= r_hi] = 1
    r_hi = (r & sign_fss.LOW62) >> U64(16)
    z = dcf.evaluate(0, m0.root, m0.key, r_hi, 46, False)
    z ^= dcf.evaluate(1, m1.root, m1.key, r_hi, 46, False)
    np.testing.assert_array_equal(z, ((r >> U64(62)) & U64(1)) ^ rho ^ U64(1))
    z = dcf.evaluate(0, m0.root, m0.key, r_hi + U64(1), 46, False)  # r_hi < 2^46 - 1 here
    z ^= dcf.evaluate(1, m1.root, m1.key, r_hi + U64(1), 46, False)
    np.testing.assert_array_equal(z, ((r >> U64(62)) & U64(1)) ^ rho)


@pytest.mark.parametrize("make", CALLS, ids=IDS)
def test_material_misuse_raises(make) -> None:
    call = make(10)
    proto = BY_CALL[type(call)]
    s0, s1 = b"x0" * 8, b"x1" * 8
    corr = proto.deal(call, Prg.derive(s0), Prg.derive(s1))
    shared = corr[: proto.shared_words(call)]
    with pytest.raises(MaterialError, match="P0 needs"):  # P0 cannot run without the key
        proto.expand(0, call, Prg.derive(s0), None)
    with pytest.raises(MaterialError, match="P1 needs"):
        proto.expand(1, call, Prg.derive(s1), corr[:-1])
    mat = proto.expand(0, call, Prg.derive(s0), shared)
    mat.used = True
    with pytest.raises(MaterialError, match="already used"):
        proto.run(None, 0, mat, np.zeros(10, np.uint64))
    mat = proto.expand(0, call, Prg.derive(s0), shared)
    with pytest.raises(ValueError, match="elements"):
        proto.run(None, 0, mat, np.zeros(11, np.uint64))


def test_material_is_used_exactly_once() -> None:
    x = np.arange(-5, 5)
    for make in CALLS:
        call = make(x.size)
        _, _, _, _, mats = _secure(call, x, ("once", repr(call)))
        for p, mat in enumerate(mats):
            assert mat.used
            with pytest.raises(MaterialError, match="already used"):
                BY_CALL[type(call)].run(None, p, mat, x.astype(np.uint64))


# --- the parties' views -----------------------------------------------------------------------

VIEW_N = 6000  # not a multiple of 64: padding lanes are in the view too
VIEW_RUNS = 10


def _opened(call: calls.Call, rounds) -> dict[str, np.ndarray]:
    """The values a party learns, by name: its own share combined with the peer's."""
    sent = [s for s, _ in rounds]
    got = [g for _, g in rounds]
    if isinstance(call, calls.SignFss):
        assert [len(s) for s in sent] == [1]
        return {"c": sent[0][0] + got[0][0]}
    if call.shift:
        assert [len(s) for s in sent] == [1, 2]
        return {
            "c": sent[0][0] + got[0][0],
            "e": sent[1][0] ^ got[1][0],
            "d": sent[1][1] + got[1][1],
        }
    assert [len(s) for s in sent] == [2, 1]
    return {"c": sent[0][0] + got[0][0], "d": sent[0][1] + got[0][1], "e": sent[1][0] ^ got[1][0]}


def _views(call: calls.Call, x: np.ndarray, tag: str) -> dict[str, np.ndarray]:
    """What the parties learn over VIEW_RUNS runs, by kind, flat: the opened values (the same
    for both), and each opened value with party p's own share of its mask removed ("|Pp")."""
    kinds: dict[str, list[np.ndarray]] = defaultdict(list)
    for run in range(VIEW_RUNS):
        y, _, _, views, mats = _secure(call, x, (tag, run), record=True)
        _check(call, x, y)
        opened = _opened(call, views[0])
        for name, a in _opened(call, views[1]).items():
            np.testing.assert_array_equal(a, opened[name])
        for name, a in opened.items():
            kinds[name].append(a)
        for p, mat in enumerate(mats):
            kinds[f"c|P{p}"].append(opened["c"] - mat.r)
            if "d" in opened:
                kinds[f"d|P{p}"].append(opened["d"] + mat.sigma)
    return {k: np.concatenate(v) for k, v in kinds.items()}


def _full_words(a: np.ndarray) -> np.ndarray:
    """Packed bits of VIEW_RUNS runs without each run's last word (its padding lanes are 0)."""
    return np.concatenate([w[:-1] for w in np.split(a, VIEW_RUNS)])


def _bit_freq(a: np.ndarray) -> np.ndarray:
    return ((a[:, None] >> np.arange(64, dtype=np.uint64)) & U64(1)).mean(axis=0)


def _byte_chi2(a: np.ndarray) -> float:
    counts = np.bincount(a.view(np.uint8), minlength=256)
    expect = counts.sum() / 256
    return float(((counts - expect) ** 2 / expect).sum())


@pytest.mark.parametrize("make", CALLS, ids=IDS)
def test_view_does_not_depend_on_input(make) -> None:
    rng = np.random.default_rng(11)
    call = make(VIEW_N)
    inputs = {
        "zero": np.zeros(VIEW_N, np.int64),
        "max_negative": np.full(VIEW_N, _low(call), np.int64),
        "mixed": rng.integers(_low(call), LIMIT + 1, VIEW_N),
    }
    views = {name: _views(call, x, f"view-{name}-{call!r}") for name, x in inputs.items()}
    freqs = {}
    for name in inputs:
        for kind, a in views[name].items():
            if kind == "e":
                a = _full_words(a)
            sigma = 0.5 / np.sqrt(a.size)
            f = _bit_freq(a)
            assert np.all(np.abs(f - 0.5) < 6 * sigma), (name, kind, f)
            assert _byte_chi2(a) < 255 + 8 * np.sqrt(2 * 255), (name, kind)
            freqs[name, kind] = (f, sigma)
    for kind in views["zero"]:
        (fa, sigma), (fb, _) = freqs["zero", kind], freqs["max_negative", kind]
        assert np.all(np.abs(fa - fb) < 6 * np.sqrt(2) * sigma), kind
    if "e" in views["mixed"]:  # the opened bit never tracks the secret sign lane by lane
        sign = np.tile(bitslice.pack((inputs["mixed"] >= 0).astype(np.uint64), 1)[0], VIEW_RUNS)
        agree = _bit_freq(_full_words(~(views["mixed"]["e"] ^ sign)))
        assert np.all(np.abs(agree - 0.5) < 6 * 0.5 / np.sqrt(sign.size))


@pytest.mark.parametrize("make", CALLS, ids=IDS)
def test_no_message_is_a_plaintext(make) -> None:
    """Neither a received share nor an opened value equals the cleartext it carries."""
    call = make(VIEW_N)
    x = np.random.default_rng(12).integers(_low(call), LIMIT + 1, VIEW_N)
    x[:100] = 0
    y, _, _, views, _ = _secure(call, x, ("plain", repr(call)), record=True)
    opened = _opened(call, views[0])
    xu = x.astype(np.uint64)
    c = opened["c"]
    r = c - xu - U64(BIAS)
    sign = bitslice.pack((x >= 0).astype(np.uint64), 1)[0]
    for msgs in ([g for _, g in views[0]], [g for _, g in views[1]], list(opened.values())):
        flat = [
            np.asarray(a).reshape(-1) for m in msgs for a in (m if isinstance(m, list) else [m])
        ]
        for a in flat:
            if a.size == VIEW_N:  # word-per-element messages: c and d
                for plain in (xu, xu + U64(BIAS), r, y.astype(np.uint64)):
                    assert np.mean(a == plain) < 0.001
            else:  # the packed sign bit
                assert not np.array_equal(a, sign)


# --- exhaustive -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("make", CALLS, ids=IDS)
def test_exhaustive_million(make) -> None:
    rng = np.random.default_rng(1000)
    for chunk in range(10):
        call = make(100_000)
        x = _edge_inputs(call.n, rng, _low(call))
        y, *_ = _secure(call, x, ("slow", repr(call), chunk))
        _check(call, x, y)
