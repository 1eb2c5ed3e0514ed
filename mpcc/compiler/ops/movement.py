"""Data movement: reshape, transpose, concat, slice, pad, gather (by public indices), tile and
resize. All local: each party moves its share exactly as the plaintext would move (pad's
constant is added by P0 only; reflect, edge and wrap padding copy elements, so they are the
same map on shares)."""

from __future__ import annotations

import builtins
import math

from mpcc.compiler.ops.base import Float, Int, Ints, Op, Site, Str, Type, declare, require
from mpcc.compiler.ops.rows import batch_axis_kept, same_rows


def _reshape(site: Site) -> Type:
    x, shape = site.x, tuple(site.attrs["shape"])
    require(
        math.prod(shape) == math.prod(x.shape),
        f"cannot reshape {list(x.shape)} ({math.prod(x.shape)} elements) to {list(shape)}",
    )
    return Type(shape, x.scale)


def _transpose(site: Site) -> Type:
    x, perm = site.x, list(site.attrs["perm"])
    require(
        sorted(perm) == list(range(len(x.shape))),
        f"perm {perm} is not a permutation of the {len(x.shape)} axes",
    )
    return Type(tuple(x.shape[p] for p in perm), x.scale)


def _concat(site: Site) -> Type:
    args, axis = site.args, site.attrs["axis"]
    first = args[0]
    rank = len(first.shape)
    require(axis < rank, f"axis {axis} of a rank-{rank} tensor")
    for v in args[1:]:
        require(v.scale == first.scale, f"operands at scales {first.scale} and {v.scale}")
        same = len(v.shape) == rank and all(
            d == e for i, (d, e) in enumerate(zip(v.shape, first.shape, strict=False)) if i != axis
        )
        require(same, f"shapes {list(first.shape)} and {list(v.shape)} differ off axis {axis}")
    size = sum(v.shape[axis] for v in args)
    return Type((*first.shape[:axis], size, *first.shape[axis + 1 :]), first.scale)


def _slice(site: Site) -> Type:
    x, a = site.x, site.attrs
    n = len(a["axes"])
    require(
        len(a["starts"]) == n and len(a["ends"]) == n and len(a["steps"]) == n,
        "starts, ends, axes and steps must have the same length",
    )
    require(len(set(a["axes"])) == n, f"axes {list(a['axes'])} repeat an axis")
    shape = list(x.shape)
    for st, en, ax, sp in zip(a["starts"], a["ends"], a["axes"], a["steps"], strict=True):
        require(ax < len(shape), f"axis {ax} of a rank-{len(shape)} tensor")
        require(sp != 0, "a slice step of 0")
        shape[ax] = len(range(shape[ax])[builtins.slice(st, en if en >= 0 else None, sp)])
    return Type(tuple(shape), x.scale)


def _pad(site: Site) -> Type:
    x, pads = site.x, site.attrs["pads"]
    r = len(x.shape)
    require(len(pads) == 2 * r, f"pads need {2 * r} values for a rank-{r} tensor, not {len(pads)}")
    if site.attrs.get("mode") == "reflect":
        require(
            all(max(pads[i], pads[i + r]) < d for i, d in enumerate(x.shape)),
            f"reflect pads {list(pads)} must be smaller than the axes they pad {list(x.shape)}",
        )
    if site.attrs.get("mode") in ("edge", "wrap"):
        require(
            0 not in x.shape, f"cannot pad an empty axis of {list(x.shape)} by {site.attrs['mode']}"
        )
    return Type(tuple(d + pads[i] + pads[i + r] for i, d in enumerate(x.shape)), x.scale)


def _resize(site: Site) -> Type:
    x, a = site.x, site.attrs
    shape, index = list(a["shape"]), list(a["index"])
    require(len(shape) == len(x.shape), f"shape {shape} must have rank {len(x.shape)}")
    require(len(index) == sum(shape), f"index needs {sum(shape)} entries, one per output position")
    at = 0
    for axis, (n, dim) in enumerate(zip(shape, x.shape, strict=True)):
        picks = index[at : at + n]
        require(max(picks, default=0) < dim, f"index on axis {axis} past its size {dim}")
        at += n
    return Type(tuple(shape), x.scale)


def resize_indices(attrs: dict) -> list[list[int]]:
    """A resize instruction's source index along each axis."""
    out, at = [], 0
    for n in attrs["shape"]:
        out.append(list(attrs["index"][at : at + n]))
        at += n
    return out


def _resize_rows(site: Site) -> str | None:
    batch = resize_indices(site.attrs)[0]
    if batch != list(range(site.x.shape[0])):
        return "it resizes the batch axis"
    return same_rows(site)


def _gather(site: Site) -> Type:
    x, a = site.x, site.attrs
    axis, idx, ishape = a["axis"], a["indices"], tuple(a["ishape"])
    require(axis < len(x.shape), f"axis {axis} of a rank-{len(x.shape)} tensor")
    require(
        len(idx) == math.prod(ishape),
        f"{len(idx)} indices do not fill the index shape {list(ishape)}",
    )
    require(
        all(i < x.shape[axis] for i in idx),
        f"an index is past the end of axis {axis} (size {x.shape[axis]})",
    )
    return Type((*x.shape[:axis], *ishape, *x.shape[axis + 1 :]), x.scale)


def _tile(site: Site) -> Type:
    x, reps = site.x, site.attrs["reps"]
    require(len(reps) == len(x.shape), f"{len(reps)} repeats for a rank-{len(x.shape)} tensor")
    return Type(tuple(d * r for d, r in zip(x.shape, reps, strict=True)), x.scale)


def _gather_rows(site: Site) -> str | None:
    if site.attrs["axis"] == 0:
        return "it gathers along the batch axis"
    return batch_axis_kept(site)


def _tile_rows(site: Site) -> str | None:
    return same_rows(site) or ("it repeats the batch axis" if site.attrs["reps"][0] != 1 else None)


def _transpose_rows(site: Site) -> str | None:
    perm = site.attrs["perm"]
    return same_rows(site) or (None if perm[0] == 0 else f"perm {list(perm)} moves the batch axis")


def _concat_rows(site: Site) -> str | None:
    if site.attrs["axis"] == 0:
        return "it joins along the batch axis"
    return same_rows(site)


def _slice_rows(site: Site) -> str | None:
    return same_rows(site) or ("it slices the batch axis" if 0 in site.attrs["axes"] else None)


def _pad_rows(site: Site) -> str | None:
    r, pads = len(site.out.shape), site.attrs["pads"]
    return same_rows(site) or ("it pads the batch axis" if pads[0] or pads[r] else None)


reshape = declare(
    Op(
        "reshape",
        "change the shape (local)",
        _reshape,
        attrs={"shape": Ints(lo=0)},
        rows=batch_axis_kept,
    )
)
transpose = declare(
    Op(
        "transpose",
        "permute axes (local)",
        _transpose,
        attrs={"perm": Ints(lo=0)},
        rows=_transpose_rows,
    )
)
concat = declare(
    Op(
        "concat",
        "join along an axis (local)",
        _concat,
        args=(1, None),
        attrs={"axis": Int(lo=0)},
        rows=_concat_rows,
    )
)
slice = declare(  # noqa: A001 - the IR op is called slice
    Op(
        "slice",
        "strided slice (local)",
        _slice,
        attrs={
            "starts": Ints(lo=0),
            "ends": Ints(lo=-1),
            "axes": Ints(lo=0),
            "steps": Ints(),
        },
        rows=_slice_rows,
    )
)
pad = declare(
    Op(
        "pad",
        "pad with a constant, or by reflecting, repeating the edge or wrapping around (local)",
        _pad,
        attrs={
            "pads": Ints(lo=0),
            "value": Float(),
            "mode": Str("constant", "reflect", "edge", "wrap", optional=True, hide="constant"),
        },
        rows=_pad_rows,
    )
)
resize = declare(
    Op(
        "resize",
        "nearest-neighbour resize: each output position copies the input at its source index "
        "along every axis (local)",
        _resize,
        attrs={"shape": Ints(lo=1), "index": Ints(lo=0, hide=...)},
        rows=_resize_rows,
    )
)
gather = declare(
    Op(
        "gather",
        "take entries at public indices along an axis (local)",
        _gather,
        attrs={
            "axis": Int(lo=0),
            "indices": Ints(lo=0, hide=...),
            "ishape": Ints(lo=0, short="idx"),
        },
        rows=_gather_rows,
    )
)
tile = declare(
    Op(
        "tile",
        "repeat the tensor along each axis (local; Expand is a tile)",
        _tile,
        attrs={"reps": Ints(lo=1)},
        rows=_tile_rows,
    )
)
