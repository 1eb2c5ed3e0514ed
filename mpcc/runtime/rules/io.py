"""Rules for input and output."""

from __future__ import annotations

from mpcc.compiler import ops
from mpcc.runtime.rules.base import register

register(ops.input, lambda b, ins, args: b.input(ins))
register(ops.output, lambda b, ins, args: args[0])
