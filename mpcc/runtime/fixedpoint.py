"""Fixed-point encoding of reals into Z_2^64 (two's complement, `frac_bits` fractional bits)."""

from __future__ import annotations

import numpy as np

RING_BITS = 64
DEFAULT_FRAC_BITS = 16


def encode(x: np.ndarray | float, frac_bits: int) -> np.ndarray:
    """Round reals to the nearest multiple of 2^-frac_bits and map them into the ring."""
    scaled = np.rint(np.asarray(x, dtype=np.float64) * float(2**frac_bits))
    if scaled.size and np.abs(scaled).max() >= 2.0**63:
        raise OverflowError(f"value too large for the ring at {frac_bits} fractional bits")
    return scaled.astype(np.int64).view(np.uint64)


def decode(x: np.ndarray, frac_bits: int) -> np.ndarray:
    """Ring elements back to reals (as signed values divided by 2^frac_bits)."""
    return np.asarray(x, dtype=np.uint64).view(np.int64).astype(np.float64) / float(2**frac_bits)


def arith_shift(x: np.ndarray, shift: int) -> np.ndarray:
    """Signed floor division by 2^shift of ring elements (the exact truncation)."""
    return (np.asarray(x, dtype=np.uint64).view(np.int64) >> np.int64(shift)).view(np.uint64)
