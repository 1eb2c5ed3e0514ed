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

from itertools import combinations

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
# Comparison tree: c (public) < r (XOR-shared), four nodes to a parent, by masked wires
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


FAN_IN = 4
# A group of four nodes (child 0 the lowest) joins into its parent by
#     lt = l3 ^ e3 l2 ^ e3 e2 l1 ^ e3 e2 e1 l0,    eq = e0 e1 e2 e3
# (l_k, e_k: child k's lt and eq). Its wires opened masked: e0..e3 (0..3), l0..l2 (4..6); l3
# is only XORed in. Each product is (output, wires).
GROUP_WIRES = 7
_PRODUCTS = ((0, (3, 6)), (0, (2, 3, 5)), (0, (1, 2, 3, 4)), (1, (0, 1, 2, 3)))
# The mask products the dealer shares: every subset of two or more wires of a product.
_MONOMIALS = sorted(
    {t for _, ws in _PRODUCTS for k in range(2, len(ws) + 1) for t in combinations(ws, k)},
    key=lambda t: (len(t), t),
)
GROUP_MONOMIALS = len(_MONOMIALS)  # 22


_MONO_WIRES = np.array([sum(1 << w for w in t) for t in _MONOMIALS], np.int64)


# The tree's first level is local: its children are leaves, lt_i = a_i r_i and
# eq_i = a_i ^ r_i with a_i = ~c_i public, so each product a group needs expands into public
# words times products of the group's r bits, which the dealer shares: the 11 products of
# two or more of its four bits (`LEAF_MONOMIALS`). A product of factors e_i (i in E) and l_i
# (i in L) is XOR over T <= E of (prod_{E - T} a_i)(prod_L a_i) r_{T + L}; as bit masks over
# the four children, each term is (output: 0 lt / 1 eq, mask of its a factors, mask of its
# r factors).
_LEAF_PRODUCTS = (  # (output, E, L): lt = l3 ^ e3 l2 ^ e3 e2 l1 ^ e3 e2 e1 l0, eq = e0 e1 e2 e3
    (0, (), (3,)),
    (0, (3,), (2,)),
    (0, (3, 2), (1,)),
    (0, (3, 2, 1), (0,)),
    (1, (0, 1, 2, 3), ()),
)
_LEAF_SETS = sorted(
    (t for k in range(2, FAN_IN + 1) for t in combinations(range(FAN_IN), k)),
    key=lambda t: (len(t), t),
)
LEAF_MONOMIALS = len(_LEAF_SETS)  # 11


def _leaf_terms() -> np.ndarray:
    terms = []
    for out, e, lo in _LEAF_PRODUCTS:
        for k in range(len(e) + 1):
            for t in combinations(e, k):
                a = sum(1 << i for i in (*e, *lo) if i not in t)
                terms.append((out, a, sum(1 << i for i in (*t, *lo))))
    return np.array(terms, np.int64)


_LEAF_TERMS = _leaf_terms()  # 31 terms: 15 for lt, 16 for eq
_LEAF_INDEX = np.full(1 << FAN_IN, -1, np.int64)  # r-factor mask -> its monomial, if >= 2 bits
for _j, _t in enumerate(_LEAF_SETS):
    _LEAF_INDEX[sum(1 << i for i in _t)] = _j


def tree_groups(m: int) -> tuple[int, ...]:
    """Groups per level of the four-to-one tree over m leaves: (16, 4, 1) for 62."""
    levels = []
    while m > 1:
        m = -(-m // FAN_IN)
        levels.append(m)
    return tuple(levels)


@_jit
def _group_open(party, lt, eq, mu):
    g_n, nw, _ = mu.shape
    m = lt.shape[0]
    ones = ~np.uint64(0) if party == 0 else np.uint64(0)
    out = np.empty_like(mu)
    for g in range(g_n):
        for k in range(4):
            node = 4 * g + k
            for q in range(nw):
                out[g, q, k] = (eq[node, q] if node < m else ones) ^ mu[g, q, k]
        for k in range(3):
            node = 4 * g + k
            for q in range(nw):
                out[g, q, 4 + k] = (lt[node, q] if node < m else np.uint64(0)) ^ mu[g, q, 4 + k]
    return out


@_jit
def _group_close(party, lt, opened, mu, mono):
    """A product of masked wires, with m_i the masks and o_i = w_i ^ m_i opened, is
    prod_S w_i = XOR over T <= S of (prod_{S - T} o_i) & (prod_T m_i): one term per subset T,
    its secret factor nothing (T empty: P0 adds the public product), a mask share m_i or a
    monomial share k_j (`_MONOMIALS[j]`). Written out for `_PRODUCTS` (44 terms), so the
    compiler keeps a group's 36 words in registers."""
    g_n, nw, _ = opened.shape
    m = lt.shape[0]
    pm = ~np.uint64(0) if party == 0 else np.uint64(0)
    lt2 = np.empty((g_n, nw), dtype=np.uint64)
    eq2 = np.empty((g_n, nw), dtype=np.uint64)
    for g in range(g_n):
        top = 4 * g + 3
        for q in range(nw):
            o0, o1, o2, o3 = opened[g, q, 0], opened[g, q, 1], opened[g, q, 2], opened[g, q, 3]
            o4, o5, o6 = opened[g, q, 4], opened[g, q, 5], opened[g, q, 6]
            m0, m1, m2, m3 = mu[g, q, 0], mu[g, q, 1], mu[g, q, 2], mu[g, q, 3]
            m4, m5, m6 = mu[g, q, 4], mu[g, q, 5], mu[g, q, 6]
            k = mono[g, q]
            p01, p02, p03, p12 = o0 & o1, o0 & o2, o0 & o3, o1 & o2
            p13, p14, p23, p24 = o1 & o3, o1 & o4, o2 & o3, o2 & o4
            p25, p34, p35, p36 = o2 & o5, o3 & o4, o3 & o5, o3 & o6
            p012, p013, p023, p123 = p01 & o2, p01 & o3, p02 & o3, p12 & o3
            p124, p134, p234, p235 = p12 & o4, p13 & o4, p23 & o4, p23 & o5
            p0123, p1234 = p012 & o3, p123 & o4
            acc = lt[top, q] if top < m else np.uint64(0)
            # lt: e3 l2
            acc ^= (p36 & pm) ^ (o6 & m3) ^ (o3 & m6) ^ k[11]
            # e2 e3 l1
            acc ^= (p235 & pm) ^ (p35 & m2) ^ (p25 & m3) ^ (p23 & m5)
            acc ^= (o5 & k[6]) ^ (o3 & k[8]) ^ (o2 & k[10]) ^ k[19]
            # e1 e2 e3 l0
            acc ^= (p1234 & pm) ^ (p234 & m1) ^ (p134 & m2) ^ (p124 & m3) ^ (p123 & m4)
            acc ^= (p34 & k[3]) ^ (p24 & k[4]) ^ (p23 & k[5]) ^ (p14 & k[6]) ^ (p13 & k[7])
            acc ^= (p12 & k[9]) ^ (o4 & k[15]) ^ (o3 & k[16]) ^ (o2 & k[17]) ^ (o1 & k[18])
            lt2[g, q] = acc ^ k[21]
            if g == 0:  # the group holding bit 0: its eq is never used
                eq2[g, q] = 0
                continue
            # eq: e0 e1 e2 e3
            e = (p0123 & pm) ^ (p123 & m0) ^ (p023 & m1) ^ (p013 & m2) ^ (p012 & m3)
            e ^= (p23 & k[0]) ^ (p13 & k[1]) ^ (p12 & k[2]) ^ (p03 & k[3]) ^ (p02 & k[4])
            e ^= (p01 & k[6]) ^ (o3 & k[12]) ^ (o2 & k[13]) ^ (o1 & k[14]) ^ (o0 & k[15])
            eq2[g, q] = e ^ k[20]
    return lt2, eq2


@_jit
def _monomials(mu, mono_wires):
    g_n, nw, _ = mu.shape
    out = np.empty((g_n, nw, mono_wires.shape[0]), dtype=np.uint64)
    for g in range(g_n):
        for q in range(nw):
            for j in range(mono_wires.shape[0]):
                v = ~np.uint64(0)
                for i in range(GROUP_WIRES):
                    if (mono_wires[j] >> i) & 1:
                        v &= mu[g, q, i]
                out[g, q, j] = v
    return out


def group_open(party: int, lt: np.ndarray, eq: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """This party's share of one level's wires masked, [groups, words, 7]: nodes 4g..4g+3
    form group g; nodes beyond the level's (padding at the top) are lt = 0, eq = 1. `mu`:
    this party's XOR share of the wires' masks, same shape."""
    if mu.shape != (-(-lt.shape[0] // FAN_IN), lt.shape[1], GROUP_WIRES):
        raise ValueError(f"masks {mu.shape} do not fit a level of {lt.shape} nodes")
    return _group_open(int(party), _u64(lt), _u64(eq), _u64(mu))


def group_close(
    party: int, lt: np.ndarray, opened: np.ndarray, mu: np.ndarray, mono: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The parents' (lt, eq) shares [groups, words] from the level's opened wires (both
    shares XORed), the wires' mask shares and the monomials' shares [groups, words, 22].
    eq of group 0 (holding bit 0) is left 0: it is never used."""
    if mono.shape != (*mu.shape[:2], GROUP_MONOMIALS) or opened.shape != mu.shape:
        raise ValueError(f"a level of {mu.shape} wires got {opened.shape}, {mono.shape}")
    return _group_close(int(party), _u64(lt), _u64(opened), _u64(mu), _u64(mono))


def monomials(mu: np.ndarray) -> np.ndarray:
    """Dealer: every monomial of a level's masks, [groups, words, 22], from the masks
    themselves (both shares XORed), [groups, words, 7]."""
    return _monomials(_u64(mu), _MONO_WIRES)


@_jit
def _leaf_monomials(r_bits, sets):
    m, nw = r_bits.shape
    g_n = -(-m // 4)
    out = np.empty((g_n, nw, sets.shape[0]), dtype=np.uint64)
    for g in range(g_n):
        for q in range(nw):
            for j in range(sets.shape[0]):
                v = ~np.uint64(0)
                for i in range(4):
                    if (sets[j] >> i) & 1:
                        node = 4 * g + i
                        v &= r_bits[node, q] if node < m else np.uint64(0)
                out[g, q, j] = v
    return out


@_jit
def _leaf_level(party, c_bits, r_bits, mono, terms, index):
    m, nw = r_bits.shape
    g_n = mono.shape[0]
    pm = ~np.uint64(0) if party == 0 else np.uint64(0)
    ones = ~np.uint64(0)
    lt = np.empty((g_n, nw), dtype=np.uint64)
    eq = np.empty((g_n, nw), dtype=np.uint64)
    a = np.empty(4, dtype=np.uint64)
    r = np.empty(4, dtype=np.uint64)
    for g in range(g_n):
        for q in range(nw):
            for i in range(4):
                node = 4 * g + i
                a[i] = ~c_bits[node, q] if node < m else ones  # padding leaf: lt 0, eq 1
                r[i] = r_bits[node, q] if node < m else np.uint64(0)
            acc0 = np.uint64(0)
            acc1 = np.uint64(0)
            for t in range(terms.shape[0]):
                coef = ones
                for i in range(4):
                    if (terms[t, 1] >> i) & 1:
                        coef &= a[i]
                rs = terms[t, 2]
                if rs == 0:
                    v = pm
                elif rs & (rs - 1) == 0:  # one r bit: its share
                    v = r[0] if rs == 1 else r[1] if rs == 2 else r[2] if rs == 4 else r[3]
                else:
                    v = mono[g, q, index[rs]]
                if terms[t, 0] == 0:
                    acc0 ^= coef & v
                else:
                    acc1 ^= coef & v
            lt[g, q] = acc0
            eq[g, q] = acc1 if g > 0 else np.uint64(0)  # group 0's eq is never used
    return lt, eq


def leaf_monomials(r_bits: np.ndarray) -> np.ndarray:
    """Dealer: the products of two or more of each leaf group's r bits, [groups, words, 11],
    from the bits themselves [leaves, words] (padding leaves are 0)."""
    sets = np.array([sum(1 << i for i in t) for t in _LEAF_SETS], np.int64)
    return _leaf_monomials(_u64(r_bits), sets)


def leaf_level(
    party: int, c_bits: np.ndarray, r_bits: np.ndarray, mono: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The tree's first level without a round: the parents' (lt, eq) shares [groups, words]
    of the leaves lt_i = ~c_i & r_i, eq_i = ~(c_i ^ r_i), from public c, this party's XOR
    shares of r's bits and of their products `mono` [groups, words, 11]. eq of group 0 is
    left 0, as in `group_close`."""
    g_n = -(-r_bits.shape[0] // FAN_IN)
    if c_bits.shape != r_bits.shape or mono.shape != (g_n, r_bits.shape[1], LEAF_MONOMIALS):
        raise ValueError(f"c {c_bits.shape}, r {r_bits.shape} and monomials {mono.shape} differ")
    return _leaf_level(int(party), _u64(c_bits), _u64(r_bits), _u64(mono), _LEAF_TERMS, _LEAF_INDEX)
