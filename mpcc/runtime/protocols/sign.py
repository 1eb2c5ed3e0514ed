"""The comparison bit [x >= 0] as an arithmetic 0/1 share (DReLU), for signed |x| < 2^62, in
4 rounds (`costs.sign`): the ReLU protocol (`relu.py`) without its select.

Round 1 opens c = x + 2^62 + r; rounds 2..3 evaluate the same bit-sliced comparison tree
(four nodes to a parent; the first level local, the others by masked wires), giving XOR
shares of t = [x >= 0]; round 4 opens
e = t ^ rho (daBit rho) and converts, t^A = e + (1 - 2e)[rho] (bit injection, as in ABY's
B2A with a daBit: Demmler et al. NDSS 2015; Rotaru and Wood, INDOCRYPT 2019). Against a ReLU
this saves the opening of d = y - sigma in round 2 (one word per element) and the dealer's
[rho sigma].

Material: r; P0's XOR shares of bits 0..62 of r and of the leaf groups' products of r
bits; the tree's wire masks (both seeds) and P0's
shares of their monomials; the daBit <rho> (both seeds) and P0's [rho]. P1's correction,
flat: r bits [63, words], leaf products [176 words], monomials [110 words], [rho] [n].
"""

from __future__ import annotations

import math

import numpy as np

from mpcc.compiler import calls
from mpcc.runtime import bitslice
from mpcc.runtime.prg import Prg
from mpcc.runtime.protocols import common
from mpcc.runtime.protocols.base import Protocol
from mpcc.runtime.protocols.relu import (
    LEAF_MONOMIALS,
    MASK_BITS,
    MONOMIALS,
    ReluMaterial,
    _open_masked,
    deal_compare,
    draw_compare,
    nonneg,
)
from mpcc.runtime.transport import Channel

_ONE = np.uint64(1)
_EMPTY = np.empty(0, np.uint64)


def correction_words(n: int) -> int:
    """Length of P1's correction (uint64 words)."""
    return (MASK_BITS + LEAF_MONOMIALS + MONOMIALS) * bitslice.words(n) + n


def _layout(n: int) -> dict[str, tuple[int, ...]]:
    nw = bitslice.words(n)
    return {
        "r_bits": (MASK_BITS, nw),
        "leaf_mono": (LEAF_MONOMIALS * nw,),
        "mono": (MONOMIALS * nw,),
        "rho": (n,),
    }


def _split(flat: np.ndarray, n: int) -> dict[str, np.ndarray]:
    parts, at = {}, 0
    for name, shape in _layout(n).items():
        size = math.prod(shape)
        parts[name] = flat[at : at + size].reshape(shape)
        at += size
    return parts


_draw = draw_compare  # the ReLU's comparison part, drawn in the same order


def deal(n: int, prg0: Prg, prg1: Prg) -> np.ndarray:
    """Dealer: P1's correction, flat uint64 (`costs.sign(n).dealer` bytes)."""
    out = np.empty(correction_words(n), dtype=np.uint64)
    deal_compare(n, prg0, prg1, _split(out, n))
    return out


def expand(party: int, n: int, prg: Prg, correction: np.ndarray | None) -> ReluMaterial:
    """Party side: everything from the seed (P0), or the correction's parts (P1)."""
    m = _draw(party, n, prg)
    corr = common.checked_correction("sign", party, correction, correction_words(n))
    if corr is not None:
        m |= _split(corr, n)
    return ReluMaterial(n=n, shift=0, sigma=_EMPTY, rho_sigma=_EMPTY, **m)


def run(ch: Channel, party: int, mat: ReluMaterial, x: np.ndarray) -> np.ndarray:
    """Online: this party's arithmetic share of [x >= 0], same shape as x (4 rounds)."""
    common.consume("sign", mat, "a reused mask leaks the input")
    x = np.asarray(x, dtype=np.uint64)
    if x.size != mat.n:
        raise ValueError(f"sign: input has {x.size} elements, material is for {mat.n}")
    c, _ = _open_masked(ch, party, mat, x.reshape(-1))
    t, _ = nonneg(ch, party, mat, c, [])
    e_share = t ^ mat.rho_bits
    (e_peer,) = ch.exchange([e_share])
    e = bitslice.unpack(e_share ^ e_peer, mat.n)
    out = (_ONE - (e << _ONE)) * mat.rho
    if party == 0:
        out += e
    return out.reshape(x.shape)


PROTOCOL = Protocol(
    call=calls.Sign,
    deal=lambda c, prg0, prg1: deal(c.n, prg0, prg1),
    expand=lambda party, c, prg, corr: expand(party, c.n, prg, corr),
    run=run,
    correction_words=lambda c: correction_words(c.n),
)
