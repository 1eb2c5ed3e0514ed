"""Exp on [-16, 0] by range reduction and squaring.

exp(x) = exp(x / 2^k)^(2^k) with k = 4 (CrypTen's limit approach, Knott et al. 2021, made
accurate with a polynomial core, as SPU/PUMA do): x is clamped to [-16, 0] (one ReLU call per
bound), x / 16 in [-1, 0] is free (a relabel of the fixed-point scale), exp there is a degree-4
Chebyshev interpolant (relative error 2.5e-5), and four squarings at the internal scale f + 4
raise it to the 16th power (relative error grows 16x: 4e-4 = 2^-11.3).

Bound (f = 16, tested over 10^6 points): |exp_hat(x) - exp(x)| <= 2^-10 exp(x) + 2 * 2^-16
for x in [-16, 0] at an output scale of f (inputs below -16 give exp(-16) ~ 1.1e-7, i.e. 0 to
within the bound; inputs above 0 give 1). exp(-16) is below one LSB at f = 16, so no relative
bound can hold near the bottom of the range; the absolute term covers it.

Cost per element and party (f = 16; counted when a ReLU took 5 rounds, `costs` has today's):
the clamp 1-2 ReLUs (45 B each; a softmax's x - max
needs only the lower one), t..t^4 in one `powers` call (4 wires, 3 rounds), the polynomial's
sum (local), and y^16 in a second one that truncates y as it opens it (5 wires, 5 rounds;
`runtime/protocols/powers.py`), a final truncation: 170 B, 17 rounds, 365 B of dealer
material (125 B inside a softmax). With Beaver squares and products it was 226 B, 22 rounds.
"""

from __future__ import annotations

import numpy as np

from mpcc.compiler import ops
from mpcc.compiler.approx.core import (
    Emitter,
    add_c,
    cheb_fit,
    inner,
    poly_unscaled,
    powers,
    relabel,
    to_scale,
)
from mpcc.compiler.ir import Value

EXP_LO = -16.0
SQUARINGS = 4  # exp(x) = exp(x / 16)^16
EXP_DEG = 4


def exp(em: Emitter, x: Value, nonpositive: bool = False) -> Value:
    """exp(min(max(x, -16), 0)) at the internal scale f + 4 (truncate it for an output).

    `nonpositive`: the caller guarantees x <= 0 (a softmax's x - max), so only the lower
    bound is clamped (one ReLU, not two)."""
    s = inner(em.f)
    # 2v + 1 in [-1, 1] for v = x / 16: the clamp's fused shift brings x to at most s - 3
    # bits; the relabel reads the same element as x / 8.
    shift = max(x.scale - (s - (SQUARINGS - 1)), 0)
    xc = em.emit(ops.clip, (x.id,), lo=EXP_LO, hi=None if nonpositive else 0.0, shift=shift)
    t = add_c(em, relabel(em, xc, SQUARINGS - 1), 1.0)
    return _raised(em, poly_unscaled(em, t, cheb_fit(np.exp, -1.0, 0.0, EXP_DEG), s), s)


def _raised(em: Emitter, y: Value, s: int) -> Value:
    """y^(2^SQUARINGS) at s bits (y may carry more: truncated as it is opened)."""
    out = powers(em, y, [2**SQUARINGS], s)
    return em.emit(ops.reshape, (out.id,), shape=list(y.shape))


EXP_HI = 8.0  # exp_signed's upper bound: e^8 ~ 2981 keeps the last square within the budget


def _exp_pos_core(t: np.ndarray) -> np.ndarray:
    return np.exp((t + 1.0) / 4.0)  # exp(v) for v = (t + 1) / 4 in [0, 1/2]


def exp_signed(em: Emitter, x: Value) -> Value:
    """exp(x) for x in [-16, 8] (clamped): exp(min(x, 0)) * exp(max(x, 0)), the second by the
    same range reduction on [0, 8] (x / 16 in [0, 1/2], four squarings). The ONNX Exp op's
    lowering: a softmax never needs x > 0. Internal scale; ~2.1x `exp`'s cost."""
    s = inner(em.f)
    x = to_scale(em, x, min(x.scale, s - (SQUARINGS - 2)))
    (r,) = [em.emit(ops.relu, (x.id,), shift=0)]
    neg = exp(em, em.emit(ops.sub, (x.id, r.id)), nonpositive=True)
    rc = em.emit(ops.clip, (r.id,), lo=None, hi=EXP_HI, shift=0)
    # t = 4 (r / 16) - 1 = r / 4 - 1 in [-1, 1]: a relabel by 2 bits and a constant
    t = add_c(em, relabel(em, rc, SQUARINGS - 2), -1.0)
    y = _raised(em, poly_unscaled(em, t, cheb_fit(_exp_pos_core, -1.0, 1.0, EXP_DEG), s), s)
    return to_scale(em, em.emit(ops.mul, (neg.id, y.id)), s)
