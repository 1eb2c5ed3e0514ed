"""Pooling over windows of an [N, C, *spatial] tensor with 1-3 spatial axes: max (a tournament
of comparisons), average (a local window sum, the divisor in the scale or a public product)
and sum (local).

Window geometry follows ONNX Runtime (`mpcc.compiler.poolshapes`).
"""

from __future__ import annotations

import math

import numpy as np

from mpcc.compiler.calls import Call, MaxPairs
from mpcc.compiler.ops.base import (
    EVERY_0,
    EVERY_1,
    Int,
    Ints,
    Op,
    RuleError,
    Site,
    Str,
    Type,
    declare,
    require,
    window_lengths,
)
from mpcc.compiler.ops.compare import COMPARISONS, relu_call
from mpcc.compiler.ops.rows import same_rows
from mpcc.compiler.poolshapes import avgpool_counts, pool_output_shape

_WINDOW = {
    "kernel": Ints(lo=1, short="k"),
    "strides": Ints(lo=1, hide=EVERY_1, short="s"),
    "pads": Ints(lo=0, hide=EVERY_0, short="p"),
    "dilations": Ints(lo=1, optional=True, hide=EVERY_1, short="d"),
}
_CEIL = {"ceil_mode": Int(lo=0, hi=1, hide=0)}
# A MaxPool compares by a tournament of ReLUs (each level "tree" or "fss": 4 or 2 rounds per
# halving of the window), or by all pairs ("pairs": `calls.MaxPairs`, 5 rounds for a window of
# 3 or 4; bigger windows in levels of groups of 3 or 4, `pairs_levels`: 10 rounds for 3x3,
# against the tree's 16). With `relu_shift` the ReLU after it is part of it
# (`mpcc compile --network` fuses the two): the tournament then ends with a ReLU call, all
# pairs compares each candidate of its last level with 0 too, in the same 5 rounds.
PAIRS_MIN_WINDOW = 3
_MAX_CMP = {
    "cmp": Str(*COMPARISONS, "pairs", optional=True),
    "relu_shift": Int(lo=0, hi=62, optional=True, short="relu"),
}


def maxpool_levels(window: int) -> list[int]:
    """Pairs compared at each level of a max tournament over `window` elements."""
    levels = []
    while window > 1:
        levels.append(window // 2)
        window -= window // 2
    return levels


def pool_shape(site: Site) -> tuple[int, ...]:
    """The output shape of a pool over the input's spatial axes (all after the first two)."""
    x, a = site.x, site.attrs
    rank = len(x.shape) - 2
    require(
        1 <= rank <= 3, f"input must be [N, C, *spatial] with 1-3 spatial axes, not {list(x.shape)}"
    )
    window_lengths(a, rank)
    try:
        out = pool_output_shape(
            x.shape[2:],
            a["kernel"],
            a["strides"],
            a["pads"],
            a.get("dilations"),
            bool(a["ceil_mode"]),
        )
    except ValueError as e:
        raise RuleError(str(e)) from None
    return (*x.shape[:2], *out)


def pairs_levels(window: int) -> list[tuple[int, int]]:
    """The levels of an all-pairs max over `window` (>= 3) elements: (group size k, groups)
    each, k in 3..4 (the last group of a level filled with pads that lose every comparison),
    as few levels as 4-way groups need, each with the smallest k that still fits."""
    depth = 1
    while 4**depth < window:
        depth += 1
    levels, left = [], window
    for remaining in range(depth, 0, -1):
        k = 3 if 3**remaining >= left else 4
        left = -(-left // k)
        levels.append((k, left))
    return levels


def _check_pairs(site: Site) -> None:
    if site.attrs.get("cmp") == "pairs":
        k = math.prod(site.attrs["kernel"])
        require(
            k >= PAIRS_MIN_WINDOW,
            f"cmp 'pairs' compares windows of {PAIRS_MIN_WINDOW} or more elements, not {k}",
        )


def _maxpool(site: Site) -> Type:
    _check_pairs(site)
    shift = site.attrs.get("relu_shift") or 0
    require(
        shift <= site.x.scale, f"relu_shift {shift} is more than the input's {site.x.scale} bits"
    )
    return Type(pool_shape(site), site.x.scale - shift)


def _sumpool(site: Site) -> Type:
    return Type(pool_shape(site), site.x.scale)


def _avgpool(site: Site) -> Type:
    shape, a = pool_shape(site), site.attrs
    if a["mode"] == "mul":
        bits = a.get("recip_bits")
        require(bits is not None, "mode 'mul' needs recip_bits")
        return Type(shape, site.x.scale + bits)
    counts = avgpool_counts(site.x.shape[2:], a)
    d = int(counts.flat[0])
    require(
        bool(np.all(counts == d)) and d & (d - 1) == 0,
        "mode 'shift' needs every window to average 2^k elements",
    )
    return Type(shape, site.x.scale + d.bit_length() - 1)


def _maxpool_calls(site: Site) -> list[Call]:
    _check_pairs(site)
    n, k = math.prod(site.out.shape), math.prod(site.attrs["kernel"])
    relu = site.attrs.get("relu_shift")
    if site.attrs.get("cmp") == "pairs":
        levels = pairs_levels(k)
        last = len(levels) - 1
        return [
            MaxPairs(n * g, size, relu if i == last else None) for i, (size, g) in enumerate(levels)
        ]
    tournament = [relu_call(site, n * pairs, 0) for pairs in maxpool_levels(k)]
    return tournament + ([] if relu is None else [relu_call(site, n, relu)])


def _pool_rows(site: Site) -> str | None:
    if len(site.out.shape) < 3:
        return "a pool needs [N, C, ...] input"
    return same_rows(site)


maxpool = declare(
    Op(
        "maxpool",
        "max over each window: a tournament of comparisons, or all pairs at once; with "
        "`relu_shift`, the ReLU of the max (that many bits truncated)",
        _maxpool,
        attrs={**_WINDOW, **_CEIL, **_MAX_CMP},
        calls=_maxpool_calls,
        rows=_pool_rows,
    )
)
avgpool = declare(
    Op(
        "avgpool",
        "window mean: a local sum, the divisor folded into the scale or a public product",
        _avgpool,
        attrs={
            **_WINDOW,
            **_CEIL,
            "count_include_pad": Int(lo=0, hi=1, short="incl"),
            "mode": Str("shift", "mul"),
            "recip_bits": Int(lo=1, hi=62, optional=True),
        },
        rows=_pool_rows,
    )
)
sumpool = declare(
    Op("sumpool", "window sum (local)", _sumpool, attrs={**_WINDOW, **_CEIL}, rows=_pool_rows)
)
