"""Cryptographic randomness: AES-128-CTR streams keyed by `secrets` or by HKDF-SHA256 from a seed.

Every mask, share and triple in mpcc comes from here. numpy's generators are never used
for anything secret: PCG64's state can be recovered from a few hundred bytes of output.
"""

from __future__ import annotations

import math
import secrets

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEED_BYTES = 16

# The plaintext of every keystream: read-only zeros shared by all streams (the keystream is
# the encryption of zeros). Longer requests go through it in chunks, so no call allocates
# or zeroes an input buffer.
_ZEROS = memoryview(np.zeros(1 << 18, dtype=np.uint8).tobytes())


def new_seed() -> bytes:
    """A fresh 128-bit seed from the operating system's CSPRNG."""
    return secrets.token_bytes(SEED_BYTES)


class Prg:
    """A deterministic stream of uniform words: AES-128 in counter mode over zeros.

    Two holders of the same seed and label draw the same words in the same order, which is
    what seed-compressed preprocessing relies on. A (key, counter) pair never repeats because
    each label derives its own key.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != 16:
            raise ValueError("AES-128 key must be 16 bytes")
        self._enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    @classmethod
    def derive(cls, seed: bytes, *label: object) -> Prg:
        """The stream for `label` (e.g. session, query, op id, purpose) under `seed`."""
        info = "/".join(str(part) for part in label).encode()
        key = HKDF(algorithm=hashes.SHA256(), length=16, salt=None, info=info).derive(seed)
        return cls(key)

    @classmethod
    def fresh(cls) -> Prg:
        """A stream keyed by a fresh random seed that nobody else holds."""
        return cls(new_seed())

    def bytes(self, n: int) -> np.ndarray:
        """`n` uniform bytes as a uint8 array (a fresh array the caller owns)."""
        return self.fill(np.empty(n, dtype=np.uint8))

    def uint64(self, *shape: int) -> np.ndarray:
        """Uniform elements of Z_2^64 (also used as 64 packed uniform bits per word)."""
        n = math.prod(shape)
        return self.bytes(8 * n).view(np.uint64).reshape(shape)

    def fill(self, out: np.ndarray) -> np.ndarray:
        """Overwrite the C-contiguous array `out` with the next `out.nbytes` bytes of the
        stream (as `uint64` of its size would draw them), with no temporary array."""
        if not out.flags.c_contiguous:
            raise ValueError("Prg.fill needs a C-contiguous array")
        buf = out.reshape(-1).view(np.uint8)
        n, step = buf.size, len(_ZEROS)
        at = 0
        while n - at > 15:  # update_into wants 15 spare bytes after what it writes
            k = min(step, n - at - 15)
            written = self._enc.update_into(_ZEROS[:k], buf[at : at + k + 15])
            assert written == k
            at += k
        if at < n:  # the last few bytes, through a buffer with room to spare
            tail = np.empty(n - at + 15, dtype=np.uint8)
            self._enc.update_into(_ZEROS[: n - at], tail)
            buf[at:] = tail[: n - at]
        return out


def share(
    x: np.ndarray, prg: Prg | None = None, *, in_place: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Split ring elements into two additive shares; each share alone is uniform. With
    `in_place` (x a uint64 array the caller gives up), x becomes the second share."""
    x = np.asarray(x, dtype=np.uint64)
    s0 = (prg or Prg.fresh()).uint64(*x.shape)
    if in_place:
        np.subtract(x, s0, out=x)
        return s0, x
    return s0, x - s0


def reconstruct(s0: np.ndarray, s1: np.ndarray) -> np.ndarray:
    """Add two additive shares back together."""
    return np.asarray(s0, dtype=np.uint64) + np.asarray(s1, dtype=np.uint64)
