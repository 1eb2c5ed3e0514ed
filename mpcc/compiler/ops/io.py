"""Where values enter and leave a plan: a client's input, and an output for the client."""

from __future__ import annotations

from mpcc.compiler.ir import CLIENT
from mpcc.compiler.ops.base import Int, Ints, Op, Site, Str, Type, declare, require
from mpcc.compiler.ops.rows import same_rows

ONEHOT = "onehot"  # the client one-hot encodes integer ids (`mpcc.inputs.one_hot`)


def _input(site: Site) -> Type:
    shape, enc = tuple(site.attrs["shape"]), site.attrs.get("encoding")
    require(len(shape) >= 1, "an input needs at least one axis (the batch)")
    if enc == ONEHOT:
        depth = site.attrs.get("depth")
        require(
            depth is not None and len(shape) >= 2 and shape[-1] == depth,
            f"a one-hot input's last axis is its depth {depth}, not {list(shape)}",
        )
        return Type(shape, 0)  # 0/1 integers
    require(site.attrs.get("depth") is None, "only a one-hot input has a depth")
    return Type(shape, site.f)


def _output(site: Site) -> Type:
    x = site.x
    return Type(x.shape, x.scale, CLIENT)


input = declare(  # noqa: A001 - the IR op is called input
    Op(
        "input",
        "a client's input, secret-shared by the client (at f fractional bits; with "
        "encoding=onehot, integer ids one-hot over `depth` classes, at scale 0)",
        _input,
        args=(0, 0),
        attrs={
            "name": Str(),
            "shape": Ints(lo=1, hide=...),
            "encoding": Str(ONEHOT, optional=True),
            "depth": Int(lo=2, optional=True),
        },
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
