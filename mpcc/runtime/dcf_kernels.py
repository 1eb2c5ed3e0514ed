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
    sl = np.empty((2, 2), dtype=np.uint64)
    sr = np.empty((2, 2), dtype=np.uint64)
    tl = np.empty(2, dtype=np.uint64)
    tr = np.empty(2, dtype=np.uint64)
    vl = np.empty(2, dtype=np.uint64)
    vr = np.empty(2, dtype=np.uint64)
    for e in range(n):
        a = (alpha[e] >> bitpos) & _ONE
        for b in range(2):
            hl0 = out[b, e, 0, 0] ^ inp[b, e, 0, 0]
            hl1 = out[b, e, 0, 1] ^ inp[b, e, 0, 1]
            hr0 = out[b, e, 1, 0] ^ inp[b, e, 1, 0]
            hr1 = out[b, e, 1, 1] ^ inp[b, e, 1, 1]
            tl[b] = hl0 & _ONE
            tr[b] = hr0 & _ONE
            sl[b, 0] = hl0 & _CLEAR
            sl[b, 1] = hl1
            sr[b, 0] = hr0 & _CLEAR
            sr[b, 1] = hr1
            if ring:
                vl[b] = out[b, e, 2, 0] ^ inp[b, e, 2, 0]
                vr[b] = out[b, e, 2, 1] ^ inp[b, e, 2, 1]
            else:
                vl[b] = (hl0 >> _ONE) & _ONE
                vr[b] = (hr0 >> _ONE) & _ONE
        # alpha bit 1: x going left is below alpha (lose = left, keep = right)
        if a:
            c0 = sl[0, 0] ^ sl[1, 0]
            c1 = sl[0, 1] ^ sl[1, 1]
            vlose0, vlose1, vkeep0, vkeep1 = vl[0], vl[1], vr[0], vr[1]
        else:
            c0 = sr[0, 0] ^ sr[1, 0]
            c1 = sr[0, 1] ^ sr[1, 1]
            vlose0, vlose1, vkeep0, vkeep1 = vr[0], vr[1], vl[0], vl[1]
        scw[e, 0] = c0
        scw[e, 1] = c1
        sg = _ONE - (t[1, e] << _ONE)  # (-1)^t1
        v = sg * (vlose1 - vlose0 - valpha[e]) + sg * beta[e] * a
        valpha[e] += vkeep0 - vkeep1 + sg * v
        w = e // 64
        lane = np.uint64(e & 63)
        if ring:
            vcw[e] = v
        else:
            vcw_bits[w] |= (v & _ONE) << lane
        tcl = tl[0] ^ tl[1] ^ a ^ _ONE
        tcr = tr[0] ^ tr[1] ^ a
        tcw_bits[0, w] |= tcl << lane
        tcw_bits[1, w] |= tcr << lane
        tkeep = tcr if a else tcl
        for b in range(2):
            tb = t[b, e]
            mask = np.uint64(0) - tb
            if a:
                n0 = sr[b, 0] ^ (c0 & mask)
                n1 = sr[b, 1] ^ (c1 & mask)
                t[b, e] = tr[b] ^ (tb & tkeep)
            else:
                n0 = sl[b, 0] ^ (c0 & mask)
                n1 = sl[b, 1] ^ (c1 & mask)
                t[b, e] = tl[b] ^ (tb & tkeep)
            s[b, e, 0] = n0
            s[b, e, 1] = n1
            for j in range(inp.shape[2]):
                inp[b, e, j, 0] = n0 ^ np.uint64(j)
                inp[b, e, j, 1] = n1


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
