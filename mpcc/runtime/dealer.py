"""The dealer: reads the public plan and makes each query's preprocessing, ahead of time.

It holds one seed per compute party. P0 expands all of its material from its seed; P1
expands the uniform parts from its seed and receives only corrections. The dealer only ever
sends: it never sees a share, an opened value or a weight.
"""

from __future__ import annotations

import numpy as np

from mpcc.compiler.costmodel import LINEAR_OPS, protocol_calls
from mpcc.compiler.ir import Program
from mpcc.runtime import localops
from mpcc.runtime.material import Bundle
from mpcc.runtime.protocols import linear, multiply, relu, truncation
from mpcc.runtime.session import Session


def linear_weights(prog: Program) -> list[str]:
    """The weight operand of each linear instruction (each name once)."""
    names: list[str] = []
    for ins in prog.instrs:
        if ins.op in LINEAR_OPS and ins.weights[0] not in names:
            names.append(ins.weights[0])
    return names


def secret_linear_weights(prog: Program) -> list[str]:
    """Weights masked once per session: the linear weights, unless weights are public."""
    return [] if prog.public_weights else linear_weights(prog)


class Dealer:
    """Makes material for a session of one plan."""

    def __init__(self, prog: Program, session: Session, seeds: tuple[bytes, bytes]) -> None:
        self.prog = prog
        self.session = session
        self._seeds = seeds
        # B = B_0 + B_1 for every masked weight: both halves come from the parties' seeds.
        self._masks = {
            n: linear.dealer_weight_mask(
                prog.weights[n].shape,
                session.weight_prg(seeds[0], n),
                session.weight_prg(seeds[1], n),
            )
            for n in secret_linear_weights(prog)
        }
        # ... laid out for each linear instruction's kernel, once per session
        self._operands = {
            (ins.weights[0], localops.weight_transposed(prog, ins)): localops.prepare_weight(
                prog, ins, self._masks[ins.weights[0]]
            )
            for ins in prog.instrs
            if ins.op in LINEAR_OPS and ins.weights[0] in self._masks
        }

    def deal(self, query: int) -> Bundle:
        """All of P1's corrections for one query, in the plan's call order."""
        prog, s = self.prog, self.session
        out: list[np.ndarray] = []
        for i, ins in enumerate(prog.instrs):
            for j, (proto, p) in enumerate(protocol_calls(prog, ins)):
                prg0 = s.call_prg(self._seeds[0], query, i, j)
                prg1 = s.call_prg(self._seeds[1], query, i, j)
                if proto == "linear":
                    x_shape = prog.value(ins.args[0]).shape
                    z_shape = prog.value(ins.out).shape
                    fn = localops.bilinear(prog, ins, prepared=True)
                    b = self._operands[ins.weights[0], localops.weight_transposed(prog, ins)]
                    corr = linear.deal(fn, x_shape, z_shape, b, prg0, prg1)
                elif proto == "multiply":
                    x_shape = prog.value(ins.args[0]).shape
                    y_shape = prog.value(ins.args[1]).shape
                    corr = multiply.deal(x_shape, y_shape, prg0, prg1)
                elif proto == "truncate":
                    corr = truncation.deal(p["n"], p["shift"], prg0, prg1)
                elif proto == "relu":
                    corr = relu.deal(p["n"], p["shift"], prg0, prg1)
                else:
                    raise AssertionError(proto)
                out.append(corr)
        return Bundle(s.id, query, out)
