"""Sigmoid, Tanh, Erf, GELU (erf and tanh forms), SiLU, HardSigmoid and HardSwish.

Each smooth activation is odd or "ReLU plus even" about 0, so only a function of
a = min(|x|, T) is approximated, by piecewise polynomials selected with comparisons (PUMA,
Dong et al. 2023, Sec. 4; BOLT, Pang et al. S&P 2024, Sec. 5; SIGMA, Gupta et al. PETS 2024
use the same split of the input range):

- odd:  g(x) = sign(x) q(a)             (Tanh, Erf; Sigmoid = 1/2 + sign(x) (sigma(a) - 1/2))
- even: g(x) = relu(x) + h(a)           (GELU: h(a) = -a Phi(-a); SiLU: h(a) = -a sigma(-a);
                                          GELU-tanh likewise), h(T) ~ 0

One ReLU call on [x + 1, x] gives both relu(x) and the sign bit (relu(x + 1) - relu(x)), so
|x| = 2 relu(x) - x; one more clamps it (a = T - relu(T - |x|)). q or h is a Chebyshev
interpolant per piece (`core.piecewise`); the sign is applied with one multiply.

Pieces, degrees and interpolation errors (max over the range, before fixed-point rounding):

  function   T    pieces        degree   interp. error
  sigmoid    8    [0,4,8]       6        9.2e-5
  tanh       8    [0,2,4,8]     7        4.7e-5
  erf        4    [0,2,4]       7        2.8e-5
  gelu       4    [0,4]         7        2.8e-4 (+1.3e-4 = |h(4)| beyond T)
  gelu_tanh  4    [0,4]         7        ~2.8e-4
  silu       16   [0,4,8,16]    7        5.0e-5

Bound (f = 16, tested over 10^6 points on [-16, 16], clamped outside): absolute error
<= 2^-10 for each (the interpolation error plus a few LSBs of the fixed-point evaluation).
HardSigmoid and HardSwish are exact up to rounding (a clip, and one multiply for HardSwish).

Cost per element and party (f = 16): sigmoid 303 B / 34 rounds, tanh 437 / 35, erf 319 / 34,
GELU (either form) 162 / 22, SiLU 413 / 33, HardSigmoid 90 / 8, HardSwish 114 / 10. The odd
functions pay a comparison bit and a product for the sign and |x| (53 B), the ReLU-plus-even
ones a ReLU (45 B); each a ReLU for the cap T, the pieces' selection a comparison bit per
breakpoint and one product, and the powers of the pieces' variables one `powers` call (8 B per
power and piece: every wire opened once, `runtime/protocols/powers.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from mpcc.compiler import ops
from mpcc.compiler.approx.core import (
    Emitter,
    add,
    add_c,
    inner,
    mul,
    mul_c,
    piecewise,
    relus,
    sign_abs,
    sub,
    to_scale,
)
from mpcc.compiler.ir import Value


def _clamped_abs(
    em: Emitter, x: Value, cap: float, sign: bool = True
) -> tuple[Value | None, Value, Value]:
    """(sign bit or None, min(|x|, cap), relu(x)) at x's scale (x at most f + 4 bits): one
    ReLU call on [x + 1, x] (just x without the sign), then one for the cap."""
    x = to_scale(em, x, min(x.scale, inner(em.f)))
    if sign:
        b, absx, r = sign_abs(em, x)
    else:
        b, (r,) = None, relus(em, [x])
        absx = em.emit(ops.sub, (em.emit(ops.mul_public, (r.id,), factor=2).id, x.id))
    (over,) = relus(em, [add_c(em, em.emit(ops.mul_public, (absx.id,), factor=-1), cap)])
    a = add_c(em, em.emit(ops.mul_public, (over.id,), factor=-1), cap)
    return b, a, r


def odd(
    em: Emitter,
    x: Value,
    q: Callable[[np.ndarray], np.ndarray],
    breaks: Sequence[float],
    deg: int,
    offset: float = 0.0,
) -> Value:
    """offset + sign(x) q(min(|x|, T)), T = breaks[-1], at the internal scale."""
    b, a, _ = _clamped_abs(em, x, breaks[-1])
    v = piecewise(em, a, q, breaks, deg)
    bv = mul(em, b, v)  # scale 0 times the internal scale: no truncation
    out = em.emit(ops.sub, (em.emit(ops.mul_public, (bv.id,), factor=2).id, v.id))
    return add_c(em, out, offset)


def relu_plus_even(
    em: Emitter,
    x: Value,
    h: Callable[[np.ndarray], np.ndarray],
    breaks: Sequence[float],
    deg: int,
) -> Value:
    """relu(x) + h(min(|x|, T)), T = breaks[-1], at the internal scale."""
    _, a, r = _clamped_abs(em, x, breaks[-1], sign=False)
    return add(em, r, piecewise(em, a, h, breaks, deg))


# ---- the functions approximated (fitted at import by `core.cheb_fit`) -----------------------


def _sig_half(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a)) - 0.5


_ERF = np.vectorize(math.erf, otypes=[np.float64])  # only at import, on a few points


def _gelu_h(a: np.ndarray) -> np.ndarray:
    return -a * 0.5 * (1.0 + _ERF(-a / math.sqrt(2.0)))


_K = math.sqrt(2.0 / math.pi)


def _gelu_tanh_h(a: np.ndarray) -> np.ndarray:
    return -a * 0.5 * (1.0 + np.tanh(_K * (-a - 0.044715 * a**3)))


def _silu_h(a: np.ndarray) -> np.ndarray:
    return -a / (1.0 + np.exp(a))


def _erf(a: np.ndarray) -> np.ndarray:
    return _ERF(a)


def sigmoid(em: Emitter, x: Value) -> Value:
    """1 / (1 + exp(-x)), absolute error <= 2^-10 (internal scale)."""
    return odd(em, x, _sig_half, (0.0, 4.0, 8.0), 6, offset=0.5)


def tanh(em: Emitter, x: Value) -> Value:
    """tanh(x), absolute error <= 2^-10 (internal scale)."""
    return odd(em, x, np.tanh, (0.0, 2.0, 4.0, 8.0), 7)


def erf(em: Emitter, x: Value) -> Value:
    """erf(x), absolute error <= 2^-10 (internal scale)."""
    return odd(em, x, _erf, (0.0, 2.0, 4.0), 7)


def gelu(em: Emitter, x: Value) -> Value:
    """x Phi(x) (exact GELU), absolute error <= 2^-10 (internal scale)."""
    return relu_plus_even(em, x, _gelu_h, (0.0, 4.0), 7)


def gelu_tanh(em: Emitter, x: Value) -> Value:
    """GELU's tanh approximation (ONNX Gelu approximate='tanh'), abs. error <= 2^-10."""
    return relu_plus_even(em, x, _gelu_tanh_h, (0.0, 4.0), 7)


def silu(em: Emitter, x: Value) -> Value:
    """x sigmoid(x) (SiLU / Swish), absolute error <= 2^-10 (internal scale)."""
    return relu_plus_even(em, x, _silu_h, (0.0, 4.0, 8.0, 16.0), 7)


def hard_sigmoid(em: Emitter, x: Value, alpha: float, beta: float) -> Value:
    """max(0, min(1, alpha x + beta)): a public affine map and a clip (at f bits)."""
    x = to_scale(em, x, min(x.scale, em.f))
    y = add_c(em, mul_c(em, x, alpha, em.f), beta)
    return em.emit(ops.clip, (y.id,), lo=0.0, hi=1.0, shift=y.scale - em.f)


def hard_swish(em: Emitter, x: Value) -> Value:
    """x * hard_sigmoid(x; 1/6, 1/2): one more multiply (output at 2f bits)."""
    x = to_scale(em, x, min(x.scale, em.f))
    return mul(em, x, hard_sigmoid(em, x, 1.0 / 6.0, 0.5))


__all__ = [
    "erf",
    "gelu",
    "gelu_tanh",
    "hard_sigmoid",
    "hard_swish",
    "sigmoid",
    "silu",
    "tanh",
    "sub",
]
