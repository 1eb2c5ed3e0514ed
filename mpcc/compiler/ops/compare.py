"""Comparison-based ops: ReLU (with a fused truncation), LeakyReLU and Clip.

Each is composed over the secure ReLU protocol (`calls.Relu`: masked opening plus a 62-bit
comparison tree, 4 rounds); the runtime composes the same way over the exact plaintext ReLU
in the cleartext interpreter.
"""

from __future__ import annotations

import math

from mpcc.compiler.calls import Call, Relu, ReluFss, Sign, SignFss
from mpcc.compiler.ops.base import Float, Int, Op, Site, Str, Type, declare, require
from mpcc.compiler.ops.rows import same_rows

_SHIFT = Int(lo=0, hi=62)
COMPARISONS = ("tree", "fss")
CMP = {"cmp": Str(*COMPARISONS, optional=True)}


def relu_call(site: Site, n: int, shift: int) -> Call:
    """The ReLU protocol call the instruction's `cmp` attribute chooses (default: the tree)."""
    return ReluFss(n, shift) if site.attrs.get("cmp") == "fss" else Relu(n, shift)


def _shifted(site: Site) -> Type:
    x, shift = site.x, site.attrs["shift"]
    require(shift <= x.scale, f"shift {shift} is more than the input's {x.scale} bits")
    return Type(x.shape, x.scale - shift)


def _leaky(site: Site) -> Type:
    x = site.x
    return Type(x.shape, x.scale + site.f)  # alpha is encoded at f bits


def _clip(site: Site) -> Type:
    a = site.attrs
    require(a.get("lo") is not None or a.get("hi") is not None, "a clip needs a bound")
    return _shifted(site)


def _relu_calls(site: Site) -> list[Call]:
    return [relu_call(site, math.prod(site.x.shape), site.attrs["shift"])]


def _leaky_calls(site: Site) -> list[Call]:
    return [relu_call(site, math.prod(site.x.shape), 0)]


def _clip_calls(site: Site) -> list[Call]:
    a = site.attrs
    both = a.get("lo") is not None and a.get("hi") is not None
    return [relu_call(site, math.prod(site.x.shape) * (2 if both else 1), a["shift"])]


relu = declare(
    Op(
        "relu",
        "max(x, 0), with `shift` fractional bits truncated in the same protocol",
        _shifted,
        attrs={"shift": _SHIFT, **CMP},
        calls=_relu_calls,
        rows=same_rows,
    )
)
leaky_relu = declare(
    Op(
        "leaky_relu",
        "x if x > 0 else alpha * x (alpha at f bits: the output has f more)",
        _leaky,
        attrs={"alpha": Float(), **CMP},
        calls=_leaky_calls,
        rows=same_rows,
    )
)
clip = declare(
    Op(
        "clip",
        "min(max(x, lo), hi), with `shift` bits truncated in the same protocol",
        _clip,
        attrs={
            "lo": Float(optional=True),
            "hi": Float(optional=True),
            "shift": _SHIFT,
            **CMP,
        },
        calls=_clip_calls,
        rows=same_rows,
    )
)


def _sign_calls(site: Site) -> list[Call]:
    n = math.prod(site.x.shape)
    return [SignFss(n) if site.attrs.get("cmp") == "fss" else Sign(n)]


def _ge_zero(site: Site) -> Type:
    return Type(site.x.shape, 0)


ge_zero = declare(
    Op(
        "ge_zero",
        "[x >= 0] as an arithmetic 0/1 at scale 0 (the ReLU's comparison, no select)",
        _ge_zero,
        attrs=CMP,
        calls=_sign_calls,
        rows=same_rows,
    )
)
