"""The cost model: what each IR instruction costs online and offline, before anything runs.

Per-protocol formulas live in `mpcc.compiler.costs`; this module maps IR instructions onto
them. The transport counts real traffic, and tests assert that the two agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mpcc.compiler import costs
from mpcc.compiler.costs import FREE, Cost
from mpcc.compiler.ir import Instr, Program

LINEAR_OPS = ("matmul", "conv2d", "mul_w")


def maxpool_levels(window: int) -> list[int]:
    """Pairs compared at each level of a max tournament over `window` elements."""
    levels = []
    while window > 1:
        levels.append(window // 2)
        window -= window // 2
    return levels


def linear_macs(prog: Program, ins: Instr) -> int:
    """Ring multiply-adds of one evaluation of a linear instruction."""
    out = prog.value(ins.out)
    w = prog.weights[ins.weights[0]]
    if ins.op == "matmul":
        return out.size * w.shape[0]
    if ins.op == "conv2d":
        return out.size * math.prod(w.shape[1:])
    return out.size  # mul_w


def protocol_calls(prog: Program, ins: Instr) -> list[tuple[str, dict[str, int]]]:
    """The interactive protocol invocations one instruction makes, in execution order.

    The dealer prepares material for exactly these calls and the executor consumes it in
    this order; the cost model prices them. Local instructions make none.
    """
    out = prog.value(ins.out)
    x = prog.value(ins.args[0]) if ins.args else None
    op = ins.op
    if op in LINEAR_OPS:
        if prog.public_weights:
            return []
        return [("linear", {"x": x.size, "z": out.size, "macs": linear_macs(prog, ins)})]
    if op == "mul":
        y = prog.value(ins.args[1])
        return [("multiply", {"x": x.size, "y": y.size, "z": out.size})]
    if op == "trunc":
        return [("truncate", {"n": x.size, "shift": ins.attrs["shift"]})]
    if op == "relu":
        return [("relu", {"n": x.size, "shift": ins.attrs["shift"]})]
    if op == "leaky_relu":
        return [("relu", {"n": x.size, "shift": 0})]
    if op == "clip":
        both = ins.attrs["lo"] is not None and ins.attrs["hi"] is not None
        return [("relu", {"n": x.size * (2 if both else 1), "shift": ins.attrs["shift"]})]
    if op == "maxpool":
        levels = maxpool_levels(math.prod(ins.attrs["kernel"]))
        return [("relu", {"n": out.size * pairs, "shift": 0}) for pairs in levels]
    return []


def call_cost(protocol: str, p: dict[str, int]) -> Cost:
    """The cost of one protocol invocation."""
    if protocol == "linear":
        return costs.linear(p["x"], p["z"], p["macs"])
    if protocol == "multiply":
        return costs.multiply(p["x"], p["y"], p["z"])
    if protocol == "truncate":
        return costs.truncate(p["n"])
    if protocol == "relu":
        return costs.relu(p["n"], p["shift"])
    raise ValueError(f"unknown protocol {protocol!r}")


def instr_cost(prog: Program, ins: Instr) -> Cost:
    """Online rounds/bytes, dealer bytes and MACs of one instruction, per query."""
    total = FREE
    if ins.op in LINEAR_OPS and prog.public_weights:
        total = Cost(macs=linear_macs(prog, ins))
    for protocol, params in protocol_calls(prog, ins):
        total = total + call_cost(protocol, params)
    return total


def setup_cost(prog: Program) -> Cost:
    """Once per session: opening F = W - B for every secret weight of a linear op."""
    if prog.public_weights:
        return FREE
    total = FREE
    opened: set[str] = set()
    for ins in prog.instrs:
        if ins.op in LINEAR_OPS and ins.weights[0] not in opened:
            opened.add(ins.weights[0])
            total = total + costs.weight_opening(prog.weights[ins.weights[0]].size)
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


def estimate(prog: Program) -> CostReport:
    """The cost of one query of `prog` (one batch), instruction by instruction."""
    per = [instr_cost(prog, ins) for ins in prog.instrs]
    total = FREE
    for c in per:
        total = total + c
    client_in = sum(prog.value(v).size for _, v in prog.inputs) * costs.WORD
    client_out = sum(prog.value(v).size for _, v in prog.outputs) * costs.WORD
    return CostReport(per, total, setup_cost(prog), client_in, client_out)
