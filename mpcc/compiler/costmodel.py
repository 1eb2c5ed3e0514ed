"""The cost model: what each IR instruction costs online and offline, before anything runs.

Each op declares the protocol calls it makes (`Op.calls`, typed in `mpcc.compiler.calls`),
and each call is priced by the formulas of `mpcc.compiler.costs`. The transport counts real
traffic, and tests assert that the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpcc.compiler import costs
from mpcc.compiler.calls import Call
from mpcc.compiler.costs import FREE, Cost
from mpcc.compiler.ir import Instr, Program
from mpcc.compiler.ops import Site


def calls(prog: Program, ins: Instr) -> list[Call]:
    """The interactive protocol calls one instruction makes, in execution order: the dealer
    prepares material for exactly these and the executor consumes it in this order."""
    return ins.op.calls(Site(prog, ins))


def instr_cost(prog: Program, ins: Instr) -> Cost:
    """Online rounds/bytes, dealer bytes and MACs of one instruction, per query."""
    return ins.op.cost(Site(prog, ins))


def linear_weights(prog: Program) -> list[str]:
    """The first weight of every op that masks one (the bilinear ops), each once, in plan
    order."""
    names: list[str] = []
    for ins in prog.instrs:
        if ins.op.masks_weight and ins.weights[0] not in names:
            names.append(ins.weights[0])
    return names


def masked_weights(prog: Program) -> list[str]:
    """The weights masked once per session (F = W - B): the linear weights, unless the
    plan's weights are public."""
    return [] if prog.public_weights else linear_weights(prog)


def setup_cost(prog: Program) -> Cost:
    """Once per session: opening F = W - B for every masked weight."""
    total = FREE
    for n in masked_weights(prog):
        total = total + costs.weight_opening(prog.weights[n].size)
    return total


@dataclass(frozen=True)
class CostReport:
    """Per-instruction costs and totals for one query, plus the one-time setup."""

    per_instr: list[Cost]
    total: Cost
    setup: Cost
    client_sent: int  # bytes the client sends to each compute party per query
    client_received: int  # bytes each compute party sends the client per query

    def asdict(self) -> dict:
        return {
            "total": self.total.asdict(),
            "setup": self.setup.asdict(),
            "client_sent_per_party": self.client_sent,
            "client_received_per_party": self.client_received,
        }


def dealer_to_p0(prog: Program) -> int:
    """Bytes the dealer sends P0 per query: the common words of FSS keys (0 for a plan with
    none: then all of P0's material comes from its seed)."""
    return sum(c.dealer_p0() for ins in prog.instrs for c in calls(prog, ins))


def estimate(prog: Program) -> CostReport:
    """The cost of one query of `prog` (one batch), instruction by instruction."""
    per = [instr_cost(prog, ins) for ins in prog.instrs]
    total = FREE
    for c in per:
        total = total + c
    client_in = sum(prog.value(v).size for _, v in prog.inputs) * costs.WORD
    client_out = sum(prog.value(v).size for _, v in prog.outputs) * costs.WORD
    return CostReport(per, total, setup_cost(prog), client_in, client_out)
