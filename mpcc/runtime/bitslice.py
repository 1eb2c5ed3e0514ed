"""Bit-sliced boolean values: 64 elements per uint64 word, and the word kernels of the
comparison tree.

Layout: bit i of element j lives in bit j % 64 of word j // 64 of plane i, so a packed
array has shape [nbits, words(n)]. Lanes beyond n in the last word are padding: packing
sets them to 0 and unpacking ignores them. Every kernel is lane-wise (no operation moves a
bit from one lane to another), so whatever the padding lanes hold never reaches a real one.

Packing transposes 64x64 bit blocks in place (six swap stages, Hacker's Delight 7-3) instead
of moving bits one at a time: about 6 word operations per element and plane group.

Kernels are single-threaded and release the GIL (`nogil`): the two compute parties are two
threads of one process calling them concurrently. The public wrappers make arrays
C-contiguous uint64 so each kernel compiles for one signature and is cached on disk.
"""

from __future__ import annotations

import numba
import numpy as np

_U64 = np.uint64
_jit = numba.njit(cache=True, nogil=True)

# Masks selecting, for each swap distance j, the bit positions whose bit j is clear.
_MASKS = np.array(
    [
        0x00000000FFFFFFFF,
        0x0000FFFF0000FFFF,
        0x00FF00FF00FF00FF,
        0x0F0F0F0F0F0F0F0F,
        0x3333333333333333,
        0x5555555555555555,
    ],
    dtype=np.uint64,
)


def words(n: int) -> int:
    """Packed uint64 words holding n bits."""
    return -(-n // 64)


def _u64(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.uint64)


# ---------------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------------


@_jit
def _transpose64(a, masks):
    """Transpose the 64x64 bit matrix a[row] bit col -> a[col] bit row, in place."""
    j = 32
    for s in range(6):
        m = masks[s]
        sh = np.uint64(j)
        k = 0
        while k < 64:
            t = ((a[k] >> sh) ^ a[k + j]) & m
            a[k] ^= t << sh
            a[k + j] ^= t
            k = (k + j + 1) & ~j
        j >>= 1


@_jit
def _pack(x, nbits, masks):
    n = x.shape[0]
    nw = (n + 63) // 64
    out = np.empty((nbits, nw), dtype=np.uint64)
    block = np.empty(64, dtype=np.uint64)
    for b in range(nw):
        base = b * 64
        cnt = min(64, n - base)
        for j in range(cnt):
            block[j] = x[base + j]
        for j in range(cnt, 64):
            block[j] = 0
        _transpose64(block, masks)
        for i in range(nbits):
            out[i, b] = block[i]
    return out


@_jit
def _unpack(v, n):
    out = np.empty(n, dtype=np.uint64)
    one = np.uint64(1)
    for j in range(n):
        out[j] = (v[j >> 6] >> np.uint64(j & 63)) & one
    return out


def pack(x: np.ndarray, nbits: int = 64) -> np.ndarray:
    """Bits 0..nbits-1 of the n elements of x (any shape, flattened) as planes [nbits, words(n)]."""
    if not 0 <= nbits <= 64:
        raise ValueError(f"nbits must be in 0..64, got {nbits}")
    return _pack(_u64(x).reshape(-1), nbits, _MASKS)


def unpack(v: np.ndarray, n: int) -> np.ndarray:
    """The first n lanes of the packed bit vector v (words(n) words) as 0/1 uint64."""
    v = _u64(v).reshape(-1)
    if v.shape[0] < words(n):
        raise ValueError(f"{v.shape[0]} words cannot hold {n} bits")
    return _unpack(v, n)


# ---------------------------------------------------------------------------------------------
# Comparison tree: c (public) < r (XOR-shared), by a pairwise (lt, eq) tree from bit 0 upwards
# ---------------------------------------------------------------------------------------------


@_jit
def _leaves(party, c_bits, r_bits):
    nb, nw = r_bits.shape
    lt = np.empty((nb, nw), dtype=np.uint64)
    eq = np.empty((nb, nw), dtype=np.uint64)
    for i in range(nb):
        for k in range(nw):
            nc = ~c_bits[i, k]
            r = r_bits[i, k]
            lt[i, k] = nc & r
            eq[i, k] = (nc ^ r) if party == 0 else r
    return lt, eq


def leaves(party: int, c_bits: np.ndarray, r_bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shares of lt_i = ~c_i & r_i and eq_i = ~(c_i ^ r_i) for public c, XOR-shared r (local)."""
    if c_bits.shape != r_bits.shape:
        raise ValueError(f"c planes {c_bits.shape} and r planes {r_bits.shape} differ")
    return _leaves(int(party), _u64(c_bits), _u64(r_bits))


def level_ands(m: int) -> int:
    """AND gates to combine m nodes pairwise, skipping eq for the node holding bit 0."""
    p = m // 2
    return 2 * p - 1 if p else 0


@_jit
def _level_open(lt, eq, u, v):
    m, nw = lt.shape
    p = m // 2
    k = 2 * p - 1
    de = np.empty((2, k, nw), dtype=np.uint64)
    for i in range(p):
        for q in range(nw):
            de[0, i, q] = eq[2 * i + 1, q] ^ u[i, q]
            de[1, i, q] = lt[2 * i, q] ^ v[i, q]
    for i in range(1, p):
        g = p + i - 1
        for q in range(nw):
            de[0, g, q] = eq[2 * i + 1, q] ^ u[g, q]
            de[1, g, q] = eq[2 * i, q] ^ v[g, q]
    return de


@_jit
def _level_close(party, lt, eq, de_mine, de_peer, u, v, w):
    m, nw = lt.shape
    p = m // 2
    odd = m - 2 * p
    mp = p + odd
    lt2 = np.empty((mp, nw), dtype=np.uint64)
    eq2 = np.empty((mp, nw), dtype=np.uint64)
    mine = party == 0
    for g in range(2 * p - 1):
        for q in range(nw):
            d = de_mine[0, g, q] ^ de_peer[0, g, q]
            e = de_mine[1, g, q] ^ de_peer[1, g, q]
            z = w[g, q] ^ (d & v[g, q]) ^ (e & u[g, q])
            if mine:
                z ^= d & e
            if g < p:
                lt2[g, q] = lt[2 * g + 1, q] ^ z
            else:
                eq2[g - p + 1, q] = z
    for q in range(nw):
        eq2[0, q] = 0  # the node holding bit 0 never needs eq
    if odd:
        for q in range(nw):
            lt2[p, q] = lt[m - 1, q]
            eq2[p, q] = eq[m - 1, q]
    return lt2, eq2


def level_open(lt: np.ndarray, eq: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """This party's Beaver openings [d; e] (shape [2, k, words]) for one tree level.

    Pair i joins nodes 2i (lo) and 2i+1 (hi). Gates 0..p-1 are eq_hi & lt_lo, gates p..2p-2
    are eq_hi & eq_lo for pairs 1..p-1; u, v are the level's triple rows, [k, words].
    """
    k = level_ands(lt.shape[0])
    if u.shape[0] != k or v.shape[0] != k:
        raise ValueError(f"level of {lt.shape[0]} nodes needs {k} triples, got {u.shape[0]}")
    return _level_open(_u64(lt), _u64(eq), _u64(u), _u64(v))


def level_close(
    party: int,
    lt: np.ndarray,
    eq: np.ndarray,
    de_mine: np.ndarray,
    de_peer: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    w: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Finish the level's ANDs: the next level's (lt, eq) shares; an odd top node is carried.

    lt = lt_hi ^ (eq_hi & lt_lo), eq = eq_hi & eq_lo; eq of node 0 is left 0 (never used).
    """
    return _level_close(
        int(party), _u64(lt), _u64(eq), _u64(de_mine), _u64(de_peer), _u64(u), _u64(v), _u64(w)
    )
