"""The max of k candidates (k = 3 or 4: a 2x2 pooling window) with every pair compared at once,
optionally with the ReLU after it, in 5 rounds (`costs.max_pairs`), where a tournament of
ReLUs takes 4 rounds per level (8, and 4 more for the ReLU).

Candidates x_0..x_{k-1}, each of n elements with signed |x| < 2^61; the pairs p = (i, j),
i < j, in `itertools.combinations` order; z_p = x_i - x_j and t_p = [z_p >= 0]. Say candidate
i beats j when x_i > x_j, or x_i = x_j and i < j: t_p is "i beats j" and not t_p is "j beats
i". That is a strict total order, so exactly one candidate wins all of its k - 1 contests,

    w_i = AND_{j > i} t_(i,j) AND AND_{j < i} (not t_(j,i)),    max = sum_i w_i x_i.

With the ReLU each candidate also meets 0 (after the pairs, comparisons s_i = [x_i >= 0]):
w_i gains the literal s_i, no candidate wins when all are negative, and sum_i w_i y_i is
max(max_i x_i, 0), with y_i = x_i truncated by `relu` bits (the known-MSB truncation of
`truncation.py`, local from the opened c of s_i: so it errs by 0 or +1 LSB, as the ReLU's).

Round 1 opens c = z + 2^62 + r for every comparison at once (the z of s_i is x_i). Rounds
2..3 evaluate the comparison tree of `relu.py` on them (one vector of comparisons x n
elements), to XOR shares of every comparison bit; round 2 also opens d_i = y_i - sigma_i.
Round 4 opens o_p = t_p xor m_p under fresh masks m_p (XOR-shared from both seeds). Each of
candidate i's literals is then a public word xor a mask, l_p = v_p xor m_p (v_p = o_p, or
its complement for a "not t"), and its AND is local, the multi-fan-in AND gate of the tree's
levels (Ohata and Nuida, FC 2020):

    w_i = XOR over T <= S_i of (AND_{p in S_i - T} v_p) & (AND_{p in T} m_p),

the empty T public (P0 adds it), single masks from the seeds, and the dealer's XOR shares of
each product of two or more of a candidate's masks (`costs.max_pairs_sizes`: 1 per
candidate for k = 3, 4 for k = 4, 11 for k = 4 with the ReLU). Round 5 opens
e_i = w_i xor rho_i (daBit rho_i), and each party outputs sum_i [w_i y_i], each term the
ReLU's select (`relu.select`).

Every opened value is masked by fresh material used once: c by r, d by sigma, the tree's
wires as in `relu.py`, o by m, e by rho. Padding lanes of the packed words are dropped on
unpacking; their opened bits are masks, as the real lanes' are.

Material (drawn from each party's prg in `_draw`'s order): the tree's for all comparisons
(`relu.draw_tree`); the AND masks m [comparisons, words(n)] (both seeds) and P0's shares of
their monomials [k, monomials, words(n)]; the daBits' bits [k, words(n)] (both seeds) and
P0's [rho] [k, n]; sigma [k, n] (both seeds) and P0's [rho sigma] [k, n]; with a truncating
ReLU P0's [r_hi], [r_63] [k, n] of the sign comparisons' masks. P1's correction, flat, in
order: the tree's r bits, leaf products and monomials, the AND monomials, [rho],
[rho sigma], then [r_hi], [r_63].
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from mpcc.compiler import calls
from mpcc.compiler.costs import max_pairs_sizes
from mpcc.runtime import bitslice
from mpcc.runtime.prg import Prg
from mpcc.runtime.protocols import common, relu, truncation
from mpcc.runtime.protocols.base import Protocol
from mpcc.runtime.protocols.relu import LEAF_MONOMIALS, MASK_BITS, MONOMIALS
from mpcc.runtime.protocols.truncation import LOW63, SIXTY_THREE
from mpcc.runtime.transport import Channel

CANDIDATES = (3, 4)
_ALL = np.uint64(2**64 - 1)


@dataclass
class MaxPairsMaterial:
    """One party's preprocessing for one max of k candidates over n outputs (`relu`: the
    ReLU's truncation after it, or None)."""

    n: int
    k: int
    relu: int | None
    r: np.ndarray  # [r]_p, the comparisons' masks, comparisons * n
    r_bits: np.ndarray  # <bits 0..62 of r>_p, [63, words(comparisons * n)]
    leaf_mono: np.ndarray  # the tree's leaf products (`relu.draw_tree`)
    mu: np.ndarray  # the tree's wire masks
    mono: np.ndarray  # their monomials
    and_mask: np.ndarray  # <m>_p, [comparisons, words(n)]
    and_mono: np.ndarray  # <products of 2+ of a candidate's masks>_p, [k, monomials, words(n)]
    rho_bits: np.ndarray  # <rho>_p, [k, words(n)]
    rho: np.ndarray  # [rho]_p, [k, n]
    sigma: np.ndarray  # [sigma]_p, [k, n]
    rho_sigma: np.ndarray  # [rho sigma]_p, [k, n]
    r_hi: np.ndarray | None = None  # [(r mod 2^63) >> relu]_p of the sign comparisons, [k, n]
    r_63: np.ndarray | None = None  # [r_63]_p of the sign comparisons, [k, n]
    used: bool = False


def _check(k: int, relu_shift: int | None) -> tuple[int, int | None]:
    if k not in CANDIDATES:
        raise ValueError(f"max_pairs compares 3 or 4 candidates, not {k}")
    if relu_shift is not None and not 0 <= relu_shift <= 62:
        raise ValueError(f"max_pairs: the ReLU's shift must be in 0..62, got {relu_shift}")
    return int(k), None if relu_shift is None else int(relu_shift)


def comparisons(k: int, with_relu: bool = False) -> list[tuple[int, int | None]]:
    """The comparisons (i, j): x_i >= x_j for the pairs i < j in their order, then (with the
    ReLU) (i, None): x_i >= 0 for each candidate."""
    signs = [(i, None) for i in range(k)] if with_relu else []
    return [*itertools.combinations(range(k), 2), *signs]


def literals(k: int, with_relu: bool = False) -> list[list[tuple[int, bool]]]:
    """Each candidate's win bits as (comparison index, negated): t_p where it is the pair's
    first (or the comparison is its sign), not t_p where it is the pair's second."""
    cmps = comparisons(k, with_relu)
    return [[(p, i == b) for p, (a, b) in enumerate(cmps) if i in (a, b)] for i in range(k)]


def _subsets(bits: int) -> list[int]:
    """The dealer's monomials of one candidate, as bit masks over its literals."""
    return [t for t in range(1 << bits) if t.bit_count() >= 2]


def correction_words(n: int, k: int, relu_shift: int | None = None) -> int:
    """Length of P1's correction (uint64 words)."""
    return sum(math.prod(s) for s in _layout(n, k, relu_shift).values())


def _layout(n: int, k: int, relu_shift: int | None) -> dict[str, tuple[int, ...]]:
    """The shapes of P1's correction parts, in the order they lie in it."""
    cmps, monos = max_pairs_sizes(k, relu_shift is not None)
    nm, nw = bitslice.words(cmps * n), bitslice.words(n)
    shapes = {
        "r_bits": (MASK_BITS, nm),
        "leaf_mono": (LEAF_MONOMIALS * nm,),
        "mono": (MONOMIALS * nm,),
        "and_mono": (k, monos, nw),
        "rho": (k, n),
        "rho_sigma": (k, n),
    }
    if relu_shift:
        shapes |= {"r_hi": (k, n), "r_63": (k, n)}
    return shapes


def _split(flat: np.ndarray, n: int, k: int, relu_shift: int | None) -> dict[str, np.ndarray]:
    parts, at = {}, 0
    for name, shape in _layout(n, k, relu_shift).items():
        size = math.prod(shape)
        parts[name] = flat[at : at + size].reshape(shape)
        at += size
    return parts


def _draw(party: int, n: int, k: int, relu_shift: int | None, prg: Prg) -> dict[str, np.ndarray]:
    """The seeded parts of party's material, in the one order dealer and party both use."""
    cmps, monos = max_pairs_sizes(k, relu_shift is not None)
    nw, p0 = bitslice.words(n), party == 0
    m = relu.draw_tree(party, cmps * n, prg)
    m["and_mask"] = prg.uint64(cmps, nw)
    if p0:
        m["and_mono"] = prg.uint64(k, monos, nw)
    m["rho_bits"] = prg.uint64(k, nw)
    if p0:
        m["rho"] = prg.uint64(k, n)
    m["sigma"] = prg.uint64(k, n)
    if p0:
        m["rho_sigma"] = prg.uint64(k, n)
        if relu_shift:
            m["r_hi"] = prg.uint64(k, n)
            m["r_63"] = prg.uint64(k, n)
    return m


def and_monomials(mask: np.ndarray, k: int, with_relu: bool = False) -> np.ndarray:
    """Every candidate's products of two or more of its literals' masks, [k, monomials, words]
    from the masks [comparisons, words] (the dealer's, in the clear)."""
    lits = literals(k, with_relu)
    subsets = _subsets(len(lits[0]))
    out = np.empty((k, len(subsets), mask.shape[1]), np.uint64)
    for i, lit in enumerate(lits):
        for j, t in enumerate(subsets):
            out[i, j] = np.bitwise_and.reduce(
                [mask[p] for at, (p, _) in enumerate(lit) if t >> at & 1]
            )
    return out


def _unpack_rows(planes: np.ndarray, n: int) -> np.ndarray:
    """[rows, words] packed bits as [rows, n] 0/1."""
    return np.stack([bitslice.unpack(row, n) for row in planes]).reshape(len(planes), n)


def deal(n: int, k: int, prg0: Prg, prg1: Prg, relu_shift: int | None = None) -> np.ndarray:
    """Dealer: P1's correction, flat uint64 (`costs.max_pairs(n, k, relu_shift).dealer`
    bytes)."""
    k, relu_shift = _check(k, relu_shift)
    cmps, _ = max_pairs_sizes(k, relu_shift is not None)
    nw = bitslice.words(n)
    out = np.empty(correction_words(n, k, relu_shift), dtype=np.uint64)
    c = _split(out, n, k, relu_shift)
    r = relu.deal_tree(cmps * n, prg0, prg1, c)
    mask = prg0.uint64(cmps, nw)  # P0: m, its monomials, rho bits, [rho]; P1: m, rho bits
    mask ^= prg1.uint64(cmps, nw)
    prg0.fill(c["and_mono"])
    c["and_mono"] ^= and_monomials(mask, k, relu_shift is not None)
    rho = _unpack_rows(prg0.uint64(k, nw) ^ prg1.uint64(k, nw), n)
    np.subtract(rho, prg0.fill(c["rho"]), out=c["rho"])
    sigma = prg0.uint64(k, n)  # P0: sigma, [rho sigma], [r_hi], [r_63]; P1: sigma
    sigma += prg1.uint64(k, n)
    rho *= sigma
    np.subtract(rho, prg0.fill(c["rho_sigma"]), out=c["rho_sigma"])
    if relu_shift:
        r_sign = r[(cmps - k) * n :].reshape(k, n)
        np.subtract((r_sign & LOW63) >> np.uint64(relu_shift), prg0.fill(c["r_hi"]), out=c["r_hi"])
        np.subtract(r_sign >> SIXTY_THREE, prg0.fill(c["r_63"]), out=c["r_63"])
    return out


def expand(
    party: int,
    n: int,
    k: int,
    prg: Prg,
    correction: np.ndarray | None,
    relu_shift: int | None = None,
) -> MaxPairsMaterial:
    """Party side: everything from the seed (P0), or uniform parts from the seed and the
    structured shares from the dealer's correction (P1)."""
    k, relu_shift = _check(k, relu_shift)
    m = _draw(party, n, k, relu_shift, prg)
    words = correction_words(n, k, relu_shift)
    corr = common.checked_correction("max_pairs", party, correction, words)
    if corr is not None:
        m |= _split(corr, n, k, relu_shift)
    return MaxPairsMaterial(n=n, k=k, relu=relu_shift, **m)


def _and(party: int, opened: np.ndarray, mat: MaxPairsMaterial) -> np.ndarray:
    """Round 4's local part: XOR shares of each candidate's AND of its literals, [k, words],
    from the opened o = t xor m [comparisons, words]."""
    lits = literals(mat.k, mat.relu is not None)
    subsets = {t: j for j, t in enumerate(_subsets(len(lits[0])))}
    out = np.zeros((mat.k, opened.shape[1]), np.uint64)
    for i, lit in enumerate(lits):
        v = [opened[p] ^ _ALL if neg else opened[p] for p, neg in lit]
        for t in range(1 << len(lit)):
            if t == 0 and party != 0:
                continue
            public = _ALL
            for at in range(len(lit)):
                if not t >> at & 1:
                    public = public & v[at]
            if t == 0:
                out[i] ^= public
            elif t.bit_count() == 1:
                out[i] ^= public & mat.and_mask[lit[t.bit_length() - 1][0]]
            else:
                out[i] ^= public & mat.and_mono[i, subsets[t]]
    return out


def run(ch: Channel, party: int, mat: MaxPairsMaterial, x: np.ndarray) -> np.ndarray:
    """Online: this party's share of the max over axis 0 of x [k, n] (with the ReLU: of its
    ReLU, truncated), 5 rounds."""
    common.consume("max_pairs", mat, "a reused mask leaks the input")
    x = np.asarray(x, dtype=np.uint64)
    k, n = mat.k, mat.n
    if x.shape != (k, n):
        raise ValueError(f"max_pairs: input has shape {list(x.shape)}, material is for {[k, n]}")
    cmps = comparisons(k, mat.relu is not None)
    a = [i for i, _ in cmps]
    b = [j for _, j in cmps if j is not None]
    z = x[a]
    z[: len(b)] -= x[b]
    c = truncation.open_biased(ch, party, z.reshape(-1), mat.r)
    y = x
    if mat.relu:  # the candidates truncated, from their sign comparisons' openings
        c_sign = c[(len(cmps) - k) * n :].reshape(k, n)
        y = truncation.output_share(party, c_sign, mat.r_hi, mat.r_63, mat.relu)
    d_share = (y - mat.sigma).reshape(-1)
    t, (d_peer,) = relu.nonneg(ch, party, mat, c, [d_share])
    d = (d_share + d_peer).reshape(k, n)
    # the comparison bits, one plane each: bit p of an element's word is its t_p
    t_rows = _unpack_rows(t.reshape(1, -1), len(cmps) * n).reshape(len(cmps), n)
    word = np.zeros(n, np.uint64)
    for p in range(len(cmps)):
        word |= t_rows[p] << np.uint64(p)
    o_share = bitslice.pack(word, len(cmps)) ^ mat.and_mask
    (o_peer,) = ch.exchange([o_share.reshape(-1)])
    w = _and(party, o_share ^ o_peer.reshape(o_share.shape), mat)
    e_share = w ^ mat.rho_bits
    (e_peer,) = ch.exchange([e_share.reshape(-1)])
    e = _unpack_rows(e_share ^ e_peer.reshape(e_share.shape), n)
    out = relu.select(party, e, d, mat.rho, mat.sigma, mat.rho_sigma)
    return out.sum(axis=0, dtype=np.uint64)


PROTOCOL = Protocol(
    call=calls.MaxPairs,
    deal=lambda c, prg0, prg1: deal(c.n, c.k, prg0, prg1, c.relu),
    expand=lambda party, c, prg, corr: expand(party, c.n, c.k, prg, corr, c.relu),
    run=run,
    correction_words=lambda c: correction_words(c.n, c.k, c.relu),
)
