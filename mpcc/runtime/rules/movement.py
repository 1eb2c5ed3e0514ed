"""Rules for data movement: identical on shares and on plaintext (pad's constant: P0 only)."""

from __future__ import annotations

import numpy as np

from mpcc.compiler import ops
from mpcc.compiler.ir import Instr
from mpcc.compiler.ops.movement import resize_indices
from mpcc.runtime.fixedpoint import encode
from mpcc.runtime.rules.base import Backend, register, u64


def slice_(x: np.ndarray, attrs: dict) -> np.ndarray:
    """The strided slice a `slice` instruction's attributes describe (a view of x)."""
    idx = [slice(None)] * x.ndim
    for st, en, ax, sp in zip(
        attrs["starts"], attrs["ends"], attrs["axes"], attrs["steps"], strict=True
    ):
        idx[ax] = slice(st, en if en >= 0 else None, sp)
    return x[tuple(idx)]


def _pad(b: Backend, ins: Instr, args: list[np.ndarray]) -> np.ndarray:
    x, a = args[0], ins.attrs
    r = x.ndim
    widths = [(a["pads"][i], a["pads"][i + r]) for i in range(r)]
    mode = a.get("mode") or "constant"
    if mode != "constant":  # ONNX's reflect, edge and wrap are numpy's: copies of elements
        return np.pad(x, widths, mode=mode)
    scale = b.prog.value(ins.out).scale
    value = int(encode(a["value"], scale).view(np.int64)) if b.party == 0 else 0
    return np.pad(x, widths, constant_values=u64(value))


register(ops.reshape, lambda b, ins, args: args[0].reshape(ins.attrs["shape"]))
register(
    ops.transpose,
    lambda b, ins, args: np.ascontiguousarray(args[0].transpose(ins.attrs["perm"])),
)
register(ops.concat, lambda b, ins, args: np.concatenate(args, axis=ins.attrs["axis"]))
register(ops.slice, lambda b, ins, args: np.ascontiguousarray(slice_(args[0], ins.attrs)))
register(ops.pad, _pad)
register(
    ops.resize,
    lambda b, ins, args: args[0][np.ix_(*resize_indices(ins.attrs))],
)
register(
    ops.gather,
    lambda b, ins, args: np.take(
        args[0],
        np.asarray(ins.attrs["indices"], np.int64).reshape(ins.attrs["ishape"]),
        axis=ins.attrs["axis"],
    ),
)
register(ops.tile, lambda b, ins, args: np.tile(args[0], ins.attrs["reps"]))
