"""The numba loops of the powers protocol (`protocols/powers.py`): one pass per opened
wire and one per product, elementwise in Z_2^64, instead of a dozen numpy passes each."""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(cache=True, nogil=True)

_ONE = np.uint64(1)
_63 = np.uint64(63)
_LOW63 = np.uint64((1 << 63) - 1)


@_jit
def open_wire(c, hi, r63, shift, pub, m, sk):  # pragma: no cover - numba
    """From the opened c = z + 2^62 + r of a wire truncated by `shift`: the public
    P(c) = ((c mod 2^63) >> shift) + c_63 2^(63-shift) - 2^(62-shift), this party's mask
    share [M] = [r_hi] - sigma K [r_63] and sigma K, sigma = 1 - 2 c_63, K = 2^(63-shift)."""
    k = _ONE << (_63 - shift)
    bias = _ONE << (_63 - _ONE - shift)
    for e in range(c.shape[0]):
        c63 = c[e] >> _63
        pub[e] = ((c[e] & _LOW63) >> shift) + (c63 << (_63 - shift)) - bias
        s = (_ONE - (c63 << _ONE)) * k
        sk[e] = s
        m[e] = hi[e] - s * r63[e]


@_jit
def product(pa, ma, ka, pb, mb, kb, hh, hr, rh, rr, lead, z):  # pragma: no cover - numba
    """This party's share of y_a y_b for opened wires a != b (see the protocol's docstring):
    [M_a M_b] - P_a [M_b] - P_b [M_a], plus P_a P_b at the lead party."""
    for e in range(z.shape[0]):
        mm = hh[e] - kb[e] * hr[e] - ka[e] * rh[e] + ka[e] * kb[e] * rr[e]
        v = mm - pa[e] * mb[e] - pb[e] * ma[e]
        if lead:
            v += pa[e] * pb[e]
        z[e] = v


@_jit
def square(pa, ma, ka, ra, hh, hr, lead, z):  # pragma: no cover - numba
    """This party's share of y_a^2: [M_a^2] - 2 P_a [M_a] (+ P_a^2 at the lead party), with
    M_a^2 = H^2 - 2 sigma K H R + K^2 R (R a bit, sigma^2 = 1)."""
    for e in range(z.shape[0]):
        mm = hh[e] - ((ka[e] << _ONE) * hr[e]) + ka[e] * ka[e] * ra[e]
        v = mm - ((pa[e] * ma[e]) << _ONE)
        if lead:
            v += pa[e] * pa[e]
        z[e] = v
