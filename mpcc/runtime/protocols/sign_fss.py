"""The comparison bit [x >= 0] as arithmetic 0/1 shares in ONE round, for signed |x| < 2^62,
by function secret sharing (`costs.sign_fss`): the round-reduced counterpart of `sign.py`
(4 rounds), for links where a round costs more than ~1.5 KB of dealer material per element.

Signed comparison by a DCF on the biased input (BCG+21 Sec. 4's "DReLU" on the low n - 1 bits,
as in LLAMA and SIGMA; the known-MSB bias of `truncation.py`). The dealer draws
r = r_0 + r_1 (each r_p from party p's seed) and gives both parties the keys of one DCF
(`mpcc.runtime.dcf`) with

    alpha = r mod 2^62,  beta = 1 - 2 r_62,  gamma = r_62   (64-bit outputs),

so the two evaluations at a point c' add up to z = r_62 xor [c' < alpha]. Online the parties
open c = x + 2^62 + r (one round, P0 adds the bias) and evaluate their key at
c' = c mod 2^62, locally. x' = x + 2^62 lies in [0, 2^63), so x >= 0 iff bit 62 of x' =
c - r is set, and that bit is c_62 xor r_62 xor [c' < r mod 2^62] (the borrow out of the low
62 bits) = c_62 xor z. With c_62 public:

    [x >= 0] = c_62 + (1 - 2 c_62) [z]          (P0 adds c_62).

Exact for every -2^62 <= x < 2^62: no failure probability, no truncation of the comparison.
The opened c is uniform whatever x is (r is), and each key alone is pseudorandom (BCG+21
Thm. 3.3), so a party's view is simulatable.

Dealer material: who gets what. The DCF's correction words depend on both parties' root
seeds and on alpha, so neither party can expand them from its own seed, yet both need them.
Each party's root seed and its share r_p come from its seed stream (as all uniform material
does in mpcc); the correction words, common to both keys, are the whole of P1's correction,
and `PROTOCOL.shared_words` says the dealer sends them to P0 too: that is the one extension
of the protocol abstraction FSS needs (P0 otherwise receives nothing after its seed). The
alternatives cost more: P1 forwarding the words to P0 would put ~1.5 KB per element on the
online link; fully separate keys would double the dealer's words for no security gain. The
cost model prices the P1 copy in `Cost.dealer` and the P0 copy in `calls.SignFss.dealer_p0`.

Sizes (`dcf.key_words` with m = 62): 62 (3n + 2 ceil(n/64)) + n words, ~1,512 B per element
to each party; online 8 B per element and party, one round. Time (`benchmarks/fss.py`,
n = 10^5, the 2-core dev box (Zen 3, AES-NI and VAES) at load ~2.5, CPU seconds): key
generation 0.10 at the dealer, evaluation 0.031 per party (4.9 ns per element and level;
0.07-0.09 through OpenSSL level by level, on CPUs without AES-NI), the whole online phase
0.074 wall for both parties in two threads -- against 0.006 for `sign.py` (then 5 rounds).
So FSS pays where the saved one-way delays outweigh ~0.7 us of online time per element: with
`sign.py` at 4 rounds now, 3 delays, on this box a layer of up to ~21,000 elements at 10 ms
RTT, at ~60x the dealer bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpcc.compiler import calls
from mpcc.errors import MaterialError
from mpcc.runtime import dcf
from mpcc.runtime.prg import Prg
from mpcc.runtime.protocols import common, truncation
from mpcc.runtime.protocols.base import Protocol
from mpcc.runtime.transport import Channel

BITS = 62  # the DCF compares the low 62 bits; bit 62 gives the sign
LOW62 = np.uint64((1 << BITS) - 1)
_ONE = np.uint64(1)
_SIXTY_TWO = np.uint64(BITS)


@dataclass
class SignFssMaterial:
    """One party's preprocessing: [r]_p, its root seeds [n, 2] and the common key words."""

    n: int
    r: np.ndarray
    root: np.ndarray
    key: np.ndarray
    used: bool = False


def correction_words(n: int) -> int:
    """Length of the dealer's output (all of it common: both parties receive it)."""
    return dcf.key_words(n, BITS, ring=True)


def _draw(n: int, prg: Prg) -> tuple[np.ndarray, np.ndarray]:
    """A party's seeded parts, in the one order dealer and party both use: r_p, root seeds."""
    r = prg.uint64(n)
    return r, dcf.root_seeds(prg, n)


def comparison_key(r: np.ndarray, roots: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The DCF whose two evaluations at c mod 2^62 add up to r_62 xor [c mod 2^62 < r mod 2^62]:
    the sign of x from c = x + 2^62 + r (64-bit outputs)."""
    r62 = (r >> _SIXTY_TWO) & _ONE
    return dcf.gen(r & LOW62, _ONE - (r62 << _ONE), r62, roots, BITS, ring=True)


def deal(n: int, prg0: Prg, prg1: Prg) -> np.ndarray:
    """Dealer: the common DCF key words (`costs.sign_fss(n).dealer` bytes), for P1 and P0."""
    r0, root0 = _draw(n, prg0)
    r1, root1 = _draw(n, prg1)
    return comparison_key(r0 + r1, (root0, root1))


def checked_key(protocol: str, party: int, correction: np.ndarray | None, words: int) -> np.ndarray:
    """The dealer's words a party of an FSS protocol must hold (both parties), checked. An
    empty call has none, and the runtime hands P0 nothing then (no shared words)."""
    if correction is None and words == 0:
        return np.empty(0, dtype=np.uint64)
    if correction is None or correction.size != words:
        got = None if correction is None else correction.size
        raise MaterialError(f"{protocol}: P{party} needs {words} key words, got {got}")
    return np.asarray(correction, dtype=np.uint64).reshape(-1)


def expand(party: int, n: int, prg: Prg, correction: np.ndarray | None) -> SignFssMaterial:
    """Party side: r_p and the root seeds from the seed, the common words from the dealer."""
    r, root = _draw(n, prg)
    key = checked_key("sign_fss", party, correction, correction_words(n))
    return SignFssMaterial(n=n, r=r, root=root, key=key)


def sign_share(party: int, c: np.ndarray, root: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Local: party's arithmetic share of [x >= 0] from the opened c = x + 2^62 + r."""
    c62 = (c >> _SIXTY_TWO) & _ONE
    z = dcf.evaluate(party, root, key, c & LOW62, BITS, ring=True)
    out = (_ONE - (c62 << _ONE)) * z
    if party == 0:
        out += c62
    return out


def run(ch: Channel, party: int, mat: SignFssMaterial, x: np.ndarray) -> np.ndarray:
    """Online: this party's arithmetic share of [x >= 0], same shape as x (one round)."""
    common.consume("sign_fss", mat, "a reused mask leaks the input")
    x = np.asarray(x, dtype=np.uint64)
    if x.size != mat.n:
        raise ValueError(f"sign_fss: input has {x.size} elements, material is for {mat.n}")
    c = truncation.open_biased(ch, party, x.reshape(-1), mat.r)
    return sign_share(party, c, mat.root, mat.key).reshape(x.shape)


PROTOCOL = Protocol(
    call=calls.SignFss,
    deal=lambda c, prg0, prg1: deal(c.n, prg0, prg1),
    expand=lambda party, c, prg, corr: expand(party, c.n, prg, corr),
    run=run,
    correction_words=lambda c: correction_words(c.n),
    shared_words=lambda c: correction_words(c.n),
)
