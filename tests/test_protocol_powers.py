"""Powers of a secret with every wire opened once (masked-wire products fused with the
known-MSB truncation)."""

from __future__ import annotations

import numpy as np
import pytest

from mpcc.compiler.calls import Powers, power_levels
from mpcc.errors import MaterialError
from mpcc.runtime.fixedpoint import arith_shift
from mpcc.runtime.prg import Prg, share
from mpcc.runtime.protocols import powers
from mpcc.runtime.transport import ChannelObserver
from tests.twoparty import run_parties

SEED0, SEED1 = b"P0 session seed!", b"P1 session seed!"


class _Received(ChannelObserver):
    def __init__(self) -> None:
        self.words: list[np.ndarray] = []

    def received(self, channel, arrays, waited_s) -> None:
        self.words += [np.asarray(a).reshape(-1).view(np.uint64).copy() for a in arrays]


def secure_powers(x: np.ndarray, call: Powers, q: int = 0):
    """Deal, expand and run one call; returns (y [n, k], correction, materials, channels,
    what P1 received)."""
    prgs = lambda: [Prg.derive(s, "sess", q, 3) for s in (SEED0, SEED1)]  # noqa: E731
    corr = powers.deal(call, *prgs())
    p0, p1 = prgs()
    mats = [powers.expand(0, call, p0, None), powers.expand(1, call, p1, corr)]
    xs = share(x, Prg.derive(b"client seed 0000", "x", q))
    seen = _Received()

    def body(ch, p):
        if p == 1:
            ch.observers.append(seen)
        return powers.run(ch, p, mats[p], xs[p])

    y0, y1, chans = run_parties(body)
    return y0 + y1, corr, mats, chans, np.concatenate(seen.words)


def plain_chain(x: np.ndarray, call: Powers) -> np.ndarray:
    """The exact (floor) evaluation the cleartext interpreter does."""
    pw = {1: arith_shift(x, call.shift)}
    for level in power_levels(call.exponents):
        for e, hi, lo in level:
            pw[e] = arith_shift(pw[hi] * pw[lo], call.scale)
    return np.stack([pw[e] for e in call.exponents], axis=-1)


def test_the_schedule_is_the_doubling_chain() -> None:
    assert power_levels((1, 2, 3, 4, 5, 6, 7)) == [
        [(2, 1, 1)],
        [(3, 2, 1), (4, 2, 2)],
        [(5, 4, 1), (6, 4, 2), (7, 4, 3)],
    ]
    assert power_levels((16,)) == [[(2, 1, 1)], [(4, 2, 2)], [(8, 4, 4)], [(16, 8, 8)]]


@pytest.mark.parametrize(
    "exponents,shift",
    [((1, 2, 3, 4, 5, 6, 7), 1), ((1, 2, 3, 4), 3), ((16,), 20), ((2,), 1), ((1,), 5)],
)
def test_powers_match_floats_within_lsbs_and_are_priced(exponents, shift) -> None:
    scale, n = 20, 20_000
    rng = np.random.default_rng(len(exponents) + shift)
    t = rng.uniform(-1, 1, n)
    t[:6] = [-1.0, 1.0, 0.0, -(2.0**-20), 2.0**-20, 0.5]
    if exponents == (16,):
        t = np.abs(t)  # a squaring chain of a value in [0, 1] (exp's range reduction)
    # x carries `shift` more bits than t, so its low bits exercise the input truncation
    x = np.round(t * 2.0 ** (scale + shift)).astype(np.int64).view(np.uint64)
    call = Powers(n, shift, scale, tuple(exponents))
    y, corr, _, chans, _ = secure_powers(x, call)
    assert y.shape == (n, len(exponents))
    got = y.view(np.int64) / 2.0**scale
    want = np.stack([t**e for e in exponents], axis=-1)
    # each wire may read 1 LSB high; the errors grow at most ~e-fold along the chain
    lsb = 2.0**-scale
    for k, e in enumerate(exponents):
        assert np.abs(got[:, k] - want[:, k]).max() <= (2 * e + 1) * lsb, e
    # and the secure result is the exact chain up to those LSBs, never below it by more
    exact = plain_chain(x, call).view(np.int64)
    assert (y.view(np.int64) - exact).min() >= -(2 * max(exponents)) * 2
    cost = call.cost()
    assert 8 * corr.size == cost.dealer == 8 * powers.correction_words(call)
    for ch in chans:
        assert (ch.traffic.bytes_sent, ch.traffic.rounds) == (cost.sent, cost.rounds)


def test_degree_seven_costs_what_the_docstring_says() -> None:
    cost = Powers(1, 1, 20, (1, 2, 3, 4, 5, 6, 7)).cost()
    assert (cost.rounds, cost.sent) == (4, 56)  # 1 + 3 levels; 7 wires of 8 bytes


def test_what_p1_receives_is_uniform_whatever_the_input() -> None:
    n, call = 4096, Powers(4096, 1, 20, (1, 2, 3, 4, 5, 6, 7))
    for x in (np.zeros(n, np.uint64), np.full(n, 1 << 20, np.uint64)):
        *_, seen = secure_powers(x, call)
        assert seen.size == 7 * n
        counts = np.bincount(seen.view(np.uint8), minlength=256)
        expect = counts.sum() / 256
        chi2 = float(((counts - expect) ** 2 / expect).sum())
        assert chi2 < 350, chi2  # 255 degrees of freedom: p ~ 1e-4
        assert not np.isin(np.uint64(1 << 20), seen)


def test_powers_material_is_used_once() -> None:
    call = Powers(5, 1, 20, (1, 2))
    x = np.arange(5, dtype=np.uint64)
    _, _, mats, _, _ = secure_powers(x, call)
    with pytest.raises(MaterialError, match="already used"):
        powers.run(None, 0, mats[0], x)


def test_powers_p1_needs_its_correction() -> None:
    with pytest.raises(MaterialError, match="correction words"):
        powers.expand(1, Powers(4, 1, 20, (1, 2)), Prg.derive(SEED1, "sess", 0, 3), None)
