"""Fixed-point encoding of reals into Z_2^64 (two's complement, `frac_bits` fractional bits)."""

from __future__ import annotations

import numpy as np

from mpcc.errors import InputError

# Every secure comparison and truncation needs |x| < 2^62 as a signed ring element, so no
# value is encoded outside that range: |v| < 2^(62 - frac_bits) in real terms.
RANGE_BITS = 62


ENCODE_CHUNK = 1 << 20  # elements encoded at a time: a large tensor costs its output alone


def encode(x: np.ndarray | float, frac_bits: int) -> np.ndarray:
    """Round reals to the nearest multiple of 2^-frac_bits and map them into the ring.

    Raises InputError for values that are not finite or not within |v| < 2^(62 - frac_bits).
    """
    a = np.asarray(x, order="C")  # C order, as the ring kernels expect
    if a.size <= ENCODE_CHUNK:
        return _encode(a, frac_bits)
    out = np.empty(a.shape, dtype=np.uint64)
    src, dst = a.reshape(-1), out.reshape(-1)
    for at in range(0, a.size, ENCODE_CHUNK):
        dst[at : at + ENCODE_CHUNK] = _encode(src[at : at + ENCODE_CHUNK], frac_bits)
    return out


def _encode(x: np.ndarray, frac_bits: int) -> np.ndarray:
    scaled = np.rint(np.asarray(x, dtype=np.float64) * float(2**frac_bits))
    if scaled.size and not np.abs(scaled).max() < 2.0**RANGE_BITS:  # also catches nan
        bits = RANGE_BITS - frac_bits
        allowed = (
            f"finite and within |v| < 2^{bits} (~{2.0**bits:.3g}) at {frac_bits} fractional bits"
        )
        if not np.isfinite(scaled).all():
            raise InputError(f"values must be {allowed}; got nan or inf")
        top = float(np.abs(np.asarray(x, dtype=np.float64)).max())
        raise InputError(f"value out of range: values must be {allowed}; got |v| = {top:.3g}")
    return scaled.astype(np.int64).view(np.uint64)


def decode(x: np.ndarray, frac_bits: int) -> np.ndarray:
    """Ring elements back to reals (as signed values divided by 2^frac_bits)."""
    return np.asarray(x, dtype=np.uint64).view(np.int64).astype(np.float64) / float(2**frac_bits)


def arith_shift(x: np.ndarray, shift: int) -> np.ndarray:
    """Signed floor division by 2^shift of ring elements (the exact truncation)."""
    return (np.asarray(x, dtype=np.uint64).view(np.int64) >> np.int64(shift)).view(np.uint64)
