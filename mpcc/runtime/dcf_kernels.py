"""Word kernels of the distributed comparison function (`mpcc.runtime.dcf`): one tree level
of key generation and of evaluation for every element at once.

A level's AES calls are made outside (one ECB call over the whole level, `dcf._Mmo`); these
kernels take its input and output blocks, finish the Matyas-Meyer-Oseas step
h = AES(in) ^ in, apply the correction words, and write the next level's AES inputs back
into the input buffer (each element's blocks are read before they are overwritten).

Layouts (uint64 words, little-endian blocks): a seed is 2 words whose 2 lowest bits are
clear; block j of a node with seed s is s ^ j (j = 0 left, 1 right, 2 values). From
h_j = MMO(s ^ j): bit 0 of h_j is the child's control bit t, h_j with its 2 low bits
cleared is the child's seed, and the child's value is h_2 word j (ring outputs) or bit 1
of h_j (one-bit outputs). Bit vectors over elements are packed 64 lanes per word (lane
e % 64 of word e // 64), as in `mpcc.runtime.bitslice`.
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)

_ONE = np.uint64(1)
_TWO = np.uint64(2)
_CLEAR = ~np.uint64(3)


@numba.njit(inline="always")
def _children(out, inp, b, e, a, ring):  # pragma: no cover - numba
    """Party b's node e expanded and split by the alpha bit a: the kept child's seed words,
    control bit and value, the lost child's seed words, control bit and value."""
    hl0 = out[b, e, 0, 0] ^ inp[b, e, 0, 0]
    hl1 = out[b, e, 0, 1] ^ inp[b, e, 0, 1]
    hr0 = out[b, e, 1, 0] ^ inp[b, e, 1, 0]
    hr1 = out[b, e, 1, 1] ^ inp[b, e, 1, 1]
    if ring:
        vl = out[b, e, 2, 0] ^ inp[b, e, 2, 0]
        vr = out[b, e, 2, 1] ^ inp[b, e, 2, 1]
    else:
        vl = (hl0 >> _ONE) & _ONE
        vr = (hr0 >> _ONE) & _ONE
    if a:  # alpha bit 1: x going left is below alpha (lose = left, keep = right)
        return hr0 & _CLEAR, hr1, hr0 & _ONE, vr, hl0 & _CLEAR, hl1, hl0 & _ONE, vl
    return hl0 & _CLEAR, hl1, hl0 & _ONE, vl, hr0 & _CLEAR, hr1, hr0 & _ONE, vr


@_jit
def gen_level(
    out, inp, bitpos, alpha, beta, ring, s, t, valpha, scw, vcw, vcw_bits, tcw_bits
):  # pragma: no cover - numba
    """One level of Gen for both parties' paths, all elements (see `dcf.gen`).

    out, inp: [2, n, 3 or 2, 2] AES output/input blocks (party, element, block, word; the
    values block only with ring outputs); s [2, n, 2], t [2, n] the parties' on-path seeds
    and control bits (updated); valpha [n] the running on-path sum (updated). Writes this
    level's correction words: scw [n, 2], and vcw [n] (ring) or vcw_bits [words] (one-bit
    outputs), tcw_bits [2, words] (left, right)."""
    n = alpha.shape[0]
    blocks = inp.shape[2]
    for e in range(n):
        a = (alpha[e] >> bitpos) & _ONE
        k00, k01, kt0, kv0, l00, l01, lt0, lv0 = _children(out, inp, 0, e, a, ring)
        k10, k11, kt1, kv1, l10, l11, lt1, lv1 = _children(out, inp, 1, e, a, ring)
        c0 = l00 ^ l10
        c1 = l01 ^ l11
        scw[e, 0] = c0
        scw[e, 1] = c1
        t0 = t[0, e]
        t1 = t[1, e]
        sg = _ONE - (t1 << _ONE)  # (-1)^t1
        v = sg * (lv1 - lv0 - valpha[e]) + sg * beta[e] * a
        valpha[e] += kv0 - kv1 + sg * v
        w = e // 64
        lane = np.uint64(e & 63)
        if ring:
            vcw[e] = v
        else:
            vcw_bits[w] |= (v & _ONE) << lane
        # t_CW^L = tL0 ^ tL1 ^ a ^ 1, t_CW^R = tR0 ^ tR1 ^ a: the kept one is kt0 ^ kt1 ^ 1
        tkeep = kt0 ^ kt1 ^ _ONE
        tlose = lt0 ^ lt1
        tcl = tlose if a else tkeep
        tcr = tkeep if a else tlose
        tcw_bits[0, w] |= tcl << lane
        tcw_bits[1, w] |= tcr << lane
        m0 = np.uint64(0) - t0
        m1 = np.uint64(0) - t1
        n00 = k00 ^ (c0 & m0)
        n01 = k01 ^ (c1 & m0)
        n10 = k10 ^ (c0 & m1)
        n11 = k11 ^ (c1 & m1)
        t[0, e] = kt0 ^ (t0 & tkeep)
        t[1, e] = kt1 ^ (t1 & tkeep)
        s[0, e, 0] = n00
        s[0, e, 1] = n01
        s[1, e, 0] = n10
        s[1, e, 1] = n11
        for j in range(blocks):
            inp[0, e, j, 0] = n00 ^ np.uint64(j)
            inp[0, e, j, 1] = n01
            inp[1, e, j, 0] = n10 ^ np.uint64(j)
            inp[1, e, j, 1] = n11


@_jit
def eval_level(
    out, inp, bitpos, x, negate, ring, s, t, v, scw, vcw, vcw_bits, tcw_bits
):  # pragma: no cover - numba
    """One level of Eval along each element's own path (see `dcf.evaluate`).

    out, inp: [n, k, 2] AES output/input blocks (k = 2 for ring outputs: the child's block
    s ^ x_i and the values block s ^ 2; k = 1 for one-bit outputs); s [n, 2], t [n], v [n]
    the state (updated); negate: party 1 subtracts its values. The next level's inputs are
    written into inp (for bitpos 0 they are not needed and are left as they are)."""
    n = x.shape[0]
    for e in range(n):
        d = (x[e] >> bitpos) & _ONE
        h0 = out[e, 0, 0] ^ inp[e, 0, 0]
        h1 = out[e, 0, 1] ^ inp[e, 0, 1]
        w = e // 64
        lane = np.uint64(e & 63)
        if ring:
            vh = out[e, 1, d] ^ inp[e, 1, d]
            vc = vcw[e]
        else:
            vh = (h0 >> _ONE) & _ONE
            vc = (vcw_bits[w] >> lane) & _ONE
        te = t[e]
        add = vh + te * vc
        if negate:
            v[e] -= add
        else:
            v[e] += add
        mask = np.uint64(0) - te
        n0 = (h0 & _CLEAR) ^ (scw[e, 0] & mask)
        n1 = h1 ^ (scw[e, 1] & mask)
        t[e] = (h0 & _ONE) ^ (te & (tcw_bits[d, w] >> lane))
        s[e, 0] = n0
        s[e, 1] = n1
        if bitpos > 0:
            dn = (x[e] >> (bitpos - _ONE)) & _ONE
            inp[e, 0, 0] = n0 ^ dn
            inp[e, 0, 1] = n1
            if ring:
                inp[e, 1, 0] = n0 ^ _TWO
                inp[e, 1, 1] = n1
