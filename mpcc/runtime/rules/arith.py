"""Rules for arithmetic on secrets: local sums and public factors, products, truncation."""

from __future__ import annotations

from mpcc.compiler import ops
from mpcc.runtime.rules.base import register, u64

register(ops.add_w, lambda b, ins, args: args[0] + b.weight(ins.weights[0]))
register(ops.add, lambda b, ins, args: args[0] + args[1])
register(ops.sub, lambda b, ins, args: args[0] - args[1])
register(ops.mul, lambda b, ins, args: b.multiply(args[0], args[1]))
register(ops.matmul_ss, lambda b, ins, args: b.matmul(args[0], args[1]))
register(ops.mul_public, lambda b, ins, args: args[0] * u64(ins.attrs["factor"]))
register(ops.rescale, lambda b, ins, args: args[0] << u64(ins.attrs["bits"]))
register(ops.trunc, lambda b, ins, args: b.truncate(args[0], ins.attrs["shift"]))
