"""Fixed-key AES-128 inside numba kernels, on the CPU's AES instructions (AES-NI, VAES).

The DCF's PRG (`mpcc.runtime.dcf`) is fixed-key AES in Matyas-Meyer-Oseas mode,
h = AES_K(b) ^ b, on blocks that depend on the previous tree level's output. Through
OpenSSL every level is a Python-level ECB call between two numba passes; here AES is emitted
into the numba kernels themselves as LLVM's `llvm.x86.aesni.aesenc[last]` intrinsics
(`aesenc` x 9, `aesenclast`), the public key's 11 round keys (FIPS 197 Sec. 5.2) compiled in
as constants, so a DCF evaluates all its levels in one kernel call:

* `mmo_intrinsic`: one block in registers (tails, tests);
* `mmo_group_intrinsic`: GROUP blocks whose two words sit in separate arrays (the kernels'
  layout), round by round over the group, so GROUP independent chains are in flight as in
  OpenSSL's interleaved ECB; with VAES two blocks per 256-bit instruction (AMD Zen 3, Intel
  Ice Lake and later). Measured on the dev box (Zen 3, 2.45 GHz): 1.1 ns a block with
  VAES, 2.2 without, OpenSSL's ECB 1.7-1.9.

`AVAILABLE` and `WIDE` say whether numba's code generator targets a CPU with AES-NI and with
VAES (the host CPU unless NUMBA_CPU_NAME / NUMBA_CPU_FEATURES say otherwise); without AES-NI
callers take the OpenSSL path. Both give the same bits (tests/test_dcf_aesni.py: against
OpenSSL and FIPS 197, and the fused DCF kernels against the level-by-level path).
"""

from __future__ import annotations

import os
import platform

from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core import config as numba_config
from numba.core.errors import TypingError
from numba.extending import intrinsic


def _sbox() -> list[int]:
    """The AES S-box (FIPS 197 Sec. 5.1.1): inverse in GF(2^8), then the affine map."""
    box, p, q = [0x63] * 256, 1, 1
    while True:
        p ^= ((p << 1) & 0xFF) ^ (0x1B if p & 0x80 else 0)  # p * 3
        q ^= q << 1
        q ^= q << 2
        q ^= q << 4
        q &= 0xFF
        if q & 0x80:  # q / 3
            q ^= 0x09
        r = q
        for k in range(1, 5):
            r ^= ((q << k) | (q >> (8 - k))) & 0xFF
        box[p] = r ^ 0x63
        if p == 1:
            return box


def round_keys(key: bytes) -> list[tuple[int, int]]:
    """AES-128's 11 round keys (FIPS 197 Sec. 5.2), each as two little-endian 64-bit words,
    the layout of a block in a uint64 pair."""
    if len(key) != 16:
        raise ValueError("AES-128 key must be 16 bytes")
    sbox, rcon = _sbox(), [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1B, 0x36]
    w = [list(key[4 * i : 4 * i + 4]) for i in range(4)]
    for i in range(4, 44):
        t = list(w[i - 1])
        if i % 4 == 0:
            t = [sbox[b] for b in t[1:] + t[:1]]
            t[0] ^= rcon[i // 4 - 1]
        w.append([a ^ b for a, b in zip(w[i - 4], t, strict=True)])
    out = []
    for r in range(11):
        block = bytes(sum(w[4 * r : 4 * r + 4], []))
        out.append((int.from_bytes(block[:8], "little"), int.from_bytes(block[8:], "little")))
    return out


def _target_has(feature: str) -> bool:
    """Whether numba's code generator targets an x86-64 CPU with `feature` (LLVM's name;
    other architectures have an "aes" feature too, not these intrinsics)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    name, features = numba_config.CPU_NAME, numba_config.CPU_FEATURES
    if name not in (None, "host"):
        return features is not None and f"+{feature}" in features.split(",")
    try:
        return bool(llvm_binding.get_host_cpu_features().get(feature, False))
    except RuntimeError:  # pragma: no cover
        return False


# MPCC_DCF_AES=openssl turns the AES-NI path off (measurements, debugging).
AVAILABLE = os.environ.get("MPCC_DCF_AES", "").lower() != "openssl" and _target_has("aes")
# VAES (AVX2 width: two blocks per instruction), where the target has it.
WIDE = AVAILABLE and _target_has("vaes") and _target_has("avx2")
# Blocks per `mmo_group` call: enough independent chains to fill the AES units (16 and 32
# measured alike). The kernels compile it in: numba's cache of `dcf_fused` does not see a
# change here (touch dcf_fused.py).
GROUP = 16


_I64 = ir.IntType(64)
_V2 = ir.VectorType(_I64, 2)


def _const(word: int) -> ir.Constant:
    return ir.Constant(_I64, word - (1 << 64) if word >= 1 << 63 else word)


def mmo_intrinsic(key: bytes):
    """A numba intrinsic mmo(lo, hi) -> (lo', hi') = AES_key(b) ^ b for the block b = (lo, hi)
    (two uint64 words, little endian): one Matyas-Meyer-Oseas call in registers, the key's
    round keys compiled in as constants. Call only where `AVAILABLE`."""
    rks = [ir.Constant(_V2, [_const(a), _const(b)]) for a, b in round_keys(key)]

    @intrinsic
    def mmo(typingctx, lo, hi):  # pragma: no cover - compiled by numba
        sig = types.UniTuple(types.uint64, 2)(types.uint64, types.uint64)

        def codegen(context, builder, signature, args):
            i32 = ir.IntType(32)
            block = ir.Constant(_V2, ir.Undefined)
            block = builder.insert_element(block, args[0], ir.Constant(i32, 0))
            block = builder.insert_element(block, args[1], ir.Constant(i32, 1))
            fnty = ir.FunctionType(_V2, [_V2, _V2])
            mod = builder.module
            enc = cgutils.get_or_insert_function(mod, fnty, "llvm.x86.aesni.aesenc")
            last = cgutils.get_or_insert_function(mod, fnty, "llvm.x86.aesni.aesenclast")
            state = builder.xor(block, rks[0])
            for rk in rks[1:10]:
                state = builder.call(enc, [state, rk])
            state = builder.xor(builder.call(last, [state, rks[10]]), block)
            out = [builder.extract_element(state, ir.Constant(i32, i)) for i in (0, 1)]
            return context.make_tuple(builder, signature.return_type, out)

        return sig, codegen

    return mmo


def mmo_group_intrinsic(key: bytes, wide: bool):
    """A numba intrinsic mmo_group(lo, hi, out_lo, out_hi, start, tweak): for the GROUP
    blocks b = (lo[j] ^ tweak, hi[j]), j = start .. start + GROUP - 1, of word arrays
    (uint64, one word of each block per array), out_lo[j], out_hi[j] = AES_key(b) ^ b.
    Round by round over all the group (independent chains in program order, as OpenSSL's
    ECB interleaves them); wide: 2 blocks per VAES instruction. Unchecked: the caller
    keeps start + GROUP within all four arrays. Call only where `AVAILABLE` (and `WIDE`
    for wide)."""
    lanes = 4 if wide else 2
    vec = ir.VectorType(_I64, lanes)
    suffix = ".256" if wide else ""
    rks = [ir.Constant(vec, [_const(a), _const(b)] * (lanes // 2)) for a, b in round_keys(key)]
    # Words of `lanes` elements <-> `lanes / 2` blocks per vector, in two vectors.
    even = [ir.Constant(ir.IntType(32), k) for k in [0, lanes, 2, lanes + 2][:lanes]]
    odd = [ir.Constant(ir.IntType(32), k) for k in [1, lanes + 1, 3, lanes + 3][:lanes]]

    @intrinsic
    def mmo_group(typingctx, lo, hi, out_lo, out_hi, start, tweak):  # pragma: no cover
        want = types.Array(types.uint64, 1, "C")
        if not all(
            isinstance(a, types.Array) and a.copy(readonly=False) == want
            for a in (lo, hi, out_lo, out_hi)
        ):
            raise TypingError("mmo_group wants four contiguous 1-d uint64 arrays")
        sig = types.void(lo, hi, out_lo, out_hi, start, tweak)

        def codegen(context, builder, signature, args):
            ptrs = []
            for ty, arr in zip(signature.args[:4], args[:4], strict=True):
                data = context.make_array(ty)(context, builder, arr).data
                ptrs.append(builder.bitcast(builder.gep(data, [args[4]]), vec.as_pointer()))
            fnty = ir.FunctionType(vec, [vec, vec])
            mod = builder.module
            enc = cgutils.get_or_insert_function(mod, fnty, "llvm.x86.aesni.aesenc" + suffix)
            last = cgutils.get_or_insert_function(mod, fnty, "llvm.x86.aesni.aesenclast" + suffix)
            splat = builder.insert_element(
                ir.Constant(vec, ir.Undefined), args[5], ir.Constant(ir.IntType(32), 0)
            )
            splat = builder.shuffle_vector(
                splat,
                ir.Constant(vec, ir.Undefined),
                ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes),
            )
            idx = [ir.Constant(_I64, j) for j in range(GROUP // lanes)]
            blocks = []
            for j in idx:
                a = builder.xor(builder.load(builder.gep(ptrs[0], [j]), align=8), splat)
                b = builder.load(builder.gep(ptrs[1], [j]), align=8)
                blocks.append(
                    builder.shuffle_vector(
                        a, b, ir.Constant(ir.VectorType(ir.IntType(32), lanes), even)
                    )
                )
                blocks.append(
                    builder.shuffle_vector(
                        a, b, ir.Constant(ir.VectorType(ir.IntType(32), lanes), odd)
                    )
                )
            state = [builder.xor(b, rks[0]) for b in blocks]
            for rk in rks[1:10]:
                state = [builder.call(enc, [s, rk]) for s in state]
            state = [
                builder.xor(builder.call(last, [s, rks[10]]), b)
                for s, b in zip(state, blocks, strict=True)
            ]
            for k, j in enumerate(idx):
                y0, y1 = state[2 * k], state[2 * k + 1]
                for which, order in ((2, even), (3, odd)):
                    word = builder.shuffle_vector(
                        y0, y1, ir.Constant(ir.VectorType(ir.IntType(32), lanes), order)
                    )
                    builder.store(word, builder.gep(ptrs[which], [j]), align=8)
            return context.get_dummy_value()

        return sig, codegen

    return mmo_group
