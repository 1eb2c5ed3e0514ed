"""Softmax, LogSoftmax, LayerNormalization and L2 normalisation over any axes.

- softmax(x) = e / sum(e) with e = exp(x - max(x)) (max subtraction: x - max <= 0 is the
  range of `exp.exp`, and the sum lies in [1, n], the reciprocal's range for n <= 2^14).
  Cost per element over rows of 128: 185 B and 99 rounds (the max tournament ~45 B, exp
  clamped from below ~125 B, one product by the row's reciprocal and a truncation; per row
  one reciprocal).
- logsoftmax(x) = (x - max) - log(sum(e)).
- layernorm(x) = (x - mean) / sqrt(var + eps) * gamma + beta, var the mean of the squared
  deviations (one square per element), 1/sqrt per row (`recip.rsqrt`: var + eps is clamped
  to [2^-10, 2^14]). Over rows of 384: 43 B per element, 32 rounds.
- l2 normalisation x / ||x|| = x * rsqrt(sum x^2): one square per element, 1/sqrt per row
  (35 B per element, 29 rounds over rows of 384).
"""

from __future__ import annotations

from collections.abc import Sequence

from mpcc.compiler import ops
from mpcc.compiler.approx.core import (
    Emitter,
    add_c,
    at_most,
    budget,
    inner,
    mul,
    square,
    sub,
    to_scale,
)
from mpcc.compiler.approx.exp import exp
from mpcc.compiler.approx.recip import log, reciprocal, rsqrt
from mpcc.compiler.approx.reduce import reduce_max, reduce_mean, reduce_sum
from mpcc.compiler.ir import Value


def softmax(em: Emitter, x: Value, axes: Sequence[int], scale: int) -> Value:
    """softmax over `axes`, output at `scale` bits (at most f + 4)."""
    s = inner(em.f)
    x = at_most(em, x, s)
    d = sub(em, x, reduce_max(em, x, axes, True))
    e = exp(em, d, nonpositive=True)  # at s bits, in (0, 1]
    r = reciprocal(em, reduce_sum(em, e, axes, True), budget(em.f) - s)
    return mul(em, e, r, scale)


def logsoftmax(em: Emitter, x: Value, axes: Sequence[int], scale: int) -> Value:
    """log softmax over `axes`, output at `scale` bits (at most f + 4)."""
    s = inner(em.f)
    x = at_most(em, x, s)
    d = sub(em, x, reduce_max(em, x, axes, True))
    lse = log(em, reduce_sum(em, exp(em, d, nonpositive=True), axes, True))
    return to_scale(em, sub(em, to_scale(em, d, s), lse), scale)


def normalise(em: Emitter, x: Value, axes: Sequence[int], eps: float) -> Value:
    """(x - mean) / sqrt(var + eps) over `axes`, at f bits."""
    f, s = em.f, inner(em.f)
    x = at_most(em, x, f)
    # a power-of-two mean is the sum at more bits (free): d may carry up to f + log2(n) bits
    d = at_most(em, sub(em, x, reduce_mean(em, x, axes, True)), budget(f) // 2)
    var = reduce_mean(em, square(em, d, s), axes, True)
    r = rsqrt(em, add_c(em, var, eps), budget(f) - d.scale)
    return mul(em, d, r, f)


def l2_normalise(em: Emitter, x: Value, axes: Sequence[int]) -> Value:
    """x / sqrt(sum x^2) over `axes` (sum clamped to [2^-10, 2^14]), at f bits."""
    f, s = em.f, inner(em.f)
    x = at_most(em, x, f)
    ss = reduce_sum(em, square(em, x, s), axes, True)
    r = rsqrt(em, ss, budget(f) - x.scale)
    return mul(em, x, r, f)


__all__ = ["l2_normalise", "logsoftmax", "normalise", "softmax", "ops"]
