"""ReLU, optionally with a fused known-MSB truncation: [x] -> [ReLU(trunc(x, shift))], for
signed |x| < 2^62, in 4 rounds (`costs.relu`).

Round 1 opens c = x + 2^62 + r (P0 adds the bias); x' = x + 2^62 lies in [0, 2^63).
  - shift > 0: y = ((c mod 2^63) >> shift) - [r_hi] + [b] 2^(63-shift) - 2^(62-shift) with
    [b] = c_63 + [r_63] - 2 c_63 [r_63] (the known-MSB truncation of `truncation.py`):
    y = floor(x / 2^shift) + u, u in {0, 1}, P(u = 1) = (x mod 2^shift) / 2^shift.
  - shift = 0: y = x.
Rounds 2..3 compute beta = [c mod 2^62 < r mod 2^62] with a bit-sliced tree over bits 0..61
of c (public) and r (XOR-shared by the dealer): leaves lt_i = ~c_i & r_i, eq_i = ~(c_i ^ r_i);
four nodes join into a parent, lt = l3 ^ e3 l2 ^ e3 e2 l1 ^ e3 e2 e1 l0, eq = e0 e1 e2 e3,
so 62 -> 16 -> 4 -> 1 in three levels (the pairwise tree takes six). The first level costs
no round: with a_i = ~c_i public, lt_i = a_i r_i and eq_i = a_i ^ r_i, so each of its
products is a sum of public words times products of a group's r bits, and the dealer shares
those products (`bitslice.leaf_level`). A later level's products of up to four shared bits
cost one round, by masked wires with multi-fan-in AND gates from
the dealer (as in ABY2.0, Patra et al., USENIX Security 2021, and the dealer's monomials of
Ohata and Nuida's multi-input ANDs, FC 2020): each party draws XOR shares of a random mask
m_i per wire, the level opens o_i = w_i ^ m_i (7 wires a group), and with the dealer's
shares of every product of two or more masks a product is local,

    prod_S w_i = XOR over T <= S of (prod_{S-T} o_i) & (prod_T m_i)

(`bitslice.group_close`). Round 2 also opens d = y - sigma. Then t = c_62 ^ r_62 ^ beta is
bit 62 of x' = c - r, i.e. 1 iff x >= 0. Round 4 opens e = t ^ rho (daBit rho) and sets
t^A = e + (1 - 2e)[rho],

    t y = d t^A + e [sigma] + (1 - 2e) [rho sigma].

So the output is max(floor(x / 2^shift), 0), plus u for x >= 0 (error 0 or +1 LSB, never a
wrong sign); exactly max(x, 0) for shift = 0.

Material (drawn from each party's prg in the order of `_draw`): r; P0's XOR shares of bits
0..62 of r and of the leaf groups' products of r bits; the wires' masks mu (both seeds) and
P0's shares of their monomials; the daBit <rho> (both seeds) and P0's [rho]; sigma (both
seeds) and P0's [rho sigma]; with a shift P0's [r_hi], [r_63]. P1's shares of the structured
values are the dealer's correction, flat, in order: r bits [63, words], leaf products [176
words], monomials [110 words], [rho] [n], [rho sigma] [n], then [r_hi] [n], [r_63] [n].

Padding lanes (beyond n in the last word) carry c = 0 and r bits = 0: a consistent virtual
element, and padding nodes (beyond a level's, at the top of its last group) are lt = 0,
eq = 1: they leave their parent as it would be without them. Every word kernel is
lane-wise, every opened wire is masked by a fresh m_i, and unpacking drops the padding
lanes, so they neither leak nor disturb the real lanes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpcc.compiler import calls
from mpcc.runtime import bitslice
from mpcc.runtime.prg import Prg
from mpcc.runtime.protocols import common, truncation
from mpcc.runtime.protocols.base import Protocol
from mpcc.runtime.protocols.truncation import LOW63, SIXTY_THREE
from mpcc.runtime.transport import Channel

COMPARE_BITS = 62  # the tree compares bits 0..61; bit 62 gives the sign
MASK_BITS = COMPARE_BITS + 1  # bits 0..62 of r are XOR-shared
TREE_GROUPS = bitslice.tree_groups(COMPARE_BITS)  # (16, 4, 1); the first level is local
LEAF_MONOMIALS = bitslice.LEAF_MONOMIALS * TREE_GROUPS[0]  # 176 dealer words per packed word
WIRES = bitslice.GROUP_WIRES * sum(TREE_GROUPS[1:])  # 35 masked wires per packed word
MONOMIALS = bitslice.GROUP_MONOMIALS * sum(TREE_GROUPS[1:])  # 110 dealer words per packed word

_ONE = np.uint64(1)


@dataclass
class ReluMaterial:
    """One party's preprocessing for one ReLU over n elements (vectors flat, planes [k, words])."""

    n: int
    shift: int
    r: np.ndarray  # [r]_p, n
    r_bits: np.ndarray  # <bits 0..62 of r>_p, [63, words]
    leaf_mono: np.ndarray  # <products of 2+ of each leaf group's r bits>_p, 176 words per word
    mu: np.ndarray  # <the tree's wire masks>_p, 35 words per packed word (`_levels`)
    mono: np.ndarray  # <their monomials>_p, 110 words per packed word
    rho_bits: np.ndarray  # <rho>_p, [words]
    rho: np.ndarray  # [rho]_p, n
    sigma: np.ndarray  # [sigma]_p, n
    rho_sigma: np.ndarray  # [rho sigma]_p, n
    r_hi: np.ndarray | None = None  # [(r mod 2^63) >> shift]_p, n (shift > 0)
    r_63: np.ndarray | None = None  # [r_63]_p, n (shift > 0)
    used: bool = False


def _size(n: int | Sequence[int]) -> int:
    return int(n) if np.isscalar(n) else math.prod(int(d) for d in n)


def _check_shift(shift: int) -> int:
    shift = int(shift)
    if not 0 <= shift <= 62:
        raise ValueError(f"relu shift must be in 0..62, got {shift}")
    return shift


def correction_words(n: int, shift: int) -> int:
    """Length of P1's correction (uint64 words)."""
    return (MASK_BITS + LEAF_MONOMIALS + MONOMIALS) * bitslice.words(n) + (4 if shift else 2) * n


def _levels(nw: int):
    """Per tree level after the first (which is local): its groups and the slices of the flat
    mu and mono that are its [groups, nw, 7] masks and [groups, nw, 22] monomials."""
    at_mu = at_mono = 0
    for g in TREE_GROUPS[1:]:
        n_mu, n_mono = g * nw * bitslice.GROUP_WIRES, g * nw * bitslice.GROUP_MONOMIALS
        yield g, slice(at_mu, at_mu + n_mu), slice(at_mono, at_mono + n_mono)
        at_mu, at_mono = at_mu + n_mu, at_mono + n_mono


def draw_tree(party: int, n: int, prg: Prg) -> dict[str, np.ndarray]:
    """The seeded parts of the comparison tree for n elements (the mask r and its bits, the
    leaf products, the wire masks and their monomials), in the one order dealer and party
    both use."""
    nw = bitslice.words(n)
    p0 = party == 0
    m = {"r": prg.uint64(n)}
    if p0:
        m["r_bits"] = prg.uint64(MASK_BITS, nw)
        m["leaf_mono"] = prg.uint64(LEAF_MONOMIALS * nw)
    m["mu"] = prg.uint64(WIRES * nw)
    if p0:
        m["mono"] = prg.uint64(MONOMIALS * nw)
    return m


def draw_compare(party: int, n: int, prg: Prg) -> dict[str, np.ndarray]:
    """The seeded parts of the comparison (the tree's, then the bit rho), in the one order
    dealer and party both use; the sign protocol's whole draw."""
    m = draw_tree(party, n, prg)
    m["rho_bits"] = prg.uint64(bitslice.words(n))
    if party == 0:
        m["rho"] = prg.uint64(n)
    return m


def _draw(party: int, n: int, shift: int, prg: Prg) -> dict[str, np.ndarray]:
    """The seeded parts of party's material, in the one order dealer and party both use:
    the comparison's, then the select's (and the truncation's)."""
    p0 = party == 0
    m = draw_compare(party, n, prg)
    m["sigma"] = prg.uint64(n)
    if p0:
        m["rho_sigma"] = prg.uint64(n)
        if shift:
            m["r_hi"] = prg.uint64(n)
            m["r_63"] = prg.uint64(n)
    return m


def _correction_layout(n: int, shift: int) -> dict[str, tuple[int, ...]]:
    """The shapes of P1's correction parts, in the order they lie in it."""
    nw = bitslice.words(n)
    shapes = {
        "r_bits": (MASK_BITS, nw),
        "leaf_mono": (LEAF_MONOMIALS * nw,),
        "mono": (MONOMIALS * nw,),
        "rho": (n,),
        "rho_sigma": (n,),
    }
    if shift:
        shapes |= {"r_hi": (n,), "r_63": (n,)}
    return shapes


def _split(flat: np.ndarray, n: int, shift: int) -> dict[str, np.ndarray]:
    """P1's correction as named views of its parts."""
    parts, at = {}, 0
    for name, shape in _correction_layout(n, shift).items():
        size = math.prod(shape)
        parts[name] = flat[at : at + size].reshape(shape)
        at += size
    return parts


def deal_tree(n: int, prg0: Prg, prg1: Prg, c: dict[str, np.ndarray]) -> np.ndarray:
    """Dealer: the comparison tree's parts of P1's correction (`c`'s "r_bits", "leaf_mono",
    "mono" views), drawing both streams in `draw_tree`'s order; returns r."""
    nw = bitslice.words(n)
    r = prg0.uint64(n)  # P0: r, its bits, the leaf monomials, mu, the monomials; P1: r, mu
    r += prg1.uint64(n)
    r_bits = bitslice.pack(r, MASK_BITS)
    np.bitwise_xor(r_bits, prg0.uint64(MASK_BITS, nw), out=c["r_bits"])
    leaf = prg0.fill(c["leaf_mono"])
    leaf ^= bitslice.leaf_monomials(r_bits[:COMPARE_BITS]).reshape(-1)
    mu = prg0.uint64(WIRES * nw)
    mu ^= prg1.uint64(WIRES * nw)
    mono = prg0.fill(c["mono"])
    for g, at_mu, at_mono in _levels(nw):
        full = bitslice.monomials(mu[at_mu].reshape(g, nw, bitslice.GROUP_WIRES))
        mono[at_mono] ^= full.reshape(-1)  # the monomials, less P0's share
    return r


def deal_compare(
    n: int, prg0: Prg, prg1: Prg, c: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Dealer: the comparison's parts of P1's correction (`c`'s "r_bits", "leaf_mono",
    "mono", "rho" views), drawing both streams in `draw_compare`'s order; returns r and rho
    (0/1)."""
    nw = bitslice.words(n)
    r = deal_tree(n, prg0, prg1, c)
    rho = bitslice.unpack(prg0.uint64(nw) ^ prg1.uint64(nw), n)  # both: rho_bits
    np.subtract(rho, prg0.fill(c["rho"]), out=c["rho"])  # P0: [rho]
    return r, rho


def deal(n: int | Sequence[int], shift: int, prg0: Prg, prg1: Prg) -> np.ndarray:
    """Dealer: P1's correction, flat uint64 (`costs.relu(n, shift).dealer` bytes).

    Each party's stream is drawn in `_draw`'s order, a part at a time, and each correction
    part is written into its place in the output as soon as it is known: a big layer's call
    holds a few arrays of its size, not both parties' whole material."""
    n, shift = _size(n), _check_shift(shift)
    out = np.empty(correction_words(n, shift), dtype=np.uint64)
    c = _split(out, n, shift)
    r, rho = deal_compare(n, prg0, prg1, c)
    sigma = prg0.uint64(n)  # P0: sigma, then [rho sigma]; P1: sigma
    sigma += prg1.uint64(n)
    rho *= sigma
    np.subtract(rho, prg0.fill(c["rho_sigma"]), out=c["rho_sigma"])
    if shift:  # P0: [r_hi], [r_63]
        np.subtract((r & LOW63) >> np.uint64(shift), prg0.fill(c["r_hi"]), out=c["r_hi"])
        np.subtract(r >> SIXTY_THREE, prg0.fill(c["r_63"]), out=c["r_63"])
    return out


def expand(
    party: int, n: int | Sequence[int], shift: int, prg: Prg, correction: np.ndarray | None
) -> ReluMaterial:
    """Party side: everything from the seed (P0), or uniform parts from the seed and the
    structured shares from the dealer's correction (P1)."""
    n, shift = _size(n), _check_shift(shift)
    m = _draw(party, n, shift, prg)
    corr = common.checked_correction("relu", party, correction, correction_words(n, shift))
    if corr is not None:
        m |= _split(corr, n, shift)
    return ReluMaterial(n=n, shift=shift, **m)


def _open_masked(
    ch: Channel, party: int, mat: ReluMaterial, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Round 1: open c = x + 2^62 + r; returns c and this party's share of y."""
    c = truncation.open_biased(ch, party, x, mat.r)
    if mat.shift:
        return c, truncation.output_share(party, c, mat.r_hi, mat.r_63, mat.shift)
    return c, x


def nonneg(
    ch: Channel, party: int, mat: Any, c: np.ndarray, extra: list[np.ndarray]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Rounds 2..3: XOR shares of t = [x >= 0] (packed, [words]) from the opened
    c = x + 2^62 + r and the tree's material (`mat.r_bits`, `.leaf_mono`, `.mu`, `.mono`, as
    `draw_tree` names them); `extra` rides in round 2 and the peer's counterpart is
    returned."""
    c_bits = bitslice.pack(c, MASK_BITS)
    nw = c_bits.shape[1]
    leaf_mono = mat.leaf_mono.reshape(TREE_GROUPS[0], nw, bitslice.LEAF_MONOMIALS)
    lt, eq = bitslice.leaf_level(party, c_bits[:COMPARE_BITS], mat.r_bits[:COMPARE_BITS], leaf_mono)
    peer_extra: list[np.ndarray] = []
    for level, (g, at_mu, at_mono) in enumerate(_levels(nw)):
        mu = mat.mu[at_mu].reshape(g, nw, bitslice.GROUP_WIRES)
        mine = bitslice.group_open(party, lt, eq, mu)
        got = ch.exchange([mine, *extra] if level == 0 else [mine])
        if level == 0:
            peer_extra = got[1:]
        mono = mat.mono[at_mono].reshape(g, nw, bitslice.GROUP_MONOMIALS)
        lt, eq = bitslice.group_close(party, lt, mine ^ got[0], mu, mono)
    assert lt.shape[0] == 1
    t = lt[0] ^ mat.r_bits[COMPARE_BITS]
    if party == 0:
        t ^= c_bits[COMPARE_BITS]
    return t, peer_extra


def run(ch: Channel, party: int, mat: ReluMaterial, x: np.ndarray) -> np.ndarray:
    """Online: this party's share of ReLU(trunc(x, shift)), same shape as x (4 rounds)."""
    common.consume("relu", mat, "a reused mask leaks the input")
    x = np.asarray(x, dtype=np.uint64)
    if x.size != mat.n:
        raise ValueError(f"relu: input has {x.size} elements, material is for {mat.n}")
    shape = x.shape
    c, y = _open_masked(ch, party, mat, x.reshape(-1))
    d_share = y - mat.sigma
    t, (d_peer,) = nonneg(ch, party, mat, c, [d_share])
    d = d_share + d_peer
    e_share = t ^ mat.rho_bits
    (e_peer,) = ch.exchange([e_share])
    e = bitslice.unpack(e_share ^ e_peer, mat.n)
    return select(party, e, d, mat.rho, mat.sigma, mat.rho_sigma).reshape(shape)


def select(
    party: int,
    e: np.ndarray,
    d: np.ndarray,
    rho: np.ndarray,
    sigma: np.ndarray,
    rho_sigma: np.ndarray,
) -> np.ndarray:
    """[t y] from the opened e = t xor rho and d = y - sigma, and the shares of the daBit
    [rho], of [sigma] and of [rho sigma] (local): t^A = e + (1 - 2e)[rho] and
    t y = d t^A + e [sigma] + (1 - 2e) [rho sigma]."""
    flip = _ONE - (e << _ONE)  # 1 - 2e
    t_a = flip * rho
    if party == 0:
        t_a += e
    return d * t_a + e * sigma + flip * rho_sigma


PROTOCOL = Protocol(
    call=calls.Relu,
    deal=lambda c, prg0, prg1: deal(c.n, c.shift, prg0, prg1),
    expand=lambda party, c, prg, corr: expand(party, c.n, c.shift, prg, corr),
    run=run,
    correction_words=lambda c: correction_words(c.n, c.shift),
)
