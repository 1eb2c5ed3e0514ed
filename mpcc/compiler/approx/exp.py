"""Exp on [-16, 0] by range reduction and squaring.

exp(x) = exp(x / 2^k)^(2^k) with k = 4 (CrypTen's limit approach, Knott et al. 2021, made
accurate with a polynomial core, as SPU/PUMA do): x is clamped to [-16, 0] (one ReLU call per
bound), x / 16 in [-1, 0] is free (a relabel of the fixed-point scale), exp there is a degree-5
Chebyshev interpolant (relative error 1.1e-6), and four squarings at the internal scale f + 4
raise it to the 16th power (relative error grows 16x: 1.7e-5).

Bound (f = 16, tested over 10^6 points): |exp_hat(x) - exp(x)| <= 2^-10 exp(x) + 2 * 2^-16
for x in [-16, 0] at an output scale of f (inputs below -16 give exp(-16) ~ 1.1e-7, i.e. 0 to
within the bound; inputs above 0 give 1). exp(-16) is below one LSB at f = 16, so no relative
bound can hold near the bottom of the range; the absolute term covers it.

Cost per element and party (f = 16): clip 2 ReLU (90 B), powers t^2..t^5 (3 levels), 1
truncation, 4 squarings (mul + trunc each): ~ 90 + 4*16 + 4*8 + 8 + 4*24 = 290 B, 8 + 6 + 1 + 8
= 23 rounds.
"""

from __future__ import annotations

import numpy as np

from mpcc.compiler import ops
from mpcc.compiler.approx.core import (
    Emitter,
    add_c,
    cheb_fit,
    inner,
    poly,
    relabel,
    square,
    to_scale,
)
from mpcc.compiler.ir import Value

EXP_LO = -16.0
SQUARINGS = 4  # exp(x) = exp(x / 16)^16
EXP_DEG = 5


def exp(em: Emitter, x: Value, nonpositive: bool = False) -> Value:
    """exp(min(max(x, -16), 0)) at the internal scale f + 4 (truncate it for an output).

    `nonpositive`: the caller guarantees x <= 0 (a softmax's x - max), so only the lower
    bound is clamped (one ReLU, not two)."""
    s = inner(em.f)
    # 2v + 1 in [-1, 1] for v = x / 16: the clamp's fused shift brings x to at most s - 3
    # bits; the relabel reads the same element as x / 8.
    shift = max(x.scale - (s - (SQUARINGS - 1)), 0)
    xc = em.emit(ops.clip, (x.id,), lo=EXP_LO, hi=None if nonpositive else 0.0, shift=shift)
    t = add_c(em, to_scale(em, relabel(em, xc, SQUARINGS - 1), s), 1.0)
    y = poly(em, t, cheb_fit(np.exp, -1.0, 0.0, EXP_DEG), s)
    for _ in range(SQUARINGS):
        y = square(em, y, s)
    return y
