"""Bit-slicing kernels: packing, unpacking, and the comparison tree's masked-wire levels."""

from __future__ import annotations

import numpy as np
import pytest

from mpcc.compiler import costs
from mpcc.runtime import bitslice
from mpcc.runtime.protocols import relu

ONE = np.uint64(1)


def _naive_pack(x: np.ndarray, nbits: int) -> np.ndarray:
    x = x.reshape(-1)
    out = np.zeros((nbits, bitslice.words(x.size)), dtype=np.uint64)
    for i in range(nbits):
        for j, xj in enumerate(x):
            out[i, j // 64] |= ((xj >> np.uint64(i)) & ONE) << np.uint64(j % 64)
    return out


@pytest.mark.parametrize("n", [0, 1, 2, 63, 64, 65, 127, 128, 129, 1000])
def test_pack_matches_naive_and_unpacks(n: int) -> None:
    rng = np.random.default_rng(n)
    x = rng.integers(0, 2**64, n, dtype=np.uint64)
    x[: n // 4] = np.uint64(2**64 - 1)  # all-ones rows exercise every swap stage
    packed = bitslice.pack(x, 64)
    assert packed.shape == (64, bitslice.words(n)) and packed.dtype == np.uint64
    np.testing.assert_array_equal(packed, _naive_pack(x, 64))
    for i in (0, 1, 31, 32, 62, 63):
        np.testing.assert_array_equal(bitslice.unpack(packed[i], n), (x >> np.uint64(i)) & ONE)
    if n % 64:  # padding lanes are 0
        assert not np.any(packed[:, -1] >> np.uint64(n % 64))


def test_pack_fewer_planes_any_shape() -> None:
    x = np.arange(2 * 3 * 17, dtype=np.uint64).reshape(2, 3, 17) * np.uint64(0x9E3779B97F4A7C15)
    np.testing.assert_array_equal(bitslice.pack(x, 7), _naive_pack(x, 64)[:7])
    assert bitslice.pack(x, 0).shape == (0, 2)
    with pytest.raises(ValueError):
        bitslice.pack(x, 65)
    with pytest.raises(ValueError):
        bitslice.unpack(np.zeros(1, np.uint64), 65)


def test_levels_match_cost_model() -> None:
    assert relu.TREE_GROUPS == costs.COMPARE_GROUPS == bitslice.tree_groups(62) == (16, 4, 1)
    assert relu.WIRES == costs.COMPARE_WIRES
    assert relu.LEAF_MONOMIALS + relu.MONOMIALS == costs.COMPARE_MONOMIALS
    assert relu.MASK_BITS == costs.MASK_BITS
    assert bitslice.tree_groups(1) == () and bitslice.tree_groups(5) == (2, 1)


def _shared_tree(c: np.ndarray, r: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Run the comparison tree on XOR shares of r's bits with locally made masks and
    monomials; return the reconstructed packed beta = [c mod 2^62 < r mod 2^62]."""
    nb = relu.COMPARE_BITS
    c_bits, r_bits = bitslice.pack(c, nb), bitslice.pack(r, nb)
    nw = c_bits.shape[1]
    r0 = rng.integers(0, 2**64, r_bits.shape, dtype=np.uint64)
    state = [bitslice.leaves(p, c_bits, s) for p, s in ((0, r0), (1, r_bits ^ r0))]
    for g in relu.TREE_GROUPS:
        mu = [rng.integers(0, 2**64, (g, nw, 7), dtype=np.uint64) for _ in range(2)]
        full = bitslice.monomials(mu[0] ^ mu[1])
        k0 = rng.integers(0, 2**64, full.shape, dtype=np.uint64)
        mono = [k0, full ^ k0]
        mine = [bitslice.group_open(p, *state[p], mu[p]) for p in (0, 1)]
        state = [
            bitslice.group_close(p, state[p][0], mine[0] ^ mine[1], mu[p], mono[p]) for p in (0, 1)
        ]
    assert state[0][0].shape == (1, nw)
    return state[0][0][0] ^ state[1][0][0]


def test_monomials_are_the_products_of_their_masks() -> None:
    mu = np.random.default_rng(3).integers(0, 2**64, (2, 3, 7), dtype=np.uint64)
    full = bitslice.monomials(mu)
    assert full.shape == (2, 3, bitslice.GROUP_MONOMIALS)
    for j, wires in enumerate(bitslice._MONOMIALS):
        want = np.bitwise_and.reduce(mu[..., list(wires)], axis=-1)
        np.testing.assert_array_equal(full[..., j], want)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7, 16, 17, 62])
def test_group_level_joins_any_node_count(m: int) -> None:
    """One level over m nodes (padding nodes at the top of the last group): the parents'
    lt and eq against their definition, on XOR shares."""
    rng = np.random.default_rng(m)
    nw = 3
    lt = rng.integers(0, 2**64, (m, nw), dtype=np.uint64)
    eq = rng.integers(0, 2**64, (m, nw), dtype=np.uint64) & ~lt  # lt and eq exclusive
    g = -(-m // 4)
    shares = []
    for a in (lt, eq):
        a0 = rng.integers(0, 2**64, a.shape, dtype=np.uint64)
        shares.append((a0, a ^ a0))
    mu = [rng.integers(0, 2**64, (g, nw, 7), dtype=np.uint64) for _ in range(2)]
    full = bitslice.monomials(mu[0] ^ mu[1])
    k0 = rng.integers(0, 2**64, full.shape, dtype=np.uint64)
    mono = [k0, full ^ k0]
    mine = [bitslice.group_open(p, shares[0][p], shares[1][p], mu[p]) for p in (0, 1)]
    out = [bitslice.group_close(p, shares[0][p], mine[0] ^ mine[1], mu[p], mono[p]) for p in (0, 1)]
    lt2, eq2 = out[0][0] ^ out[1][0], out[0][1] ^ out[1][1]
    ones = ~np.uint64(0)
    pad_lt = np.concatenate([lt, np.zeros((4 * g - m, nw), np.uint64)])
    pad_eq = np.concatenate([eq, np.full((4 * g - m, nw), ones, np.uint64)])
    for j in range(g):
        l_, e_ = pad_lt[4 * j : 4 * j + 4], pad_eq[4 * j : 4 * j + 4]
        want_lt = l_[3] ^ (e_[3] & l_[2]) ^ (e_[3] & e_[2] & l_[1])
        want_lt ^= e_[3] & e_[2] & e_[1] & l_[0]
        np.testing.assert_array_equal(lt2[j], want_lt)
        want_eq = e_[0] & e_[1] & e_[2] & e_[3] if j else np.zeros(nw, np.uint64)
        np.testing.assert_array_equal(eq2[j], want_eq)


def test_comparison_tree() -> None:
    rng = np.random.default_rng(7)
    n = 5000
    r = rng.integers(0, 2**64, n, dtype=np.uint64)
    c = rng.integers(0, 2**64, n, dtype=np.uint64)
    low = np.uint64(2**62 - 1)
    c[:1000] = r[:1000]  # equal
    c[1000:2000] = r[1000:2000] ^ (ONE << rng.integers(0, 62, 1000).astype(np.uint64))  # 1 bit
    c[2000:2500] = r[2000:2500] ^ np.uint64(3 << 62)  # differ only above bit 61
    c[2500:2600], r[2500:2600] = 0, low
    c[2600:2700], r[2600:2700] = low, 0
    perm = rng.permutation(n)
    c, r = c[perm], r[perm]
    beta = _shared_tree(c, r, rng)
    want = ((c & low) < (r & low)).astype(np.uint64)
    np.testing.assert_array_equal(bitslice.unpack(beta, n), want)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7, 16, 17, 62])
def test_leaf_level_is_the_masked_level_without_a_round(m: int) -> None:
    """The first level from public c, XOR-shared r bits and the dealer's products of each
    group's r bits equals the masked level's parents (an opening round) on the same leaves."""
    rng = np.random.default_rng(100 + m)
    nw = 3
    c = rng.integers(0, 2**64, (m, nw), dtype=np.uint64)
    r = rng.integers(0, 2**64, (m, nw), dtype=np.uint64)
    r0 = rng.integers(0, 2**64, r.shape, dtype=np.uint64)
    full = bitslice.leaf_monomials(r)
    assert full.shape == (-(-m // 4), nw, bitslice.LEAF_MONOMIALS)
    k0 = rng.integers(0, 2**64, full.shape, dtype=np.uint64)
    got = [bitslice.leaf_level(p, c, s, k) for p, s, k in ((0, r0, k0), (1, r ^ r0, full ^ k0))]
    lt, eq = got[0][0] ^ got[1][0], got[0][1] ^ got[1][1]
    # the same level through the masked kernels, with zero masks on the leaves' values
    leaves = bitslice.leaves(0, c, r)
    g = -(-m // 4)
    zero = np.zeros((g, nw, bitslice.GROUP_WIRES), np.uint64)
    wires = bitslice.group_open(0, *leaves, zero)
    mono = np.zeros((g, nw, bitslice.GROUP_MONOMIALS), np.uint64)
    want_lt, want_eq = bitslice.group_close(0, leaves[0], wires, zero, mono)
    np.testing.assert_array_equal(lt, want_lt)
    np.testing.assert_array_equal(eq, want_eq)
