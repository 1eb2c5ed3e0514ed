"""The max of k candidates (k = 3 or 4: a 2x2 pooling window) with every pair compared at once,
in 5 rounds (`costs.max_pairs`), where a tournament of ReLUs takes 4 rounds per level (8).

Candidates x_0..x_{k-1}, each of n elements with signed |x| < 2^61; the pairs p = (i, j),
i < j, in `itertools.combinations` order; z_p = x_i - x_j and t_p = [z_p >= 0]. Say candidate
i beats j when x_i > x_j, or x_i = x_j and i < j: t_p is "i beats j" and not t_p is "j beats
i". That is a strict total order, so exactly one candidate wins all of its k - 1 contests,

    w_i = AND_{j > i} t_(i,j) AND AND_{j < i} (not t_(j,i)),    max = sum_i w_i x_i.

Round 1 opens c_p = z_p + 2^62 + r_p for all k(k-1)/2 pairs at once. Rounds 2..3 evaluate
the comparison tree of `relu.py` on them (one vector of k(k-1)/2 n elements), to XOR shares
of every t_p; round 2 also opens d_i = x_i - sigma_i. Round 4 opens o_p = t_p xor m_p under
fresh masks m_p (XOR-shared from both seeds). Each of candidate i's literals is then a public
word xor a mask, l_p = v_p xor m_p (v_p = o_p, or its complement for a "not t"), and its AND
is local, the multi-fan-in AND gate of the tree's levels (Ohata and Nuida, FC 2020):

    w_i = XOR over T <= S_i of (AND_{p in S_i - T} v_p) & (AND_{p in T} m_p),

the empty T public (P0 adds it), single masks from the seeds, and the dealer's XOR shares of
each product of two or more of a candidate's masks (`costs.max_pairs_sizes`: 1 per
candidate for k = 3, 4 for k = 4). Round 5 opens e_i = w_i xor rho_i (daBit rho_i), and each
party outputs sum_i [w_i x_i], each term the ReLU's select (`relu.select`).

Every opened value is masked by fresh material used once: c by r, d by sigma, the tree's
wires as in `relu.py`, o by m, e by rho. Padding lanes of the packed words are dropped on
unpacking; their opened bits are masks, as the real lanes' are.

Material (drawn from each party's prg in `_draw`'s order): the tree's for the
k(k-1)/2 n comparisons (`relu.draw_tree`); the AND masks m [pairs, words(n)] (both seeds)
and P0's shares of their monomials [k, monomials, words(n)]; the daBits' bits [k, words(n)]
(both seeds) and P0's [rho] [k, n]; sigma [k, n] (both seeds) and P0's [rho sigma] [k, n].
P1's correction, flat, in order: the tree's r bits, leaf products and monomials, the AND
monomials, [rho], [rho sigma].
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
from mpcc.runtime.transport import Channel

CANDIDATES = (3, 4)
_ALL = np.uint64(2**64 - 1)


@dataclass
class MaxPairsMaterial:
    """One party's preprocessing for one max of k candidates over n outputs."""

    n: int
    k: int
    r: np.ndarray  # [r]_p, the comparisons' masks, pairs * n
    r_bits: np.ndarray  # <bits 0..62 of r>_p, [63, words(pairs * n)]
    leaf_mono: np.ndarray  # the tree's leaf products (`relu.draw_tree`)
    mu: np.ndarray  # the tree's wire masks
    mono: np.ndarray  # their monomials
    and_mask: np.ndarray  # <m>_p, [pairs, words(n)]
    and_mono: np.ndarray  # <products of 2+ of a candidate's masks>_p, [k, monomials, words(n)]
    rho_bits: np.ndarray  # <rho>_p, [k, words(n)]
    rho: np.ndarray  # [rho]_p, [k, n]
    sigma: np.ndarray  # [sigma]_p, [k, n]
    rho_sigma: np.ndarray  # [rho sigma]_p, [k, n]
    used: bool = False


def _check_k(k: int) -> int:
    if k not in CANDIDATES:
        raise ValueError(f"max_pairs compares 3 or 4 candidates, not {k}")
    return int(k)


def pairs(k: int) -> list[tuple[int, int]]:
    """The compared pairs (i, j), i < j, in their order."""
    return list(itertools.combinations(range(k), 2))


def literals(k: int) -> list[list[tuple[int, bool]]]:
    """Each candidate's k - 1 win bits as (pair index, negated): t_p where it is the pair's
    first, not t_p where it is its second."""
    return [[(p, i == b) for p, (a, b) in enumerate(pairs(k)) if i in (a, b)] for i in range(k)]


def _subsets(k: int) -> list[int]:
    """The dealer's monomials of one candidate, as bit masks over its k - 1 literals."""
    return [t for t in range(1 << (k - 1)) if t.bit_count() >= 2]


def correction_words(n: int, k: int) -> int:
    """Length of P1's correction (uint64 words)."""
    return sum(math.prod(s) for s in _layout(n, k).values())


def _layout(n: int, k: int) -> dict[str, tuple[int, ...]]:
    """The shapes of P1's correction parts, in the order they lie in it."""
    npairs, monos = max_pairs_sizes(k)
    nm, nw = bitslice.words(npairs * n), bitslice.words(n)
    return {
        "r_bits": (MASK_BITS, nm),
        "leaf_mono": (LEAF_MONOMIALS * nm,),
        "mono": (MONOMIALS * nm,),
        "and_mono": (k, monos, nw),
        "rho": (k, n),
        "rho_sigma": (k, n),
    }


def _split(flat: np.ndarray, n: int, k: int) -> dict[str, np.ndarray]:
    parts, at = {}, 0
    for name, shape in _layout(n, k).items():
        size = math.prod(shape)
        parts[name] = flat[at : at + size].reshape(shape)
        at += size
    return parts


def _draw(party: int, n: int, k: int, prg: Prg) -> dict[str, np.ndarray]:
    """The seeded parts of party's material, in the one order dealer and party both use."""
    npairs, monos = max_pairs_sizes(k)
    nw, p0 = bitslice.words(n), party == 0
    m = relu.draw_tree(party, npairs * n, prg)
    m["and_mask"] = prg.uint64(npairs, nw)
    if p0:
        m["and_mono"] = prg.uint64(k, monos, nw)
    m["rho_bits"] = prg.uint64(k, nw)
    if p0:
        m["rho"] = prg.uint64(k, n)
    m["sigma"] = prg.uint64(k, n)
    if p0:
        m["rho_sigma"] = prg.uint64(k, n)
    return m


def and_monomials(mask: np.ndarray, k: int) -> np.ndarray:
    """Every candidate's products of two or more of its literals' masks, [k, monomials, words]
    from the masks [pairs, words] (the dealer's, in the clear)."""
    subsets = _subsets(k)
    out = np.empty((k, len(subsets), mask.shape[1]), np.uint64)
    for i, lits in enumerate(literals(k)):
        for j, t in enumerate(subsets):
            out[i, j] = np.bitwise_and.reduce(
                [mask[p] for at, (p, _) in enumerate(lits) if t >> at & 1]
            )
    return out


def _unpack_rows(planes: np.ndarray, n: int) -> np.ndarray:
    """[rows, words] packed bits as [rows, n] 0/1."""
    return np.stack([bitslice.unpack(row, n) for row in planes]).reshape(len(planes), n)


def deal(n: int, k: int, prg0: Prg, prg1: Prg) -> np.ndarray:
    """Dealer: P1's correction, flat uint64 (`costs.max_pairs(n, k).dealer` bytes)."""
    k = _check_k(k)
    npairs, _ = max_pairs_sizes(k)
    nw = bitslice.words(n)
    out = np.empty(correction_words(n, k), dtype=np.uint64)
    c = _split(out, n, k)
    relu.deal_tree(npairs * n, prg0, prg1, c)
    mask = prg0.uint64(npairs, nw)  # P0: m, its monomials, rho bits, [rho]; P1: m, rho bits
    mask ^= prg1.uint64(npairs, nw)
    prg0.fill(c["and_mono"])
    c["and_mono"] ^= and_monomials(mask, k)
    rho = _unpack_rows(prg0.uint64(k, nw) ^ prg1.uint64(k, nw), n)
    np.subtract(rho, prg0.fill(c["rho"]), out=c["rho"])
    sigma = prg0.uint64(k, n)  # P0: sigma, [rho sigma]; P1: sigma
    sigma += prg1.uint64(k, n)
    rho *= sigma
    np.subtract(rho, prg0.fill(c["rho_sigma"]), out=c["rho_sigma"])
    return out


def expand(party: int, n: int, k: int, prg: Prg, correction: np.ndarray | None) -> MaxPairsMaterial:
    """Party side: everything from the seed (P0), or uniform parts from the seed and the
    structured shares from the dealer's correction (P1)."""
    k = _check_k(k)
    m = _draw(party, n, k, prg)
    corr = common.checked_correction("max_pairs", party, correction, correction_words(n, k))
    if corr is not None:
        m |= _split(corr, n, k)
    return MaxPairsMaterial(n=n, k=k, **m)


def _and(party: int, opened: np.ndarray, mat: MaxPairsMaterial) -> np.ndarray:
    """Round 4's local part: XOR shares of each candidate's AND of its literals, [k, words],
    from the opened o = t xor m [pairs, words]."""
    subsets = {t: j for j, t in enumerate(_subsets(mat.k))}
    out = np.zeros((mat.k, opened.shape[1]), np.uint64)
    for i, lits in enumerate(literals(mat.k)):
        v = [opened[p] ^ _ALL if neg else opened[p] for p, neg in lits]
        for t in range(1 << len(lits)):
            if t == 0 and party != 0:
                continue
            public = _ALL
            for at in range(len(lits)):
                if not t >> at & 1:
                    public = public & v[at]
            if t == 0:
                out[i] ^= public
            elif t.bit_count() == 1:
                out[i] ^= public & mat.and_mask[lits[t.bit_length() - 1][0]]
            else:
                out[i] ^= public & mat.and_mono[i, subsets[t]]
    return out


def run(ch: Channel, party: int, mat: MaxPairsMaterial, x: np.ndarray) -> np.ndarray:
    """Online: this party's share of the max over axis 0 of x [k, n] (5 rounds)."""
    common.consume("max_pairs", mat, "a reused mask leaks the input")
    x = np.asarray(x, dtype=np.uint64)
    if x.shape != (mat.k, mat.n):
        raise ValueError(
            f"max_pairs: input has shape {list(x.shape)}, material is for {[mat.k, mat.n]}"
        )
    a, b = (list(s) for s in zip(*pairs(mat.k), strict=True))
    npairs, nw = len(a), bitslice.words(mat.n)
    c = truncation.open_biased(ch, party, (x[a] - x[b]).reshape(-1), mat.r)
    d_share = (x - mat.sigma).reshape(-1)
    t, (d_peer,) = relu.nonneg(ch, party, mat, c, [d_share])
    d = (d_share + d_peer).reshape(mat.k, mat.n)
    # the win bits, one plane per pair: bit p of each element's word is t_p
    t_rows = _unpack_rows(t.reshape(1, -1), npairs * mat.n).reshape(npairs, mat.n)
    word = np.zeros(mat.n, np.uint64)
    for p in range(npairs):
        word |= t_rows[p] << np.uint64(p)
    o_share = bitslice.pack(word, npairs) ^ mat.and_mask
    (o_peer,) = ch.exchange([o_share.reshape(-1)])
    w = _and(party, o_share ^ o_peer.reshape(npairs, nw), mat)
    e_share = w ^ mat.rho_bits
    (e_peer,) = ch.exchange([e_share.reshape(-1)])
    e = _unpack_rows(e_share ^ e_peer.reshape(mat.k, nw), mat.n)
    y = relu.select(party, e, d, mat.rho, mat.sigma, mat.rho_sigma)
    return y.sum(axis=0, dtype=np.uint64)


PROTOCOL = Protocol(
    call=calls.MaxPairs,
    deal=lambda c, prg0, prg1: deal(c.n, c.k, prg0, prg1),
    expand=lambda party, c, prg, corr: expand(party, c.n, c.k, prg, corr),
    run=run,
    correction_words=lambda c: correction_words(c.n, c.k),
)
