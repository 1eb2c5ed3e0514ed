"""Rules for arithmetic on secrets: local sums and public factors, products, truncation."""

from __future__ import annotations

import numpy as np

from mpcc.compiler import ops
from mpcc.runtime.rules.base import add_public, register, u64

register(ops.add_w, lambda b, ins, args: args[0] + b.weight(ins.weights[0]))
register(ops.add, lambda b, ins, args: args[0] + args[1])
register(ops.sub, lambda b, ins, args: args[0] - args[1])
register(ops.mul, lambda b, ins, args: b.multiply(args[0], args[1]))
register(ops.matmul_ss, lambda b, ins, args: b.matmul(args[0], args[1]))
register(ops.square, lambda b, ins, args: b.square(args[0]))
register(ops.mul_public, lambda b, ins, args: args[0] * u64(ins.attrs["factor"]))
register(ops.rescale, lambda b, ins, args: args[0] << u64(ins.attrs["bits"]))
register(ops.trunc, lambda b, ins, args: b.truncate(args[0], ins.attrs["shift"]))


def _powers(b, ins, args):  # noqa: ANN001, ANN202
    a = ins.attrs
    scale = b.prog.value(ins.args[0]).scale - a["shift"]
    return b.powers(args[0], a["shift"], scale, list(a["exponents"]))


register(ops.powers, _powers)


def _add_const(b, ins, args):  # noqa: ANN001, ANN202
    scale = b.prog.value(ins.args[0]).scale
    return add_public(args[0], int(round(ins.attrs["value"] * 2.0**scale)), b.party)


def _mul_const(b, ins, args):  # noqa: ANN001, ANN202
    return args[0] * u64(int(round(ins.attrs["value"] * 2.0 ** ins.attrs["bits"])))


register(ops.add_const, _add_const)
register(ops.mul_const, _mul_const)
register(ops.relabel, lambda b, ins, args: args[0])


def _reduce_sum(b, ins, args):  # noqa: ANN001, ANN202
    axes, keep = tuple(ins.attrs["axes"]), bool(ins.attrs["keepdims"])
    return np.asarray(args[0].sum(axis=axes, keepdims=keep, dtype=np.uint64))


register(ops.reduce_sum, _reduce_sum)


def _dot_const(b, ins, args):  # noqa: ANN001, ANN202
    scale = 2.0 ** ins.attrs["bits"]
    c = np.array([int(round(v * scale)) for v in ins.attrs["values"]], dtype=np.int64)
    return np.ascontiguousarray((args[0] * c.view(np.uint64)).sum(axis=-1, dtype=np.uint64))


register(ops.dot_const, _dot_const)
