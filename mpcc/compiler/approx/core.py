"""The building blocks every smooth function is composed of.

A smooth function is a *macro*: at compile time it emits a short sequence of the priced IR
primitives (`mul`, `trunc`, `relu`, `clip`, `add_const`, `mul_const`, `relabel`, `concat`,
`slice`, `reduce_sum`, ...). The cost model, the cleartext interpreter (exact up to +1 LSB
per truncation) and the plan verifier then cover it with no further work, and the counted
traffic equals the cost model by construction.

Conventions:

- `Emitter` is anything with `f` (the plan's fractional bits) and `emit(op, args, **attrs)`:
  the lowering, or `ProgramEmitter` in tests.
- `inner(f) = f + 4` is the *internal scale*: polynomial variables and their powers live
  there, so that the product of two of them (2f + 8 bits) is exactly the budget
  `ir.max_scale(f)`.
- A comparison bit [z >= 0] is exact: `ge_zero` (the ReLU's comparison tree and bit
  injection without its select, `runtime/protocols/sign.py`) gives it as an arithmetic 0/1
  at scale 0; selecting with it is one Beaver multiply.
- Coefficients are fitted at import by one documented procedure (`cheb_fit`): Chebyshev
  interpolation at the first-kind Chebyshev points of [-1, 1] (numpy's
  `Chebyshev.interpolate`), converted to the monomial basis. Each piece is mapped onto
  [-1, 1] first, so the monomial coefficients stay small (well conditioned in fixed point).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from mpcc.compiler import ops
from mpcc.compiler.ir import Program, Value, max_scale
from mpcc.compiler.ops import Op


class Emitter(Protocol):
    """What a macro emits into: the plan's fractional bits and an instruction builder."""

    f: int

    def emit(
        self, op: Op, args: tuple[int, ...], weights: tuple[str, ...] = (), **attrs: Any
    ) -> Value: ...


class ProgramEmitter:
    """An `Emitter` straight onto a Program (tests and tools)."""

    def __init__(self, prog: Program) -> None:
        self.prog, self.f = prog, prog.frac_bits

    def emit(
        self, op: Op, args: tuple[int, ...], weights: tuple[str, ...] = (), **attrs: Any
    ) -> Value:
        return self.prog.emit(op, args, weights, **attrs)


def inner(f: int) -> int:
    """The internal scale of polynomial variables (see the module docstring)."""
    return f + 4


# ---- scales and constants ---------------------------------------------------------------


def to_scale(em: Emitter, v: Value, scale: int) -> Value:
    """v at exactly `scale` bits: truncated (1 round) or rescaled (free)."""
    if v.scale > scale:
        return em.emit(ops.trunc, (v.id,), shift=v.scale - scale)
    if v.scale < scale:
        return em.emit(ops.rescale, (v.id,), bits=scale - v.scale)
    return v


def at_most(em: Emitter, v: Value, scale: int) -> Value:
    """v truncated to `scale` bits if it carries more."""
    return to_scale(em, v, scale) if v.scale > scale else v


def add_c(em: Emitter, v: Value, c: float) -> Value:
    return em.emit(ops.add_const, (v.id,), value=float(c)) if c else v


def mul_c(em: Emitter, v: Value, c: float, bits: int) -> Value:
    """v * c, with c encoded at `bits` fractional bits (output at v.scale + bits)."""
    return em.emit(ops.mul_const, (v.id,), value=float(c), bits=bits)


def relabel(em: Emitter, v: Value, bits: int) -> Value:
    """v / 2^bits, free: the same ring element read at `bits` more fractional bits."""
    return em.emit(ops.relabel, (v.id,), bits=bits) if bits else v


def mul(em: Emitter, a: Value, b: Value, scale: int | None = None) -> Value:
    """a * b (Beaver), truncated to `scale` if given."""
    p = em.emit(ops.mul, (a.id, b.id))
    return p if scale is None else to_scale(em, p, scale)


def square(em: Emitter, a: Value, scale: int | None = None) -> Value:
    """a * a (a Beaver pair: half a product's traffic), truncated to `scale` if given."""
    p = em.emit(ops.square, (a.id,))
    return p if scale is None else to_scale(em, p, scale)


def add(em: Emitter, a: Value, b: Value) -> Value:
    top = max(a.scale, b.scale)
    return em.emit(ops.add, (to_scale(em, a, top).id, to_scale(em, b, top).id))


def sub(em: Emitter, a: Value, b: Value) -> Value:
    top = max(a.scale, b.scale)
    return em.emit(ops.sub, (to_scale(em, a, top).id, to_scale(em, b, top).id))


def total(em: Emitter, vals: Sequence[Value]) -> Value:
    out = vals[0]
    for v in vals[1:]:
        out = add(em, out, v)
    return out


# ---- stacking: many elementwise calls as one -------------------------------------------


def stack(em: Emitter, vals: Sequence[Value]) -> Value:
    """[*shape, K] from K values of one shape (aligned to the highest scale): local. The
    stack axis is the last one, so the batch axis stays first (rows stay apart)."""
    top = max(v.scale for v in vals)
    parts = [em.emit(ops.reshape, (to_scale(em, v, top).id,), shape=[*v.shape, 1]) for v in vals]
    if len(parts) == 1:
        return parts[0]
    return em.emit(ops.concat, tuple(p.id for p in parts), axis=len(vals[0].shape))


def take(em: Emitter, s: Value, lo: int, hi: int) -> Value:
    """Entries lo..hi-1 of the stack axis (the last one): local."""
    ax = len(s.shape) - 1
    return em.emit(ops.slice, (s.id,), starts=[lo], ends=[hi], axes=[ax], steps=[1])


def unstack(em: Emitter, s: Value) -> list[Value]:
    """The K values of a stacked [*shape, K] value: local."""
    return [
        em.emit(ops.reshape, (take(em, s, k, k + 1).id,), shape=list(s.shape[:-1]))
        for k in range(s.shape[-1])
    ]


def relus(em: Emitter, vals: Sequence[Value]) -> list[Value]:
    """relu of each value, in one ReLU call (4 rounds, whatever the count)."""
    if len(vals) == 1:
        return [em.emit(ops.relu, (vals[0].id,), shift=0)]
    return unstack(em, em.emit(ops.relu, (stack(em, vals).id,), shift=0))


def bits_ge(em: Emitter, x: Value, thresholds: Sequence[float]) -> Value:
    """[x >= c] for each threshold, stacked [*shape, K] at scale 0, in one comparison call
    (`ge_zero` on the stacked x - c, exact). Thresholds must be multiples of 2^-x.scale."""
    zs = []
    for c in thresholds:
        assert float(c * 2.0**x.scale).is_integer(), (c, x.scale)
        zs.append(add_c(em, x, -c))
    return em.emit(ops.ge_zero, (stack(em, zs).id,))


def sign_abs(em: Emitter, x: Value) -> tuple[Value, Value, Value]:
    """(b, |x|, relu(x)) with b = [x >= 0] at scale 0: one comparison and one multiply
    (relu(x) = b x, |x| = 2 b x - x)."""
    b = em.emit(ops.ge_zero, (x.id,))
    r = em.emit(ops.mul, (b.id, x.id))
    absx = em.emit(ops.sub, (em.emit(ops.mul_public, (r.id,), factor=2).id, x.id))
    return b, absx, r


def clamp(em: Emitter, x: Value, lo: float | None, hi: float | None) -> Value:
    """min(max(x, lo), hi) at x's scale (one ReLU call per bound)."""
    return em.emit(ops.clip, (x.id,), lo=lo, hi=hi, shift=0)


def dot(em: Emitter, s: Value, weights: Sequence[float], base: float, scale: int) -> Value:
    """base + sum_k weights[k] * s[..., k] over the last axis of a stacked value, with the
    weights at `scale` bits (local: public weights; output at s.scale + scale bits)."""
    out = em.emit(ops.dot_const, (s.id,), values=[float(w) for w in weights], bits=scale)
    return add_c(em, out, base)


# ---- polynomials -----------------------------------------------------------------------


@functools.cache
def cheb_fit(
    fn: Callable[[np.ndarray], np.ndarray], lo: float, hi: float, deg: int
) -> tuple[float, ...]:
    """Monomial coefficients c_0..c_deg of p(t) ~ fn(lo + (t + 1) (hi - lo) / 2), t in [-1, 1]:
    Chebyshev interpolation at the deg + 1 first-kind Chebyshev points (near-minimax)."""
    g = np.polynomial.Chebyshev.interpolate(
        lambda t: fn(lo + (t + 1.0) * (hi - lo) / 2.0), deg, domain=[-1, 1]
    )
    return tuple(float(c) for c in np.polynomial.chebyshev.cheb2poly(g.coef))


def powers(em: Emitter, x: Value, exponents: Sequence[int], scale: int) -> Value:
    """[t^e for e in exponents] stacked on a new last axis at `scale` bits, t = x read at
    `scale` bits (x may carry more: the op truncates it as it opens it). One `powers` op:
    every wire opened once, one round per doubling level (`runtime/protocols/powers.py`)."""
    if x.scale <= scale:  # the op truncates its input: give it one bit to drop (exact)
        x = em.emit(ops.rescale, (x.id,), bits=scale - x.scale + 1)
    return em.emit(ops.powers, (x.id,), shift=x.scale - scale, exponents=list(exponents))


def poly_unscaled(em: Emitter, x: Value, coeffs: Sequence[float], scale: int) -> Value:
    """p(t) = sum_k coeffs[k] t^k for t in [-1, 1], t = x read at `scale` bits; the output
    at 2 `scale` bits, not yet truncated (a following `powers` truncates it as it opens it)."""
    pw = powers(em, x, range(1, len(coeffs)), scale)
    return dot(em, pw, coeffs[1:], coeffs[0], scale)


def poly(em: Emitter, x: Value, coeffs: Sequence[float], scale: int) -> Value:
    """p(t) as `poly_unscaled`, output at `scale` bits (one truncation)."""
    return to_scale(em, poly_unscaled(em, x, coeffs, scale), scale)


def piecewise(
    em: Emitter,
    a: Value,
    fn: Callable[[np.ndarray], np.ndarray],
    breaks: Sequence[float],
    deg: int,
) -> Value:
    """fn(a) for a in [breaks[0], breaks[-1]] (the caller clamps), by one polynomial of
    degree `deg` per piece, selected by comparisons (PUMA, Dong et al. 2023; BOLT, Pang et
    al. S&P 2024). Piece widths must be powers of two; output at the internal scale.

    Each piece's variable t_j = (a - mid_j) / half_j maps its piece onto [-1, 1]; the K
    variables are stacked so their powers cost one set of calls. Outside its piece a t_j may
    be large and its powers may wrap in the ring: harmless, since that piece is selected with
    a 0 bit and a Beaver product with 0 is exactly 0. The selection sum_j [piece j] * p_j is
    one multiply of the stacked indicators by the stacked polynomials (no truncation)."""
    s = inner(em.f)
    k = len(breaks) - 1
    ts = []
    for lo, hi in zip(breaks[:-1], breaks[1:], strict=True):
        half = (hi - lo) / 2
        e = math.log2(half)
        assert e.is_integer(), f"piece width {hi - lo} is not a power of two"
        ts.append(relabel(em, add_c(em, at_most(em, a, s), -(lo + half)), int(e)))
    coeffs = [cheb_fit(fn, lo, hi, deg) for lo, hi in zip(breaks[:-1], breaks[1:], strict=True)]
    if k == 1:
        return poly(em, ts[0], coeffs[0], s)
    pw = powers(em, stack(em, ts), range(1, deg + 1), s)  # [*shape, k, deg]
    ax = len(a.shape)
    ps = []
    for j in range(k):
        pj = em.emit(ops.slice, (pw.id,), starts=[j], ends=[j + 1], axes=[ax], steps=[1])
        pj = em.emit(ops.reshape, (pj.id,), shape=[*a.shape, deg])
        ps.append(to_scale(em, dot(em, pj, coeffs[j][1:], coeffs[j][0], s), s))
    # indicators: [a >= b_1], ..., [a >= b_{k-1}]; piece j is b_j - b_{j+1} (b_0 = 1, b_k = 0)
    bits = bits_ge(em, at_most(em, a, s), breaks[1:-1])  # [*shape, k - 1]
    if k == 2:
        inds = [add_c(em, em.emit(ops.mul_public, (bits.id,), factor=-1), 1.0), bits]
        ind = em.emit(ops.concat, tuple(v.id for v in inds), axis=ax)
    else:
        ones = add_c(em, em.emit(ops.mul_public, (take(em, bits, 0, 1).id,), factor=-1), 1.0)
        mid = em.emit(ops.sub, (take(em, bits, 0, k - 2).id, take(em, bits, 1, k - 1).id))
        ind = em.emit(ops.concat, (ones.id, mid.id, take(em, bits, k - 2, k - 1).id), axis=ax)
    sel = em.emit(ops.mul, (ind.id, stack(em, ps).id))
    return em.emit(ops.reduce_sum, (sel.id,), axes=[ax], keepdims=0)


def budget(f: int) -> int:
    return max_scale(f)
