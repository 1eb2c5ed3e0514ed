"""The distributed comparison function's Gen and Eval (`mpcc.runtime.dcf`) each in ONE numba
call, AES inside the kernel (`mpcc.runtime.aesni`): the path `dcf` takes where the CPU has
AES-NI. Its keys and outputs are those of the level-by-level path through OpenSSL
(`mpcc.runtime.dcf_kernels`) bit for bit (tests/test_dcf_aesni.py).

Elements go through the levels in blocks of _BLOCK, a block's state in per-word arrays
(seeds' two words, control bits, sums; with one-bit outputs the control bits and sums
packed 64 to a word) that stay in L1. Per level: one pass of AES over the block
(`aesni.GROUP` blocks per call, two per VAES instruction where the CPU has VAES), then one
pass applying the correction words, 64 elements (one word of the packed parts) at a time,
in branch-free word arithmetic, which also writes the next level's AES inputs. Two passes
measured faster than AES and bookkeeping in one loop: the out-of-order window cannot hold
enough AES chains.
Layouts as in `mpcc.runtime.dcf_kernels`; the key's parts come flat (uint64, `dcf._layout`).
"""

from __future__ import annotations

import numba
import numpy as np

from mpcc.runtime import aesni
from mpcc.runtime.dcf import FIXED_KEY

_jit = numba.njit(cache=True, nogil=True)

_ONE = np.uint64(1)
_TWO = np.uint64(2)
_CLEAR = ~np.uint64(3)

# Elements per block (a multiple of 64 and of aesni.GROUP): 256..2048 measured within noise.
_BLOCK = 1024
_mmo = aesni.mmo_intrinsic(FIXED_KEY)
_mmo_group = aesni.mmo_group_intrinsic(FIXED_KEY, aesni.WIDE)


@numba.njit(inline="always")
def _mmo_all(lo, hi, out_lo, out_hi, nb, tweak):  # pragma: no cover - numba
    """out = MMO(lo ^ tweak, hi) for the first nb blocks, words in separate arrays: GROUP
    blocks at a time, then one by one."""
    full = nb - nb % aesni.GROUP
    for b in range(0, full, aesni.GROUP):
        _mmo_group(lo, hi, out_lo, out_hi, b, tweak)
    for b in range(full, nb):
        out_lo[b], out_hi[b] = _mmo(lo[b] ^ tweak, hi[b])


@numba.njit(inline="always")
def _u(i):  # pragma: no cover - numba
    """An index as uint64: numba then leaves out its negative-index wraparound code."""
    return np.uint64(i)


@numba.njit(inline="always")
def _pick(left, right, am):  # pragma: no cover - numba
    """right where am is all ones, left where it is 0 (branch-free)."""
    return left ^ ((left ^ right) & am)


@_jit
def gen_fused(alpha, beta, gamma, r0, r1, bits, ring, scw, vcw, tcw, last):  # pragma: no cover
    """All of Gen (`dcf.gen`) in one call: the correction words of every level and the last
    one, written into the key's parts, flat: scw [bits, n, 2], vcw [bits, n] (ring) or
    [bits, words], tcw [bits, 2, words], last [n] or [words] (packed parts zeroed by the
    caller). r0, r1 [n, 2]: the parties' root seeds."""
    n = alpha.shape[0]
    words = (n + 63) >> 6
    s = np.empty((2, 2, _BLOCK), dtype=np.uint64)  # party, seed word, element
    h = np.empty((2, 6, _BLOCK), dtype=np.uint64)  # party, MMO word (left, right, values)
    t = np.empty((2, _BLOCK), dtype=np.uint64)
    valpha = np.empty(_BLOCK, dtype=np.uint64)  # the running on-path sum
    for lo in range(0, n, _BLOCK):
        m = min(n, lo + _BLOCK) - lo
        for i in range(m):
            s[0, 0, i] = r0[lo + i, 0]
            s[0, 1, i] = r0[lo + i, 1]
            s[1, 0, i] = r1[lo + i, 0]
            s[1, 1, i] = r1[lo + i, 1]
            t[0, i] = 0
            t[1, i] = 1
            valpha[i] = np.uint64(0) - gamma[lo + i]
        for level in range(bits):
            bitpos = np.uint64(bits - 1 - level)
            for p in range(2):  # the level's AES, block j of node s being s ^ j
                for j in range(3 if ring else 2):
                    _mmo_all(s[p, 0], s[p, 1], h[p, 2 * j], h[p, 2 * j + 1], m, np.uint64(j))
            for wi in range((m + 63) >> 6):  # 64 elements: one word of each packed part
                w = _u((lo >> 6) + wi)
                tcl = np.uint64(0)
                tcr = np.uint64(0)
                vbits = np.uint64(0)
                base = 64 * wi
                for j in range(min(64, m - base)):
                    i = base + j
                    e = lo + i
                    lane = _u(j)
                    a = (alpha[e] >> bitpos) & _ONE
                    am = np.uint64(0) - a
                    # kept (on alpha's path) and lost children of both parties' nodes
                    k00 = _pick(h[0, 0, i], h[0, 2, i], am)
                    k01 = _pick(h[0, 1, i], h[0, 3, i], am)
                    l00 = _pick(h[0, 2, i], h[0, 0, i], am)
                    l01 = _pick(h[0, 3, i], h[0, 1, i], am)
                    k10 = _pick(h[1, 0, i], h[1, 2, i], am)
                    k11 = _pick(h[1, 1, i], h[1, 3, i], am)
                    l10 = _pick(h[1, 2, i], h[1, 0, i], am)
                    l11 = _pick(h[1, 3, i], h[1, 1, i], am)
                    if ring:
                        kv0 = _pick(h[0, 4, i], h[0, 5, i], am)
                        lv0 = _pick(h[0, 5, i], h[0, 4, i], am)
                        kv1 = _pick(h[1, 4, i], h[1, 5, i], am)
                        lv1 = _pick(h[1, 5, i], h[1, 4, i], am)
                    else:
                        kv0 = (k00 >> _ONE) & _ONE
                        lv0 = (l00 >> _ONE) & _ONE
                        kv1 = (k10 >> _ONE) & _ONE
                        lv1 = (l10 >> _ONE) & _ONE
                    kt0 = k00 & _ONE
                    kt1 = k10 & _ONE
                    c0 = (l00 ^ l10) & _CLEAR
                    c1 = l01 ^ l11
                    at = _u(2 * (level * n + e))
                    scw[at] = c0
                    scw[at + _ONE] = c1
                    t0 = t[0, i]
                    t1 = t[1, i]
                    sg = _ONE - (t1 << _ONE)  # (-1)^t1
                    v = sg * (lv1 - lv0 - valpha[i]) + sg * beta[e] * a
                    valpha[i] += kv0 - kv1 + sg * v
                    if ring:
                        vcw[_u(level * n + e)] = v
                    else:
                        vbits |= (v & _ONE) << lane
                    # t_CW^L = tL0 ^ tL1 ^ a ^ 1, t_CW^R = tR0 ^ tR1 ^ a: the kept one is
                    # kt0 ^ kt1 ^ 1, the lost one lt0 ^ lt1
                    tkeep = kt0 ^ kt1 ^ _ONE
                    tlose = (l00 ^ l10) & _ONE
                    tcl |= _pick(tkeep, tlose, am) << lane
                    tcr |= _pick(tlose, tkeep, am) << lane
                    m0 = np.uint64(0) - t0
                    m1 = np.uint64(0) - t1
                    s[0, 0, i] = (k00 & _CLEAR) ^ (c0 & m0)
                    s[0, 1, i] = k01 ^ (c1 & m0)
                    s[1, 0, i] = (k10 & _CLEAR) ^ (c0 & m1)
                    s[1, 1, i] = k11 ^ (c1 & m1)
                    t[0, i] = kt0 ^ (t0 & tkeep)
                    t[1, i] = kt1 ^ (t1 & tkeep)
                tcw[_u(2 * level * words) + w] = tcl
                tcw[_u((2 * level + 1) * words) + w] = tcr
                if not ring:
                    vcw[_u(level * words) + w] = vbits
        for i in range(m):
            e = lo + i
            fin = (_ONE - (t[1, i] << _ONE)) * (s[1, 1, i] - s[0, 1, i] - valpha[i])
            if ring:
                last[e] = fin
            else:
                last[e >> 6] |= (fin & _ONE) << np.uint64(e & 63)


@_jit
def eval_fused_ring(party, root, x, bits, scw, vcw, tcw, last, v):  # pragma: no cover
    """All of Eval (`dcf.evaluate`) with 64-bit outputs in one call: party's additive shares
    at the points x [n] into v [n]. root [n, 2] its root seeds; the key's parts flat, in the
    layouts of `gen_fused`."""
    n = x.shape[0]
    words = (n + 63) >> 6
    # The block's state: seeds (s0, s1), control bits, sums; a level's MMO outputs, the
    # child's block (h0, h1) and the values block (g0, g1).
    s0 = np.empty(_BLOCK, dtype=np.uint64)
    s1 = np.empty(_BLOCK, dtype=np.uint64)
    t = np.empty(_BLOCK, dtype=np.uint64)
    acc = np.empty(_BLOCK, dtype=np.uint64)
    h0 = np.empty(_BLOCK, dtype=np.uint64)
    h1 = np.empty(_BLOCK, dtype=np.uint64)
    g0 = np.empty(_BLOCK, dtype=np.uint64)
    g1 = np.empty(_BLOCK, dtype=np.uint64)
    c0 = np.empty(_BLOCK, dtype=np.uint64)  # s0 ^ x's bit: the child's block
    neg = np.uint64(0) - np.uint64(party)  # party 1 subtracts: (a ^ neg) - neg = -a
    for lo in range(0, n, _BLOCK):
        m = min(n, lo + _BLOCK) - lo
        xb = x[lo : lo + m]
        for i in range(m):
            s0[i] = root[lo + i, 0]
            c0[i] = root[lo + i, 0] ^ ((xb[i] >> np.uint64(bits - 1)) & _ONE)
            s1[i] = root[lo + i, 1]
            t[i] = party
            acc[i] = 0
        for level in range(bits):
            bitpos = np.uint64(bits - 1 - level)
            # The level's AES in one pass (GROUP blocks in flight).
            _mmo_all(c0, s1, h0, h1, m, np.uint64(0))
            _mmo_all(s0, s1, g0, g1, m, _TWO)
            # Then the correction words, 64 elements (a word of packed bits) at a time, in
            # branch-free word arithmetic the compiler vectorises; they also make the next
            # level's child block c0 = s0 ^ (its bit of x) (no bit after the last level).
            more = np.uint64(1 if level + 1 < bits else 0)
            nshift = bitpos - more
            sc = scw[_u(2 * (level * n + lo)) : _u(2 * (level * n + lo + m))]
            vr = vcw[_u(level * n + lo) : _u(level * n + lo + m)]
            for wi in range((m + 63) >> 6):
                w = _u((lo >> 6) + wi)
                tl = tcw[_u(2 * level * words) + w]
                tx = tl ^ tcw[_u((2 * level + 1) * words) + w]
                base = 64 * wi
                for j in range(min(64, m - base)):
                    i = _u(base + j)
                    lane = _u(j)
                    dm = np.uint64(0) - ((xb[i] >> bitpos) & _ONE)
                    te = t[i]
                    mask = np.uint64(0) - te
                    a0 = h0[i]
                    vh = g0[i] ^ ((g0[i] ^ g1[i]) & dm)
                    acc[i] += ((vh + (vr[i] & mask)) ^ neg) - neg
                    n0 = (a0 & _CLEAR) ^ (sc[2 * i] & mask)
                    s0[i] = n0
                    c0[i] = n0 ^ ((xb[i] >> nshift) & more)
                    s1[i] = h1[i] ^ (sc[2 * i + 1] & mask)
                    t[i] = (a0 & _ONE) ^ (te & ((tl ^ (tx & dm)) >> lane))
        for i in range(m):
            e = lo + i
            fin = s1[i] + (last[e] & (np.uint64(0) - t[i]))
            v[e] = acc[i] + ((fin ^ neg) - neg)


@_jit
def eval_fused_bits(party, root, x, bits, scw, vcw, tcw, last, v):  # pragma: no cover
    """All of Eval (`dcf.evaluate`) with one-bit outputs in one call: party's XOR shares at
    the points x [n] in bit 0 of v [n] (the other bits 0). As `eval_fused_ring`, but the
    control bits and sums (mod 2) are packed 64 to a word, so the per-element pass keeps
    them in registers (~20% faster than per-element arrays)."""
    n = x.shape[0]
    words = (n + 63) >> 6
    bw = _BLOCK >> 6
    s1 = np.empty(_BLOCK, dtype=np.uint64)
    h0 = np.empty(_BLOCK, dtype=np.uint64)
    h1 = np.empty(_BLOCK, dtype=np.uint64)
    c0 = np.empty(_BLOCK, dtype=np.uint64)
    tw = np.empty(bw, dtype=np.uint64)  # control bits, packed
    aw = np.empty(bw, dtype=np.uint64)  # sums (mod 2), packed
    dw = np.empty(bw, dtype=np.uint64)  # this level's bits of x, packed
    top = np.uint64(bits - 1)
    for lo in range(0, n, _BLOCK):
        m = min(n, lo + _BLOCK) - lo
        xb = x[lo : lo + m]
        for wi in range((m + 63) >> 6):
            tw[wi] = np.uint64(0) - np.uint64(party)
            aw[wi] = 0
            dw[wi] = 0
        for i in range(m):
            d = (xb[i] >> top) & _ONE
            c0[i] = root[lo + i, 0] ^ d
            s1[i] = root[lo + i, 1]
            dw[i >> 6] |= d << _u(i & 63)
        for level in range(bits):
            bitpos = np.uint64(bits - 1 - level)
            _mmo_all(c0, s1, h0, h1, m, np.uint64(0))
            more = np.uint64(1 if level + 1 < bits else 0)
            nshift = bitpos - more
            sc = scw[_u(2 * (level * n + lo)) : _u(2 * (level * n + lo + m))]
            for wi in range((m + 63) >> 6):
                w = _u((lo >> 6) + wi)
                tl = tcw[_u(2 * level * words) + w]
                tx = tl ^ tcw[_u((2 * level + 1) * words) + w]
                vb = vcw[_u(level * words) + w]
                tt = tw[wi]
                b0 = np.uint64(0)  # bit 0 of the children's blocks (their t), packed
                b1 = np.uint64(0)  # bit 1 (their value)
                dn = np.uint64(0)  # the next level's bits of x
                base = 64 * wi
                for j in range(min(64, m - base)):
                    i = _u(base + j)
                    lane = _u(j)
                    a0 = h0[i]
                    mask = np.uint64(0) - ((tt >> lane) & _ONE)
                    b0 |= (a0 & _ONE) << lane
                    b1 |= ((a0 >> _ONE) & _ONE) << lane
                    d = (xb[i] >> nshift) & more
                    dn |= d << lane
                    c0[i] = (a0 & _CLEAR) ^ (sc[2 * i] & mask) ^ d
                    s1[i] = h1[i] ^ (sc[2 * i + 1] & mask)
                aw[wi] ^= b1 ^ (tt & vb)
                tw[wi] = b0 ^ (tt & (tl ^ (tx & dw[wi])))
                dw[wi] = dn
        for i in range(m):
            e = lo + i
            lane = _u(i & 63)
            te = (tw[i >> 6] >> lane) & _ONE
            lw = (last[e >> 6] >> np.uint64(e & 63)) & _ONE
            v[e] = ((aw[i >> 6] >> lane) ^ s1[i] ^ (lw & te)) & _ONE
