"""Reductions over any axes: ReduceSum, ReduceMean (local) and ReduceMax (a tournament).

- sum: `reduce_sum` (each party sums its shares: free).
- mean: the sum times 1/n; for n a power of two a relabel (free), else a public factor
  encoded at f + 8 bits (relative error <= n 2^-(f+9)) and one truncation.
- max: the reduced axes are moved last and flattened (local), then a tournament of pairwise
  maxima max(a, b) = b + relu(a - b) halves the candidates per level (as MaxPool does):
  n - 1 ReLUs per output in ceil(log2 n) levels, 4 rounds each. Exact for |a - b| < 2^62.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from mpcc.compiler import ops
from mpcc.compiler.approx.core import Emitter, mul_c, relabel, to_scale
from mpcc.compiler.ir import Value
from mpcc.compiler.ops.reduce import reduced_shape


def reduce_sum(em: Emitter, x: Value, axes: Sequence[int], keepdims: bool) -> Value:
    return em.emit(ops.reduce_sum, (x.id,), axes=sorted(axes), keepdims=int(keepdims))


def reduce_mean(em: Emitter, x: Value, axes: Sequence[int], keepdims: bool) -> Value:
    """The mean over `axes`, at x's scale (x is brought to at most f bits first)."""
    n = math.prod(x.shape[a] for a in axes)
    if n & (n - 1) == 0:
        return relabel(em, reduce_sum(em, x, axes, keepdims), n.bit_length() - 1)
    x = to_scale(em, x, min(x.scale, em.f))
    s = reduce_sum(em, x, axes, keepdims)
    return to_scale(em, mul_c(em, s, 1.0 / n, em.f + 8), x.scale)


def reduce_max(em: Emitter, x: Value, axes: Sequence[int], keepdims: bool) -> Value:
    """The max over `axes` by a ReLU tournament, at x's scale."""
    axes = sorted(axes)
    shape, rank = x.shape, len(x.shape)
    rest = [a for a in range(rank) if a not in axes]
    if axes != list(range(rank - len(axes), rank)):
        x = em.emit(ops.transpose, (x.id,), perm=rest + axes)
    lead = [x.shape[i] for i in range(len(rest))]
    n = math.prod(x.shape[len(rest) :])
    v = em.emit(ops.reshape, (x.id,), shape=[*lead, n])
    ax = len(lead)
    while n > 1:
        h = n // 2

        def cut(lo: int, hi: int, v: Value = v) -> Value:
            return em.emit(ops.slice, (v.id,), starts=[lo], ends=[hi], axes=[ax], steps=[1])

        a, b = cut(0, h), cut(h, 2 * h)
        r = em.emit(ops.relu, (em.emit(ops.sub, (a.id, b.id)).id,), shift=0)
        m = em.emit(ops.add, (b.id, r.id))
        v = em.emit(ops.concat, (m.id, cut(2 * h, n).id), axis=ax) if n % 2 else m
        n = h + n % 2
    return em.emit(ops.reshape, (v.id,), shape=list(reduced_shape(shape, axes, keepdims)))
