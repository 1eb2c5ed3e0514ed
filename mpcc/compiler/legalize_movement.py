"""Legalization of the data-movement ops: Reshape (and Flatten, Squeeze, Unsqueeze),
Transpose, Concat, Slice, Pad, Resize/Upsample (nearest), Gather, Split, Tile, Expand."""

from __future__ import annotations

from typing import Any

import numpy as np

from mpcc.compiler.embedding import legalize_embedding
from mpcc.compiler.graph import Graph
from mpcc.compiler.legalize_common import ints, where
from mpcc.errors import ModelError


def _to_reshape(g: Graph, n: str) -> None:
    d = g.node(n)
    d["op"], d["attrs"] = "Reshape", {"shape": g.shape(d["outputs"][0])}
    g.set_inputs(n, d["inputs"][:1])


def _transpose(g: Graph, n: str) -> None:
    d = g.node(n)
    rank = len(g.shape(d["inputs"][0]))
    d["attrs"] = {"perm": ints(d["attrs"].get("perm", range(rank - 1, -1, -1)))}


def _concat(g: Graph, n: str) -> None:
    """Normalize the axis; a Concat mixing computed and constant tensors becomes the sum of the
    computed ones, each zero-padded into place, plus a constant holding the rest (all local)."""
    d = g.node(n)
    out = d["outputs"][0]
    shape = g.shape(out)
    axis = int(d["attrs"]["axis"]) % len(shape)
    d["attrs"] = {"axis": axis}
    ins = d["inputs"]
    if all(g.is_const(t) for t in ins) or not any(g.is_const(t) for t in ins):
        return
    rank = len(shape)
    consts = np.zeros(shape)
    parts: list[str] = []
    offset = 0
    for t in ins:
        size = g.const(t).shape[axis] if g.is_const(t) else g.shape(t)[axis]
        if g.is_const(t):
            where = [slice(None)] * rank
            where[axis] = slice(offset, offset + size)
            consts[tuple(where)] = g.const(t)
        else:
            pads = [0] * 2 * rank
            pads[axis], pads[axis + rank] = offset, shape[axis] - offset - size
            part = g.new_tensor(f"{out}_part{len(parts)}", shape)
            g.add_node(
                "Pad", [t], [part], {"pads": tuple(pads), "value": 0.0}, name=f"{n}_pad{len(parts)}"
            )
            parts.append(part)
        offset += size
    total = parts[0]
    for i, part in enumerate(parts[1:]):
        s = g.new_tensor(f"{out}_sum{i}", shape)
        g.add_node("Add", [total, part], [s], {}, name=f"{n}_sum{i}")
        total = s
    d["op"], d["attrs"] = "Add", {}
    g.set_inputs(n, [total, g.add_const(consts, f"{n}_consts")])


def _slice(g: Graph, n: str) -> None:
    d = g.node(n)
    ins = [*d["inputs"], "", ""]
    shape = g.shape(ins[0])
    starts, ends = ints(g.const(ins[1])), ints(g.const(ins[2]))
    axes = ints(g.const(ins[3])) if ins[3] else tuple(range(len(starts)))
    steps = ints(g.const(ins[4])) if ins[4] else (1,) * len(starts)
    rows = []
    for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
        ax %= len(shape)
        dim = shape[ax]
        if st == 0:
            raise ModelError(f"{where(g, n)}: a slice step of 0")
        s, e = s + dim if s < 0 else s, e + dim if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), dim), min(max(e, 0), dim)
        else:
            s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
        rows.append((ax, s, e, st))
    rows.sort()
    d["attrs"] = {
        "starts": tuple(r[1] for r in rows),
        "ends": tuple(r[2] for r in rows),
        "axes": tuple(r[0] for r in rows),
        "steps": tuple(r[3] for r in rows),
    }
    g.set_inputs(n, ins[:1])


PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _pad(g: Graph, n: str) -> None:
    d = g.node(n)
    mode = d["attrs"].get("mode", "constant")
    if isinstance(mode, bytes):
        mode = mode.decode()
    if mode not in PAD_MODES:
        raise ModelError(
            f"{where(g, n)}: padding mode {mode!r} is not supported "
            f"(supported: {', '.join(PAD_MODES)})"
        )
    ins = [*d["inputs"], "", ""]
    rank = len(g.shape(ins[0]))
    pads = ints(g.const(ins[1]))
    value = float(g.const(ins[2]).reshape(-1)[0]) if ins[2] and g.const(ins[2]).size else 0.0
    if ins[3]:
        axes = [a % rank for a in ints(g.const(ins[3]))]
        full = [0] * 2 * rank
        for i, a in enumerate(axes):
            full[a], full[a + rank] = pads[i], pads[i + len(axes)]
        pads = tuple(full)
    if min(pads) < 0:
        raise ModelError(f"{where(g, n)}: negative pads (cropping) are not supported")
    shape = g.shape(ins[0])
    if mode == "reflect" and any(max(pads[i], pads[i + rank]) >= shape[i] for i in range(rank)):
        raise ModelError(
            f"{where(g, n)}: reflect pads {list(pads)} must be smaller than the axes they pad "
            f"({list(shape)})"
        )
    d["attrs"] = {"pads": pads, "value": value}
    if mode != "constant":
        d["attrs"]["mode"] = mode
    g.set_inputs(n, ins[:1])


def _str(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _source(
    x: np.ndarray, scale: float, n_in: int, n_out: int, transform: str
) -> np.ndarray | None:
    """ONNX Resize's coordinate transform: the input coordinate of output positions x."""
    if transform == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if transform == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if n_out > 1 else np.zeros_like(x)
    if transform == "asymmetric":
        return x / scale
    if transform == "align_corners":
        return x * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros_like(x)
    if transform == "half_pixel_symmetric":
        adjust = n_out / (scale * n_in)
        return n_in / 2 * (1 - adjust) + (x + 0.5) / scale - 0.5
    return None


_NEAREST = {
    "round_prefer_floor": lambda v: np.where(v - np.floor(v) == 0.5, np.floor(v), np.round(v)),
    "round_prefer_ceil": lambda v: np.where(v - np.floor(v) == 0.5, np.ceil(v), np.round(v)),
    "floor": np.floor,
    "ceil": np.ceil,
}


def _resize(g: Graph, n: str) -> None:
    """Resize / Upsample in nearest mode -> Resize with the source index along each axis
    (attribute `index`), from the scales or sizes, the coordinate transform and the nearest
    mode, as ONNX defines them. Upsample is Resize with asymmetric coordinates and floor."""
    d, a = g.node(n), g.node(n)["attrs"]
    x, out = d["inputs"][0], d["outputs"][0]
    shape_in, shape_out = g.shape(x), g.shape(out)
    rank = len(shape_in)
    mode = _str(a.get("mode", "nearest"))
    if mode != "nearest":
        raise ModelError(f"{where(g, n)}: only mode 'nearest' is supported, not {mode!r}")
    ins = [*d["inputs"], "", "", ""]
    if g.op(n) == "Upsample":
        transform, rounding = "asymmetric", "floor"
        scales = a.get("scales") or (g.const(ins[1]) if ins[1] else None)
    else:
        transform = _str(a.get("coordinate_transformation_mode", "half_pixel"))
        rounding = _str(a.get("nearest_mode", "round_prefer_floor"))
        # opset 10: (X, scales); 11+: (X, roi, scales, sizes)
        scales_t = ins[1] if g.opset < 11 else ins[2]
        scales = g.const(scales_t) if scales_t and g.const(scales_t).size else None
        if _str(a.get("keep_aspect_ratio_policy", "stretch")) != "stretch":
            raise ModelError(f"{where(g, n)}: only keep_aspect_ratio_policy 'stretch'")
    if transform not in ("half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners",
                         "half_pixel_symmetric") or rounding not in _NEAREST:  # fmt: skip
        raise ModelError(
            f"{where(g, n)}: coordinate_transformation_mode {transform!r} with nearest_mode "
            f"{rounding!r} is not supported"
        )
    if scales is not None:
        scales = [float(v) for v in np.asarray(scales, dtype=np.float64).reshape(-1)]
        axes = ints(a["axes"]) if "axes" in a else tuple(range(rank))
        full = [1.0] * rank
        for ax, v in zip(axes, scales, strict=True):
            full[ax % rank] = v
    else:
        full = [o / i for o, i in zip(shape_out, shape_in, strict=True)]
    index = []
    for n_in, n_out, sc in zip(shape_in, shape_out, full, strict=True):
        pos = np.arange(n_out, dtype=np.float64)
        src = _source(pos, sc, n_in, n_out, transform)
        picks = np.clip(_NEAREST[rounding](src), 0, n_in - 1).astype(np.int64)
        index.append(tuple(int(v) for v in picks))
    d["op"], d["attrs"] = "Resize", {"index": tuple(index)}
    g.set_inputs(n, [x])


def _gather(g: Graph, n: str) -> None:
    """Gather of a computed tensor at constant indices (negative ones normalized), or of a
    constant table by the client's integer ids (`_embedding`)."""
    d = g.node(n)
    x, idx = d["inputs"]
    if g.is_const(x) and not g.is_const(idx):
        return legalize_embedding(g, n)
    if g.is_const(x) or not g.is_const(idx):
        raise ModelError(
            f"{where(g, n)}: only a computed tensor gathered at constant indices is supported "
            f"here ({x!r} is {'constant' if g.is_const(x) else 'computed'}, indices {idx!r} "
            f"are {'constant' if g.is_const(idx) else 'computed'})"
        )
    shape = g.shape(x)
    axis = int(d["attrs"].get("axis", 0)) % len(shape)
    iv = np.asarray(g.const(idx), dtype=np.int64)
    if ((iv < -shape[axis]) | (iv >= shape[axis])).any():
        raise ModelError(f"{where(g, n)}: an index is out of range for axis {axis} ({shape})")
    iv = np.where(iv < 0, iv + shape[axis], iv)
    d["attrs"] = {"axis": axis, "indices": ints(iv), "ishape": tuple(iv.shape)}
    g.set_inputs(n, [x])


def _split(g: Graph, n: str) -> None:
    """Split into one Slice per output (each local)."""
    d, a = g.node(n), g.node(n)["attrs"]
    x, outs = d["inputs"][0], list(d["outputs"])
    rank = len(g.shape(x))
    axis = int(a.get("axis", 0)) % rank
    name = n
    g.remove_node(n)
    start = 0
    for i, t in enumerate(outs):
        size = g.shape(t)[axis]
        if not t:
            start += size
            continue
        attrs = {"starts": (start,), "ends": (start + size,), "axes": (axis,), "steps": (1,)}
        g.add_node("Slice", [x], [t], attrs, name=f"{name}_{i}")
        start += size


def _tile(g: Graph, n: str) -> None:
    d = g.node(n)
    d["attrs"] = {"reps": ints(g.const(d["inputs"][1]))}
    g.set_inputs(n, d["inputs"][:1])


def _expand(g: Graph, n: str) -> None:
    """Expand (numpy broadcasting to a constant shape) as Reshape to the output's rank, then
    Tile along the axes of size 1 that grow."""
    d = g.node(n)
    x, out = d["inputs"][0], d["outputs"][0]
    shape, target = g.shape(x), g.shape(out)
    full = (1,) * (len(target) - len(shape)) + tuple(shape)
    if full != tuple(shape):
        mid = g.new_tensor(f"{x}_rank{len(target)}", full)
        g.add_node("Reshape", [x], [mid], {"shape": full}, name=f"{n}_reshape")
        x = mid
    d["op"], d["attrs"] = "Tile", {"reps": tuple(t // s for s, t in zip(full, target, strict=True))}
    g.set_inputs(n, [x])


RULES = {
    "Flatten": _to_reshape,
    "Squeeze": _to_reshape,
    "Unsqueeze": _to_reshape,
    "Reshape": _to_reshape,
    "Transpose": _transpose,
    "Concat": _concat,
    "Slice": _slice,
    "Pad": _pad,
    "Resize": _resize,
    "Upsample": _resize,
    "Gather": _gather,
    "Split": _split,
    "Tile": _tile,
    "Expand": _expand,
}
