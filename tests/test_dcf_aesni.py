"""The DCF's AES-NI path (`mpcc.runtime.aesni`, `mpcc.runtime.dcf_fused`):
AES against OpenSSL and FIPS 197, and the fused kernels bit for bit against the level by
level path through OpenSSL (the same keys, the same shares), at sizes around the kernels'
block and group boundaries."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mpcc.runtime import aesni, dcf
from mpcc.runtime.prg import Prg

needs_aesni = pytest.mark.skipif(not aesni.AVAILABLE, reason="no AES-NI on this CPU")


def _openssl_mmo(blocks: np.ndarray) -> np.ndarray:
    """MMO of [k, 2] uint64 blocks under the DCF key, by OpenSSL."""
    enc = Cipher(algorithms.AES(dcf.FIXED_KEY), modes.ECB()).encryptor()
    out = np.frombuffer(enc.update(np.ascontiguousarray(blocks).tobytes()), np.uint64)
    return out.reshape(blocks.shape) ^ blocks


def _blocks(k: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**64, (k, 2), np.uint64, endpoint=False)


def test_round_keys_are_fips_197s() -> None:
    """FIPS 197 Appendix A.1: the last round key of 2b7e1516 28aed2a6 abf71588 09cf4f3c."""
    rks = aesni.round_keys(bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c"))
    assert len(rks) == 11
    last = rks[10][0].to_bytes(8, "little") + rks[10][1].to_bytes(8, "little")
    assert last.hex() == "d014f9a8c9ee2589e13f0cc8b6630ca6"
    with pytest.raises(ValueError, match="16 bytes"):
        aesni.round_keys(b"short")


_one = aesni.mmo_intrinsic(dcf.FIXED_KEY)


@numba.njit
def _mmo_blocks(blocks):  # pragma: no cover - numba
    out = np.empty_like(blocks)
    for i in range(blocks.shape[0]):
        out[i, 0], out[i, 1] = _one(blocks[i, 0], blocks[i, 1])
    return out


@needs_aesni
def test_mmo_is_openssls() -> None:
    b = _blocks(1000)
    b[0] = 0
    b[1] = np.uint64(2**64 - 1)
    np.testing.assert_array_equal(_mmo_blocks(b), _openssl_mmo(b))


_narrow = aesni.mmo_group_intrinsic(dcf.FIXED_KEY, wide=False)
_wide = aesni.mmo_group_intrinsic(dcf.FIXED_KEY, wide=True)


@numba.njit
def _groups_narrow(lo, hi, out_lo, out_hi, tweak):  # pragma: no cover - numba
    for b in range(0, lo.size, aesni.GROUP):
        _narrow(lo, hi, out_lo, out_hi, b, tweak)


@numba.njit
def _groups_wide(lo, hi, out_lo, out_hi, tweak):  # pragma: no cover - numba
    for b in range(0, lo.size, aesni.GROUP):
        _wide(lo, hi, out_lo, out_hi, b, tweak)


@needs_aesni
@pytest.mark.parametrize("wide", [False, True])
def test_group_mmo_is_openssls(wide: bool) -> None:
    """Both group kernels (xmm; VAES where the CPU has it), words in separate arrays."""
    if wide and not aesni.WIDE:
        pytest.skip("no VAES on this CPU")
    run = _groups_wide if wide else _groups_narrow
    b = _blocks(4 * aesni.GROUP, 1)
    for tweak in (0, 1, 2):
        lo, hi = np.empty(len(b), np.uint64), np.empty(len(b), np.uint64)
        run(b[:, 0].copy(), b[:, 1].copy(), lo, hi, np.uint64(tweak))
        want = b.copy()
        want[:, 0] ^= np.uint64(tweak)
        np.testing.assert_array_equal(np.stack([lo, hi], axis=1), _openssl_mmo(want))


@needs_aesni
@pytest.mark.parametrize("ring", [True, False])
@pytest.mark.parametrize(("bits", "n"), [(1, 5), (7, 15), (62, 17), (64, 1000), (62, 2100)])
def test_fused_kernels_are_the_level_path(bits: int, n: int, ring: bool, monkeypatch) -> None:
    """Same key words and the same shares from the fused kernels and the level by level
    path (n: below a group, across packed words, across blocks of the fused kernels)."""
    rng = np.random.default_rng(bits * n)
    top = 2**bits
    alpha = rng.integers(0, top, n, np.uint64, endpoint=False)
    x = rng.integers(0, top, n, np.uint64, endpoint=False)
    x[: n // 3] = alpha[: n // 3]
    beta = rng.integers(0, 2**64, n, np.uint64, endpoint=False)
    gamma = rng.integers(0, 2**64, n, np.uint64, endpoint=False)
    roots = (dcf.root_seeds(Prg.fresh(), n), dcf.root_seeds(Prg.fresh(), n))

    def run() -> tuple[np.ndarray, ...]:
        key = dcf.gen(alpha, beta, gamma, roots, bits, ring)
        return key, *(dcf.evaluate(p, roots[p], key, x, bits, ring) for p in (0, 1))

    monkeypatch.setattr(dcf, "FUSED", True)
    fused = run()
    monkeypatch.setattr(dcf, "FUSED", False)
    monkeypatch.setattr(dcf, "CHUNK", 128)
    for got, want in zip(fused, run(), strict=True):
        np.testing.assert_array_equal(got, want)
    y = fused[1] + fused[2] if ring else (fused[1] ^ fused[2]) & np.uint64(1)
    want = gamma + beta * (x < alpha).astype(np.uint64)
    np.testing.assert_array_equal(y, want if ring else want & np.uint64(1))


@needs_aesni
def test_group_mmo_refuses_strided_arrays() -> None:
    """The group kernel reads whole vectors from the data pointer: a strided view is refused
    at compile time, not read wrong."""
    b = np.zeros(4 * aesni.GROUP, np.uint64)
    out = np.empty(aesni.GROUP, np.uint64)
    with pytest.raises(numba.core.errors.TypingError, match="contiguous 1-d uint64"):
        _groups_narrow(b[::2], b[1::2], out, out.copy(), np.uint64(0))
