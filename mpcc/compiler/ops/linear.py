"""Bilinear ops on a secret and a weight: matmul, conv (1-3 spatial axes), mul_w.

With secret weights each is one matrix (or conv, or elementwise) Beaver triple, its weight
masked once per session (F = W - B; `calls.Linear`); with public weights it is local. The
weight is encoded at f fractional bits, so the output carries the input's scale plus f; a
bias (the optional second weight) is encoded at the output's scale.
"""

from __future__ import annotations

import math

from mpcc.compiler.calls import Call, Linear
from mpcc.compiler.ops.base import (
    EVERY_0,
    EVERY_1,
    WEIGHTS,
    Int,
    Ints,
    Op,
    RuleError,
    Site,
    Type,
    broadcast,
    declare,
    require,
    weight_broadcasts_to_input,
    weight_scale,
    window_lengths,
)
from mpcc.compiler.ops.rows import same_rows, weights_vary_by_row
from mpcc.compiler.poolshapes import pool_output_shape


def _bias(site: Site, out: tuple[int, ...], scale: int, shape: tuple[int, ...] | None) -> None:
    """The optional bias: at the output's scale, of `shape` (or broadcasting to `out`)."""
    if len(site.weights) < 2:
        return
    b = site.weights[1]
    if shape is not None:
        want = f"expected {list(shape)}"
        require(b.shape == shape, f"bias {b.name} has shape {list(b.shape)}, {want}", WEIGHTS)
    else:
        require(
            broadcast(b.shape, out, rule=WEIGHTS) == out,
            f"bias {b.name} {list(b.shape)} does not broadcast to the output {list(out)}",
            WEIGHTS,
        )
    weight_scale(site, 1, scale, "bias")


def _matmul(site: Site) -> Type:
    x, w = site.x, site.weights[0]
    require(len(w.shape) >= 2, f"weight {w.name} must be [..., K, N], not {list(w.shape)}", WEIGHTS)
    k = w.shape[-2]
    require(
        len(x.shape) >= (1 if len(w.shape) == 2 else 2) and x.shape[-1] == k,
        f"input {list(x.shape)} does not end in K = {k} of weight {w.name} {list(w.shape)}",
        WEIGHTS,
    )
    weight_scale(site, 0, site.f, "weight")
    if len(w.shape) == 2:
        out = (*x.shape[:-1], w.shape[1])
    else:  # a stack of matrices: numpy's batch broadcasting
        batch = broadcast(x.shape[:-2], w.shape[:-2], rule=WEIGHTS)
        out = (*batch, x.shape[-2], w.shape[-1])
    _bias(site, out, x.scale + site.f, None)
    return Type(out, x.scale + site.f)


def _conv(site: Site) -> Type:
    x, w, a = site.x, site.weights[0], site.attrs
    g, rank = a["groups"], len(x.shape) - 2
    require(
        1 <= rank <= 3, f"input must be [N, C, *spatial] with 1-3 spatial axes, not {list(x.shape)}"
    )
    require(
        len(w.shape) == len(x.shape),
        f"weight {w.name} {list(w.shape)} must be [O, C/groups, *kernel] of rank {len(x.shape)}",
        WEIGHTS,
    )
    require(
        x.shape[1] == w.shape[1] * g and w.shape[0] % g == 0,
        f"weight {w.name} {list(w.shape)} does not fit {x.shape[1]} input channels in {g} groups",
        WEIGHTS,
    )
    window_lengths(a, rank)
    weight_scale(site, 0, site.f, "weight")
    try:
        hw = pool_output_shape(x.shape[2:], w.shape[2:], a["strides"], a["pads"], a["dilations"])
    except ValueError as e:
        raise RuleError(str(e)) from None
    out = (x.shape[0], w.shape[0], *hw)
    _bias(site, out, x.scale + site.f, (w.shape[0],))
    return Type(out, x.scale + site.f)


def _conv_transpose(site: Site) -> Type:
    x, w, a = site.x, site.weights[0], site.attrs
    g, rank = a["groups"], len(x.shape) - 2
    require(
        1 <= rank <= 3, f"input must be [N, C, *spatial] with 1-3 spatial axes, not {list(x.shape)}"
    )
    require(
        len(w.shape) == len(x.shape) and w.shape[0] == x.shape[1] and x.shape[1] % g == 0,
        f"weight {w.name} {list(w.shape)} must be [C = {x.shape[1]}, O/groups, *kernel] "
        f"with C divisible by groups = {g}",
        WEIGHTS,
    )
    window_lengths(a, rank)
    require(
        len(a["output_padding"]) == rank, "output_padding needs one value per axis", "attributes"
    )
    weight_scale(site, 0, site.f, "weight")
    k, s, p, d, extra = w.shape[2:], a["strides"], a["pads"], a["dilations"], a["output_padding"]
    size = [
        s[i] * (x.shape[2 + i] - 1) + extra[i] + d[i] * (k[i] - 1) + 1 - p[i] - p[i + rank]
        for i in range(rank)
    ]
    require(min(size) >= 1, f"pads {list(p)} leave no output")
    out = (x.shape[0], w.shape[1] * g, *size)
    _bias(site, out, x.scale + site.f, (out[1],))
    return Type(out, x.scale + site.f)


def _mul_w(site: Site) -> Type:
    x = site.x
    weight_broadcasts_to_input(site)
    weight_scale(site, 0, site.f, "weight")
    return Type(x.shape, x.scale + site.f)


def macs(site: Site) -> int:
    """Ring multiply-adds of one evaluation."""
    out, w = site.out, site.weights[0]
    if site.ins.op is matmul:
        return out.size * w.shape[-2]
    if site.ins.op is conv:
        return out.size * math.prod(w.shape[1:])
    if site.ins.op is conv_transpose:  # each input element meets O/groups * prod(K) weights
        return site.x.size * math.prod(w.shape[1:])
    return out.size


def _calls(site: Site) -> list[Call]:
    if site.prog.public_weights:
        return []
    return [Linear(site.x.shape, site.out.shape, macs(site))]


def _local_macs(site: Site) -> int:
    return macs(site) if site.prog.public_weights else 0


def _product_rows(site: Site) -> str | None:
    """matmul contracts the last axis, conv works per image: rows stay apart, but a bias
    (or a stack of weight matrices) with a full leading axis differs per row."""
    if len(site.out.shape) < 2:
        return "a product on a vector has no batch axis"
    w = site.weights[0]
    stacked = site.ins.op is matmul and len(w.shape) > 2 and len(w.shape) == len(site.out.shape)
    if stacked and w.shape[0] != 1:
        return f"weight {w.name} {list(w.shape)} is one matrix per row"
    return same_rows(site) or weights_vary_by_row(site, site.ins.weights[1:])


def _scale_rows(site: Site) -> str | None:
    return same_rows(site) or weights_vary_by_row(site, site.ins.weights)


_LINEAR = dict(
    calls=_calls, local_macs=_local_macs, masks_weight=True, weights=(1, 2), rows=_product_rows
)

matmul = declare(
    Op(
        "matmul",
        "x[..., K] @ W[..., K, N] (+ b), batch axes broadcast: Beaver triple, W masked once",
        _matmul,
        **_LINEAR,
    )
)

conv = declare(
    Op(
        "conv",
        "1-3-D convolution with weight W (+ b): Beaver triple, W masked once",
        _conv,
        attrs={
            "strides": Ints(lo=1, hide=EVERY_1, short="s"),
            "pads": Ints(lo=0, hide=EVERY_0, short="p"),
            "dilations": Ints(lo=1, hide=EVERY_1, short="d"),
            "groups": Int(lo=1, hide=1),
        },
        **_LINEAR,
    )
)

conv_transpose = declare(
    Op(
        "conv_transpose",
        "1-3-D transposed convolution with weight W (+ b): Beaver triple, W masked once",
        _conv_transpose,
        attrs={
            "strides": Ints(lo=1, hide=EVERY_1, short="s"),
            "pads": Ints(lo=0, hide=EVERY_0, short="p"),
            "dilations": Ints(lo=1, hide=EVERY_1, short="d"),
            "output_padding": Ints(lo=0, hide=EVERY_0, short="op"),
            "groups": Int(lo=1, hide=1),
        },
        **_LINEAR,
    )
)

mul_w = declare(
    Op(
        "mul_w",
        "elementwise x * w with a broadcast weight: Beaver triple, w masked once",
        _mul_w,
        **dict(_LINEAR, weights=(1, 1), rows=_scale_rows),
    )
)
