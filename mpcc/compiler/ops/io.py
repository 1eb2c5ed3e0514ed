"""Where values enter and leave a plan: a client's input, and an output for the client."""

from __future__ import annotations

from mpcc.compiler.ir import CLIENT
from mpcc.compiler.ops.base import Ints, Op, Site, Str, Type, declare, require
from mpcc.compiler.ops.rows import same_rows


def _input(site: Site) -> Type:
    shape = tuple(site.attrs["shape"])
    require(len(shape) >= 1, "an input needs at least one axis (the batch)")
    return Type(shape, site.f)


def _output(site: Site) -> Type:
    x = site.x
    return Type(x.shape, x.scale, CLIENT)


input = declare(  # noqa: A001 - the IR op is called input
    Op(
        "input",
        "a client's input, secret-shared by the client (at f fractional bits)",
        _input,
        args=(0, 0),
        attrs={"name": Str(), "shape": Ints(lo=1, hide=...)},
        rows=lambda site: None,  # the batch axis starts here
    )
)

output = declare(
    Op(
        "output",
        "reveal a value to the client (only the client reconstructs it)",
        _output,
        attrs={"name": Str()},
        rows=same_rows,
    )
)
