"""Reductions over any axes: a local sum (each party sums its shares)."""

from __future__ import annotations

from mpcc.compiler.ops.base import Int, Ints, Op, Site, Type, declare, require
from mpcc.compiler.ops.rows import batch_axis_kept


def reduced_shape(shape: tuple[int, ...], axes: list[int], keepdims: bool) -> tuple[int, ...]:
    """`shape` with `axes` reduced (kept as 1s with keepdims, else dropped)."""
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _reduce(site: Site) -> Type:
    x, axes = site.x, list(site.attrs["axes"])
    rank = len(x.shape)
    require(axes == sorted(set(axes)), f"axes {axes} must be increasing and distinct")
    require(all(a < rank for a in axes), f"axes {axes} of a rank-{rank} tensor")
    return Type(reduced_shape(x.shape, axes, bool(site.attrs["keepdims"])), x.scale)


def _rows(site: Site) -> str | None:
    if 0 in site.attrs["axes"]:
        return "sums over the batch axis"
    return batch_axis_kept(site)  # axis 0 survives, first, even without keepdims


reduce_sum = declare(
    Op(
        "reduce_sum",
        "sum over `axes` (local); keepdims keeps them as size-1 axes",
        _reduce,
        attrs={"axes": Ints(lo=0), "keepdims": Int(lo=0, hi=1)},
        rows=_rows,
    )
)
