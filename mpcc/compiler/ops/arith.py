"""Arithmetic on secrets: sums (local), products (a Beaver triple), matrix products of two
secrets (a matrix Beaver triple), public factors (local), and truncation (dropping fractional
bits: one round)."""

from __future__ import annotations

import math

from mpcc.compiler.calls import Call, MatMulSS, Multiply, Powers, Square, Truncate
from mpcc.compiler.ir import max_scale
from mpcc.compiler.ops.base import (
    Float,
    Floats,
    Int,
    Ints,
    Op,
    Site,
    Type,
    broadcast,
    declare,
    require,
    same_as_input,
    weight_broadcasts_to_input,
    weight_scale,
)
from mpcc.compiler.ops.rows import batch_axis_kept, same_rows, weights_vary_by_row


def _add_w(site: Site) -> Type:
    x = site.x
    weight_broadcasts_to_input(site)
    weight_scale(site, 0, x.scale, "weight")
    return Type(x.shape, x.scale)


def _sum(site: Site) -> Type:
    a, b = site.args
    require(a.scale == b.scale, f"operands at scales {a.scale} and {b.scale}: align them first")
    return Type(broadcast(a.shape, b.shape), a.scale)


def _mul(site: Site) -> Type:
    a, b = site.args
    return Type(broadcast(a.shape, b.shape), a.scale + b.scale)


def _matmul_ss(site: Site) -> Type:
    a, b = site.args
    require(
        len(a.shape) >= 2 and len(b.shape) >= 2,
        f"operands {list(a.shape)} and {list(b.shape)} need two axes each (..., M, K), (..., K, N)",
    )
    require(
        a.shape[-1] == b.shape[-2],
        f"operands {list(a.shape)} and {list(b.shape)} do not chain: K {a.shape[-1]} != "
        f"{b.shape[-2]}",
    )
    lead = broadcast(a.shape[:-2], b.shape[:-2])
    return Type((*lead, a.shape[-2], b.shape[-1]), a.scale + b.scale)


def _matmul_ss_rows(site: Site) -> str | None:
    """Rows stay apart when the batch axis is a leading (broadcast) axis of both operands."""
    if any(len(site.prog.value(a).shape) < 3 for a in site.ins.args):
        return "a product of two matrices mixes their rows"
    return same_rows(site)


def _rescale(site: Site) -> Type:
    x = site.x
    return Type(x.shape, x.scale + site.attrs["bits"])


def _trunc(site: Site) -> Type:
    x, shift = site.x, site.attrs["shift"]
    require(shift <= x.scale, f"shift {shift} is more than the input's {x.scale} bits")
    return Type(x.shape, x.scale - shift)


def _mul_calls(site: Site) -> list[Call]:
    a, b = site.args
    return [Multiply(a.shape, b.shape)]


def _matmul_ss_calls(site: Site) -> list[Call]:
    a, b = site.args
    return [MatMulSS(a.shape, b.shape)]


def _trunc_calls(site: Site) -> list[Call]:
    return [Truncate(math.prod(site.x.shape), site.attrs["shift"])]


add_w = declare(
    Op(
        "add_w",
        "x + b with a broadcast weight (local)",
        _add_w,
        weights=(1, 1),
        rows=lambda s: same_rows(s) or weights_vary_by_row(s, s.ins.weights),
    )
)
add = declare(Op("add", "x + y of two secrets (local)", _sum, args=(2, 2), rows=same_rows))
sub = declare(Op("sub", "x - y of two secrets (local)", _sum, args=(2, 2), rows=same_rows))
mul = declare(
    Op(
        "mul",
        "x * y of two secrets, elementwise: fresh Beaver triple",
        _mul,
        args=(2, 2),
        calls=_mul_calls,
        rows=same_rows,
    )
)
matmul_ss = declare(
    Op(
        "matmul_ss",
        "x[..., M, K] @ y[..., K, N] of two secrets (matmul broadcasting): fresh matrix "
        "Beaver triple",
        _matmul_ss,
        args=(2, 2),
        calls=_matmul_ss_calls,
        rows=_matmul_ss_rows,
    )
)
mul_public = declare(
    Op(
        "mul_public",
        "x * factor: multiply by a public integer, same scale (local)",
        same_as_input,
        attrs={"factor": Int()},
        rows=same_rows,
    )
)
rescale = declare(
    Op(
        "rescale",
        "x * 2^bits at bits more fractional bits: the same real value (local)",
        _rescale,
        attrs={"bits": Int(lo=1, hi=62)},
        rows=same_rows,
    )
)
trunc = declare(
    Op(
        "trunc",
        "drop `shift` fractional bits (known-MSB truncation, 1 round)",
        _trunc,
        attrs={"shift": Int(lo=1, hi=62)},
        calls=_trunc_calls,
        rows=same_rows,
    )
)


# ---- public constants (the building blocks of `mpcc.compiler.approx`) ----------------------


def _const_scale(site: Site) -> Type:
    x, bits = site.x, site.attrs["bits"]
    return Type(x.shape, x.scale + bits)


def _relabel(site: Site) -> Type:
    x, bits = site.x, site.attrs["bits"]
    require(x.scale + bits >= 0, f"relabelling @{x.scale} by {bits} bits leaves a negative scale")
    return Type(x.shape, x.scale + bits)


add_const = declare(
    Op(
        "add_const",
        "x + c for a public real c, encoded at x's scale (local: P0 adds it)",
        same_as_input,
        attrs={"value": Float()},
        rows=same_rows,
    )
)
mul_const = declare(
    Op(
        "mul_const",
        "x * round(c * 2^bits) for a public real c: bits more fractional bits (local)",
        _const_scale,
        attrs={"value": Float(), "bits": Int(lo=0, hi=62)},
        rows=same_rows,
    )
)
relabel = declare(
    Op(
        "relabel",
        "x / 2^bits: the same ring element read at bits more fractional bits (free)",
        _relabel,
        attrs={"bits": Int(lo=-62, hi=62)},
        rows=same_rows,
    )
)


def _dot_const(site: Site) -> Type:
    x, vals = site.x, site.attrs["values"]
    require(len(x.shape) >= 2, "dot_const needs a trailing axis to contract")
    require(
        x.shape[-1] == len(vals), f"{len(vals)} values for a last axis of {x.shape[-1]} entries"
    )
    return Type(x.shape[:-1], x.scale + site.attrs["bits"])


def _dot_rows(site: Site) -> str | None:
    x, out = site.x, site.out
    if not out.shape or x.shape[0] != out.shape[0]:
        return "contracts the batch axis"
    return None


dot_const = declare(
    Op(
        "dot_const",
        "sum_k x[..., k] * round(c_k * 2^bits) over the last axis, public c: bits more bits "
        "(local)",
        _dot_const,
        attrs={"values": Floats(), "bits": Int(lo=0, hi=62)},
        rows=_dot_rows,
    )
)


def _square(site: Site) -> Type:
    x = site.x
    return Type(x.shape, 2 * x.scale)


square = declare(
    Op(
        "square",
        "x * x of one secret: a Beaver pair, one opening (half a mul's traffic)",
        _square,
        calls=lambda s: [Square(math.prod(s.x.shape))],
        rows=same_rows,
    )
)


def _powers(site: Site) -> Type:
    x, shift, exps = site.x, site.attrs["shift"], list(site.attrs["exponents"])
    require(shift <= x.scale, f"shift {shift} is more than the input's {x.scale} bits")
    require(exps == sorted(set(exps)), f"exponents {exps} must be distinct and in increasing order")
    scale = x.scale - shift
    limit = max_scale(site.prog.frac_bits)
    require(
        2 * scale <= limit,
        f"a product of two powers at {scale} bits has {2 * scale}, over the ring's {limit}",
        "ring budget",
    )
    return Type((*x.shape, len(exps)), scale)


def _powers_calls(site: Site) -> list[Call]:
    x, a = site.x, site.attrs
    return [Powers(math.prod(x.shape), a["shift"], x.scale - a["shift"], tuple(a["exponents"]))]


powers = declare(
    Op(
        "powers",
        "[t^e for e in exponents] stacked on a new last axis, t = x truncated by shift bits, "
        "each power at t's scale: every wire opened once, one round per doubling level",
        _powers,
        attrs={"shift": Int(lo=1, hi=62), "exponents": Ints(lo=1)},
        calls=_powers_calls,
        rows=batch_axis_kept,
    )
)
