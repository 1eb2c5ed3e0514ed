"""ReLU, optionally with a fused known-MSB truncation, in TWO rounds by function secret sharing
(`costs.relu_fss`): [x] -> [ReLU(trunc(x, shift))] for signed -2^62 + 2^h <= x < 2^62 with
h = min(shift, 61) (all of -2^62 <= x < 2^62 for shift 0), the round-reduced counterpart of
`relu.py` (4 rounds).

Round 1 opens c = x + 2^62 + r (as `sign_fss.py`), and with shift = 0 also d = x - sigma.
Each party then evaluates its key of a DCF with ONE-BIT outputs (`mpcc.runtime.dcf`,
ring=False) on m = 62 - h bits, h = min(shift, 61), at c_hi = (c mod 2^62) >> h, with
alpha = r_hi + 1 for r_hi = (r mod 2^62) >> h, beta = 1 and offset r_62 xor rho, where rho
is a bit only the dealer knows (when r_hi + 1 = 2^m: beta = 0 and the offset takes the 1).
The two evaluations are XOR shares of e = c_62 xor r_62 xor rho xor [c_hi <= r_hi] (P0 adds
the public c_62). With shift 0 (h = 0) the DCF is `sign_fss.py`'s exact [c_hi < r_hi].

Why that is the sign. x + 2^62 = c - r, so x >= 0 iff c_62 xor r_62 xor b, with b the
borrow out of bit 61, b = [c mod 2^62 < r mod 2^62] (`sign_fss.py`). [c_hi <= r_hi] differs
from b only when c_hi = r_hi and the low h bits do not borrow, i.e. when
(x + 2^62) mod 2^62 < 2^h: for 0 <= x < 2^h, and for x < -2^62 + 2^h (hence the range). So
e = t xor rho where t = [x >= 0], except for 0 <= x < 2^h where t = 0. There h <= shift and
the ReLU's value floor(x / 2^shift) is 0: selecting 0 instead of y loses only the rounding
bit u of y = floor(x / 2^shift) + u. Dropping h bits makes the key (62 - h) / 62 as big and
as fast: ~1 KB per element at shift 0, ~0.75 KB at shift 16. This is SIGMA's comparison on
the truncated bits (Gupta et al., PETS 2024) with "<=" for "<", which moves its error from
small negative x (an output of -1) to small positive x (a rounding bit dropped).

Round 2 opens e (one bit per element) and, with a shift, d = y - sigma, where
y = floor(x / 2^shift) + u, u in {0, 1}, is the known-MSB truncation of `truncation.py`
computed locally from c. Then with the daBit [rho] (Rotaru and Wood, INDOCRYPT 2019) and
[rho sigma], as in `relu.py`'s last round:

    t^A = e + (1 - 2e)[rho],    t y = d t^A + e [sigma] + (1 - 2e) [rho sigma].

The result is max(floor(x / 2^shift), 0) + u' with u' in {0, 1} for x >= 0 (error 0 or +1
LSB, never a wrong sign), exactly 0 for every x < 0, and exactly max(x, 0) for shift = 0.
This is SIGMA's and Orca's DReLU-then-select, with the select's mask folded into the DCF's
offset so the sign costs no extra opening.

Material. From party p's seed: r_p, root seeds, sigma_p and, for P0, [rho]_0, [rho sigma]_0
(and [r_hi]_0, [r_63]_0 with a shift). rho is drawn by the dealer from both streams after
everything the parties draw. P1's correction, flat: the DCF's common words (sent to P0 too:
`PROTOCOL.shared_words`, see `sign_fss.py` on why), then [rho]_1 [n], [rho sigma]_1 [n]
(then [r_hi]_1 [n], [r_63]_1 [n]). Online 16 B + 1 bit per element and party.

Time (`benchmarks/fss.py`, n = 10^5, the 2-core dev box (Zen 3, AES-NI and VAES) at load
~2.5): shift 16 (a 46-bit DCF): deal 0.059 s at the dealer, the whole online phase 0.030 s
wall for both parties in two threads, against 0.011 for `relu.py`; a 62-bit
one-bit-output DCF (shift 0) generates in 0.075 s CPU and evaluates in 0.016 s CPU per
party (2.6 ns per element and level; 0.044 through OpenSSL level by level, on CPUs without
AES-NI).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpcc.compiler import calls
from mpcc.runtime import bitslice, dcf
from mpcc.runtime.prg import Prg
from mpcc.runtime.protocols import common, relu, truncation
from mpcc.runtime.protocols.base import Protocol
from mpcc.runtime.protocols.sign_fss import BITS, LOW62, checked_key
from mpcc.runtime.transport import Channel

_ONE = np.uint64(1)
_SIXTY_TWO = np.uint64(BITS)


@dataclass
class ReluFssMaterial:
    """One party's preprocessing for one FSS ReLU over n elements (vectors flat)."""

    n: int
    shift: int
    r: np.ndarray
    root: np.ndarray
    key: np.ndarray
    sigma: np.ndarray
    rho: np.ndarray  # [rho]_p
    rho_sigma: np.ndarray  # [rho sigma]_p
    r_hi: np.ndarray | None = None  # [(r mod 2^63) >> shift]_p (shift > 0)
    r_63: np.ndarray | None = None  # [r_63]_p (shift > 0)
    used: bool = False


def _check_shift(shift: int) -> int:
    shift = int(shift)
    if not 0 <= shift <= 62:
        raise ValueError(f"relu_fss shift must be in 0..62, got {shift}")
    return shift


def _dropped(shift: int) -> int:
    """h: the low bits of c and r the comparison ignores."""
    return min(shift, BITS - 1)


def key_words(n: int, shift: int) -> int:
    """The DCF's common words: the leading part of the correction, which P0 receives too."""
    return dcf.key_words(n, BITS - _dropped(shift), ring=False)


def correction_words(n: int, shift: int) -> int:
    """Length of P1's correction (uint64 words)."""
    return key_words(n, shift) + (4 if shift else 2) * n


def comparison_key(
    r: np.ndarray,
    rho: np.ndarray,
    roots: tuple[np.ndarray, np.ndarray],
    shift: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The one-bit DCF whose evaluations at (c mod 2^62) >> h are XOR shares of
    r_62 ^ rho ^ [c_hi <= r_hi] (h > 0) or r_62 ^ rho ^ [c_hi < r_hi] (h = 0: exact) (module
    docstring); written into `out` if given."""
    h = np.uint64(_dropped(shift))
    m = BITS - int(h)
    r_hi = (r & LOW62) >> h
    if h:
        top = r_hi == np.uint64((1 << m) - 1)  # c_hi <= r_hi always: a constant 1
        alpha = (r_hi + _ONE) & np.uint64((1 << m) - 1)
    else:
        top, alpha = np.zeros(r.shape, bool), r_hi
    beta = (~top).astype(np.uint64)
    gamma = ((r >> _SIXTY_TWO) & _ONE) ^ rho ^ top.astype(np.uint64)
    return dcf.gen(alpha, beta, gamma, roots, m, ring=False, out=out)


def _draw(party: int, n: int, shift: int, prg: Prg) -> dict[str, np.ndarray]:
    """A party's seeded parts, in the one order dealer and party both use."""
    m = {"r": prg.uint64(n), "root": dcf.root_seeds(prg, n), "sigma": prg.uint64(n)}
    if party == 0:
        m["rho"] = prg.uint64(n)
        m["rho_sigma"] = prg.uint64(n)
        if shift:
            m["r_hi"] = prg.uint64(n)
            m["r_63"] = prg.uint64(n)
    return m


def _private(flat: np.ndarray, n: int, shift: int) -> dict[str, np.ndarray]:
    """P1's private correction parts (after the key words) as named views."""
    names = ["rho", "rho_sigma"] + (["r_hi", "r_63"] if shift else [])
    at = key_words(n, shift)
    return {name: flat[at + i * n : at + (i + 1) * n] for i, name in enumerate(names)}


def deal(n: int, shift: int, prg0: Prg, prg1: Prg) -> np.ndarray:
    """Dealer: P1's correction, flat uint64 (`costs.relu_fss(n, shift).dealer` bytes); its
    first `key_words(n, shift)` words go to P0 too."""
    shift = _check_shift(shift)
    m0, m1 = _draw(0, n, shift, prg0), _draw(1, n, shift, prg1)
    rho = bitslice.unpack(prg0.uint64(bitslice.words(n)) ^ prg1.uint64(bitslice.words(n)), n)
    out = np.empty(correction_words(n, shift), dtype=np.uint64)
    r = m0["r"] + m1["r"]
    comparison_key(r, rho, (m0["root"], m1["root"]), shift, out=out[: key_words(n, shift)])
    c = _private(out, n, shift)
    np.subtract(rho, m0["rho"], out=c["rho"])
    np.subtract(rho * (m0["sigma"] + m1["sigma"]), m0["rho_sigma"], out=c["rho_sigma"])
    if shift:
        np.subtract((r & truncation.LOW63) >> np.uint64(shift), m0["r_hi"], out=c["r_hi"])
        np.subtract(r >> truncation.SIXTY_THREE, m0["r_63"], out=c["r_63"])
    return out


def expand(
    party: int, n: int, shift: int, prg: Prg, correction: np.ndarray | None
) -> ReluFssMaterial:
    """Party side: uniform parts from the seed; the key words (both parties) and P1's
    structured shares from the dealer."""
    shift = _check_shift(shift)
    m = _draw(party, n, shift, prg)
    want = correction_words(n, shift) if party == 1 else key_words(n, shift)
    corr = checked_key("relu_fss", party, correction, want)
    m["key"] = corr[: key_words(n, shift)]
    if party == 1:
        m |= _private(corr, n, shift)
    return ReluFssMaterial(n=n, shift=shift, **m)


def run(ch: Channel, party: int, mat: ReluFssMaterial, x: np.ndarray) -> np.ndarray:
    """Online: this party's share of ReLU(trunc(x, shift)), same shape as x (two rounds)."""
    common.consume("relu_fss", mat, "a reused mask leaks the input")
    x = np.asarray(x, dtype=np.uint64)
    if x.size != mat.n:
        raise ValueError(f"relu_fss: input has {x.size} elements, material is for {mat.n}")
    shape, x = x.shape, x.reshape(-1)
    c_share = x + mat.r
    if party == 0:
        c_share += truncation.BIAS
    if mat.shift:  # round 1: c; y from c, d = y - sigma rides in round 2
        (c,) = common.open_shares(ch, [c_share])
        d_share = truncation.output_share(party, c, mat.r_hi, mat.r_63, mat.shift) - mat.sigma
    else:  # round 1: c and d = x - sigma
        c, d = common.open_shares(ch, [c_share, x - mat.sigma])
    h = _dropped(mat.shift)
    z = dcf.evaluate(party, mat.root, mat.key, (c & LOW62) >> np.uint64(h), BITS - h, False)
    if party == 0:
        z ^= (c >> _SIXTY_TWO) & _ONE
    e_share = bitslice.pack(z, 1)[0]
    if mat.shift:
        e_peer, d_peer = ch.exchange([e_share, d_share])
        d = d_share + d_peer
    else:
        (e_peer,) = ch.exchange([e_share])
    e = bitslice.unpack(e_share ^ e_peer, mat.n)
    return relu.select(party, e, d, mat.rho, mat.sigma, mat.rho_sigma).reshape(shape)


PROTOCOL = Protocol(
    call=calls.ReluFss,
    deal=lambda c, prg0, prg1: deal(c.n, c.shift, prg0, prg1),
    expand=lambda party, c, prg, corr: expand(party, c.n, c.shift, prg, corr),
    run=run,
    correction_words=lambda c: correction_words(c.n, c.shift),
    shared_words=lambda c: key_words(c.n, c.shift),
)
