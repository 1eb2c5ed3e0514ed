"""ReLU with fused truncation: exact against cleartext at the edges, traffic == costs.relu,
and each party's view independent of the input.

With shift > 0 the output is max(floor(x / 2^shift), 0) + u where u in {0, 1} and u = 0
whenever x < 0: the error is 0 or +1 LSB (stochastic rounding, P(u = 1) = frac(x / 2^shift)),
never a wrong sign. With shift = 0 the output is exactly max(x, 0).

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
from mpcc.runtime.protocols import relu
from tests.twoparty import run_call

ROOT = bytes(16)
BIAS = 1 << 62
LIMIT = (1 << 62) - 1


def _seed(*label: object) -> bytes:
    return Prg.derive(ROOT, *label).bytes(16).tobytes()


def _secure(x: np.ndarray, shift: int, tag: object, record: bool = False):
    """Deal, expand and run; returns (output as int64, channels, correction, views, material),
    where views[p] lists party p's rounds as (arrays sent, arrays received)."""
    seeds = _seed("p0", tag), _seed("p1", tag)
    y, chans, corr, views, mats = run_call(
        calls.Relu(x.size, shift), x.reshape(-1), seeds, Prg.derive(ROOT, "input", tag), record
    )
    return y.view(np.int64).reshape(x.shape), chans, corr, views, mats


def _check(x: np.ndarray, y: np.ndarray, shift: int) -> None:
    if shift == 0:
        np.testing.assert_array_equal(y, np.maximum(x, 0))
        return
    err = y - np.maximum(x >> shift, 0)  # int64 >> is floor division
    assert np.all((err == 0) | (err == 1)), np.unique(err)
    assert not np.any(err[x < 0]), "negative inputs must give exactly 0"


def _edge_inputs(n: int, rng: np.random.Generator) -> np.ndarray:
    """n signed values with |x| < 2^62 (and -2^62): edges in every lane, uniform, model-like."""
    k = np.arange(62)
    powers = np.concatenate([1 << k, (1 << k) - 1, (1 << k) + 1]).astype(np.int64)
    special = np.array(
        [0, 1, 2, 3, 65535, 65536, 65537, LIMIT, LIMIT - 1, LIMIT - (1 << 40)],
        dtype=np.int64,
    )
    edges = np.concatenate(
        [special, powers[powers <= LIMIT], -powers[powers <= LIMIT], -special, [-(1 << 62)]]
    )
    uniform = rng.integers(-LIMIT, LIMIT + 1, n // 3)
    model = np.round(rng.uniform(-1000, 1000, n // 3) * 2.0**32).astype(np.int64)
    small = rng.integers(-(1 << 20), 1 << 20, n // 6)
    x = np.concatenate([np.resize(edges, n - 2 * (n // 3) - n // 6), uniform, model, small])
    return rng.permutation(x)


@pytest.mark.parametrize("shift", [0, 16])
def test_exact_at_edges(shift: int) -> None:
    rng = np.random.default_rng(shift)
    for chunk in range(2):
        x = _edge_inputs(600_000, rng)
        y, *_ = _secure(x, shift, ("edges", shift, chunk))
        _check(x, y, shift)


@pytest.mark.parametrize("shift", [1, 8, 32, 61, 62])
def test_other_shifts(shift: int) -> None:
    x = _edge_inputs(20_000, np.random.default_rng(100 + shift))
    y, *_ = _secure(x, shift, ("shifts", shift))
    _check(x, y, shift)


def test_truncation_rounds_stochastically() -> None:
    """The +1 LSB happens with probability frac(x / 2^shift): unbiased on average."""
    x = np.round(np.random.default_rng(3).uniform(0, 1000, 400_000) * 2.0**32).astype(np.int64)
    y, *_ = _secure(x, 16, "bias")
    err = y - (x >> 16)
    frac = (x & 0xFFFF) / 2.0**16
    assert abs(err.sum() - frac.sum()) < 6 * np.sqrt(len(x) / 4)


@pytest.mark.parametrize("shape", [(1,), (63,), (64,), (65,), (1000,), (2, 3, 5, 7), (0,)])
@pytest.mark.parametrize("shift", [0, 16])
def test_shapes_and_exact_traffic(shape: tuple[int, ...], shift: int) -> None:
    rng = np.random.default_rng(len(shape))
    x = rng.integers(-LIMIT, LIMIT + 1, shape)
    y, chans, corr, *_ = _secure(x, shift, ("shape", shape, shift))
    assert y.shape == shape
    _check(x, y, shift)
    want = costs.relu(int(np.prod(shape)), shift)
    for ch in chans:
        assert ch.traffic.bytes_sent == want.sent
        assert ch.traffic.bytes_received == want.sent
        assert ch.traffic.rounds == want.rounds
    assert corr.dtype == np.uint64 and corr.ndim == 1 and corr.nbytes == want.dealer


@pytest.mark.parametrize("shift", [0, 16])
def test_dealer_material_is_consistent(shift: int) -> None:
    n = 200
    s0, s1 = _seed("m0"), _seed("m1")
    corr = relu.deal(n, shift, Prg.derive(s0), Prg.derive(s1))
    m0 = relu.expand(0, n, shift, Prg.derive(s0), None)
    m1 = relu.expand(1, n, shift, Prg.derive(s1), corr)
    r = m0.r + m1.r
    np.testing.assert_array_equal(m0.r_bits ^ m1.r_bits, bitslice.pack(r, 63))
    nw = bitslice.words(n)
    # the leaf groups' products of r bits (the tree's local first level)
    want_leaf = bitslice.leaf_monomials(bitslice.pack(r, 63)[:62]).reshape(-1)
    np.testing.assert_array_equal(m0.leaf_mono ^ m1.leaf_mono, want_leaf)
    for g, at_mu, at_mono in relu._levels(nw):  # every monomial is its masks' product
        mu = (m0.mu[at_mu] ^ m1.mu[at_mu]).reshape(g, nw, bitslice.GROUP_WIRES)
        mono = (m0.mono[at_mono] ^ m1.mono[at_mono]).reshape(g, nw, bitslice.GROUP_MONOMIALS)
        for j, wires in enumerate(bitslice._MONOMIALS):
            want = np.bitwise_and.reduce(mu[..., list(wires)], axis=-1)
            np.testing.assert_array_equal(mono[..., j], want)
    rho = bitslice.unpack(m0.rho_bits ^ m1.rho_bits, n)
    np.testing.assert_array_equal(m0.rho + m1.rho, rho)
    np.testing.assert_array_equal(m0.rho_sigma + m1.rho_sigma, rho * (m0.sigma + m1.sigma))
    assert 0.3 < rho.mean() < 0.7
    if shift:
        np.testing.assert_array_equal(
            m0.r_hi + m1.r_hi, (r & np.uint64(2**63 - 1)) >> np.uint64(16)
        )
        np.testing.assert_array_equal(m0.r_63 + m1.r_63, r >> np.uint64(63))
    else:
        assert m0.r_hi is None and m1.r_hi is None


def test_material_misuse_raises() -> None:
    s0, s1 = _seed("x0"), _seed("x1")
    corr = relu.deal(10, 0, Prg.derive(s0), Prg.derive(s1))
    with pytest.raises(MaterialError):
        relu.expand(1, 10, 0, Prg.derive(s1), corr[:-1])
    with pytest.raises(MaterialError):
        relu.expand(0, 10, 0, Prg.derive(s0), corr)
    with pytest.raises(ValueError):
        relu.deal(10, 63, Prg.derive(s0), Prg.derive(s1))
    mat = relu.expand(0, 10, 0, Prg.derive(s0), None)
    mat.used = True
    with pytest.raises(MaterialError, match="already used"):
        relu.run(None, 0, mat, np.zeros(10, np.uint64))  # type: ignore[arg-type]
    mat = relu.expand(0, 10, 0, Prg.derive(s0), None)
    with pytest.raises(ValueError, match="elements"):
        relu.run(None, 0, mat, np.zeros(11, np.uint64))  # type: ignore[arg-type]


# --- the parties' views ---------------------------------------------------------------------

VIEW_N = 4000  # not a multiple of 64: padding lanes are in the view too
VIEW_RUNS = 40


def _opened(rounds: list[tuple[list[np.ndarray], list[np.ndarray]]]) -> list[list[np.ndarray]]:
    """The values a party learns each round: its own share combined with the peer's."""
    assert [len(sent) for sent, _ in rounds] == [1, 2, 1, 1]
    out = []
    for i, (sent, got) in enumerate(rounds):
        arith = [i == 0] if i != 1 else [False, True]  # c and d_sel are additive
        out.append([a + b if ar else a ^ b for a, b, ar in zip(sent, got, arith, strict=True)])
    return out


def _views(x: np.ndarray, shift: int, tag: str) -> dict[str, np.ndarray]:
    """What the parties learn over VIEW_RUNS runs, by kind, flat: the opened values (the same
    for both), and each opened value with party p's own share of its mask removed ("|Pp")."""
    kinds: dict[str, list[np.ndarray]] = defaultdict(list)
    for run in range(VIEW_RUNS):
        y, _, _, views, mats = _secure(x, shift, (tag, run), record=True)
        _check(x, y, shift)
        opened = _opened(views[0])
        for a, b in zip(opened, _opened(views[1]), strict=True):
            for u, v in zip(a, b, strict=True):
                np.testing.assert_array_equal(u, v)
        kinds["c"].append(opened[0][0])
        kinds["d_sel"].append(opened[1][1])
        kinds["wire"] += [m[0].reshape(-1) for m in opened[1:3]]
        kinds["e"].append(opened[3][0])
        for p, mat in enumerate(mats):
            kinds[f"c|P{p}"].append(opened[0][0] - mat.r)
            kinds[f"d_sel|P{p}"].append(opened[1][1] + mat.sigma)
            mu = np.concatenate([m[0].reshape(-1) for m in opened[1:3]])
            kinds[f"wire|P{p}"].append(mu ^ mat.mu)  # the opened wires less P_p's mask share
            kinds[f"e|P{p}"].append(opened[3][0] ^ mat.rho_bits)
    return {k: np.concatenate(v) for k, v in kinds.items()}


def _bit_freq(a: np.ndarray) -> np.ndarray:
    return ((a[:, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).mean(axis=0)


def _byte_chi2(a: np.ndarray) -> float:
    counts = np.bincount(a.view(np.uint8), minlength=256)
    expect = counts.sum() / 256
    return float(((counts - expect) ** 2 / expect).sum())


@pytest.mark.parametrize("shift", [0, 16])
def test_view_does_not_depend_on_input(shift: int) -> None:
    rng = np.random.default_rng(11)
    inputs = {
        "zero": np.zeros(VIEW_N, np.int64),
        "max_negative": np.full(VIEW_N, -LIMIT, np.int64),
        "mixed": rng.integers(-LIMIT, LIMIT + 1, VIEW_N),
    }
    views = {name: _views(x, shift, f"view-{name}-{shift}") for name, x in inputs.items()}
    freqs = {}
    for name in inputs:
        for kind, a in views[name].items():
            sigma = 0.5 / np.sqrt(a.size)
            f = _bit_freq(a)
            assert np.all(np.abs(f - 0.5) < 6 * sigma), (name, kind, f)
            assert _byte_chi2(a) < 255 + 8 * np.sqrt(2 * 255), (name, kind)
            freqs[name, kind] = (f, sigma)
    for kind in views["zero"]:
        (fa, sigma), (fb, _) = freqs["zero", kind], freqs["max_negative", kind]
        assert np.all(np.abs(fa - fb) < 6 * np.sqrt(2) * sigma), kind
    # Opened bits never track the secret sign bit lane by lane.
    sign = np.tile(bitslice.pack((inputs["mixed"] >= 0).astype(np.uint64), 1)[0], VIEW_RUNS)
    agree = _bit_freq(~(views["mixed"]["e"] ^ sign))
    assert np.all(np.abs(agree - 0.5) < 6 * 0.5 / np.sqrt(sign.size))


def test_no_message_is_a_plaintext() -> None:
    """Neither a received share nor an opened value equals the cleartext it carries."""
    x = np.random.default_rng(12).integers(-LIMIT, LIMIT + 1, VIEW_N)
    x[:100] = 0
    shift = 16
    _, _, _, views, _ = _secure(x, shift, "plain", record=True)
    received = [[got for _, got in views[p]] for p in (0, 1)]
    opened = _opened(views[0])
    c = opened[0][0]
    r = c - x.astype(np.uint64) - np.uint64(BIAS)
    # The tree's wires in the clear, through the same kernels with zero masks (the first
    # level is local: P0 alone with r's bits and their products gives its values).
    c_bits, r_bits = bitslice.pack(c, 63), bitslice.pack(r, 63)
    leaf = bitslice.leaf_monomials(r_bits[:62])
    lt, eq = bitslice.leaf_level(0, c_bits[:62], r_bits[:62], leaf)
    plain_and = []
    for g in relu.TREE_GROUPS[1:]:
        zero = np.zeros((g, lt.shape[1], bitslice.GROUP_WIRES), np.uint64)
        wires = bitslice.group_open(0, lt, eq, zero)
        plain_and.append(wires)
        mono = np.zeros((*zero.shape[:2], bitslice.GROUP_MONOMIALS), np.uint64)
        lt, eq = bitslice.group_close(0, lt, wires, zero, mono)
    low = np.uint64(2**62 - 1)
    beta = bitslice.unpack(lt[0], VIEW_N)
    np.testing.assert_array_equal(beta, ((c & low) < (r & low)).astype(np.uint64))
    xu = x.astype(np.uint64)
    y_floor = (x >> shift).astype(np.uint64)
    sign = bitslice.pack((x >= 0).astype(np.uint64), 1)[0]
    for msgs in (*received, opened):
        for plain in (xu, xu + np.uint64(BIAS), r):
            assert not np.any(msgs[0][0] == plain)
        for plain in (y_floor, y_floor + np.uint64(1), xu):
            assert not np.any(msgs[1][1] == plain)
        for level, plain in enumerate(plain_and):
            assert not np.any(msgs[1 + level][0] == plain)
        assert not np.any(msgs[3][0] == sign)


@pytest.mark.slow
@pytest.mark.parametrize("shift", [0, 16])
def test_exhaustive_ten_million(shift: int) -> None:
    rng = np.random.default_rng(1000 + shift)
    for chunk in range(10):
        x = _edge_inputs(1_000_000, rng)
        y, *_ = _secure(x, shift, ("slow", shift, chunk))
        _check(x, y, shift)
