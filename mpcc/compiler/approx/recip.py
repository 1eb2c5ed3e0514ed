"""Reciprocal, 1/Sqrt, Sqrt, Log and Div by a secret: normalise by the leading bit, then a
polynomial on [1, 2).

The input is clamped to its range [2^lo, 2^hi] (one ReLU call per bound), and its binary
exponent k = floor(log2 x) is found with one batched comparison per power of two
(bits_i = [x >= 2^i], i = lo+1..hi, all in one ReLU call), as SPU (Ma et al. 2023) and CrypTen
(Knott et al. 2021) normalise before their Newton/polynomial steps. Every function of k that
is needed is then a *public* linear combination of those bits, so it is local:

    2^-k       = 2^-lo - sum_i bits_i 2^-i            (the normaliser m)
    2^(-k/2)   = 2^(-lo/2) + sum_i bits_i (2^(-i/2) - 2^(-(i-1)/2))
    k ln 2     = lo ln 2 + sum_i bits_i ln 2

y = x * m lies in [1, 2) (one multiply), and f(y) is a Chebyshev interpolant of degree 5-6 in
t = 2y - 3 (relative error <= 1.3e-5). 1/x = m * (1/y), 1/sqrt(x) = 2^(-k/2) / sqrt(y),
log x = k ln 2 + log y.

Bounds (f = 16, tested over 10^6 log-uniform points), at the output's scale R:
- reciprocal on [2^-6, 2^14]: |r_hat - 1/x| <= 2^-10 / x + 2 * 2^-R;
- 1/sqrt on [2^-10, 2^14]: |r_hat - x^-1/2| <= 2^-10 x^-1/2 + 2 * 2^-R;
- sqrt = x * rsqrt(x) on [2^-10, 2^14]: relative 2^-10 plus 2 LSBs;
- log on [2^-6, 2^14]: absolute 2^-12 plus 2 LSBs.

Cost per element and party (f = 16): the clamp 2 ReLUs, K comparison bits (`ge_zero`, ~37 B
each; K = 20 for the reciprocal and log, 24 for 1/sqrt), two products, powers of degree 5-6
and 3-4 truncations: reciprocal 937 B / 25 rounds, 1/sqrt 1077 B / 25, sqrt 1200 B / 36, log
913 B / 24 (counted when a comparison took 5 rounds and ~14 B more; `costs` has today's).
These only ever apply to reduced values (a softmax denominator or a variance per row), so
the per-row cost is small beside the row's elementwise work.
"""

from __future__ import annotations

import math

import numpy as np

from mpcc.compiler import ops
from mpcc.compiler.approx.core import (
    Emitter,
    add,
    add_c,
    at_most,
    bits_ge,
    budget,
    cheb_fit,
    dot,
    inner,
    mul,
    poly,
    relabel,
    sign_abs,
    to_scale,
)
from mpcc.compiler.ir import Value

RECIP_RANGE = (-6, 14)  # reciprocal and log: x in [2^-6, 2^14]
RSQRT_RANGE = (-10, 14)  # 1/sqrt and sqrt: x in [2^-10, 2^14]
RECIP_DEG, RSQRT_DEG, LOG_DEG = 6, 5, 5


def _normalise(em: Emitter, x: Value, rng: tuple[int, int]) -> tuple[Value, Value, Value]:
    """(t, bits, xc): x clamped to [2^lo, 2^hi] (xc), bits_i = [xc >= 2^i] for i = lo+1..hi,
    and t = 2 x 2^-k - 3 in [-1, 1) at the internal scale."""
    lo, hi = rng
    s = inner(em.f)
    x = at_most(em, x, s)
    xc = em.emit(ops.clip, (x.id,), lo=2.0**lo, hi=2.0**hi, shift=0)
    bits = bits_ge(em, xc, [2.0**i for i in range(lo + 1, hi + 1)])
    m_scale = budget(em.f) - xc.scale
    assert m_scale >= hi, "the normaliser 2^-k needs hi fractional bits"
    m = dot(em, bits, [-(2.0**-i) for i in range(lo + 1, hi + 1)], 2.0**-lo, m_scale)
    y = mul(em, xc, m, s)  # in [1, 2)
    t = add_c(em, to_scale(em, relabel(em, y, -1), s), -3.0)
    return t, bits, xc


def reciprocal(em: Emitter, x: Value, scale: int | None = None, signed: bool = False) -> Value:
    """1/x for x in [2^-6, 2^14] (clamped), at `scale` bits (default the internal f + 4).

    `signed`: x of either sign, |x| in [2^-6, 2^14]: sign(x) / |x| (a comparison bit and two
    products more; the ONNX ops' lowering, where the sign is not known)."""
    if signed:
        b, absx, _ = sign_abs(em, at_most(em, x, inner(em.f)))
        r = reciprocal(em, absx, scale)
        br = em.emit(ops.mul, (b.id, r.id))
        return em.emit(ops.sub, (em.emit(ops.mul_public, (br.id,), factor=2).id, r.id))
    s = inner(em.f)
    lo, hi = RECIP_RANGE
    t, bits, _ = _normalise(em, x, RECIP_RANGE)
    q = poly(em, t, cheb_fit(np.reciprocal, 1.0, 2.0, RECIP_DEG), s)
    m_scale = budget(em.f) - s
    m = dot(em, bits, [-(2.0**-i) for i in range(lo + 1, hi + 1)], 2.0**-lo, m_scale)
    return mul(em, m, q, s if scale is None else scale)


def _rsqrt_y(y: np.ndarray) -> np.ndarray:
    return 1.0 / np.sqrt(y)


def rsqrt(em: Emitter, x: Value, scale: int | None = None) -> Value:
    """1/sqrt(x) for x in [2^-10, 2^14] (clamped), at `scale` bits (default f + 4)."""
    s = inner(em.f)
    lo, hi = RSQRT_RANGE
    t, bits, _ = _normalise(em, x, RSQRT_RANGE)
    q = poly(em, t, cheb_fit(_rsqrt_y, 1.0, 2.0, RSQRT_DEG), s)
    w = [2.0 ** (-i / 2) - 2.0 ** (-(i - 1) / 2) for i in range(lo + 1, hi + 1)]
    h = dot(em, bits, w, 2.0 ** (-lo / 2), budget(em.f) - s)
    return mul(em, h, q, s if scale is None else scale)


def sqrt(em: Emitter, x: Value, scale: int | None = None) -> Value:
    """sqrt(x) = x / sqrt(x) for x in [2^-10, 2^14] (clamped; 0 below), at `scale` bits."""
    s = inner(em.f)
    xs = at_most(em, x, s)
    xc = em.emit(ops.clip, (xs.id,), lo=0.0, hi=2.0 ** RSQRT_RANGE[1], shift=0)
    r = rsqrt(em, xs, budget(em.f) - xc.scale)
    return mul(em, xc, r, s if scale is None else scale)


def log(em: Emitter, x: Value) -> Value:
    """log(x) for x in [2^-6, 2^14] (clamped), at the internal scale f + 4."""
    s = inner(em.f)
    lo, hi = RECIP_RANGE
    t, bits, _ = _normalise(em, x, RECIP_RANGE)
    q = poly(em, t, cheb_fit(np.log, 1.0, 2.0, LOG_DEG), s)
    k = dot(em, bits, [math.log(2.0)] * (hi - lo), lo * math.log(2.0), s)
    return add(em, q, k)


def divide(em: Emitter, a: Value, b: Value, scale: int, signed: bool = True) -> Value:
    """a / b for a secret b with |b| in [2^-6, 2^14] (clamped): a * reciprocal(b), at `scale`
    bits (`signed`: b may be negative)."""
    a = at_most(em, a, em.f)
    r = reciprocal(em, b, budget(em.f) - a.scale, signed=signed)
    return mul(em, a, r, scale)
