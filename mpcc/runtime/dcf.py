"""Distributed comparison functions (DCF): two-party function secret sharing of x -> [x < alpha].

Boyle, Chandran, Gilboa, Gupta, Ishai, Kohli and Boyle, "Function Secret Sharing for
Mixed-Mode and Fixed-Point Secure Computation", EUROCRYPT 2021 (BCG+21), Fig. 1, the
construction LLAMA (Gupta et al., PETS 2022), Orca (Jawalkar et al., S&P 2024) and SIGMA
(Gupta et al., PETS 2024) build on. For a secret alpha in [0, 2^m), payload beta and offset
gamma, Gen gives keys k0, k1 such that for every public x in [0, 2^m)

    Eval(0, k0, x) + Eval(1, k1, x) = gamma + beta * [x < alpha]   (mod 2^64),

and each key alone is pseudorandom. With one-bit outputs (`ring=False`) the same holds mod 2:
the two outputs are XOR shares. The offset is not in BCG+21: it starts Gen's running on-path
sum at -gamma, so every total (off-path and at alpha) comes out gamma higher, at no cost.

Construction (per element, bits of alpha from the most significant). Each party walks a
binary tree of 128-bit seeds with a control bit t; the dealer keeps the two parties' seeds
on alpha's path apart (t0 ^ t1 = 1) and makes them equal (t0 = t1) where a path leaves
alpha's: one correction word per level, common to both keys,
CW_i = s_CW (128 bits) || V_CW (64 bits or 1 bit) || t_CW^L || t_CW^R, and a final CW_{m+1}.
Off-path subtrees then cancel, and V_CW makes the value where x leaves alpha's path to the
left (x_i = 0 < alpha_i = 1) total beta less the sum so far. Key: a party's root seed plus
m (128 + 2 + 64) + 64 bits of common correction words (m (128 + 3) + 1 for one-bit outputs).

PRG. G(s) for a seed s is fixed-key AES in Matyas-Meyer-Oseas mode, h_j = AES_K(s ^ j) ^ s ^ j
(K public; AES modelled as an ideal permutation: Guo, Katz, Wang and Yu, IEEE S&P 2020, the
PRG of Google's distributed_point_functions). h_0, h_1 give the left and right child (bit 0
is t, the 2 low bits are cleared in seeds), h_2 the two 64-bit values (one-bit outputs take
bit 1 of h_0, h_1 instead). Gen needs 3 blocks per node and party (2 with one-bit
outputs); Eval only the blocks of its own path: 2 per level (1 with one-bit outputs).

Two implementations give the same keys and outputs bit for bit, neither with a Python loop
over elements. Where the CPU has AES-NI (`aesni.AVAILABLE`), Gen and Eval are one numba
call each (`mpcc.runtime.dcf_fused`): AES is emitted into the kernel (16 blocks in flight,
two per VAES instruction) and elements go through all levels in blocks whose state stays
in L1. Elsewhere every level is one ECB call over all elements (of a chunk of `CHUNK`;
OpenSSL through `cryptography`) between numba level kernels (`mpcc.runtime.dcf_kernels`).

Time (`benchmarks/fss.py`, m = 62, n = 10^5, the 2-core dev box (AMD EPYC, Zen 3) at load
~2.5; CPU seconds, in brackets ns per element and level): with AES-NI, Gen 0.103 (17) with
64-bit outputs, 0.075 (12) with one-bit outputs; Eval per party 0.031 (4.9), 0.016 (2.6).
Level by level with OpenSSL: Gen 0.235 (38), 0.173 (28); Eval 0.07-0.09 (11-15), 0.044
(7.1), of which OpenSSL's AES is 0.023 and 0.010, and ~0.3 ms more per call (62
Python-level calls) that the fused kernels do not pay: at 512 elements one-bit Eval takes
2.7 ns per element and level against 17.

Common key words, flat uint64, for n elements (w = ceil(n / 64) packed words):
s_CW [m, n, 2] | V_CW [m, n] (ring) or [m, w] (bits) | t_CW [m, 2, w] | CW_{m+1} [n] or [w].
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mpcc.runtime import aesni, bitslice
from mpcc.runtime.prg import Prg

# The public fixed key of the MMO PRG.
FIXED_KEY = hashlib.sha256(b"mpcc/dcf/G: fixed-key AES-128, Matyas-Meyer-Oseas").digest()[:16]

SEED_WORDS = 2  # 128-bit seeds
# Elements per pass through the levels (a multiple of 64): big enough that a level's AES
# call amortises its overhead, small enough to bound the pass's buffers (Gen: 200 B per
# element, ~3 MB). Measured at n = 10^5: 2^10..2^20 all within noise of each other.
CHUNK = 1 << 14
_CLEAR = ~np.uint64(3)
_ONE = np.uint64(1)
# Gen and Eval in one numba call each, AES inside (`dcf_fused`), where the CPU has AES-NI;
# else a level at a time with OpenSSL's AES between the level kernels (`dcf_kernels`). Same
# keys and outputs. Each kernel module is imported only when used, so a process holds (and
# `runtime.warmup` compiles) only the kernels of its path.
FUSED = aesni.AVAILABLE


def key_words(n: int, bits: int, ring: bool = True) -> int:
    """uint64 words of the common correction words of n DCFs on `bits`-bit inputs."""
    w = bitslice.words(n)
    if ring:
        return bits * (3 * n + 2 * w) + n
    return bits * (2 * n + 3 * w) + w


def _layout(n: int, bits: int, ring: bool) -> dict[str, tuple[int, ...]]:
    w = bitslice.words(n)
    return {
        "scw": (bits, n, 2),
        "vcw": (bits, n) if ring else (bits, w),
        "tcw": (bits, 2, w),
        "last": (n,) if ring else (w,),
    }


def split(key: np.ndarray, n: int, bits: int, ring: bool = True) -> dict[str, np.ndarray]:
    """The common key words as named views: scw, vcw, tcw, last."""
    if key.dtype != np.uint64 or key.size != key_words(n, bits, ring):
        raise ValueError(
            f"DCF key: want {key_words(n, bits, ring)} uint64 words, got {key.size} {key.dtype}"
        )
    flat, parts, at = key.reshape(-1), {}, 0
    for name, shape in _layout(n, bits, ring).items():
        size = math.prod(shape)
        parts[name] = flat[at : at + size].reshape(shape)
        at += size
    return parts


def root_seeds(prg: Prg, n: int) -> np.ndarray:
    """A party's n root seeds [n, 2] from its stream (the 2 low bits cleared)."""
    s = prg.uint64(n, SEED_WORDS)
    s[:, 0] &= _CLEAR
    return s


class _Mmo:
    """Fixed-key AES over whole buffers of 16-byte blocks (ECB: one call per tree level)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self._enc = Cipher(algorithms.AES(FIXED_KEY), modes.ECB()).encryptor()
        nbytes = 8 * math.prod(shape)
        self._raw = np.empty(nbytes + 16, dtype=np.uint8)  # update_into wants 15 spare bytes
        self.out = self._raw[:nbytes].view(np.uint64).reshape(shape)
        self.nbytes = nbytes

    def __call__(self, inp: np.ndarray) -> np.ndarray:
        written = self._enc.update_into(inp.reshape(-1).view(np.uint8), self._raw)
        assert written == self.nbytes
        return self.out


def _bits(bits: int) -> int:
    if not 1 <= bits <= 64:
        raise ValueError(f"DCF input width must be in 1..64 bits, got {bits}")
    return bits


def gen(
    alpha: np.ndarray,
    beta: np.ndarray,
    gamma: np.ndarray,
    roots: tuple[np.ndarray, np.ndarray],
    bits: int,
    ring: bool = True,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Dealer: the common correction words (flat uint64, `key_words` long) of n DCFs for
    [x < alpha] with payload beta and offset gamma (n each, or scalars), given both parties'
    root seeds ([n, 2] each, from `root_seeds`). Writes into `out` if given."""
    bits = _bits(bits)
    alpha = np.ascontiguousarray(alpha, dtype=np.uint64).reshape(-1)
    n = alpha.size
    if bits < 64 and np.any(alpha >> np.uint64(bits)):
        raise ValueError(f"DCF: alpha does not fit in {bits} bits")
    beta = np.ascontiguousarray(np.broadcast_to(np.asarray(beta, np.uint64), (n,)))
    gamma = np.ascontiguousarray(np.broadcast_to(np.asarray(gamma, np.uint64), (n,)))
    if out is None:
        out = np.empty(key_words(n, bits, ring), dtype=np.uint64)
    k = split(out, n, bits, ring)
    k["vcw"][...] = 0
    k["tcw"][...] = 0
    r0, r1 = (np.ascontiguousarray(r, np.uint64).reshape(n, 2) for r in roots)
    if FUSED:
        from mpcc.runtime.dcf_fused import gen_fused

        k["last"][...] = 0
        flat = [k[name].reshape(-1) for name in ("scw", "vcw", "tcw", "last")]
        gen_fused(alpha, beta, gamma, r0, r1, bits, ring, *flat)
        return out
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        _gen_chunk(alpha[lo:hi], beta[lo:hi], gamma[lo:hi], r0[lo:hi], r1[lo:hi], bits, ring, k, lo)
    return out


def _gen_chunk(alpha, beta, gamma, r0, r1, bits, ring, k, lo) -> None:
    """Gen for the elements lo.. lo + len(alpha) (lo a multiple of 64): every level's AES
    over the chunk in one call, so the chunk's state stays in cache across the levels."""
    from mpcc.runtime.dcf_kernels import gen_level

    n, wlo = alpha.size, lo // 64
    wsl = slice(wlo, wlo + bitslice.words(n))
    s = np.stack([r0, r1])
    t = np.zeros((2, n), dtype=np.uint64)
    t[1] = 1
    valpha = np.zeros(n, dtype=np.uint64)
    valpha -= gamma
    blocks = 3 if ring else 2  # one-bit values come with the children's blocks
    inp = np.empty((2, n, blocks, 2), dtype=np.uint64)
    inp[...] = s[:, :, None, :]
    inp[:, :, :, 0] ^= np.arange(blocks, dtype=np.uint64)
    aes = _Mmo(inp.shape)
    dummy = np.empty(1, dtype=np.uint64)
    for level in range(bits):
        if ring:
            vcw, vbits = k["vcw"][level, lo : lo + n], dummy
        else:
            vcw, vbits = dummy, k["vcw"][level, wsl]
        gen_level(
            aes(inp),
            inp,
            np.uint64(bits - 1 - level),
            alpha,
            beta,
            ring,
            s,
            t,
            valpha,
            k["scw"][level, lo : lo + n],
            vcw,
            vbits,
            k["tcw"][level][:, wsl],
        )
    sg = _ONE - (t[1] << _ONE)
    last = sg * (s[1, :, 1] - s[0, :, 1] - valpha)
    if ring:
        k["last"][lo : lo + n] = last
    else:
        k["last"][wsl] = bitslice.pack(last & _ONE, 1)[0]


def evaluate(
    party: int, root: np.ndarray, key: np.ndarray, x: np.ndarray, bits: int, ring: bool = True
) -> np.ndarray:
    """Party `party`'s share of gamma + beta [x < alpha] at the public points x (n, one per
    DCF): uint64 [n], an additive share (ring) or an XOR share in bit 0 (bits)."""
    bits = _bits(bits)
    x = np.ascontiguousarray(x, dtype=np.uint64).reshape(-1)
    n = x.size
    if bits < 64 and np.any(x >> np.uint64(bits)):
        raise ValueError(f"DCF: a point does not fit in {bits} bits")
    k = split(key, n, bits, ring)
    root = np.ascontiguousarray(root, np.uint64).reshape(n, 2)
    v = np.empty(n, dtype=np.uint64)
    if FUSED:
        from mpcc.runtime import dcf_fused

        flat = [k[name].reshape(-1) for name in ("scw", "vcw", "tcw", "last")]
        kernel = dcf_fused.eval_fused_ring if ring else dcf_fused.eval_fused_bits
        kernel(party, root, x, bits, *flat, v)
        return v
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        v[lo:hi] = _eval_chunk(party, root[lo:hi], k, x[lo:hi], bits, ring, lo)
    return v if ring else v & _ONE


def _eval_chunk(party, root, k, x, bits, ring, lo) -> np.ndarray:
    """Eval for the elements lo.. lo + len(x) (lo a multiple of 64), a level's AES at once."""
    from mpcc.runtime.dcf_kernels import eval_level

    n, wlo = x.size, lo // 64
    wsl = slice(wlo, wlo + bitslice.words(n))
    s = np.array(root)
    t = np.full(n, party, dtype=np.uint64)
    v = np.zeros(n, dtype=np.uint64)
    blocks = 2 if ring else 1
    inp = np.empty((n, blocks, 2), dtype=np.uint64)
    inp[...] = s[:, None, :]
    inp[:, 0, 0] ^= (x >> np.uint64(bits - 1)) & _ONE
    if ring:
        inp[:, 1, 0] ^= np.uint64(2)
    aes = _Mmo(inp.shape)
    dummy = np.empty(1, dtype=np.uint64)
    for level in range(bits):
        if ring:
            vcw, vbits = k["vcw"][level, lo : lo + n], dummy
        else:
            vcw, vbits = dummy, k["vcw"][level, wsl]
        eval_level(
            aes(inp),
            inp,
            np.uint64(bits - 1 - level),
            x,
            party == 1,
            ring,
            s,
            t,
            v,
            k["scw"][level, lo : lo + n],
            vcw,
            vbits,
            k["tcw"][level][:, wsl],
        )
    last = k["last"][lo : lo + n] if ring else bitslice.unpack(k["last"][wsl], n)
    final = s[:, 1] + t * last
    if party == 1:
        v -= final
    else:
        v += final
    return v
